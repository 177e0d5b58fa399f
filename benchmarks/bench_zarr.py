"""Zarr benchmark: lucid against TensorStore's downsample driver, and a 5-level pyramid against one pool3d.

Inputs: 1 GiB Zarr v3 arrays (float32 512x512x1024 and uint16 1024x1024x512,
chunks 64^3, no compression).  Each measurement runs in its own child process
(time and peak RSS, VmHWM), the cases interleaved, repeated ``--repeat`` times;
medians are reported.

  lucid     pool3d_file in.zarr -> out.zarr, k=2, ceil_mode, padding_mode=ignore
            (= TensorStore's rule), --memory-limit 512M, output fsync'ed (always, by lucid)
  ts        TensorStore: ts.downsample(open(zarr3), [2,2,2], method="max") written
            into a new zarr3 array with chunks 64^3, then every file fsync'ed as lucid does
  pyramid5  lucid pyramid_file in.zarr -> out.ome.zarr, 5 levels (factor 2, one read), level 0 a copy
  pyramid5-no-copy  the same with no_copy=True: level 0 hard-links the input's chunk files
  (the pyramids' ratios are against ``lucid``, the single level-1 pool3d run)

Run:  python benchmarks/bench_zarr.py [--repeat 3] [--dir DIR] [--small]
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

import numpy as np

CASES = {"float32": ((512, 512, 1024), np.float32), "uint16": ((1024, 1024, 512), np.uint16)}
CHUNK = 64


def make_input(folder: str, name: str, shape, dtype) -> str:
    import zarr

    path = os.path.join(folder, f"{name}.zarr")
    if os.path.exists(path):
        return path
    arr = zarr.create_array(path, shape=shape, dtype=dtype, chunks=(CHUNK,) * 3, compressors=None)
    rng = np.random.default_rng(0)
    for z in range(0, shape[0], CHUNK):
        block = (rng.standard_normal((CHUNK, *shape[1:]), dtype=np.float32) * 1000).astype(dtype) \
            if np.dtype(dtype).kind == "f" else rng.integers(0, 65535, (CHUNK, *shape[1:]), dtype=np.uint16)
        arr[z:z + CHUNK] = block
    return path


def fsync_tree(path: str) -> None:
    for root, _dirs, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def run_lucid(src: str, dst: str) -> None:
    from lucid.stream.api import pool3d_file

    pool3d_file(src, dst, kernel_size=2, ceil_mode=True, padding_mode="ignore", memory_limit="512M",
                compression="none")


def run_ts(src: str, dst: str) -> None:
    import tensorstore as ts

    store = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": src}}, read=True).result()
    down = ts.downsample(store, [2, 2, 2], method="max")
    out = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": dst},
                   "metadata": {"shape": list(down.shape), "data_type": str(store.dtype.numpy_dtype),
                                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [CHUNK] * 3}}}},
                  create=True).result()
    out.write(down).result()
    fsync_tree(dst)


def run_pyramid(src: str, dst: str, no_copy: bool = False) -> None:
    from lucid.pyramid import pyramid_file

    pyramid_file(src, dst, levels=5, memory_limit="512M", compression="none", no_copy=no_copy)


def run_pyramid_linked(src: str, dst: str) -> None:
    run_pyramid(src, dst, no_copy=True)


RUNNERS = {"lucid": run_lucid, "ts": run_ts, "pyramid5": run_pyramid, "pyramid5-no-copy": run_pyramid_linked}


def child(mode: str, src: str, dst: str) -> None:
    """In a fresh process: run once, print seconds and peak RSS."""
    start = time.perf_counter()
    RUNNERS[mode](src, dst)
    seconds = time.perf_counter() - start
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))
    print(json.dumps({"seconds": seconds, "peak_mib": peak}))


def measure(mode: str, src: str, folder: str) -> dict:
    dst = os.path.join(folder, f"out-{mode}" + (".ome.zarr" if mode.startswith("pyramid") else ".zarr"))
    shutil.rmtree(dst, ignore_errors=True)
    res = subprocess.run([sys.executable, __file__, "--child", mode, src, dst], capture_output=True, text=True,
                         check=True)
    shutil.rmtree(dst, ignore_errors=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--small", action="store_true", help="1/8 the size (a quick check)")
    ap.add_argument("--child", nargs=3, metavar=("MODE", "SRC", "DST"))
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    folder = args.dir or tempfile.mkdtemp(prefix="lucid-bench-zarr-")
    modes = list(RUNNERS)
    try:
        import tensorstore  # noqa: F401
    except ImportError:
        modes.remove("ts")
        print("tensorstore not installed: lucid only")
    results = {}
    for name, (shape, dtype) in CASES.items():
        if args.small:
            shape = tuple(n // 2 for n in shape)
        src = make_input(folder, f"{name}-{'x'.join(map(str, shape))}", shape, dtype)
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        for _ in range(args.repeat):
            for m in modes:  # interleaved: the shared machine's load hits every case alike
                runs[m].append(measure(m, src, folder))
        med = {m: {"seconds": statistics.median(r["seconds"] for r in rs),
                   "peak_mib": statistics.median(r["peak_mib"] for r in rs)} for m, rs in runs.items()}
        results[name] = med
        line = f"{name} {shape} ({np.prod(shape) * np.dtype(dtype).itemsize / 2**30:.2f} GiB): " + ", ".join(
            f"{m} {v['seconds']:.2f} s / {v['peak_mib']:.0f} MiB" for m, v in med.items())
        if "ts" in med:
            line += f"; lucid/ts time {med['lucid']['seconds'] / med['ts']['seconds']:.2f}x"
        for m in ("pyramid5", "pyramid5-no-copy"):
            line += f"; {m}/pool3d {med[m]['seconds'] / med['lucid']['seconds']:.2f}x"
        print(line, flush=True)
    print(json.dumps(results))
    if not args.dir:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
