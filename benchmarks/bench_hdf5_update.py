"""What writing one dataset into an existing, large HDF5 file costs (issue 12.3).

lucid adds (or with --force replaces) a dataset in a copy of the file and
renames the copy into place, so a failure leaves the file as it was.  This
times, interleaved in one run (median of --repeat):

  fresh    pool a 256^3 float32 volume (k=2) into a new file
  update   the same into an existing file holding --size GiB of other datasets
  replace  the same again with --force (the dataset exists)

and reports how the copy was made (reflink, copy_file_range or copyfile),
the file's size after each replacement (HDF5 reuses the freed space of a
dataset deleted and recreated in one session) and the disk the copy needs.

Run:  python benchmarks/bench_hdf5_update.py [--size 2] [--repeat 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import h5py
import numpy as np

from lucid.io.copy import clone_file
from lucid.stream.api import pool3d_file


def make_big(path: str, gib: float) -> None:
    """A file with several datasets, `gib` GiB of float32 in all, plus groups and attributes."""
    rng = np.random.default_rng(0)
    rows = int(gib * (1 << 30) / (4 * 1024 * 1024))
    with h5py.File(path, "w") as f:
        f.attrs["study"] = "benchmark"
        for name, n in (("scan/a", rows // 2), ("scan/b", rows - rows // 2)):
            ds = f.create_dataset(name, (n, 1024, 1024), np.float32, chunks=(1, 1024, 1024))
            block = rng.standard_normal((16, 1024, 1024), dtype=np.float32)
            for z in range(0, n, 16):
                ds[z : z + 16] = block[: min(16, n - z)]
        f.create_dataset("labels", data=np.arange(1000))


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=float, default=2.0, help="GiB of other datasets in the existing file")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to put the files (default: a temporary directory)")
    args = ap.parse_args()
    volume = np.random.default_rng(1).standard_normal((256, 256, 256), dtype=np.float32)
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        big = os.path.join(d, "big.h5")
        make_big(big, args.size)
        size0 = os.path.getsize(big)
        probe = os.path.join(d, "probe.h5")
        open(probe, "wb").close()
        method = clone_file(big, probe)
        os.unlink(probe)
        times = {"fresh": [], "update": [], "replace": []}
        sizes = []
        for i in range(args.repeat):
            fresh = os.path.join(d, "fresh.h5")
            times["fresh"].append(timed(lambda: pool3d_file(volume, fresh, 2, compression="none", force=True)))
            os.unlink(fresh)
            name = f"{big}:/pooled{i}"
            times["update"].append(timed(lambda: pool3d_file(volume, name, 2, compression="none")))
            times["replace"].append(timed(lambda: pool3d_file(volume, name, 2, compression="none", force=True)))
            sizes.append(os.path.getsize(big))
        with h5py.File(big, "r") as f:
            assert f["scan/a"].shape[1:] == (1024, 1024) and len(f["labels"]) == 1000
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"existing file {size0 / (1 << 30):.2f} GiB ({args.size:g} GiB of other datasets), copy by {method}; "
              f"output 128^3 float32 (8 MiB), uncompressed; median of {args.repeat}")
        print()
        print("| write the pooled dataset into | seconds | extra over a new file |")
        print("|---|---|---|")
        for key, label in (("fresh", "a new file"), ("update", "the existing file (new dataset)"),
                           ("replace", "the existing file, --force (dataset exists)")):
            print(f"| {label} | {med[key]:.2f} | {med[key] - med['fresh']:+.2f} s |")
        print()
        growth = [f"{(s - size0) / (1 << 20):.1f}" for s in sizes]
        print(f"file growth after each add + replace pair (MiB over the original): {', '.join(growth)} "
              f"(each pair adds one 8 MiB dataset)")
        print(f"copy throughput: {size0 / (1 << 30) / max(med['update'] - med['fresh'], 1e-9):.2f} GiB/s; "
              f"free disk needed during the run: the file's size again ({size0 / (1 << 30):.2f} GiB) "
              f"unless the copy is a reflink")


if __name__ == "__main__":
    main()
