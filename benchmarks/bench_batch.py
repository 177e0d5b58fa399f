"""Batch benchmark: `lucid batch pool3d --workers 2` against a shell loop of `lucid pool3d` calls.

Makes N float32 .nii files of 96^3 (3.4 MiB each) and pools each with k=2, in one run:
  loop    `for f in ...; do lucid pool3d $f out/$f -k 2; done` (one interpreter per file)
  batch   `lucid batch pool3d in/*.nii --out-dir out -k 2 --workers 2` (one task per file)
  rerun   the same batch again: every output is this run's, so all are skipped
It also measures the scheduler's overhead per task (client.map of a no-op over 1000 tasks on a
LocalCluster of 2 processes).  The outputs of loop and batch are compared voxel for voxel.

Run:  python benchmarks/bench_batch.py [--files 500] [--repeat 1] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import nibabel as nib
import numpy as np

LUCID = os.path.join(os.path.dirname(sys.executable), "lucid")  # the installed command


def make_files(folder: str, n: int) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = os.path.join(folder, f"s{i:04d}.nii")
        if not os.path.exists(path):
            nib.save(nib.Nifti1Image(rng.standard_normal((96, 96, 96), dtype=np.float32), np.eye(4)), path)
        paths.append(path)
    return paths


def timed(cmd: str) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def task_overhead(tasks: int = 1000) -> float:
    from lucid.dask.cluster import ClusterSpec, connect

    with connect(ClusterSpec(workers=2)) as client:
        client.gather(client.map(abs, range(100), pure=False))  # warm up
        start = time.perf_counter()
        client.gather(client.map(abs, range(tasks), pure=False))
        return (time.perf_counter() - start) / tasks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    root = args.dir or tempfile.mkdtemp(prefix="lucid-bench-batch-")
    inputs = make_files(os.path.join(root, "in"), args.files)
    lucid = LUCID
    loop_out, batch_out = os.path.join(root, "loop"), os.path.join(root, "batch")
    times: dict[str, list[float]] = {"loop": [], "batch": [], "rerun": []}
    for _ in range(args.repeat):  # alternating blocks, fresh outputs each time
        for out in (loop_out, batch_out):
            shutil.rmtree(out, ignore_errors=True)
            os.makedirs(out)
        loop = "; ".join(f"{lucid} pool3d {p} {os.path.join(loop_out, os.path.basename(p))} -k 2 -q" for p in inputs)
        times["loop"].append(timed(loop))
        batch = f"{lucid} batch pool3d {os.path.join(root, 'in', '*.nii')} --out-dir {batch_out} -k 2 --workers 2 -q"
        times["batch"].append(timed(batch))
        times["rerun"].append(timed(batch))
    for p in inputs:
        a = np.asanyarray(nib.load(os.path.join(loop_out, os.path.basename(p))).dataobj)
        b = np.asanyarray(nib.load(os.path.join(batch_out, os.path.basename(p)[:-4] + "_pooled.nii")).dataobj)
        assert np.array_equal(a, b), p
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "files": args.files, "seconds": med, "loop_per_file_s": med["loop"] / args.files,
        "batch_per_file_s": med["batch"] / args.files, "speedup": med["loop"] / med["batch"],
        "scheduler_overhead_ms_per_task": 1e3 * task_overhead(), "cpus": len(os.sched_getaffinity(0)),
    }
    print(json.dumps(result, indent=1))
    if args.dir is None:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
