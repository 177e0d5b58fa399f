"""Output safety: temporary file beside the destination, replace on commit, clean failures."""

import errno
import gzip
import os

import h5py
import numpy as np
import pytest

from lucid.io import AtomicTarget, LucidIOError, open_sink, open_source
from lucid.io.atomic import TMP_MARK

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def leftovers(directory):
    return [name for name in os.listdir(directory) if ".lucid-" in name]


def volume(shape=(8, 6, 4), dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def write_all(sink, data):
    for z in range(data.shape[0]):
        sink.write((slice(z, z + 1),) + tuple(slice(0, n) for n in data.shape[1:]), data[z : z + 1])


# ------------------------------------------------------------ AtomicTarget itself


def test_temp_file_is_hidden_in_the_destination_directory(tmp_path):
    target = AtomicTarget(tmp_path / "out.h5")
    assert target.tmp.parent == tmp_path
    assert target.tmp.name.startswith(".out.h5" + TMP_MARK)
    assert target.tmp.exists()
    assert not (tmp_path / "out.h5").exists()
    target.abort()
    assert os.listdir(tmp_path) == []
    target.abort()  # idempotent


def test_commit_replaces_and_abort_leaves_nothing(tmp_path):
    dest = tmp_path / "out.bin"
    target = AtomicTarget(dest)
    target.tmp.write_bytes(b"new")
    target.commit()
    assert dest.read_bytes() == b"new"
    assert leftovers(tmp_path) == []
    target.commit()  # idempotent
    target.abort()  # no effect after commit
    assert dest.read_bytes() == b"new"


def test_existing_file_needs_force_and_is_untouched_until_commit(tmp_path):
    dest = tmp_path / "out.bin"
    dest.write_bytes(b"old")
    with pytest.raises(LucidIOError, match="output exists, use --force"):
        AtomicTarget(dest)
    target = AtomicTarget(dest, force=True)
    target.tmp.write_bytes(b"new")
    assert dest.read_bytes() == b"old"
    target.abort()
    assert dest.read_bytes() == b"old"
    assert leftovers(tmp_path) == []
    target = AtomicTarget(dest, force=True)
    target.tmp.write_bytes(b"new")
    target.commit()
    assert dest.read_bytes() == b"new"


def test_output_equal_to_an_input_is_refused_even_with_force(tmp_path, monkeypatch):
    src = tmp_path / "in.h5"
    src.write_bytes(b"data")
    with pytest.raises(LucidIOError, match="is the input file"):
        AtomicTarget(src, force=True, protect=[src])
    link = tmp_path / "link.h5"
    link.symlink_to(src)
    with pytest.raises(LucidIOError, match="is the input file"):
        AtomicTarget(link, force=True, protect=[src])
    hard = tmp_path / "hard.h5"
    os.link(src, hard)
    with pytest.raises(LucidIOError, match="is the input file"):
        AtomicTarget(hard, force=True, protect=[src])
    monkeypatch.chdir(tmp_path)
    os.mkdir("sub")
    with pytest.raises(LucidIOError, match="is the input file"):
        AtomicTarget("sub/../in.h5", force=True, protect=[str(src)])
    assert src.read_bytes() == b"data"
    assert leftovers(tmp_path) == []


def test_missing_directory_or_directory_in_the_way(tmp_path):
    with pytest.raises(LucidIOError, match="does not exist"):
        AtomicTarget(tmp_path / "nope" / "out.h5")
    (tmp_path / "d.h5").mkdir()
    with pytest.raises(LucidIOError, match="is a directory"):
        AtomicTarget(tmp_path / "d.h5", force=True)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(LucidIOError, match="not a directory"):
        AtomicTarget(tmp_path / "file" / "out.h5")


@pytest.mark.skipif(ROOT or os.name == "nt", reason="root can write into read-only directories")
def test_read_only_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(LucidIOError, match="not writable"):
            AtomicTarget(ro / "out.h5")
    finally:
        ro.chmod(0o755)


def test_not_enough_space_for_an_uncompressed_output_fails_at_open(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(100, 90, 10))
    with pytest.raises(LucidIOError, match="no space left"):
        AtomicTarget(tmp_path / "out.nii", expected_bytes=1000)
    assert leftovers(tmp_path) == []


def test_errors_are_one_line(tmp_path):
    for bad in (tmp_path / "nope" / "x.h5",):
        with pytest.raises(LucidIOError) as info:
            AtomicTarget(bad)
        assert "\n" not in str(info.value)


# ------------------------------------------------------------ through open_sink


@pytest.mark.parametrize("suffix", [".h5", ".nii", ".nii.gz"])
def test_sink_checks_at_open_time(tmp_path, suffix):
    src = open_source(volume())
    out = tmp_path / ("out" + suffix)
    out.write_bytes(b"precious")
    with pytest.raises(LucidIOError, match="output exists, use --force"):
        open_sink(out, src.shape, src.dtype, like=src)
    with pytest.raises(LucidIOError, match="does not exist"):
        open_sink(tmp_path / "missing" / ("out" + suffix), src.shape, src.dtype, like=src)
    sink = open_sink(out, src.shape, src.dtype, like=src, force=True)
    write_all(sink, volume())
    assert out.read_bytes() == b"precious"  # replaced only on commit
    sink.abort()
    assert out.read_bytes() == b"precious"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("suffix", [".h5", ".nii.gz"])
def test_sink_refuses_to_overwrite_its_input(tmp_path, suffix):
    data = volume()
    path = tmp_path / ("in" + suffix)
    sink = open_sink(path, data.shape, data.dtype, like=open_source(data))
    write_all(sink, data)
    sink.commit()
    src = open_source(path)
    before = path.read_bytes()
    with pytest.raises(LucidIOError, match="is the input file"):
        open_sink(path, src.shape, src.dtype, like=src, force=True)
    link = tmp_path / ("link" + suffix)
    link.symlink_to(path)
    with pytest.raises(LucidIOError, match="is the input file"):
        open_sink(link, src.shape, src.dtype, like=src, force=True)
    # also for an input that is not `like` (e.g. the upstream gradient)
    other = open_source(volume())
    with pytest.raises(LucidIOError, match="is the input file"):
        open_sink(path, other.shape, other.dtype, like=other, force=True, protect=[src.path])
    src.close()
    assert path.read_bytes() == before


@pytest.mark.parametrize("suffix", [".h5", ".nii", ".nii.gz"])
def test_abort_and_context_manager_on_error_leave_nothing(tmp_path, suffix):
    src = open_source(volume())
    out = tmp_path / ("out" + suffix)
    with pytest.raises(RuntimeError):
        with open_sink(out, src.shape, src.dtype, like=src) as sink:
            sink.write((slice(0, 1), slice(0, 6), slice(0, 4)), volume()[:1])
            raise RuntimeError("engine failed")
    assert os.listdir(tmp_path) == []
    with pytest.raises(LucidIOError, match="write after abort"):
        sink.write((slice(0, 1), slice(0, 6), slice(0, 4)), volume()[:1])
    with pytest.raises(LucidIOError, match="aborted"):
        sink.commit()


@pytest.mark.parametrize("suffix", [".h5", ".nii", ".nii.gz"])
def test_incomplete_output_is_not_committed(tmp_path, suffix):
    src = open_source(volume())
    out = tmp_path / ("out" + suffix)
    sink = open_sink(out, src.shape, src.dtype, like=src)
    sink.write((slice(0, 1), slice(0, 6), slice(0, 4)), volume()[:1])
    with pytest.raises(LucidIOError, match="incomplete output"):
        sink.commit()
    assert os.listdir(tmp_path) == []


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_enospc_nifti_uncompressed(tmp_path, monkeypatch):
    src = open_source(volume())
    out = tmp_path / "out.nii"
    out.write_bytes(b"old")
    sink = open_sink(out, src.shape, src.dtype, like=src, force=True)
    sink.write((slice(0, 1), slice(0, 6), slice(0, 4)), volume()[:1])
    monkeypatch.setattr(os, "pwrite", enospc)
    with pytest.raises(LucidIOError, match="no space left") as info:
        sink.write((slice(1, 2), slice(0, 6), slice(0, 4)), volume()[1:2])
    assert "\n" not in str(info.value) and "out.nii" in str(info.value)
    assert sorted(os.listdir(tmp_path)) == ["out.nii"]
    assert out.read_bytes() == b"old"


def test_enospc_nifti_gzip(tmp_path, monkeypatch):
    src = open_source(volume())
    sink = open_sink(tmp_path / "out.nii.gz", src.shape, src.dtype, like=src)
    monkeypatch.setattr(gzip.GzipFile, "write", enospc)
    with pytest.raises(LucidIOError, match="no space left"):
        sink.write((slice(0, 1), slice(0, 6), slice(0, 4)), volume()[:1])
    assert os.listdir(tmp_path) == []


def test_enospc_nifti_gzip_at_commit(tmp_path, monkeypatch):
    src = open_source(volume())
    sink = open_sink(tmp_path / "out.nii.gz", src.shape, src.dtype, like=src)
    write_all(sink, volume())
    monkeypatch.setattr(gzip.GzipFile, "close", enospc)
    with pytest.raises(LucidIOError, match="no space left"):
        sink.commit()
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_enospc_hdf5_write(tmp_path, monkeypatch):
    src = open_source(volume())
    sink = open_sink(tmp_path / "out.h5", src.shape, src.dtype, like=src)
    monkeypatch.setattr(h5py.Dataset, "write_direct", enospc)
    with pytest.raises(LucidIOError, match="no space left"):
        sink.write((slice(0, 1), slice(0, 6), slice(0, 4)), volume()[:1])
    assert os.listdir(tmp_path) == []


def test_enospc_hdf5_deferred_to_close(tmp_path, monkeypatch):
    """HDF5 writes cached chunks at close: a failure there is caught and cleaned up too."""
    from lucid.io.hdf5 import GuardedFile

    src = open_source(volume())
    sink = open_sink(tmp_path / "out.h5", src.shape, src.dtype, like=src)
    write_all(sink, volume())
    real_write = GuardedFile.write

    def failing_write(self, data):
        self._f = _Failing(self._f)
        return real_write(self, data)

    monkeypatch.setattr(GuardedFile, "write", failing_write)
    with pytest.raises(LucidIOError, match="no space left"):
        sink.commit()
    assert os.listdir(tmp_path) == []


class _Failing:
    """A raw file whose writes fail with ENOSPC (other calls pass through)."""

    def __init__(self, f):
        self._inner = f._inner if isinstance(f, _Failing) else f

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self._inner, name)


def test_read_only_directory_simulated(tmp_path, monkeypatch):
    """What a non-root user sees (os.access is what the check uses)."""
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if os.fspath(p) == str(tmp_path) else real_access(p, mode))
    with pytest.raises(LucidIOError, match="not writable"):
        AtomicTarget(tmp_path / "out.h5")


def test_permission_error_creating_the_temp_file(tmp_path, monkeypatch):
    real_open = os.open

    def deny(path, flags, *args):
        if TMP_MARK in os.fspath(path):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(LucidIOError, match="not writable"):
        AtomicTarget(tmp_path / "out.h5")
