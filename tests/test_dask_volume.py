"""``pool3d`` on a dask cluster (``lucid.dask.volume``): the same bits as this machine's engine, and faults."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("distributed")
h5py = pytest.importorskip("h5py")
zarr = pytest.importorskip("zarr")
nib = pytest.importorskip("nibabel")

from lucid.dask.cluster import ClusterSpec  # noqa: E402
from lucid.stream.api import pool3d_file  # noqa: E402
from tests.conftest import DaskProcesses  # noqa: E402


def read(path: str) -> np.ndarray:
    """An independent reader for every format written."""
    if ".zarr" in path:
        return zarr.open_array(path, mode="r")[...]
    if path.endswith((".nii", ".nii.gz")):
        return np.asanyarray(nib.load(path).dataobj)
    with h5py.File(path, "r") as f:
        return f["data"][...]


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def write_input(path, a: np.ndarray, chunks=None) -> str:
    if path.endswith(".h5"):
        with h5py.File(path, "w") as f:
            f.create_dataset("data", data=a, chunks=chunks)
    elif path.endswith(".zarr"):
        zarr.create_array(path, shape=a.shape, dtype=a.dtype, chunks=chunks or a.shape)[...] = a
    else:
        nib.save(nib.Nifti1Image(a, np.eye(4)), path)
    return path


def lucid_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lucid_cli.main", *args], capture_output=True, text=True,
                          timeout=timeout)


@contextlib.contextmanager
def lucid_running(*args: str):
    """A ``lucid`` process in the background; killed on the way out if it still runs (a failed test)."""
    proc = subprocess.Popen([sys.executable, "-m", "lucid_cli.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture(scope="module")
def cluster(local_client):
    return ClusterSpec(scheduler=local_client.scheduler.address)


@st.composite
def cases(draw):
    fmt = draw(st.sampled_from([".h5", ".zarr", ".nii"]))
    lead = draw(st.sampled_from([(), (2,)])) if fmt != ".nii" else ()
    shape = lead + tuple(draw(st.integers(9, 26)) for _ in range(3))
    k = tuple(draw(st.integers(1, 4)) for _ in range(3))
    s = tuple(draw(st.integers(1, 3)) for _ in range(3))
    p = tuple(draw(st.integers(0, kk // 2)) for kk in k)
    d = tuple(draw(st.integers(1, 2)) for _ in range(3))
    chunks = tuple(draw(st.integers(2, n)) for n in shape)
    return dict(fmt=fmt, shape=shape, k=k, s=s, p=p, d=d, ceil=draw(st.booleans()), chunks=chunks,
                mode=draw(st.sampled_from(["zeros", "ignore"])), seed=draw(st.integers(0, 2**31)),
                out=draw(st.sampled_from([".zarr", ".h5", ".nii"])), block=draw(st.sampled_from(["2K", "6K", "30K"])))


@given(cases())
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
def test_cluster_run_equals_the_engine_bit_for_bit(cluster, tmp_path_factory, case):
    tmp = tmp_path_factory.mktemp("case")
    rng = np.random.default_rng(case["seed"])
    a = rng.integers(-2, 3, case["shape"]).astype(np.float32)  # ties, and negatives that zero padding beats
    a.ravel()[rng.random(a.size) < 0.03] = np.nan
    src = write_input(str(tmp / f"in{case['fmt']}"), a, case["chunks"] if case["fmt"] != ".nii" else None)
    opts = dict(kernel_size=case["k"], stride=case["s"], padding=case["p"], dilation=case["d"],
                ceil_mode=case["ceil"], padding_mode=case["mode"])
    out = case["out"] if not (case["out"] == ".nii" and len(case["shape"]) > 3 and case["fmt"] != ".nii") else ".zarr"
    try:
        ref = pool3d_file(src, str(tmp / f"ref{out}"), grad_out=str(tmp / "refg.zarr"),
                          indices_out=str(tmp / "refi.zarr"), **opts)
    except ValueError:  # "ignore" with a window over padding only, a kernel that does not fit
        return
    up = rng.standard_normal(ref.out_shape).astype(np.float32)
    up[up == 0] = 1
    grad_in = write_input(str(tmp / "up.h5"), up)
    ref = pool3d_file(src, str(tmp / f"ref{out}"), grad_out=str(tmp / "refg.zarr"), grad_in=grad_in,
                      indices_out=str(tmp / "refi.zarr"), force=True, **opts)
    got = pool3d_file(src, str(tmp / f"got{out}"), grad_out=str(tmp / "gotg.h5"), grad_in=grad_in,
                      indices_out=str(tmp / "goti.zarr"), cluster=cluster, block_bytes=case["block"], **opts)
    run = got.extra["dask"]
    assert run["tasks"] == run["forward_blocks"] + run["backward_blocks"]
    assert same_bits(read(str(tmp / f"got{out}")), read(str(tmp / f"ref{out}")))
    assert same_bits(read(str(tmp / "goti.zarr")), read(str(tmp / "refi.zarr")))
    assert same_bits(read(str(tmp / "gotg.h5")), read(str(tmp / "refg.zarr")))
    assert got.padding_won == ref.padding_won
    assert sorted(os.listdir(tmp)) == sorted(["in" + case["fmt"], "up.h5", f"ref{out}", "refg.zarr", "refi.zarr",
                                              f"got{out}", "gotg.h5", "goti.zarr"])  # nothing temporary left


def test_many_blocks_with_shards_and_a_min_pooling_slope(cluster, tmp_path):
    a = np.random.default_rng(5).integers(0, 9, (30, 28, 26)).astype(np.int16)
    img = nib.Nifti1Image(a, np.eye(4))
    img.header.set_slope_inter(-2.0, 10.0)  # a negative slope: max of physical values is min of stored ones
    nib.save(img, str(tmp_path / "in.nii"))
    opts = dict(kernel_size=3, stride=2, padding=1)
    pool3d_file(str(tmp_path / "in.nii"), str(tmp_path / "ref.zarr"), grad_out=str(tmp_path / "refg.zarr"), **opts)
    got = pool3d_file(str(tmp_path / "in.nii"), str(tmp_path / "got.zarr"), grad_out=str(tmp_path / "gotg.zarr"),
                      cluster=cluster, block_bytes="4K", shards=True, **opts)
    assert got.extra["dask"]["forward_blocks"] > 8
    assert same_bits(read(str(tmp_path / "got.zarr")), read(str(tmp_path / "ref.zarr")))
    assert same_bits(read(str(tmp_path / "gotg.zarr")), read(str(tmp_path / "refg.zarr")))
    shards = zarr.open_array(str(tmp_path / "got.zarr"), mode="r").shards
    assert shards is not None


def test_tasks_carry_paths_and_cut_points_only(cluster, tmp_path, monkeypatch):
    """No h5py (or zarr) object in the graph: each task gets a small context and opens files by path."""
    from lucid.dask import volume

    seen = []
    original = volume.Runner.context
    monkeypatch.setattr(volume.Runner, "context", lambda self, sinks: seen.append(original(self, sinks)) or seen[-1])
    a = np.random.default_rng(4).standard_normal((40, 36, 32)).astype(np.float32)
    src = write_input(str(tmp_path / "in.h5"), a, (8, 8, 8))
    got = pool3d_file(src, str(tmp_path / "out.h5"), grad_out=str(tmp_path / "g.zarr"), kernel_size=3, stride=2,
                      padding=1, cluster=cluster, block_bytes="8K")
    assert got.extra["dask"]["tasks"] > 20
    (ctx,) = seen
    data = pickle.dumps(ctx)
    assert b"h5py" not in data and b"zarr.core" not in data and len(data) < 4000
    assert ctx.job.input == src and ctx.values is None and ctx.gradient.store.startswith(str(tmp_path))
    grad = zarr.open_array(str(tmp_path / "g.zarr"), mode="r")
    for block in ctx.backward.blocks():  # every task writes whole chunks of the Zarr output
        assert volume.whole_units(block.own_box, grad.chunks, grad.shape)


def test_a_run_that_never_starts_leaves_nothing(cluster, tmp_path):
    import socket

    from lucid.dask.cluster import ClusterError
    from lucid.io import LucidIOError

    a = np.random.default_rng(3).standard_normal((20, 20, 20)).astype(np.float32)
    src = write_input(str(tmp_path / "in.h5"), a)
    (tmp_path / "taken.zarr").mkdir()
    with pytest.raises(LucidIOError, match="output exists"):
        pool3d_file(src, str(tmp_path / "taken.zarr"), kernel_size=2, cluster=cluster, block_bytes="4K")
    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nobody = ClusterSpec(scheduler=f"tcp://127.0.0.1:{port}", timeout=1)
    with pytest.raises(ClusterError, match="cannot reach the scheduler"):
        pool3d_file(src, str(tmp_path / "out.zarr"), grad_out=str(tmp_path / "g.zarr"), kernel_size=2,
                    cluster=nobody, block_bytes="4K")
    assert sorted(os.listdir(tmp_path)) == ["in.h5", "taken.zarr"]


def test_a_block_that_is_not_whole_chunks_is_refused():
    from lucid.dask.volume import whole_units

    assert whole_units((slice(0, 8), slice(8, 10)), (4, 4), (20, 10))
    assert not whole_units((slice(0, 6), slice(0, 4)), (4, 4), (20, 10))
    assert not whole_units((slice(2, 8), slice(0, 4)), (4, 4), (20, 10))


def test_gzip_nifti_runs_on_this_machine_with_one_line(cluster, tmp_path):
    a = np.random.default_rng(6).random((12, 10, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(a, np.eye(4)), str(tmp_path / "in.nii.gz"))
    got = pool3d_file(str(tmp_path / "in.nii.gz"), str(tmp_path / "out.zarr"), kernel_size=2, cluster=cluster)
    assert "dask" not in got.extra
    assert [w for w in got.warnings if "not in parallel" in w and "in.nii.gz" in w]


@pytest.mark.slow
def test_killed_worker_mid_run_still_gives_the_exact_output(dask_processes, tmp_path):
    a = np.random.default_rng(7).standard_normal((64, 64, 64)).astype(np.float32)
    write_input(str(tmp_path / "in.h5"), a, (16, 16, 16))
    args = [str(tmp_path / "in.h5"), str(tmp_path / "out.zarr"), "-k", "3", "-s", "2", "-p", "1",
            "--grad-out", str(tmp_path / "grad.h5"), "--block-size", "16K", "-q"]
    with lucid_running("pool3d", *args, "--scheduler-file", dask_processes.scheduler_file) as proc:
        wait_for_markers(tmp_path, 30, proc)
        dask_processes.kill(dask_processes.workers[0])
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    ref = lucid_cli("pool3d", str(tmp_path / "in.h5"), str(tmp_path / "ref.zarr"), "-k", "3", "-s", "2", "-p", "1",
                    "--grad-out", str(tmp_path / "refg.zarr"), "-q")
    assert ref.returncode == 0, ref.stderr
    assert same_bits(read(str(tmp_path / "out.zarr")), read(str(tmp_path / "ref.zarr")))
    assert same_bits(read(str(tmp_path / "grad.h5")), read(str(tmp_path / "refg.zarr")))
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]


def wait_for_markers(tmp_path, count: int, proc, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done = [n for n in os.listdir(tmp_path) if n.endswith(".done")]
        if done and len(os.listdir(tmp_path / done[0])) >= count:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {count} blocks: {proc.stderr.read()}")
        time.sleep(0.01)
    raise TimeoutError("no progress")


@pytest.mark.slow
def test_stopped_scheduler_is_one_error_then_resume_completes(dask_processes, tmp_path):
    a = np.random.default_rng(8).integers(0, 50, (64, 64, 64)).astype(np.float32)
    write_input(str(tmp_path / "in.h5"), a, (32, 32, 32))
    common = [str(tmp_path / "in.h5"), str(tmp_path / "out.zarr"), "-k", "3", "-s", "2", "-p", "1", "--grad-out",
              str(tmp_path / "grad.h5"), "--block-size", "16K", "-q"]
    with lucid_running("pool3d", *common, "--scheduler-file", dask_processes.scheduler_file) as proc:
        wait_for_markers(tmp_path, 30, proc)
        dask_processes.kill(dask_processes.scheduler)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "--resume" in lines[0], err
    assert not os.path.exists(tmp_path / "out.zarr") and not os.path.exists(tmp_path / "grad.h5")
    for worker in dask_processes.workers:  # without a scheduler they would wait for it before stopping
        dask_processes.kill(worker)
    cleaned = lucid_cli("clean", str(tmp_path))  # lists the run's parts, and keeps them for --resume
    assert cleaned.returncode == 0 and "cut-off cluster runs" in cleaned.stdout
    assert ".out.zarr.lucid-part-" in cleaned.stdout

    (tmp_path / "second").mkdir()
    again = DaskProcesses(tmp_path / "second", workers=2)
    try:
        out = lucid_cli("pool3d", *common, "--resume", "--json", "--scheduler-file", again.scheduler_file)
    finally:
        again.stop()
    assert out.returncode == 0, out.stderr
    run = json.loads(out.stdout)["extra"]["dask"]
    assert run["resumed_blocks"] >= 30
    ref = lucid_cli("pool3d", str(tmp_path / "in.h5"), str(tmp_path / "ref.zarr"), "-k", "3", "-s", "2", "-p", "1",
                    "--grad-out", str(tmp_path / "refg.zarr"), "-q")
    assert ref.returncode == 0
    assert same_bits(read(str(tmp_path / "out.zarr")), read(str(tmp_path / "ref.zarr")))
    assert same_bits(read(str(tmp_path / "grad.h5")), read(str(tmp_path / "refg.zarr")))
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]


@pytest.mark.slow
@pytest.mark.parametrize("grad_ext", [".zarr", ".h5"])  # written by the tasks / returned to the one writer
def test_each_worker_stays_within_the_memory_limit_per_task(dask_processes, tmp_path, grad_ext):
    from distributed import Client

    a = np.random.default_rng(9).standard_normal((160, 160, 160)).astype(np.float32)  # 16 MiB
    write_input(str(tmp_path / "in.h5"), a, (32, 32, 32))
    from lucid.stream.api import peak_memory_mib

    warm = (f"import h5py, zarr, lucid.dask.volume, lucid.io.hdf5, lucid.io.zarr\n"  # one tiny read and write
            f"h5py.File({str(tmp_path / 'in.h5')!r}, 'r')['data'][:2, :2, :2]\n"
            f"zarr.create_array({str(tmp_path / 'warm')!r} + str(__import__('os').getpid()) + '.zarr', "
            f"shape=(4, 4, 4), chunks=(2, 2, 2), dtype='f4')[...] = 1\n")
    with Client(dask_processes.address) as client:  # the interpreter with lucid, h5py and zarr at work
        client.run(exec, warm)
        base = client.run(peak_memory_mib)
    out = lucid_cli("pool3d", str(tmp_path / "in.h5"), str(tmp_path / "out.zarr"), "-k", "3", "-s", "2", "-p", "1",
                    "--grad-out", str(tmp_path / f"grad{grad_ext}"), "--memory-limit", "32M", "--json",
                    "--scheduler-file", dask_processes.scheduler_file)
    assert out.returncode == 0, out.stderr
    run = json.loads(out.stdout)["extra"]["dask"]
    assert run["forward_blocks"] > 1 and run["backward_blocks"] > 1
    assert max(run["worker_peak_mib"].values()) <= max(base.values()) + 32


def test_dry_run_on_a_cluster_shows_the_block_plan_and_reaches_no_cluster(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from lucid.dask import cluster as cluster_module
    from lucid_cli.main import main

    def refuse(*args, **kwargs):
        raise AssertionError("a dry run must not reach a cluster")

    monkeypatch.setattr(cluster_module, "connect", refuse)
    a = np.arange(64 * 32 * 32, dtype=np.float32).reshape(64, 32, 32)
    src = write_input(str(tmp_path / "in.zarr"), a, (16, 32, 32))
    args = ["pool3d", src, str(tmp_path / "o.zarr"), "-k", "3", "-s", "2", "-p", "1", "--grad-out",
            str(tmp_path / "g.zarr"), "--workers", "2", "--block-size", "32K", "--dry-run"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    line = next(t for t in result.output.splitlines() if t.startswith("dask tasks"))
    report = pool3d_file(src, str(tmp_path / "o.zarr"), 3, 2, 1, grad_out=str(tmp_path / "g.zarr"),
                         cluster=ClusterSpec(workers=2), block_bytes="32K", dry_run=True)
    plan = report.extra["dask_plan"]
    assert plan["forward_blocks"] > 1 and plan["backward_blocks"] > 1
    assert f"{plan['forward_blocks']} forward" in line and f"{plan['backward_blocks']} backward" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr"]


@pytest.mark.slow
def test_a_big_run_compiles_its_tasks_kernels_with_the_same_bits(cluster, tmp_path, monkeypatch):
    """A run big enough for numba (here: the crossover set to 0) runs its tasks compiled, in
    worker processes that load numba from the run's context, bit for bit this machine's engine
    (compiled too: on a tie of -0.0 and +0.0 the numpy kernels may keep the other zero)."""
    pytest.importorskip("numba")
    from lucid.kernels import backend

    rng = np.random.default_rng(12)
    a = rng.integers(-2, 3, (26, 20, 18)).astype(np.float32)  # ties, and negatives that zero padding beats
    a.ravel()[rng.random(a.size) < 0.03] = np.nan
    a.ravel()[rng.random(a.size) < 0.05] = -0.0
    src = write_input(str(tmp_path / "in.h5"), a, (8, 8, 8))
    opts = dict(kernel_size=2, stride=2, padding=1)
    monkeypatch.setattr(backend, "RUN_CROSSOVER_BYTES", 0)
    # the local run preloads numba in this process, which then runs every later test's kernels
    # compiled (hundreds of geometries to compile): undone at teardown
    monkeypatch.setattr(backend, "_preloaded", backend._preloaded)
    pool3d_file(src, str(tmp_path / "ref.zarr"), grad_out=str(tmp_path / "refg.zarr"),
                indices_out=str(tmp_path / "refi.zarr"), **opts)
    got = pool3d_file(src, str(tmp_path / "got.zarr"), grad_out=str(tmp_path / "gotg.h5"),
                      indices_out=str(tmp_path / "goti.zarr"), cluster=cluster, block_bytes="8K", **opts)
    run = got.extra["dask"]
    assert run["kernels"] == "auto" and run["workers_with_numba"] >= 1 and run["forward_blocks"] > 1
    assert same_bits(read(str(tmp_path / "got.zarr")), read(str(tmp_path / "ref.zarr")))
    assert same_bits(read(str(tmp_path / "goti.zarr")), read(str(tmp_path / "refi.zarr")))
    assert same_bits(read(str(tmp_path / "gotg.h5")), read(str(tmp_path / "refg.zarr")))


def test_tasks_keep_the_numpy_kernels_when_the_run_is_small_or_no_block_fits_beside_numba(tmp_path, monkeypatch):
    from lucid.dask import blocks
    from lucid.kernels import backend

    src = write_input(str(tmp_path / "in.zarr"), np.ones((64, 32, 32), np.float32), (16, 32, 32))

    def kernels(**kw):
        report = pool3d_file(src, str(tmp_path / "o.zarr"), 3, 2, 1, grad_out=str(tmp_path / "g.zarr"),
                             cluster=ClusterSpec(workers=2), block_bytes="32K", dry_run=True, **kw)
        return report.extra["dask_plan"]["kernels"]

    assert kernels() == "numpy"  # 256 KiB: loading numba would cost more than it saves
    monkeypatch.setattr(backend, "RUN_CROSSOVER_BYTES", 0)
    assert kernels() == ("auto" if backend.may_load_numba() else "numpy")
    original = blocks.plan_blocks

    def needs_a_gib(*args, memory_limit, **kw):
        if memory_limit < 1 << 30:
            raise ValueError("memory limit is too small for one block")
        return original(*args, memory_limit=memory_limit, **kw)

    monkeypatch.setattr(blocks, "plan_blocks", needs_a_gib)
    assert kernels(memory_limit="1G") == "numpy"  # 1 GiB holds a block, not a block and numba
    with pytest.raises(ValueError, match="too small for one block"):
        kernels(memory_limit="512M")
