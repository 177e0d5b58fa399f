"""Temporary names that fit NAME_MAX (issue 13.12) and the cleaner for those of dead processes (13.11)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import h5py
import nibabel as nib
import numpy as np
import pytest

from lucid.io import AtomicTarget
from lucid.io.tempfiles import SPOOL_MARK, TMP_MARK, clean_stale, host_tag, owner_pid, temp_name
from lucid.stream.api import pool3d_file
from tests.faults_helpers import run_cli, write_h5


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def stale_name(name: str, pid: int, host: str | None = None, mark: str = TMP_MARK) -> str:
    return f".{name}{mark}{pid}-{host or host_tag()}-abc123"


# ------------------------------------------------------------ names


@pytest.mark.parametrize("name", ["o.h5", "x" * 255, "é" * 127 + ".nii", "日本" * 40 + ".nii.gz", "a" * 240 + ".h5"],
                         ids=["short", "255-bytes", "2-byte-chars", "3-byte-chars", "240-bytes"])
@pytest.mark.parametrize("mark", [TMP_MARK, SPOOL_MARK])
def test_temp_names_fit_name_max_and_name_their_owner(name, mark):
    made = temp_name(name, mark)
    assert len(os.fsencode(made)) <= 255
    assert made.startswith("." + name[:8]) and mark in made
    made.encode("utf-8")  # not cut inside a character
    assert owner_pid(made) == (os.getpid(), host_tag())


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".h5"])
def test_output_names_up_to_255_bytes_are_written(tmp_path, suffix):
    data = np.random.default_rng(0).standard_normal((1, 1, 8, 8, 8)).astype(np.float32)
    out = tmp_path / ("n" * (255 - len(suffix)) + suffix)
    pool3d_file(data, out, 2, grad_out=tmp_path / ("g" * (255 - len(suffix)) + suffix), memory_limit="4K")
    assert out.exists()
    if suffix == ".h5":
        with h5py.File(out, "r") as f:
            assert f["data"].shape == (1, 1, 4, 4, 4)
    else:
        assert nib.load(out).shape[:3] == (4, 4, 4)
    assert [n for n in os.listdir(tmp_path) if ".lucid-" in n] == []


# ------------------------------------------------------------ the cleaner


def test_clean_removes_only_stale_files_of_this_machine(tmp_path):
    gone = dead_pid()
    stale = [stale_name("o.h5", gone), stale_name("o.nii.gz", gone, mark=SPOOL_MARK)]
    alive = [stale_name("p.h5", os.getpid()), stale_name("q.h5", os.getppid())]
    elsewhere = [stale_name("r.h5", gone, host="ffff" if host_tag() != "ffff" else "eeee")]
    unrelated = ["o.h5", ".o.h5.lucid-tmp-1234abcd", ".hidden", "x.lucid-tmp-1-0000-abcdef"]
    for name in stale + alive + elsewhere + unrelated:
        (tmp_path / name).write_bytes(b"")
    store = tmp_path / stale_name("s.zarr", gone)
    store.mkdir()
    (store / "chunk").write_bytes(b"1")
    report = clean_stale(tmp_path, dry_run=True)
    assert sorted(report.removed) == sorted(stale + [store.name])
    assert len(os.listdir(tmp_path)) == 10
    report = clean_stale(tmp_path)
    assert sorted(report.removed) == sorted(stale + [store.name])
    assert sorted(report.kept) == sorted(alive + elsewhere)
    assert sorted(os.listdir(tmp_path)) == sorted(alive + elsewhere + unrelated)


def test_a_reused_pid_does_not_keep_a_stale_file(tmp_path):
    """The pid is alive, but that process started after the file was last written."""
    path = tmp_path / stale_name("o.h5", os.getppid())
    path.write_bytes(b"")
    old = time.time() - 10 * 365 * 86400  # long before the parent (the test runner) started
    os.utime(path, (old, old))
    assert clean_stale(tmp_path).removed == [path.name]


def test_the_next_run_into_a_directory_cleans_it(tmp_path):
    stale = tmp_path / stale_name("old.h5", dead_pid())
    stale.write_bytes(b"left by a SIGKILL")
    target = AtomicTarget(tmp_path / "new.h5")
    assert target.cleaned == [stale.name] and not stale.exists()
    target.abort()
    stale.write_bytes(b"again")
    data = np.zeros((2, 2, 2), np.float32)
    report = pool3d_file(data, tmp_path / "o.h5", 2)
    assert not stale.exists()
    assert any("removed 1 stale temporary file" in w for w in report.warnings)


def test_lucid_clean_command(tmp_path):
    stale = stale_name("o.h5", dead_pid())
    (tmp_path / stale).write_bytes(b"")
    (tmp_path / stale_name("p.h5", os.getpid())).write_bytes(b"")
    result = run_cli("clean", tmp_path, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"would remove {tmp_path / stale}" in result.stdout and "kept 1" in result.stdout
    assert (tmp_path / stale).exists()
    result = run_cli("clean", tmp_path, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["removed"] == [stale]
    assert not (tmp_path / stale).exists()
    result = run_cli("clean", tmp_path / "missing")
    assert result.returncode == 2 and result.stderr.startswith("Error:") and "missing" in result.stderr


def test_h5_written_next_to_stale_files_is_whole(tmp_path):
    write_h5(tmp_path / "in.h5", np.ones((4, 4, 4), np.float32))
    (tmp_path / stale_name("out.h5", dead_pid())).write_bytes(b"junk")
    result = run_cli("pool3d", tmp_path / "in.h5", tmp_path / "out.h5", "-k", "2", "-q")
    assert result.returncode == 0, result.stderr
    assert "removed 1 stale temporary file" in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["in.h5", "out.h5"]
