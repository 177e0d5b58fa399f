"""Streaming benchmark: lucid pool3d_file against plain h5py/nibabel I/O, side by side in one run.

For a 512^3 float32 HDF5 (uncompressed) and a 512^3 int16 .nii it times
  baseline  read the whole input slab by slab and write an output of the pooled size (h5py / nibabel),
            fsync'ed like lucid's outputs
  forward   lucid k=2 s=2 streaming forward
  backward  lucid forward + gradient map (ones upstream)
and, in a child process each, the peak RSS of a forward run whose input is 8x its memory limit.

Run:  python benchmarks/bench_stream.py [--size 512] [--repeat 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import h5py
import nibabel as nib
import numpy as np

from lucid.stream.api import pool3d_file

SLAB = 32  # planes per baseline read


def make_inputs(folder: str, n: int) -> tuple[str, str]:
    h5_path, nii_path = os.path.join(folder, f"vol{n}.h5"), os.path.join(folder, f"vol{n}.nii")
    rng = np.random.default_rng(0)
    if not os.path.exists(h5_path):
        with h5py.File(h5_path, "w") as f:
            ds = f.create_dataset("data", (n, n, n), np.float32)
            for z in range(0, n, SLAB):
                ds[z : z + SLAB] = rng.standard_normal((min(SLAB, n - z), n, n), dtype=np.float32)
    if not os.path.exists(nii_path):
        data = np.lib.format.open_memmap(os.path.join(folder, "tmp.npy"), "w+", np.int16, (n, n, n), fortran_order=True)
        for z in range(0, n, SLAB):
            data[:, :, z : z + SLAB] = rng.integers(-1024, 3000, size=(n, n, min(SLAB, n - z)), dtype=np.int16)
        nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.5, 0.5, 1.0])), nii_path)
        del data
        os.remove(os.path.join(folder, "tmp.npy"))
    return h5_path, nii_path


def fsynced(path: str) -> None:
    """lucid fsyncs every output before renaming it into place; so does this baseline."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def baseline_h5(src: str, dst: str, n: int) -> None:
    m = n // 2
    with h5py.File(src, "r") as fin, h5py.File(dst, "w") as fout:
        ds_in = fin["data"]
        ds_out = fout.create_dataset("data", (m, m, m), np.float32)
        for z in range(0, n, SLAB):
            block = ds_in[z : z + SLAB]
            ds_out[z // 2 : (z + SLAB) // 2] = block[::2, ::2, ::2]  # stand-in for a result: no pooling cost
    fsynced(dst)


def baseline_nii(src: str, dst: str, n: int) -> None:
    m = n // 2
    img = nib.load(src)
    out = np.empty((m, m, m), np.int16, order="F")
    for z in range(0, n, SLAB):
        out[:, :, z // 2 : (z + SLAB) // 2] = img.dataobj[:, :, z : z + SLAB][::2, ::2, ::2]
    nib.save(nib.Nifti1Image(out, img.affine, img.header), dst)
    fsynced(dst)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def peak_rss_child(src: str, dst: str, limit: str) -> dict:
    code = (
        "import json; from lucid.stream.api import peak_memory_mib, pool3d_file; "
        f"r = pool3d_file({src!r}, {dst!r}, 2, memory_limit={limit!r}, compression='none', force=True); "
        "print(json.dumps({'peak_mib': peak_memory_mib(), 'slabs': r.slabs, "
        "'rows': r.rows_per_slab, 'estimate_mib': r.memory_estimate / 2**20}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to keep the generated inputs (default: a temp dir)")
    args = parser.parse_args()
    folder = args.dir or tempfile.mkdtemp(prefix="lucid-bench-")
    os.makedirs(folder, exist_ok=True)
    n = args.size
    h5_in, nii_in = make_inputs(folder, n)
    out = lambda name: os.path.join(folder, name)  # noqa: E731

    cases = {
        "HDF5 float32": (
            lambda: baseline_h5(h5_in, out("base.h5"), n),
            lambda: pool3d_file(h5_in, out("fwd.h5"), 2, compression="none", force=True),
            lambda: pool3d_file(h5_in, out("fwd.h5"), 2, compression="none", force=True, grad_out=out("grad.h5")),
        ),
        "NIfTI int16 (.nii)": (
            lambda: baseline_nii(nii_in, out("base.nii"), n),
            lambda: pool3d_file(nii_in, out("fwd.nii"), 2, force=True),
            lambda: pool3d_file(nii_in, out("fwd.nii"), 2, force=True, grad_out=out("grad.nii")),
        ),
    }
    print(f"{n}^3 volumes, k=2 s=2, default memory limit 512M, median of {args.repeat} (baseline and forward interleaved)\n")
    print("| input | read+write baseline s | lucid forward s | forward / baseline | lucid forward+backward s |")
    print("|---|---|---|---|---|")
    for name, (base, fwd, bwd) in cases.items():
        times: dict[str, list[float]] = {"base": [], "fwd": [], "bwd": []}
        for _ in range(args.repeat):  # baseline and forward alternate
            times["base"].append(timed(base))
            times["fwd"].append(timed(fwd))
        for _ in range(args.repeat):  # after: its big gradient maps leave write-back behind that would slow the others
            times["bwd"].append(timed(bwd))
        b, f, g = (statistics.median(times[k]) for k in ("base", "fwd", "bwd"))
        print(f"| {name} | {b:.2f} | {f:.2f} | {f / b:.2f}x | {g:.2f} |", flush=True)

    limit_mib = max(8, (n**3 * 4 >> 20) // 8)
    print(f"\nPeak RSS of a forward run with --memory-limit {limit_mib}M (input {n**3 * 4 >> 20} MiB float32 / {n**3 * 2 >> 20} MiB int16):\n")
    print("| input | slabs x rows | planner estimate MiB | peak RSS MiB | limit + 150 MiB |")
    print("|---|---|---|---|---|")
    for name, src, dst in (("HDF5 float32", h5_in, out("mem.h5")), ("NIfTI int16", nii_in, out("mem.nii"))):
        r = peak_rss_child(src, dst, f"{limit_mib}M")
        print(f"| {name} | {r['slabs']} x {r['rows']} | {r['estimate_mib']:.0f} | {r['peak_mib']:.0f} | {limit_mib + 150} |")


if __name__ == "__main__":
    main()
