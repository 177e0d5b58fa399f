"""Kernel instruction counts: repeatable where timings on a shared machine are not.

Run:  python benchmarks/bench_instructions.py [--quick]   (about 1 min per case: callgrind is slow)
Needs valgrind.  Each case runs in a child process under callgrind, once with
2 calls and once with 6; the difference over 4 is the instructions of one
call, so start-up and first-call costs cancel.  OpenBLAS's threads are held
to one (their spinning otherwise adds 10-15% of noise), the hash seed is
fixed and address randomisation is off, so a count repeats to about 0.1%.
The kernels run on one thread.  Counts are not time: memory-bound work
(most of the backward) costs more than its instructions say.
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


def child(shape, k: int, s: int, p: int, mode: str, calls: int) -> None:
    import numpy as np

    from lucid.kernels import maxpool, tiled
    from lucid.kernels.windows import PoolSpec

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


def collected(args: list[str]) -> int:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONHASHSEED="0")
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__, "--child", *args]
    if shutil.which("setarch"):
        command = ["setarch", "-R", *command]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return int(re.search(r"Collected : ([\d,]+)", result.stderr).group(1).replace(",", ""))


def per_call(shape, k: int, s: int, p: int, mode: str) -> float:
    spec = [",".join(map(str, shape)), str(k), str(s), str(p), mode]
    return (collected(spec + ["6"]) - collected(spec + ["2"])) / 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="stride-2 cases of the small shapes only")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        shape, k, s, p, mode, calls = args.child
        child(tuple(int(v) for v in shape.split(",")), int(k), int(s), int(p), mode, int(calls))
        return
    if not shutil.which("valgrind"):
        sys.exit("bench_instructions: valgrind is not installed")
    print("millions of instructions per call, one thread, float32 (callgrind)\n")
    print("| shape | k, s, p | forward | forward+backward |")
    print("|---|---|---|---|")
    for shape in SHAPES:
        for k, s, p in PARAMS:
            if args.quick and (s == 1 or shape[0] == 1):
                continue
            fwd, fb = (per_call(shape, k, s, p, mode) / 1e6 for mode in ("fwd", "fb"))
            print(f"| {shape} | {k}, {s}, {p} | {fwd:.1f} | {fb:.1f} |", flush=True)


if __name__ == "__main__":
    main()
