"""Runs that go wrong (or look as if they might) after they started: nothing is lost.

* special values: NaN and +-inf are propagated, integer extremes survive
  NIfTI and HDF5 unchanged, NaN/inf in an upstream gradient land exactly on
  the winners;
* a full disk, both real (a small tmpfs, for the command) and injected
  (``OSError(ENOSPC)`` at the sinks' writes and at the final fsync, for the
  library): one "no space left" error, the partial outputs removed, and an
  existing output replaced with ``--force`` survives byte for byte;
* an error detected late (an upstream gradient that turns out truncated);
* SIGINT / SIGTERM in the middle of a long run of the real command (exit
  130 / 143, no outputs, no temporary files, a rerun succeeds) and what
  SIGKILL leaves behind;
* two runs reading the same HDF5 file at once.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

import lucid.io.hdf5 as io_hdf5
import lucid.io.nifti as io_nifti
from lucid import Tensor
from lucid.io import LucidIOError
from lucid.nn.functional import max_pool3d
from lucid.stream.api import pool3d_file
from tests.faults_helpers import (
    IS_ROOT,
    CliServer,
    Snapshot,
    assert_one_error_line,
    cli_argv,
    cli_env,
    file_hash,
    h5_data,
    nifti_bytes,
    volume,
    write_h5,
    write_nifti,
)


@pytest.fixture(scope="module")
def server():
    with CliServer() as s:
        yield s


def read_volume(path) -> np.ndarray:
    """The stored array of an output, in the file's own axis order (raw NIfTI values)."""
    path = os.fspath(path)
    if path.endswith((".h5", ".hdf5")):
        with h5py.File(path, "r") as f:
            return f["data"][()]
    return np.asarray(nib.load(path).dataobj.get_unscaled())


def write_volume(path, data) -> Path:
    return write_h5(path, data) if os.fspath(path).endswith(".h5") else write_nifti(path, data)


def in_source_axes(array: np.ndarray, src: str, out: str) -> np.ndarray:
    """A 3-D HDF5 'dhw' volume written to NIfTI is stored as x=w, y=h, z=d: undo that."""
    if src.endswith(".h5") and not out.endswith(".h5"):
        return array.transpose(2, 1, 0)
    if not src.endswith(".h5") and out.endswith(".h5"):
        return array  # NIfTI x, y, z kept as HDF5 axes 0, 1, 2
    return array


def pooled(x: np.ndarray, k=2) -> np.ndarray:
    return max_pool3d(x[None], k, k).data[0]


def run(how: str, server, src, out, *args, cwd=None, **kwargs):
    """One run through the command (``how == "cli"``) or ``pool3d_file``; returns the CLI result or report."""
    if how == "cli":
        result = server.run("pool3d", src, out, "-q", *args, cwd=cwd)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        return result
    return pool3d_file(src, out, **kwargs)


# ---------------------------------------------------------------- special values


def special_volume() -> np.ndarray:
    x = volume((8, 8, 8), np.float32, seed=4)
    x[0, 0, 0] = np.nan  # window (0,0,0): NaN beats everything, even +inf
    x[1, 1, 1] = np.inf
    x[2, 2, 2] = np.inf  # window (1,1,1): +inf
    x[4:6, 4:6, 4:6] = -np.inf  # window (2,2,2): all -inf
    x[6, 0, 7] = np.nan  # window (3,0,3): NaN among finite values
    x[7, 1, 6] = -np.inf  # ... and -inf
    return x


@pytest.mark.parametrize("how", ["api", "cli"])
@pytest.mark.parametrize("src_name,out_name", [("a.h5", "o.h5"), ("a.h5", "o.nii"), ("a.nii.gz", "o.h5"),
                                               ("a.nii.gz", "o.nii.gz")])
def test_nan_and_inf_are_propagated_not_errors(tmp_path, server, how, src_name, out_name):
    x = special_volume()
    src = write_volume(tmp_path / src_name, x)
    run(how, server, src, tmp_path / out_name, "-k", "2", kernel_size=2)
    got = in_source_axes(read_volume(tmp_path / out_name), src_name, out_name)
    want = pooled(x)
    np.testing.assert_array_equal(got, want)  # NaN compares equal to NaN here
    assert np.isnan(got[0, 0, 0]) and np.isnan(got[3, 0, 3])
    assert got[1, 1, 1] == np.inf and got[2, 2, 2] == -np.inf
    assert np.isfinite(got).sum() == got.size - 4


EXTREMES = {
    "int16": (np.int16, -32768, 32767),
    "uint16": (np.uint16, 0, 65535),
}


@pytest.mark.parametrize("how", ["api", "cli"])
@pytest.mark.parametrize("src_name,out_name", [("a.nii", "o.nii.gz"), ("a.nii.gz", "o.h5"), ("a.h5", "o.nii"),
                                               ("a.h5", "o.h5")])
@pytest.mark.parametrize("dtype_name", list(EXTREMES))
def test_integer_extremes_survive_unchanged(tmp_path, server, how, src_name, out_name, dtype_name):
    dtype, lo, hi = EXTREMES[dtype_name]
    x = np.full((6, 6, 6), lo, dtype)
    x[::2, 1::2, ::3] = hi  # some windows win with hi, the rest stay at lo
    x[4:, 4:, 4:] = lo
    src = write_volume(tmp_path / src_name, x)
    before = file_hash(src)
    run(how, server, src, tmp_path / out_name, "-k", "2", kernel_size=2)
    stored = read_volume(tmp_path / out_name)
    got = in_source_axes(stored, src_name, out_name)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, pooled(x))
    assert got.min() == lo and got.max() == hi
    if not out_name.endswith(".h5"):  # stored raw, no scaling that could round
        img = nib.load(tmp_path / out_name)
        assert np.array_equal(img.get_fdata(), stored.astype(np.float64))
    assert file_hash(src) == before


@pytest.mark.parametrize("how", ["api", "cli"])
def test_nan_and_inf_in_the_upstream_gradient_land_on_the_winners(tmp_path, server, how):
    x = volume((8, 8, 8), np.float32, seed=8)
    up = np.ones((4, 4, 4), np.float32)
    up[0, 0, 0], up[1, 2, 3], up[3, 3, 3] = np.nan, np.inf, -np.inf
    write_h5(tmp_path / "a.h5", x)
    write_h5(tmp_path / "up.h5", up)
    if how == "cli":
        result = server.run("pool3d", "a.h5", "o.h5", "-k", "2", "--grad-in", "up.h5", "--grad-out", "g.h5", "-q",
                            cwd=tmp_path)
        assert result.returncode == 0 and result.stderr == "", result.stderr
    else:
        pool3d_file(tmp_path / "a.h5", tmp_path / "o.h5", 2, grad_in=tmp_path / "up.h5", grad_out=tmp_path / "g.h5")
    grad = h5_data(tmp_path / "g.h5")
    t = Tensor(x[None], requires_grad=True)
    y, idx = max_pool3d(t, 2, 2, return_indices=True)
    y.backward(up[None])
    np.testing.assert_array_equal(grad, t.grad.data[0])
    winners = idx.data[0]  # flat indices into the 8^3 input
    flat = grad.ravel()
    assert np.flatnonzero(np.isnan(flat)).tolist() == [winners[0, 0, 0]]
    assert np.flatnonzero(flat == np.inf).tolist() == [winners[1, 2, 3]]
    assert np.flatnonzero(flat == -np.inf).tolist() == [winners[3, 3, 3]]
    assert np.isfinite(np.delete(flat, winners[[0, 1, 3], [0, 2, 3], [0, 3, 3]])).all()


# ---------------------------------------------------------------- full disk, injected (library)


NO_SPACE = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _FullDiskFile:
    """A raw file that accepts ``budget`` bytes and then fails every write with ENOSPC."""

    def __init__(self, f, budget: int):
        self._f, self.budget = f, budget

    def write(self, data):
        n = memoryview(data).nbytes
        if n > self.budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget -= n
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)


def inject_no_space(monkeypatch, target: str, after_bytes: int = 64 << 10) -> None:
    """ENOSPC once ``after_bytes`` of data went to the output whose name contains ``target``."""
    original_init = io_hdf5.GuardedFile.__init__

    def guarded_init(self, path):
        original_init(self, path)
        if target in os.path.basename(os.fspath(path)):
            self._f = _FullDiskFile(self._f, after_bytes)

    monkeypatch.setattr(io_hdf5.GuardedFile, "__init__", guarded_init)
    original_put = io_nifti.NiftiSink._put
    written = {}

    def put(self, off, chunk):
        if target in os.path.basename(self.path):
            written[self.path] = written.get(self.path, 0) + chunk.nbytes
            if written[self.path] > after_bytes:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original_put(self, off, chunk)

    monkeypatch.setattr(io_nifti.NiftiSink, "_put", put)


FULL_DISK_CASES = [
    # (output, gradient output, which one the disk fills up on)
    ("o.h5", None, "o.h5"),
    ("o.nii", None, "o.nii"),
    ("o.nii.gz", None, "o.nii.gz"),
    ("o.h5", "g.h5", "g.h5"),
    ("o.nii.gz", "g.nii", "g.nii"),
    ("o.nii", "g.h5", "o.nii"),
]


@pytest.mark.parametrize("existing", [False, True], ids=["new", "force-over-existing"])
@pytest.mark.parametrize("out_name,grad_name,full", FULL_DISK_CASES)
def test_no_space_while_writing_removes_partial_outputs(tmp_path, monkeypatch, out_name, grad_name, full, existing):
    src = write_h5(tmp_path / "a.h5", volume((64, 64, 64), seed=2))
    outs = [n for n in (out_name, grad_name) if n]
    if existing:
        for n in outs:
            (tmp_path / n).write_bytes(b"precious results from yesterday " + n.encode())
    before = Snapshot.take(tmp_path)
    inject_no_space(monkeypatch, full)
    with pytest.raises(LucidIOError) as info:
        pool3d_file(src, tmp_path / out_name, 2, grad_out=None if grad_name is None else tmp_path / grad_name,
                    memory_limit="2M", force=existing)
    text = str(info.value)
    assert "\n" not in text and "no space left" in text and full in text
    Snapshot.take(tmp_path).assert_unchanged(before)


@pytest.mark.parametrize("out_name,grad_name", [("o.h5", "g.h5"), ("o.nii.gz", "g.nii"), ("o.nii", "g.nii.gz")])
def test_no_space_at_the_final_flush_leaves_every_existing_output_intact(tmp_path, monkeypatch, out_name, grad_name):
    """ENOSPC from fsync (delayed allocation) while finishing the *second* output: the first
    output must not have been moved into place already."""
    src = write_h5(tmp_path / "a.h5", volume((32, 32, 32), seed=3))
    for n in (out_name, grad_name):
        (tmp_path / n).write_bytes(b"precious " + n.encode())
    before = Snapshot.take(tmp_path)
    real_fsync = os.fsync
    calls = []

    def fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        if os.path.basename(name).startswith("." + grad_name):
            calls.append(name)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(LucidIOError, match="no space left"):
        pool3d_file(src, tmp_path / out_name, 2, grad_out=tmp_path / grad_name, force=True)
    assert calls
    Snapshot.take(tmp_path).assert_unchanged(before)


def test_a_bad_upstream_gradient_found_late_leaves_existing_outputs_intact(tmp_path, server):
    """--grad-in has the right header but its data is cut short: found only while streaming."""
    x = volume((16, 16, 16), seed=5)
    write_h5(tmp_path / "a.h5", x)
    up = nifti_bytes(volume((16, 8, 8), seed=6), gz=True)  # the output grid, read with the input's axes
    (tmp_path / "up.nii.gz").write_bytes(up[: len(up) * 2 // 3])
    for n in ("o.h5", "g.h5"):
        (tmp_path / n).write_bytes(b"precious " + n.encode())
    before = Snapshot.take(tmp_path)
    with pytest.raises(LucidIOError) as info:
        pool3d_file(tmp_path / "a.h5", tmp_path / "o.h5", (1, 2, 2), grad_in=tmp_path / "up.nii.gz",
                    grad_out=tmp_path / "g.h5", memory_limit="1M", force=True)
    assert "up.nii.gz" in str(info.value) and "\n" not in str(info.value)
    Snapshot.take(tmp_path).assert_unchanged(before)
    result = server.run("pool3d", "a.h5", "o.h5", "-k", "1,2,2", "--grad-in", "up.nii.gz", "--grad-out", "g.h5",
                        "--memory-limit", "1M", "--force", "-q", cwd=tmp_path)
    assert_one_error_line(result, 1, "up.nii.gz")
    Snapshot.take(tmp_path).assert_unchanged(before)


def test_interrupt_during_the_run_aborts_every_output(tmp_path):
    """The library's side of Ctrl-C: KeyboardInterrupt raised between slabs (here by the progress callback)."""
    src = write_h5(tmp_path / "a.h5", volume((64, 64, 64), seed=7))
    (tmp_path / "o.nii").write_bytes(b"precious")
    before = Snapshot.take(tmp_path)

    def progress(done, total, nbytes):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pool3d_file(src, tmp_path / "o.nii", 2, grad_out=tmp_path / "g.nii.gz", memory_limit="1M", force=True,
                    progress=progress)
    Snapshot.take(tmp_path).assert_unchanged(before)


# ---------------------------------------------------------------- full disk, real (a small tmpfs)


@pytest.fixture(scope="module")
def small_disk():
    """A 2 MiB tmpfs (root only); skipped where it cannot be mounted."""
    if not IS_ROOT:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tempfile.mkdtemp(prefix="lucid-full-")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mount], capture_output=True, text=True)
    if proc.returncode != 0:
        os.rmdir(mount)
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
    try:
        yield Path(mount)
    finally:
        subprocess.run(["umount", mount], check=False)
        os.rmdir(mount)


def _empty(directory: Path) -> None:
    for p in directory.iterdir():
        p.unlink()


BIG = (64, 96, 112)  # 2.6 MiB of float32: more than the 2 MiB disk
MID = (48, 64, 128)  # 1.5 MiB: fits alone, not twice
TALL = (60, 64, 128)  # 1.9 MiB: a gradient map that fits alone, not with the pooled output


@pytest.mark.parametrize("shape,args,existing", [
    (BIG, ["o.h5", "-k", "1", "--compression", "gzip"], False),  # random floats do not compress: full mid-run
    (BIG, ["o.nii.gz", "-k", "1"], False),
    (BIG, ["o.nii", "-k", "1"], False),  # refused up front: the size is known
    (MID, ["o.nii", "-k", "1", "--grad-out", "g.nii"], False),  # each fits alone, not both
    (MID, ["o.h5", "-k", "1", "--compression", "none", "--grad-out", "g.nii", "--force"], True),
    (TALL, ["o.nii.gz", "-k", "2", "--grad-out", "g.h5", "--compression", "none", "--force"], True),
], ids=["h5-gzip", "nii.gz", "nii-known-size", "two-nii", "force-h5-and-nii", "force-nii.gz-and-gradient-h5"])
def test_full_disk_for_real(tmp_path, server, small_disk, shape, args, existing):
    src = write_h5(tmp_path / "a.h5", volume(shape, seed=9))
    _empty(small_disk)
    if existing:
        for name in ("o.h5", "o.nii.gz", "g.h5", "g.nii"):
            (small_disk / name).write_bytes(b"precious " + name.encode())
    before, before_in = Snapshot.take(small_disk), Snapshot.take(tmp_path)
    free = shutil.disk_usage(small_disk).free
    result = server.run("pool3d", src, *[small_disk / a if a.startswith(("o.", "g.")) else a for a in args],
                        "--memory-limit", "2M", "-q", cwd=tmp_path)
    assert_one_error_line(result, 1, "no space left", str(small_disk))
    Snapshot.take(small_disk).assert_unchanged(before)
    Snapshot.take(tmp_path).assert_unchanged(before_in)
    assert shutil.disk_usage(small_disk).free == free
    _empty(small_disk)


def test_full_disk_for_real_through_the_library(tmp_path, small_disk):
    src = write_h5(tmp_path / "a.h5", volume(MID, seed=9))
    _empty(small_disk)
    (small_disk / "o.nii.gz").write_bytes(b"precious")
    before = Snapshot.take(small_disk)
    with pytest.raises(LucidIOError, match="no space left"):
        pool3d_file(src, small_disk / "o.nii.gz", 1, grad_out=small_disk / "g.nii", memory_limit="2M", force=True)
    Snapshot.take(small_disk).assert_unchanged(before)
    _empty(small_disk)


# ---------------------------------------------------------------- signals (the real command)


@pytest.fixture(scope="module")
def long_input(tmp_path_factory):
    """256^3 float32 (64 MiB): with a gradient map, gzip:6 and a 4 MiB limit, a run takes seconds."""
    d = tmp_path_factory.mktemp("long")
    path = d / "big.h5"
    data = np.random.default_rng(0).standard_normal((256, 256, 256), dtype=np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data, chunks=(8, 256, 256))
    return path, file_hash(path)


LONG_ARGS = ["-k", "2", "--grad-out", "out/g.h5", "--compression", "gzip:6", "--memory-limit", "4M", "-q"]


def _start(cwd: Path, src: Path) -> subprocess.Popen:
    return subprocess.Popen(cli_argv("pool3d", src, "out/o.h5", *LONG_ARGS), cwd=cwd, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_temp_files(proc: subprocess.Popen, out: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be interrupted: {proc.communicate()}")
        if len([n for n in os.listdir(out) if ".lucid-tmp-" in n]) == 2:  # output and gradient map
            time.sleep(0.3)  # well inside the streaming loop
            return
        time.sleep(0.02)
    proc.kill()
    pytest.fail("no temporary output appeared")


@pytest.mark.parametrize("signum,code,word", [
    (signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated"),
    # default action "terminate" without cleanup: a closed terminal, `timeout -s HUP`, Ctrl-\, kill -USR1
    (signal.SIGHUP, 129, "terminated by SIGHUP"), (signal.SIGQUIT, 131, "terminated by SIGQUIT"),
    (signal.SIGUSR1, 138, "terminated by SIGUSR1"),
], ids=["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1"])
def test_signal_mid_run_leaves_nothing_and_a_rerun_succeeds(tmp_path, long_input, signum, code, word):
    src, digest = long_input
    (tmp_path / "out").mkdir()
    proc = _start(tmp_path, src)
    _wait_for_temp_files(proc, tmp_path / "out")
    sent = time.monotonic()
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 10, "the signal was not honoured promptly"
    assert proc.returncode == code, (proc.returncode, stderr)
    lines = stderr.strip().splitlines()
    assert lines == [f"Error: {word}"], stderr
    assert stdout == ""
    assert os.listdir(tmp_path / "out") == []
    assert file_hash(src) == digest
    rerun = subprocess.run(cli_argv("pool3d", src, "out/o.h5", *LONG_ARGS), cwd=tmp_path, env=cli_env(),
                           capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(os.listdir(tmp_path / "out")) == ["g.h5", "o.h5"]
    assert file_hash(src) == digest


def test_sigkill_leaves_only_a_hidden_temporary_file_that_lucid_clean_removes(tmp_path, long_input):
    """SIGKILL cannot be caught: the destination never appears, the hidden
    ``.o.h5.lucid-tmp-PID-*`` stays behind (documented) until ``lucid clean`` or the next run."""
    src, digest = long_input
    (tmp_path / "out").mkdir()
    proc = _start(tmp_path, src)
    _wait_for_temp_files(proc, tmp_path / "out")
    proc.kill()
    proc.communicate(timeout=30)
    left = sorted(os.listdir(tmp_path / "out"))
    assert left and all(n.startswith((f".o.h5.lucid-tmp-{proc.pid}-", f".g.h5.lucid-tmp-{proc.pid}-"))
                        for n in left), left
    assert file_hash(src) == digest
    cleaned = subprocess.run(cli_argv("clean", "out"), cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                             timeout=60)
    assert cleaned.returncode == 0, cleaned.stderr
    assert f"removed {len(left)} stale temporary files" in cleaned.stdout
    assert os.listdir(tmp_path / "out") == []


# ---------------------------------------------------------------- concurrency


def test_two_runs_read_the_same_hdf5_file_at_once(tmp_path):
    x = volume((128, 128, 128), seed=12)
    write_h5(tmp_path / "in.h5", x, chunks=(16, 128, 128))
    digest = file_hash(tmp_path / "in.h5")
    with h5py.File(tmp_path / "in.h5", "r"):  # and a third reader holds it open meanwhile
        procs = [
            subprocess.Popen(cli_argv("pool3d", "in.h5", f"o{i}.{ext}", "-k", "2", "--grad-out", f"g{i}.h5",
                                      "--memory-limit", "8M", "-q"),
                             cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i, ext in ((1, "h5"), (2, "nii.gz"))
        ]
        results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    for stdout, stderr, code in results:
        assert code == 0, stderr
    want = pooled(x)
    np.testing.assert_array_equal(h5_data(tmp_path / "o1.h5"), want)
    np.testing.assert_array_equal(read_volume(tmp_path / "o2.nii.gz"), want.transpose(2, 1, 0))
    np.testing.assert_array_equal(h5_data(tmp_path / "g1.h5"), h5_data(tmp_path / "g2.h5"))
    assert file_hash(tmp_path / "in.h5") == digest
    assert not [n for n in os.listdir(tmp_path) if ".lucid-" in n]


def test_an_hdf5_file_open_for_writing_elsewhere_is_refused(tmp_path, server):
    """HDF5 file locking: readers share, but a writer holds the file exclusively."""
    write_h5(tmp_path / "a.h5", volume())
    with h5py.File(tmp_path / "a.h5", "a") as f:
        f["more"] = np.zeros(3)
        f.flush()
        before = Snapshot.take(tmp_path)
        result = server.run("pool3d", "a.h5", "o.h5", cwd=tmp_path)
        assert_one_error_line(result, 1, "a.h5", "locked by a writer")
        Snapshot.take(tmp_path).assert_unchanged(before)
    # (inside the writing process itself HDF5 shares its open file, so the library reads it)
