"""lucid batch: inputs and names (pure), resume by provenance, permanent vs transient errors,
real clusters (LocalCluster, and scheduler + worker processes with one SIGKILLed mid-run)."""

from __future__ import annotations

import json
import os
import threading

import h5py
import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from lucid.batch import FilePair, plan_files, run_batch
from lucid.batch.inputs import output_for, split_suffix
from lucid.batch.provenance import output_fingerprints
from lucid.io import LucidIOError
from lucid.stream.api import pool3d_file
from lucid.stream.job import PoolJob

pytest.importorskip("distributed")


def nifti(path, shape=(12, 10, 8), seed=0):
    data = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 1.5, 1])), str(path))
    return data


def hdf5(path, shape=(9, 10, 11), seed=0):
    data = np.random.default_rng(seed).integers(-100, 100, shape).astype(np.int16)
    with h5py.File(path, "w") as f:
        f["data"] = data
    return data


def volumes(tmp_path, n: int) -> list[FilePair]:
    """``n`` HDF5 volumes of 64^3 in tmp_path/in, their outputs planned into tmp_path/out."""
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    for i in range(n):
        hdf5(tmp_path / "in" / f"v{i:02d}.h5", (64, 64, 64), seed=i)
    return plan_files([str(tmp_path / "in" / "v*.h5")], str(tmp_path / "out"))


def no_temporaries(directory) -> bool:
    return not [n for n in os.listdir(directory) if ".lucid-" in n]


# ---------------------------------------------------------------- inputs and names

def test_names_follow_the_template_with_double_suffixes_and_datasets(tmp_path):
    assert split_suffix("scan.nii.gz") == ("scan", ".nii.gz")
    assert split_suffix("img.ome.zarr") == ("img", ".ome.zarr")
    assert output_for("a/sub-01/t1.nii.gz", "out") == os.path.join("out", "t1_pooled.nii.gz")
    assert output_for("a/sub-01/t1.nii.gz", "out", "{parent}_{stem}.h5") == os.path.join("out", "sub-01_t1.h5")
    assert output_for("clip.h5:/frames", "o", "{name}") == os.path.join("o", "clip.h5") + ":/frames"
    with pytest.raises(ValueError, match="unknown field 'nope'"):
        output_for("t1.nii", "o", "{nope}.nii")


def test_globs_lists_and_csv(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for i in range(3):
        os.makedirs(f"sub-{i}")
        nifti(f"sub-{i}/t1.nii.gz")
    pairs = plan_files(["sub-*/t1.nii.gz"], "out", "{parent}{ext}")
    assert [p.output for p in pairs] == [os.path.join("out", f"sub-{i}.nii.gz") for i in range(3)]
    (tmp_path / "list.txt").write_text("# cohort\nsub-0/t1.nii.gz\n\nsub-2/t1.nii.gz\n")
    listed = plan_files([], "out", "{parent}{ext}", list_file="list.txt")
    assert [p.input for p in listed] == ["sub-0/t1.nii.gz", "sub-2/t1.nii.gz"]
    with pytest.raises(ValueError, match="two inputs would write it"):
        plan_files([], "out", list_file="list.txt")
    (tmp_path / "list.csv").write_text("input,output\nsub-0/t1.nii.gz,a.h5\nsub-1/t1.nii.gz,\n")
    pairs = plan_files([], "out", list_file="list.csv")
    assert pairs == [FilePair("sub-0/t1.nii.gz", "a.h5"), FilePair("sub-1/t1.nii.gz", os.path.join("out", "t1_pooled.nii.gz"))]
    with pytest.raises(LucidIOError, match="nothing/\\*.nii: no file matches"):
        plan_files(["nothing/*.nii"], "out")


def test_clashing_outputs_and_outputs_that_are_inputs_are_refused_up_front(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for d in ("a", "b"):
        os.makedirs(d)
        nifti(f"{d}/t1.nii")
    with pytest.raises(ValueError, match="two inputs would write it .*a/t1.nii and b/t1.nii"):
        plan_files(["*/t1.nii"], "out")
    with pytest.raises(ValueError, match="is an input of this batch"):
        plan_files(["a/t1.nii", "b/t1.nii"], "a", "{stem}{ext}")
    with pytest.raises(ValueError, match="no output: give --out-dir"):
        plan_files(["a/t1.nii"], None)


# ---------------------------------------------------------------- resume, errors

def test_outputs_carry_the_job_fingerprint_and_a_changed_input_or_parameter_changes_it(tmp_path):
    nifti(tmp_path / "a.nii.gz")
    hdf5(tmp_path / "b.h5")
    job = PoolJob(str(tmp_path / "a.nii.gz"), str(tmp_path / "a_out.nii.gz"), 2)
    job.run()
    other = job.with_files(str(tmp_path / "b.h5"), str(tmp_path / "b_out.h5"))
    other.run()
    assert output_fingerprints(job.output) == {job.fingerprint()}
    assert output_fingerprints(other.output) == {other.fingerprint()}
    assert PoolJob(job.input, job.output, 3).fingerprint() != job.fingerprint()
    assert PoolJob(job.input, job.output, 2, level=1).fingerprint() != job.fingerprint()
    assert PoolJob(job.input, "elsewhere.nii", 2, threads=1, memory_limit="2M").fingerprint() == job.fingerprint()
    nifti(tmp_path / "a.nii.gz", seed=1)
    os.utime(tmp_path / "a.nii.gz", ns=(1, 1))
    assert job.fingerprint() not in output_fingerprints(job.output)


def test_one_file_runs_here_and_reruns_skip_it(tmp_path):
    data = hdf5(tmp_path / "v.h5")
    pairs = plan_files([str(tmp_path / "v.h5")], str(tmp_path / "out"))
    os.makedirs(tmp_path / "out")
    job = PoolJob("", None, 2, ceil_mode=True)
    first = run_batch(job, pairs)
    assert first.where == "this process" and first.summary()["done"] == 1
    with h5py.File(pairs[0].output) as f:
        got = f["data"][:]
    assert got.dtype == np.int16 and got.shape == (5, 5, 6) and got[0, 0, 0] == data[:2, :2, :2].max()
    again = run_batch(job, pairs)
    assert [r.status for r in again.results] == ["skipped"]
    changed = run_batch(PoolJob("", None, 3), pairs)
    assert changed.failed and "not this run's result" in changed.failed[0].error
    forced = run_batch(PoolJob("", None, 3, force=True), pairs)
    assert forced.summary()["done"] == 1


def test_permanent_errors_are_recorded_not_retried(tmp_path):
    from lucid.batch.runner import run_file

    (tmp_path / "bad.nii").write_bytes(b"\0" * 100)
    result = run_file(PoolJob(str(tmp_path / "bad.nii"), str(tmp_path / "o.nii"), 2))
    assert result.status == "failed" and str(tmp_path / "bad.nii") in result.error and "\n" not in result.error
    result = run_file(PoolJob(str(tmp_path / "missing.nii"), str(tmp_path / "o.nii"), 2))
    assert result.status == "failed" and "missing.nii" in result.error


# ---------------------------------------------------------------- real clusters

@pytest.mark.slow
def test_two_hundred_files_five_corrupt_on_a_local_cluster(tmp_path):
    from lucid.dask.cluster import ClusterSpec

    inputs = []
    for i in range(200):
        path = tmp_path / "in" / f"s{i:03d}.nii"
        path.parent.mkdir(exist_ok=True)
        if i % 40 == 7:
            path.write_bytes(b"not a nifti" * 50)
        else:
            nifti(path, (6, 6, 4), seed=i)
        inputs.append(str(path))
    pairs = plan_files(inputs, str(tmp_path / "out"))
    os.makedirs(tmp_path / "out")
    job = PoolJob("", None, 2)
    report = run_batch(job, pairs, cluster=ClusterSpec(workers=2))
    assert report.summary()["done"] == 195 and len(report.failed) == 5
    assert all(r.error.startswith(r.input) and "\n" not in r.error for r in report.failed)
    again = run_batch(job, pairs, cluster=ClusterSpec(workers=2))
    assert again.count("skipped") == 195 and sorted(r.input for r in again.failed) == sorted(
        r.input for r in report.failed)
    assert no_temporaries(tmp_path / "out")


@pytest.mark.slow
def test_a_worker_killed_mid_batch_loses_nothing(tmp_path, dask_processes):
    from lucid.dask.cluster import ClusterSpec

    pairs = volumes(tmp_path, 16)
    job = PoolJob("", None, 3, 2, 1, memory_limit="1M")  # many small slabs: each file takes a while
    killed = threading.Event()

    def kill_one(result):
        if not killed.is_set():
            killed.set()
            dask_processes.kill(dask_processes.workers[0])

    report = run_batch(job, pairs, cluster=ClusterSpec(scheduler=dask_processes.address), on_result=kill_one)
    assert killed.is_set() and dask_processes.workers[0].poll() is not None
    assert report.summary()["done"] == 16, report.failed
    for pair in pairs:
        pool3d_file(pair.input, str(tmp_path / "ref.h5"), 3, 2, 1, force=True)
        with h5py.File(pair.output) as got, h5py.File(tmp_path / "ref.h5") as want:
            np.testing.assert_array_equal(got["data"][:], want["data"][:])
    assert no_temporaries(tmp_path / "out")


def test_cli_json_lines_summary_and_exit_codes(tmp_path, monkeypatch):
    from lucid_cli.main import main

    monkeypatch.chdir(tmp_path)
    nifti("a.nii")
    (tmp_path / "b.nii").write_bytes(b"junk" * 100)
    runner = CliRunner()
    res = runner.invoke(main, ["batch", "pool3d", "a.nii", "--out-dir", "out", "-k", "2", "--json"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert lines[0]["status"] == "done" and lines[-1]["summary"]["done"] == 1
    res = runner.invoke(main, ["batch", "pool3d", "a.nii", "b.nii", "--out-dir", "out", "-k", "2"])
    assert res.exit_code == 1
    assert "2 files: 0 done, 1 skipped, 1 failed" in res.stderr
    assert res.stderr.strip().splitlines()[-1] == "Error: 1 of 2 files failed: b.nii"
    res = runner.invoke(main, ["batch", "pool3d", "--out-dir", "out"])
    assert res.exit_code == 2 and "give input files" in res.stderr


@pytest.mark.slow
def test_a_dead_scheduler_is_one_error_and_a_rerun_finishes(tmp_path, dask_processes):
    from lucid.dask.cluster import ClusterError, ClusterSpec

    pairs = volumes(tmp_path, 12)
    job = PoolJob("", None, 3, 2, 1, memory_limit="1M")

    def stop_scheduler(result):
        dask_processes.kill(dask_processes.scheduler)

    with pytest.raises(ClusterError, match="lost the dask scheduler") as err:
        run_batch(job, pairs, cluster=ClusterSpec(scheduler=dask_processes.address), on_result=stop_scheduler)
    assert "\n" not in str(err.value)
    for w in dask_processes.workers:
        dask_processes.kill(w)  # their in-flight files die with them; the rerun cleans their temporaries
    report = run_batch(job, pairs, cluster=ClusterSpec(workers=2))
    assert report.count("done") + report.count("skipped") == 12 and report.count("skipped") >= 1
    assert no_temporaries(tmp_path / "out")


def test_cli_level_pools_that_ome_zarr_level_and_counts_in_the_fingerprint(tmp_path, monkeypatch):
    import zarr

    from lucid.kernels import tiled
    from lucid.kernels.maxpool import MAX
    from lucid.kernels.windows import PoolSpec
    from lucid_cli.main import main
    from tests.ome_helpers import rng_volume, write_image

    monkeypatch.chdir(tmp_path)
    want = {}
    for name in ("a", "b"):
        full = rng_volume((12, 16, 14), np.int16, seed=ord(name))
        half = full[::2, ::2, ::2].copy()
        write_image(f"{name}.ome.zarr", [full, half], scales=[[1, 1, 1], [2, 2, 2]])
        want[name] = tiled.pool(half, (0, 1, 2), PoolSpec.create((2, 2, 2), (2, 2, 2), 0, 1, False, "zeros")
                                .windows(half.shape), None, MAX, 1)
    runner = CliRunner()
    args = ["batch", "pool3d", "a.ome.zarr", "b.ome.zarr", "--out-dir", "out", "-k", "2", "--level", "1", "--json"]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert [x["status"] for x in lines[:-1]] == ["done", "done"]
    assert [x["bytes"] for x in lines[:-1]] == [6 * 8 * 7 * 2] * 2  # a store counts its level's array bytes
    for name, w in want.items():
        got = zarr.open_group(f"out/{name}_pooled.ome.zarr", mode="r")["0"][...]
        np.testing.assert_array_equal(got, w)
        assert got.shape == (3, 4, 3)
    res = runner.invoke(main, args)  # the same level: already done
    assert res.exit_code == 0 and all(json.loads(x).get("status") == "skipped" for x in res.stdout.splitlines()[:-1])
    res = runner.invoke(main, args[:-3] + ["--level", "0"])  # another level: not this output's content
    assert res.exit_code == 1 and "not this run's result" in res.stderr
    res = runner.invoke(main, args[:-3] + ["--level", "0", "--json", "--force"])
    assert res.exit_code == 0, res.output
    assert [json.loads(x)["status"] for x in res.stdout.splitlines()[:-1]] == ["done", "done"]
    assert zarr.open_group("out/a_pooled.ome.zarr", mode="r")["0"].shape == (6, 8, 7)
    res = runner.invoke(main, args[:-3] + ["--level", "5", "--force"])
    assert res.exit_code == 1 and "no level 5" in res.stderr
