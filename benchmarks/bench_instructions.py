"""Kernel instruction counts: repeatable where timings on a shared machine are not.

Run:  python benchmarks/bench_instructions.py [--quick] [--kernels numpy,compiled]   (about 1 min per case)
Needs valgrind.  Each case runs in a child process under callgrind, once with
2 calls and once with 6; the difference over 4 is the instructions of one
call, so start-up and first-call costs cancel.  OpenBLAS's threads are held
to one (their spinning otherwise adds 10-15% of noise), the hash seed is
fixed and address randomisation is off, so a count repeats to about 0.1%.
The kernels run on one thread (numba's inline, see ``ENV``).  Counts are not time: memory-bound work
(most of the backward) costs more than its instructions say.  ``compiled``
is what ``LUCID_KERNELS=auto`` runs once numba is loaded (``preload()``):
the numba loops where they apply, numpy elsewhere.  Their cache is warmed
first, outside and inside callgrind, so neither count holds a compile; the
compiled counts are of code built for the CPU valgrind shows (AVX2, no AVX-512).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

SHAPES = [(2, 4, 32, 64, 64), (8, 16, 16, 32, 32), (1, 1, 128, 128, 128)]
PARAMS = [(2, 2, 0), (3, 1, 1), (3, 2, 1)]


def child(shape, k: int, s: int, p: int, mode: str, calls: int, kernels: str) -> None:
    import numpy as np

    from lucid.kernels import backend, maxpool, tiled
    from lucid.kernels.windows import PoolSpec

    backend.set_backend("numpy" if kernels == "numpy" else "auto")
    if kernels == "compiled" and not backend.preload():
        raise SystemExit("numba did not load")

    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    windows = PoolSpec.create(k, s, p).windows(shape[-3:])
    axes = (2, 3, 4)
    mults = maxpool.code_mults(windows, (0, 1, 2))
    for _ in range(calls):
        if mode == "fwd":
            tiled.pool(x, axes, windows, 0, threads=1)
            continue
        values, codes = tiled.argpool(x, axes, windows, mults, 0, threads=1)
        grad = np.empty(shape, np.float32)
        tiled.unpool(np.ones(values.shape, np.float32), codes, axes, windows, mults, grad, lead=0, fresh=True, threads=1)


# One thread, run inline: under numba's workqueue layer the launching thread waits for its
# worker in a spin loop, and valgrind runs threads one at a time, so a count held that spin
# (3,988 M instructions per call against 1.5 M inline).  OpenMP with one thread runs the loop
# in the calling thread.
ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONHASHSEED="0",
           NUMBA_THREADING_LAYER="omp", OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")


def warm(args: list[str]) -> None:
    """Compile (or load) the kernels once, under callgrind too: there numba sees a CPU without
    AVX-512 and compiles its own cache entry, which a count must not hold (10,549 M a call)."""
    subprocess.run([sys.executable, __file__, "--child", *args], env=ENV, check=True)
    collected(args)


def collected(args: list[str]) -> int:
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__, "--child", *args]
    if shutil.which("setarch"):
        command = ["setarch", "-R", *command]
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, check=True)
    return int(re.search(r"Collected : ([\d,]+)", result.stderr).group(1).replace(",", ""))


def per_call(shape, k: int, s: int, p: int, mode: str, kernels: str) -> float:
    spec = [",".join(map(str, shape)), str(k), str(s), str(p), mode]
    warm(spec + ["1", kernels])
    return (collected(spec + ["6", kernels]) - collected(spec + ["2", kernels])) / 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="stride-2 cases of the small shapes only")
    parser.add_argument("--kernels", default="numpy,compiled", help="numpy, compiled or both (comma-separated)")
    parser.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        shape, k, s, p, mode, calls, kernels = args.child
        child(tuple(int(v) for v in shape.split(",")), int(k), int(s), int(p), mode, int(calls), kernels)
        return
    if not shutil.which("valgrind"):
        sys.exit("bench_instructions: valgrind is not installed")
    kernels = args.kernels.split(",")
    print("millions of instructions per call, one thread, float32 (callgrind)\n")
    print("| shape | k, s, p | " + " | ".join(f"{name} forward | {name} forward+backward" for name in kernels) + " |")
    print("|---|---|" + "---|---|" * len(kernels))
    for shape in SHAPES:
        for k, s, p in PARAMS:
            if args.quick and (s == 1 or shape[0] == 1):
                continue
            counts = [per_call(shape, k, s, p, mode, name) / 1e6 for name in kernels for mode in ("fwd", "fb")]
            print(f"| {shape} | {k}, {s}, {p} | " + " | ".join(f"{c:.1f}" for c in counts) + " |", flush=True)


if __name__ == "__main__":
    main()
