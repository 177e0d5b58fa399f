"""HDF5 output compression: what each codec costs a pooling run, side by side in one run.

Two jobs on a --size^3 volume read from an uncompressed HDF5 file, k=2 s=2:
  pooled    the forward run writing the pooled output (--size/2)^3
  gradient  the backward run writing only the gradient map (--size^3 float32,
            7 of 8 values zero with k=2 s=2)
for two inputs:
  ct        int16, a CT-like phantom: air -1000, soft tissue ~40, bone ~1000, noise sd 20
  float     float32, a smooth field plus noise (microscopy-like; the low mantissa bits are noise)
and every codec: none, gzip:1-4, lzf, and hdf5plugin's blosc:lz4, blosc:zstd and zstd (when installed).
Codecs run in a rotating order within each repeat; the table gives medians of the run
time, the output size, the ratio raw/compressed, and the run time over the uncompressed run's.

Run:  python benchmarks/bench_compression.py [--size 512] [--repeat 3] [--dir DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import h5py
import numpy as np

from lucid.io.compression import load_plugin, parse_codec
from lucid.stream.api import pool3d_file

CODECS = ["none", "gzip:1", "gzip:2", "gzip:3", "gzip:4", "lzf", "blosc:lz4", "blosc:zstd", "zstd"]
SLAB = 16


def make_input(path: str, kind: str, n: int) -> None:
    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[:SLAB, :n, :n]
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("data", (n, n, n), np.int16 if kind == "ct" else np.float32)
        for z0 in range(0, n, SLAB):
            zz = (z + z0) / n - 0.5
            yy, xx = y / n - 0.5, x / n - 0.5
            r2 = zz**2 + (yy / 0.8) ** 2 + xx**2
            if kind == "ct":
                vol = np.where(r2 < 0.2, 40.0, -1000.0)
                vol = np.where((r2 > 0.16) & (r2 < 0.2), 1000.0, vol)  # a skull
                vol = vol + rng.normal(0, 20, vol.shape)
                ds[z0 : z0 + SLAB] = np.clip(vol, -1024, 3071).astype(np.int16)
            else:
                vol = np.sin(8 * xx) * np.cos(6 * yy) + np.sin(5 * zz) + 0.05 * rng.standard_normal(r2.shape)
                ds[z0 : z0 + SLAB] = vol.astype(np.float32)


def run(src: str, out: str, codec: str, job: str) -> tuple[float, int]:
    kwargs = dict(compression=codec, force=True)
    t0 = time.perf_counter()
    if job == "pooled":
        pool3d_file(src, out, 2, **kwargs)
    else:
        pool3d_file(src, None, 2, grad_out=out, **kwargs)
    seconds = time.perf_counter() - t0
    size = os.path.getsize(out)
    os.unlink(out)
    return seconds, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--json", default=None, help="also write the raw timings here")
    args = ap.parse_args()
    codecs = list(CODECS)
    try:
        load_plugin()
    except ValueError as exc:
        print(f"note: {exc}; skipping blosc and zstd")
        codecs = [c for c in codecs if not parse_codec(c).needs_plugin]
    n = args.size
    results: dict = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        for kind in ("ct", "float"):
            src = os.path.join(d, f"{kind}.h5")
            make_input(src, kind, n)
            itemsize = 2 if kind == "ct" else 4
            for job in ("pooled", "gradient"):
                raw = (n // 2) ** 3 * itemsize if job == "pooled" else n**3 * 4
                times = {c: [] for c in codecs}
                sizes = {}
                for rep in range(args.repeat):
                    order = codecs[rep % len(codecs):] + codecs[: rep % len(codecs)]
                    for codec in order:
                        seconds, size = run(src, os.path.join(d, "out.h5"), codec, job)
                        times[codec].append(seconds)
                        sizes[codec] = size
                results[(kind, job)] = (raw, times, sizes)
            os.unlink(src)
    print(f"{n}^3 input, k=2 s=2, HDF5 in (uncompressed) and out, default memory limit; median of {args.repeat}, "
          f"codecs interleaved\n")
    print("| input | job | codec | seconds | vs none | size MiB | ratio |")
    print("|---|---|---|---|---|---|---|")
    dump = []
    for (kind, job), (raw, times, sizes) in results.items():
        base = statistics.median(times["none"])
        for codec in codecs:
            med = statistics.median(times[codec])
            label = {"ct": "int16 CT", "float": "float32"}[kind]
            what = "pooled output" if job == "pooled" else "gradient map"
            print(f"| {label} | {what} | {codec} | {med:.2f} | {med / base:.2f}x | {sizes[codec] / (1 << 20):.1f} "
                  f"| {raw / sizes[codec]:.2f} |")
            dump.append(dict(input=kind, job=job, codec=codec, seconds=times[codec], size=sizes[codec], raw=raw))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dump, f, indent=1)


if __name__ == "__main__":
    main()
