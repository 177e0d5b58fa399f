"""Shared fixtures: real dask processes on 127.0.0.1 with random free ports, always stopped."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest


def _dask_command() -> list[str]:
    exe = shutil.which("dask", path=os.path.dirname(sys.executable)) or shutil.which("dask")
    return [exe] if exe else [sys.executable, "-m", "distributed.cli.dask_spec"]


# A gather racing a SIGKILLed worker retries connecting to it for timeouts.connect (30 s by default)
# before the task is recomputed; on loopback 5 s is plenty for a live process.
DASK_ENV = {"DASK_DISTRIBUTED__WORKER__DAEMON": "False", "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "5s"}


class DaskProcesses:
    """A ``dask scheduler`` and ``dask worker`` processes started as subprocesses (kill them at will)."""

    def __init__(self, tmp_path, workers: int = 2, memory_limit: str = "2GiB"):
        self.tmp_path = tmp_path
        self.scheduler_file = str(tmp_path / "scheduler.json")
        self.memory_limit = memory_limit
        self.procs: list[subprocess.Popen] = []
        self.workers: list[subprocess.Popen] = []
        self._logs: list = []
        try:
            self.scheduler = self._start(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                          "--scheduler-file", self.scheduler_file], "scheduler")
            self._wait(lambda: os.path.exists(self.scheduler_file), "scheduler file")
            for i in range(workers):
                self.add_worker()
            self.wait_for_workers(workers)
        except BaseException:  # what started, stops
            self.stop()
            raise

    @property
    def address(self) -> str:
        import json

        with open(self.scheduler_file) as f:
            return json.load(f)["address"]

    def _start(self, args: list[str], name: str) -> subprocess.Popen:
        log = open(self.tmp_path / f"{name}-{len(self.procs)}.log", "wb")
        self._logs.append(log)
        proc = subprocess.Popen([*_dask_command(), *args], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, **DASK_ENV})
        self.procs.append(proc)
        return proc

    def add_worker(self) -> subprocess.Popen:
        worker = self._start(["worker", "--scheduler-file", self.scheduler_file, "--host", "127.0.0.1",
                              "--nworkers", "1", "--nthreads", "1", "--no-dashboard", "--no-nanny",
                              "--memory-limit", self.memory_limit], "worker")
        self.workers.append(worker)
        return worker

    def wait_for_workers(self, n: int, timeout: float = 60) -> None:
        from distributed import Client

        with Client(self.address, timeout=timeout) as client:
            client.wait_for_workers(n, timeout=timeout)

    @staticmethod
    def _wait(ready, what: str, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > end:
                raise TimeoutError(f"{what} did not appear in {timeout} s")
            time.sleep(0.05)

    def kill(self, proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=30)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for log in self._logs:
            log.close()


@pytest.fixture
def dask_processes(tmp_path):
    """A real scheduler and two real workers (separate processes) on 127.0.0.1; stopped afterwards."""
    pytest.importorskip("distributed")
    procs = DaskProcesses(tmp_path)
    try:
        yield procs
    finally:
        procs.stop()


@pytest.fixture(scope="module")
def local_client():
    """A ``LocalCluster`` of two worker processes on 127.0.0.1 and its client, shared by a test module."""
    pytest.importorskip("distributed")
    from lucid.dask.cluster import ClusterSpec, connect

    with connect(ClusterSpec(workers=2, memory_limit="2GiB")) as client:
        yield client
