"""One huge volume on dask: ``lucid pool3d --workers 2`` against this machine's engine, side by side in one run.

Generates (chunk by chunk, never whole in memory) a 2 GiB float32 HDF5
volume and a 2 GiB float32 Zarr volume, then times k=3 s=2 p=1
  forward        values only
  forward+bwd    values and the gradient map (ones upstream)
for the single-machine streaming engine and for ``--workers 2`` (a local
cluster of 2 worker processes, its start-up included), each a fresh
``lucid pool3d`` process.  HDF5 inputs write HDF5 outputs (the tasks return
their blocks and the ``lucid`` process is the one writer), Zarr inputs write
Zarr outputs (written in place by the tasks, whole chunks each).  Prints wall times (median of ``--repeat``), the
ratio, task counts and the per-worker peak memory the run reports.

Run:  python benchmarks/bench_dask.py [--dir DIR] [--repeat 1] [--shape 512,1024,1024] [--json out.json]
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

import h5py
import numpy as np
import zarr

SLAB = 32


def make_inputs(folder: str, shape: tuple[int, int, int]) -> tuple[str, str]:
    tag = "x".join(map(str, shape))
    h5_path, zarr_path = os.path.join(folder, f"vol{tag}.h5"), os.path.join(folder, f"vol{tag}.zarr")
    rng = np.random.default_rng(0)
    if not os.path.exists(h5_path):
        with h5py.File(h5_path + ".part", "w") as f:
            ds = f.create_dataset("data", shape, np.float32, chunks=(64, 64, 64))
            for z in range(0, shape[0], SLAB):
                ds[z : z + SLAB] = rng.standard_normal((min(SLAB, shape[0] - z), *shape[1:]), dtype=np.float32)
        os.replace(h5_path + ".part", h5_path)
    if not os.path.exists(zarr_path):
        arr = zarr.create_array(zarr_path + ".part", shape=shape, dtype=np.float32, chunks=(64, 64, 64),
                                compressors=None, fill_value=0)
        for z in range(0, shape[0], 64):
            arr[z : z + 64] = rng.standard_normal((min(64, shape[0] - z), *shape[1:]), dtype=np.float32)
        os.replace(zarr_path + ".part", zarr_path)
    return h5_path, zarr_path


def run(args: list[str]) -> tuple[float, dict]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "lucid_cli.main", "pool3d", *args, "--json", "--force"],
                         capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"lucid pool3d {' '.join(args)} failed: {out.stderr.strip()}")
    return seconds, json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="where the inputs are generated (kept for later runs)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--shape", default="512,1024,1024")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", dest="json_out", default=None)
    opts = parser.parse_args()
    shape = tuple(int(n) for n in opts.shape.split(","))
    folder = opts.dir or os.path.join(tempfile.gettempdir(), "lucid-bench-dask")
    os.makedirs(folder, exist_ok=True)
    t = time.perf_counter()
    h5_path, zarr_path = make_inputs(folder, shape)
    print(f"inputs {shape} float32 ({np.prod(shape) * 4 / 2**30:.2f} GiB each) ready in {time.perf_counter() - t:.0f} s")
    out_dir = tempfile.mkdtemp(dir=folder, prefix="out-")
    rows = []
    try:
        for name, src, ext in (("HDF5", h5_path, ".h5"), ("Zarr", zarr_path, ".zarr")):
            for mode in ("forward", "forward+bwd"):
                times: dict[str, list[float]] = {"engine": [], "dask": []}
                reports: dict[str, dict] = {}
                for _ in range(opts.repeat):
                    for how in ("engine", "dask"):  # side by side, alternating
                        args = [src, os.path.join(out_dir, f"out{ext}"), "-k", "3", "-s", "2", "-p", "1"]
                        if mode != "forward":
                            args += ["--grad-out", os.path.join(out_dir, f"grad{ext}")]
                        if how == "dask":
                            args += ["--workers", str(opts.workers)]
                        seconds, report = run(args)
                        times[how].append(seconds)
                        reports[how] = report
                        for entry in os.listdir(out_dir):
                            shutil.rmtree(os.path.join(out_dir, entry), ignore_errors=True) if os.path.isdir(
                                os.path.join(out_dir, entry)) else os.remove(os.path.join(out_dir, entry))
                engine_s, dask_s = statistics.median(times["engine"]), statistics.median(times["dask"])
                run_info = reports["dask"]["extra"].get("dask", {})
                peaks = run_info.get("worker_peak_mib", {})
                row = dict(input=name, mode=mode, engine_s=round(engine_s, 2), dask_s=round(dask_s, 2),
                           ratio=round(dask_s / engine_s, 2), tasks=run_info.get("tasks"),
                           forward_blocks=run_info.get("forward_blocks"), backward_blocks=run_info.get("backward_blocks"),
                           worker_peak_mib=sorted(round(v) for v in peaks.values()),
                           engine_peak_mib=round(reports["engine"]["peak_memory_mib"]),
                           client_peak_mib=round(reports["dask"]["peak_memory_mib"]))
                rows.append(row)
                print(f"{name:5} {mode:12} engine {engine_s:6.2f} s   --workers {opts.workers} {dask_s:6.2f} s "
                      f"(x{dask_s / engine_s:.2f})   tasks {row['tasks']}   worker peak {row['worker_peak_mib']} MiB   "
                      f"engine peak {row['engine_peak_mib']} MiB", flush=True)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    if opts.json_out:
        with open(opts.json_out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
