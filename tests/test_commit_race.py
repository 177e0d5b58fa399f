"""The commit decides again, atomically: an output that appeared during the run is not clobbered (issue 13.1)."""

from __future__ import annotations

import errno
import os
import subprocess

import h5py
import nibabel as nib
import numpy as np
import pytest

from lucid.io import AtomicTarget, LucidIOError, open_sink, open_source
from lucid.io import rename as rename_mod
from tests.faults_helpers import cli_argv, cli_env, write_h5

SUFFIXES = [".nii", ".nii.gz", ".h5"]


def leftovers(directory):
    return [name for name in os.listdir(directory) if ".lucid-" in name]


def volume(shape=(8, 6, 4), seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def finished_sink(out, force=False, seed=0):
    data = volume(seed=seed)
    sink = open_sink(out, data.shape, data.dtype, like=open_source(data), force=force)
    sink.write(tuple(slice(0, n) for n in data.shape), data)
    sink.prepare()
    return sink, data


def read_back(path):
    path = os.fspath(path)
    if path.endswith(".h5"):
        with h5py.File(path, "r") as f:
            return f["data"][()]
    return np.asarray(nib.load(path).dataobj).T  # NIfTI written from (d, h, w): x = w


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_output_that_appears_between_prepare_and_commit_is_left_alone(tmp_path, suffix):
    out = tmp_path / ("out" + suffix)
    sink, _ = finished_sink(out)
    out.write_bytes(b"written by someone else")
    with pytest.raises(LucidIOError, match="appeared during the run") as info:
        sink.commit()
    assert "\n" not in str(info.value) and "out" + suffix in str(info.value)
    assert out.read_bytes() == b"written by someone else"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_with_force_the_last_rename_wins_whole(tmp_path, suffix):
    out = tmp_path / ("out" + suffix)
    first, _ = finished_sink(out, force=True, seed=1)
    second, data2 = finished_sink(out, force=True, seed=2)
    first.commit()
    second.commit()
    np.testing.assert_array_equal(read_back(out), data2)
    assert leftovers(tmp_path) == []


def test_an_hdf5_file_that_appears_is_not_replaced_even_with_force(tmp_path):
    """It may hold datasets of another run; replacing it would delete them."""
    out = tmp_path / "out.h5"
    sink, _ = finished_sink(out, force=True)
    write_h5(out, np.ones((2, 2, 2), np.float32), name="other")
    before = out.read_bytes()
    with pytest.raises(LucidIOError, match="appeared during the run"):
        sink.commit()
    assert out.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_fallback_link_commit_without_renameat2(tmp_path, monkeypatch):
    """Old kernels and file systems without RENAME_NOREPLACE: link() + unlink() refuses just the same."""
    monkeypatch.setattr(rename_mod, "_renameat2", None)
    out = tmp_path / "out.nii"
    sink, data = finished_sink(out)
    (tmp_path / "other.nii").write_bytes(b"x")
    sink.commit()
    np.testing.assert_array_equal(read_back(out), data)
    sink, _ = finished_sink(tmp_path / "again.nii")
    (tmp_path / "again.nii").write_bytes(b"theirs")
    with pytest.raises(LucidIOError, match="appeared during the run"):
        sink.commit()
    assert (tmp_path / "again.nii").read_bytes() == b"theirs"
    assert leftovers(tmp_path) == []


def test_fallback_without_hard_links_reserves_the_name(tmp_path, monkeypatch):
    monkeypatch.setattr(rename_mod, "_renameat2", None)

    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    sink, data = finished_sink(tmp_path / "out.nii")
    sink.commit()
    np.testing.assert_array_equal(read_back(tmp_path / "out.nii"), data)
    sink, _ = finished_sink(tmp_path / "b.nii")
    (tmp_path / "b.nii").write_bytes(b"theirs")
    with pytest.raises(LucidIOError, match="appeared during the run"):
        sink.commit()
    assert (tmp_path / "b.nii").read_bytes() == b"theirs"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("exchange", [True, False])
def test_directory_target_commits_without_and_with_force(tmp_path, monkeypatch, exchange):
    """What a Zarr store needs: a temporary directory renamed into place under the same rules."""
    if not exchange:
        monkeypatch.setattr(rename_mod, "_renameat2", None)
    dest = tmp_path / "out.zarr"
    target = AtomicTarget(dest, is_dir=True)
    assert target.tmp.is_dir()
    (target.tmp / "chunk").write_bytes(b"new")
    dest.mkdir()
    (dest / "chunk").write_bytes(b"theirs")
    with pytest.raises(LucidIOError, match="appeared during the run"):
        target.commit()
    assert (dest / "chunk").read_bytes() == b"theirs"
    target = AtomicTarget(dest, is_dir=True, force=True)
    (target.tmp / "chunk").write_bytes(b"new")
    target.commit()
    assert sorted(os.listdir(dest)) == ["chunk"] and (dest / "chunk").read_bytes() == b"new"
    assert leftovers(tmp_path) == []


def _pool_cmd(src, out, *extra):
    return cli_argv("pool3d", src, out, "-k", "2", "-q", "--memory-limit", "1M", "--compression", "none", *extra)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", SUFFIXES)
def test_two_real_runs_race_for_one_output(tmp_path, suffix):
    """Two processes, same output, no --force: exactly one wins and the output is whole."""
    inputs = []
    for i in range(2):
        inputs.append(write_h5(tmp_path / f"in{i}.h5", volume((32, 64, 64), seed=i)))
    out = tmp_path / ("out" + suffix)
    procs = [subprocess.Popen(_pool_cmd(p, out), env=cli_env(), stderr=subprocess.PIPE, text=True) for p in inputs]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    loser = next(err for code, err in results if code == 1)
    assert loser.startswith("Error:") and ("appeared during the run" in loser or "exists" in loser), loser
    winner = next(i for i, (code, _) in enumerate(results) if code == 0)
    expected = volume((32, 64, 64), seed=winner).reshape(16, 2, 32, 2, 32, 2).max(axis=(1, 3, 5))
    np.testing.assert_array_equal(read_back(out), expected)
    assert leftovers(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("suffix", SUFFIXES)
def test_two_real_forced_runs_leave_one_whole_output(tmp_path, suffix):
    """With --force: NIfTI, the last rename wins; HDF5, the later run fails if the file appeared
    under it (it might hold other datasets) or replaces the dataset. Never a mix of the two."""
    inputs = [write_h5(tmp_path / f"in{i}.h5", volume((32, 64, 64), seed=i)) for i in range(2)]
    out = tmp_path / ("out" + suffix)
    procs = [subprocess.Popen(_pool_cmd(p, out, "-f"), env=cli_env(), stderr=subprocess.PIPE, text=True)
             for p in inputs]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    if suffix != ".h5":
        assert [code for code, _ in results] == [0, 0], results
    else:
        assert 0 in [code for code, _ in results], results
        assert all(code == 0 or "appeared during the run" in err for code, err in results), results
    got = read_back(out)
    candidates = [volume((32, 64, 64), seed=i).reshape(16, 2, 32, 2, 32, 2).max(axis=(1, 3, 5)) for i in range(2)]
    assert any(np.array_equal(got, c) for c in candidates)
    assert leftovers(tmp_path) == []
