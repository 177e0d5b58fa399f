"""Run one :class:`PoolJob` per file on a dask cluster: retries for transient errors, failure
records for permanent ones, and outputs already made by this same run skipped."""

from __future__ import annotations

import errno
import hashlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from lucid.batch.inputs import FilePair
from lucid.batch.provenance import output_fingerprints
from lucid.dask.cluster import ClusterError, ClusterSpec, connect
from lucid.io import LucidIOError, detect_format
from lucid.io.tempfiles import clean_stale
from lucid.stream.job import PoolJob

DEFAULT_RETRIES = 2
# A bad header, a shape mismatch or a missing file fails again on any worker: not retried.
PERMANENT = (LucidIOError, ValueError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
             FileExistsError)
TRANSIENT_ERRNOS = {errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.ESTALE, errno.ENOSPC, errno.EMFILE}

Progress = Callable[[int, int, int], None]  # (files finished, files in all, bytes read)


@dataclass
class FileResult:
    """One file's outcome: ``done``, ``skipped`` (this run's output is there) or ``failed``."""

    input: str
    output: str
    status: str
    error: str | None = None
    seconds: float = 0.0
    bytes: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BatchReport:
    results: list[FileResult]
    seconds: float
    where: str

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if r.status == "failed"]

    def summary(self) -> dict[str, Any]:
        return {"files": len(self.results), "done": self.count("done"), "skipped": self.count("skipped"),
                "failed": self.count("failed"), "seconds": round(self.seconds, 3), "where": self.where,
                "failed_files": [r.input for r in self.failed]}


class TransientError(RuntimeError):
    """An error worth another attempt (possibly on another worker); dask retries the task."""


def one_line(exc: BaseException, name: str) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.filename or name}: {exc.strerror}"
    return text if name in text else f"{name}: {text}"


def run_file(job: PoolJob) -> FileResult:
    """The task: run ``job`` on this worker.  Permanent errors come back as a failure record;
    anything else is raised, so that dask retries it."""
    start = time.perf_counter()
    if not job.force and is_done(job):  # a retry after the first attempt committed (its worker died after)
        return FileResult(job.input, job.output, "done", None, time.perf_counter() - start)
    try:
        report = job.run()
    except PERMANENT as exc:
        return FileResult(job.input, job.output, "failed", one_line(exc, job.input), time.perf_counter() - start)
    except OSError as exc:
        if exc.errno in TRANSIENT_ERRNOS:
            raise TransientError(one_line(exc, job.input)) from None
        return FileResult(job.input, job.output, "failed", one_line(exc, job.input), time.perf_counter() - start)
    file = detect_format(job.input)[1]
    # a Zarr store is a directory of many files: count the array's bytes instead of walking it
    size = os.path.getsize(file) if os.path.isfile(file) else math.prod(report.in_shape) * np.dtype(report.dtype).itemsize
    return FileResult(job.input, job.output, "done", None, time.perf_counter() - start, size, list(report.warnings))


def is_done(job: PoolJob) -> bool:
    """The output exists and was written by a run with this job's fingerprint (same input file as it
    is now, same pooling and output options)."""
    try:
        return job.fingerprint() in output_fingerprints(job.output)
    except OSError:  # the input is gone: the run will say so
        return False


def _adds_dataset(output: str) -> bool:
    """``file.h5:/name`` may add a dataset to an existing file; the run itself refuses an existing dataset."""
    fmt, _, dataset = detect_format(output)
    return fmt == "hdf5" and dataset is not None


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def run_batch(job: PoolJob, files: Sequence[FilePair], *, cluster: ClusterSpec | None = None,
              retries: int = DEFAULT_RETRIES, progress: Progress | None = None,
              on_result: Callable[[FileResult], None] | None = None) -> BatchReport:
    """Pool every file of ``files`` with ``job``'s parameters, one dask task per file.

    Without ``cluster`` (and no ``DASK_SCHEDULER_ADDRESS``) a local cluster of
    min(CPUs, files) worker processes on 127.0.0.1 runs them; a single file runs
    in this process.  Outputs already written by this same run are skipped
    unless ``job.force``; a file that fails permanently is recorded, not
    retried, and the others go on.
    """
    start = time.perf_counter()
    results: list[FileResult] = []
    total = len(files)
    done_bytes = 0

    def record(result: FileResult) -> None:
        nonlocal done_bytes
        results.append(result)
        done_bytes += result.bytes
        if on_result is not None:
            on_result(result)
        if progress is not None:
            progress(len(results), total, done_bytes)

    jobs = []
    for pair in files:
        one = job.with_files(pair.input, pair.output)
        if not job.force and is_done(one):
            record(FileResult(pair.input, pair.output, "skipped"))
        elif not job.force and os.path.exists(detect_format(pair.output)[1]) and not _adds_dataset(pair.output):
            record(FileResult(pair.input, pair.output, "failed", f"{pair.output}: output exists and is not this "
                              "run's result (other parameters, or the input changed); use --force to redo it"))
        else:
            jobs.append(one)
    cluster = cluster or ClusterSpec.from_options()
    where = "this process"
    try:
        if not jobs:
            pass
        elif cluster is None and len(jobs) == 1:
            record(run_file(jobs[0]))
        else:
            if cluster is None:
                cluster = ClusterSpec(workers=max(1, min(len(jobs), _cpus())))
            where = cluster.describe()
            with connect(cluster) as client:
                _submit(client, jobs, retries, record)
    finally:
        for directory in {os.path.dirname(os.path.abspath(detect_format(p.output)[1])) for p in files}:
            if os.path.isdir(directory):  # temporary files of workers killed mid-write
                clean_stale(directory)
    return BatchReport(results, time.perf_counter() - start, where)


def _tag(path: str) -> str:
    return hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()[:10]


def _submit(client, jobs: list[PoolJob], retries: int, record: Callable[[FileResult], None]) -> None:
    from distributed import as_completed

    # one thread per task unless -j said otherwise: the workers already run files side by side
    jobs = [replace(j, threads=j.threads or 1) for j in jobs]
    futures = client.map(run_file, jobs, key=[f"lucid-pool3d-{i}-{_tag(j.input)}" for i, j in enumerate(jobs)],
                         retries=retries, pure=False)
    by_key = {f.key: j for f, j in zip(futures, jobs)}
    waiting = as_completed(futures)
    try:
        for future in waiting:
            job = by_key[future.key]
            if future.status in ("lost", "pending"):  # its worker died holding the result: dask runs it again
                waiting.add(future)  # (and the rerun finds the committed output: run_file returns done)
            elif future.status == "finished":
                record(future.result())
            elif future.status == "error":
                exc = future.exception()
                record(FileResult(job.input, job.output, "failed", one_line(exc, job.input)))
            else:  # cancelled: the scheduler went away
                raise ClusterError(f"lost the dask scheduler while pooling {job.input}; finished files are kept, "
                                   "run the same command again to do the rest")
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"lost the dask scheduler: {one_line(exc, 'scheduler')}; finished files are kept, "
                           "run the same command again to do the rest") from None
    finally:
        client.cancel(futures)
