"""Writing one dataset into an existing HDF5 file keeps everything else in it (issue 12.3)."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from lucid.io import LucidIOError, open_sink, open_source
from lucid.stream.api import pool3d_file
from tests.faults_helpers import assert_one_error_line, run_cli
from tests.reference import naive_max_pool3d


def leftovers(directory):
    return [name for name in os.listdir(directory) if ".lucid-" in name]


def volume(shape=(8, 6, 4), seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def rich_file(path):
    """A file with more than one dataset: groups, attributes, a soft link."""
    with h5py.File(path, "w") as f:
        f.attrs["study"] = "kept"
        f.create_dataset("x", data=volume((8, 8, 8), seed=1))
        g = f.create_group("meta")
        g.attrs["note"] = np.arange(3)
        g.create_dataset("table", data=np.arange(10))
        f["alias"] = h5py.SoftLink("/meta/table")
        f.create_dataset("old", data=np.zeros((4, 4, 4), np.float32))
    return path


def contents(path):
    """Every object and attribute in a file, as plain values."""
    found = {}
    with h5py.File(path, "r") as f:
        found["/"] = dict(f.attrs)

        def visit(name, obj):
            entry = {k: np.asarray(v).tolist() for k, v in obj.attrs.items()}
            if isinstance(obj, h5py.Dataset):
                entry["data"] = obj[()].tolist()
            found[name] = entry

        f.visititems(visit)
        found["alias"] = f["alias"][()].tolist()
    return found


def write_sink(path, data, **kwargs):
    sink = open_sink(path, data.shape, data.dtype, like=open_source(data), **kwargs)
    sink.write(tuple(slice(0, n) for n in data.shape), data)
    return sink


def test_a_new_dataset_is_added_without_force(tmp_path):
    path = rich_file(tmp_path / "a.h5")
    before = contents(path)
    data = volume()
    write_sink(f"{path}:/new/y", data).commit()
    after = contents(path)
    assert {k: v for k, v in after.items() if not k.startswith("new")} == before
    with h5py.File(path, "r") as f:  # an independent reader
        np.testing.assert_array_equal(f["new/y"][()], data)
    assert leftovers(tmp_path) == []


def test_an_existing_dataset_needs_force_and_only_it_is_replaced(tmp_path):
    path = rich_file(tmp_path / "a.h5")
    before = path.read_bytes()
    data = volume((4, 4, 4))
    with pytest.raises(LucidIOError, match="dataset exists, use --force"):
        write_sink(f"{path}:/old", data)
    assert path.read_bytes() == before
    expected = contents(path)
    write_sink(f"{path}:/old", data, force=True).commit()
    after = contents(path)
    np.testing.assert_array_equal(np.asarray(after.pop("old")["data"]), data)
    expected.pop("old")
    assert after == expected
    assert leftovers(tmp_path) == []


def test_a_failed_run_leaves_the_file_byte_for_byte(tmp_path):
    path = rich_file(tmp_path / "a.h5")
    before = path.read_bytes()
    sink = write_sink(f"{path}:/old", volume((4, 4, 4)), force=True)
    sink.abort()
    assert path.read_bytes() == before
    data = volume((4, 4, 4))
    sink = open_sink(f"{path}:/old", data.shape, data.dtype, like=open_source(data), force=True)
    sink.write((slice(0, 1), slice(0, 4), slice(0, 4)), data[:1])
    with pytest.raises(LucidIOError, match="incomplete output"):
        sink.commit()
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_a_file_changed_by_another_process_during_the_run_is_not_replaced(tmp_path):
    path = rich_file(tmp_path / "a.h5")
    sink = write_sink(f"{path}:/y", volume())
    sink.prepare()
    with h5py.File(path, "a") as f:  # another writer adds a dataset meanwhile
        f.create_dataset("theirs", data=np.arange(5))
    with pytest.raises(LucidIOError, match="changed by another process"):
        sink.commit()
    with h5py.File(path, "r") as f:
        assert "theirs" in f and "y" not in f
    assert leftovers(tmp_path) == []


def test_a_group_or_a_dataset_in_the_path_is_refused(tmp_path):
    path = rich_file(tmp_path / "a.h5")
    with pytest.raises(LucidIOError, match="is a group"):
        write_sink(f"{path}:/meta", volume(), force=True)
    with pytest.raises(LucidIOError, match="/x is a dataset"):
        write_sink(f"{path}:/x/y", volume(), force=True)
    assert leftovers(tmp_path) == []


def test_file_mode_is_kept(tmp_path):
    path = rich_file(tmp_path / "a.h5")
    os.chmod(path, 0o640)
    write_sink(f"{path}:/y", volume()).commit()
    assert os.stat(path).st_mode & 0o777 == 0o640


def test_a_file_that_is_not_hdf5_is_replaced_only_with_force(tmp_path):
    path = tmp_path / "a.h5"
    path.write_bytes(b"not hdf5")
    with pytest.raises(LucidIOError, match="output exists, use --force"):
        write_sink(f"{path}:/y", volume())
    write_sink(f"{path}:/y", volume(), force=True).commit()
    with h5py.File(path, "r") as f:
        assert list(f) == ["y"]


# ------------------------------------------------------------ the input file as the output file


def test_pool_into_another_dataset_of_the_input_file(tmp_path):
    path = rich_file(tmp_path / "a.h5")
    x = contents(path)["x"]["data"]
    pool3d_file(f"{path}:/x", f"{path}:/pooled", 2, grad_out=f"{tmp_path / 'g.h5'}")
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["x"][()], np.asarray(x, np.float32))
        np.testing.assert_array_equal(f["pooled"][()], naive_max_pool3d(np.asarray(x, np.float32)[None, None], (2,) * 3, (2,) * 3, (0,) * 3)[0][0, 0])
        assert f["pooled"].attrs["lucid_source"].endswith(":/x")
    assert leftovers(tmp_path) == []


def test_the_input_dataset_itself_is_refused_even_with_force(tmp_path):
    path = rich_file(tmp_path / "a.h5")
    before = path.read_bytes()
    with pytest.raises(LucidIOError, match="is the input file"):
        pool3d_file(f"{path}:/x", f"{path}:/x", 2, force=True)
    with pytest.raises(LucidIOError, match="is the input file"):
        pool3d_file(f"{path}:/x", os.fspath(path), 2, force=True)  # the output dataset defaults to the input's
    assert path.read_bytes() == before


def test_cli_pools_into_the_input_file_and_refuses_the_input_dataset(tmp_path):
    path = rich_file(tmp_path / "a.h5")
    result = run_cli("pool3d", f"{path}:/x", f"{path}:/y", "-k", "2", "-q")
    assert result.returncode == 0, result.stderr
    result = run_cli("pool3d", f"{path}:/x", f"{path}:/y", "-k", "2", "-q")
    assert_one_error_line(result, 1, "/y", "exists", "--force")
    before = path.read_bytes()
    assert_one_error_line(run_cli("pool3d", f"{path}:/x", f"{path}:/x", "-k", "2", "-f"), 2, "is the input")
    assert_one_error_line(run_cli("pool3d", f"{path}:/x", os.fspath(path), "-k", "2", "-f"), 2, "is the input")
    assert path.read_bytes() == before
    with h5py.File(path, "r") as f:
        assert sorted(f) == ["alias", "meta", "old", "x", "y"]


def test_dry_run_reports_an_existing_dataset(tmp_path):
    path = rich_file(tmp_path / "a.h5")
    report = pool3d_file(f"{path}:/x", f"{path}:/old", 2, dry_run=True)
    assert any("/old: output dataset exists" in w for w in report.warnings)
    assert pool3d_file(f"{path}:/x", f"{path}:/new", 2, dry_run=True).warnings == []
    with pytest.raises(LucidIOError, match="is the input file"):
        pool3d_file(f"{path}:/x", f"{path}:/x", 2, dry_run=True)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    report = pool3d_file(f"{path}:/x", tmp_path / "junk.h5", 2, dry_run=True)
    assert any("junk.h5: output exists; the run will refuse it" in w for w in report.warnings)


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "fallback"])
def test_a_file_deleted_or_replaced_during_the_run_is_not_overwritten(tmp_path, monkeypatch, exchange):
    from lucid.io import rename as rename_mod

    if not exchange:
        monkeypatch.setattr(rename_mod, "_renameat2", None)
    path = rich_file(tmp_path / "a.h5")
    sink = write_sink(f"{path}:/y", volume())
    sink.prepare()
    os.unlink(path)
    with pytest.raises(LucidIOError, match="changed by another process"):
        sink.commit()
    assert not path.exists()
    rich_file(path)
    sink = write_sink(f"{path}:/y", volume())
    sink.prepare()
    os.replace(rich_file(tmp_path / "b.h5"), path)  # replaced by another file of the same content
    with pytest.raises(LucidIOError, match="changed by another process"):
        sink.commit()
    with h5py.File(path, "r") as f:
        assert "y" not in f
    assert leftovers(tmp_path) == []


def test_a_full_disk_while_copying_the_file_leaves_it_alone(tmp_path, monkeypatch):
    import errno

    from lucid.io import atomic

    def no_space(src, dst):
        with open(dst, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "clone_file", no_space)
    path = rich_file(tmp_path / "a.h5")
    before = path.read_bytes()
    with pytest.raises(LucidIOError, match="no space left") as info:
        write_sink(f"{path}:/y", volume())
    assert "a.h5" in str(info.value)
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("way", ["best", "copy_file_range", "copyfile"])
def test_clone_file_copies_every_byte(tmp_path, monkeypatch, way):
    from lucid.io import copy as copy_mod

    if way != "best":
        monkeypatch.setattr(copy_mod, "_reflink", lambda fd_in, fd_out: False)
    if way == "copyfile":
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    src, dst = tmp_path / "src", tmp_path / "dst"
    payload = np.random.default_rng(0).bytes(3 * 1024 * 1024 + 17)
    src.write_bytes(payload)
    dst.write_bytes(b"")
    used = copy_mod.clone_file(src, dst)
    assert dst.read_bytes() == payload
    assert used in (("reflink", "copy_file_range", "copyfile") if way == "best" else (way,))


def test_a_change_to_a_symlinked_file_during_the_run_is_noticed(tmp_path):
    real = rich_file(tmp_path / "real.h5")
    link = tmp_path / "link.h5"
    link.symlink_to(real.name)
    sink = write_sink(f"{link}:/y", volume())
    sink.prepare()
    with h5py.File(real, "a") as f:
        f.create_dataset("theirs", data=np.arange(3))
    with pytest.raises(LucidIOError, match="changed by another process"):
        sink.commit()
    with h5py.File(real, "r") as f:
        assert "theirs" in f and "y" not in f
    assert link.is_symlink()
    assert leftovers(tmp_path) == []


def test_through_a_symlink_the_linked_file_gets_the_dataset(tmp_path):
    (tmp_path / "data").mkdir()
    real = rich_file(tmp_path / "data" / "real.h5")
    link = tmp_path / "link.h5"
    link.symlink_to(real)
    write_sink(f"{link}:/y", volume()).commit()
    assert link.is_symlink()
    with h5py.File(real, "r") as f:
        assert "y" in f and "x" in f
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "data") == []
