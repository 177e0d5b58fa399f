"""Peak RSS of `lucid pool3d` against its --memory-limit, on the cases of issue #13.10.

Each case is one `lucid pool3d` run in its own process under `/usr/bin/time -v`
(its "Maximum resident set size"), so the figure is the whole process:
interpreter, libraries, slab buffers, chunk cache and decompressor.

  hdf5-lzf      N GiB float32 HDF5, lzf chunks of 8 planes, -k 2
  niigz-to-h5   N GiB uint8 .nii.gz to .h5, -k 2
  gzip-bomb     4N GiB of zeros in a .nii.gz of a few MiB, -k 2
  extension     a .nii whose header carries a 200 MiB extension, -k 2, limit 16M, to .nii
  extension-gz  the same as .nii.gz, to .nii.gz
  giant-chunk   one 1e9-element lzf chunk (uint8): refused up front, naming the minimum

Run:  python benchmarks/bench_memory.py [--gib 1] [--limit 64M] [--dir DIR] [--only CASE ...]
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import subprocess
import sys
import tempfile
import time

import h5py
import nibabel as nib
import numpy as np

SIDE_PLANE = 1024 * 1024  # elements per plane of a (n, 1024, 1024) volume


def _planes(gib: float, itemsize: int) -> int:
    return max(8, int(gib * (1 << 30) / (SIDE_PLANE * itemsize)))


def make_hdf5(folder: str, gib: float) -> str:
    path = os.path.join(folder, f"lzf_{gib}g.h5")
    if not os.path.exists(path):
        n = _planes(gib, 4)
        rng = np.random.default_rng(0)
        with h5py.File(path, "w") as f:
            ds = f.create_dataset("data", (n, 1024, 1024), np.float32, chunks=(8, 256, 1024), compression="lzf")
            for z in range(0, n, 8):
                ds[z : z + 8] = rng.standard_normal((min(8, n - z), 1024, 1024), dtype=np.float32)
    return path


def _write_niigz(path: str, shape, planes) -> None:
    """A .nii.gz written plane by plane (never the whole volume in memory)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.uint8)
    header.set_data_shape(shape)
    header.set_qform(np.eye(4), 1)
    header.set_sform(np.eye(4), 1)
    header["vox_offset"] = 352
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header.binaryblock + b"\0" * (352 - len(header.binaryblock)))
        for plane in planes:
            f.write(plane.tobytes(order="F"))


def make_niigz(folder: str, gib: float, zeros: bool) -> str:
    n = _planes(gib, 1)
    path = os.path.join(folder, f"{'bomb' if zeros else 'u8'}_{gib}g.nii.gz")
    if not os.path.exists(path):
        rng = np.random.default_rng(1)
        plane = np.zeros((1024, 1024), np.uint8)
        planes = (plane if zeros else rng.integers(0, 255, (1024, 1024), dtype=np.uint8) for _ in range(n))
        _write_niigz(path, (1024, 1024, n), planes)
    return path


def make_extension(folder: str, suffix: str = ".nii") -> str:
    path = os.path.join(folder, "extension" + suffix)
    if not os.path.exists(path):
        img = nib.Nifti1Image(np.ones((64, 64, 64), np.float32), np.eye(4))
        img.header.extensions.append(nib.nifti1.Nifti1Extension(40, b"x" * (200 << 20)))
        nib.save(img, path)
    return path


def make_giant_chunk(folder: str) -> str:
    path = os.path.join(folder, "giant_chunk.h5")
    if not os.path.exists(path):
        n = 1000
        with h5py.File(path, "w") as f:
            ds = f.create_dataset("data", (n, n, n), np.uint8, chunks=(n, n, n), compression="lzf")
            ds[:8] = 1  # one chunk, mostly zeros: small on disk, 1e9 bytes decompressed
    return path


def run(args: list[str]) -> tuple[int, float, float, str]:
    """(exit code, peak RSS MiB, seconds, last stderr line) of one lucid run."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "lucid_cli.main", "pool3d", *args, "--force", "--quiet"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith(("Error", "Warning"))]
    return done.returncode, int(rss.group(1)) / 1024 if rss else float("nan"), seconds, (lines or [""])[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="size of the dense inputs (the bomb is 4x)")
    parser.add_argument("--limit", default="64M")
    parser.add_argument("--dir", default=None, help="where inputs are made and kept (default: a temp dir)")
    parser.add_argument("--only", nargs="*", default=None)
    opts = parser.parse_args()
    folder = opts.dir or tempfile.mkdtemp(prefix="lucid-bench-mem-")
    os.makedirs(folder, exist_ok=True)
    out = os.path.join(folder, "out")
    os.makedirs(out, exist_ok=True)
    baseline = run_baseline()
    cases = {
        "hdf5-lzf": lambda: ([make_hdf5(folder, opts.gib), f"{out}/a.h5", "-k", "2"], opts.limit),
        "niigz-to-h5": lambda: ([make_niigz(folder, opts.gib, False), f"{out}/b.h5", "-k", "2"], opts.limit),
        "gzip-bomb": lambda: ([make_niigz(folder, 4 * opts.gib, True), f"{out}/c.h5", "-k", "2"], opts.limit),
        "extension": lambda: ([make_extension(folder), f"{out}/d.nii", "-k", "2"], "16M"),
        "extension-gz": lambda: ([make_extension(folder, ".nii.gz"), f"{out}/d.nii.gz", "-k", "2"], "16M"),
        "giant-chunk": lambda: ([make_giant_chunk(folder), f"{out}/e.h5", "-k", "2"], opts.limit),
    }
    print(f"interpreter + libraries alone: {baseline:.0f} MiB peak RSS")
    print("| case | limit | exit | peak RSS MiB | over the limit MiB | s | message |")
    print("|---|---|---|---|---|---|---|")
    for name, make in cases.items():
        if opts.only and name not in opts.only:
            continue
        args, limit = make()
        code, rss, seconds, message = run([*args, "--memory-limit", limit])
        over = rss - int(limit[:-1]) * {"K": 1 / 1024, "M": 1, "G": 1024}[limit[-1]]
        print(f"| {name} | {limit} | {code} | {rss:.0f} | {over:.0f} | {seconds:.1f} | {message[:90]} |", flush=True)


def run_baseline() -> float:
    code = "import lucid.stream.api, lucid_cli.main, h5py, nibabel"
    done = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-c", code], capture_output=True, text=True)
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1)) / 1024


if __name__ == "__main__":
    main()
