"""Which compare-and-select loops numba (LLVM) vectorises: the winner bookkeeping's inner loop.

Run:  pip install numba && python benchmarks/bench_numba_select.py   (numba is not a lucid dependency)
Measured 2026-12-03 (numba 0.68.1, znver3, 1024 float32 per call, ns per element):
ternary select of values 0.56, np.maximum on scalars 0.18 (vectorised), ternary select
into a uint32 code array 0.81, bit-mask select 1.16, float32 codes updated by arithmetic
(code += (c - code) * float32(win)) 0.37.  numpy's np.maximum over the same arrays: 0.10-0.15.
"""

from __future__ import annotations

import time

import numpy as np
from numba import njit


@njit(nogil=True)
def ternary_values(src, best, code, c):
    for i in range(best.shape[0]):
        v, b = src[i], best[i]
        best[i] = v if (v > b) | (v != v) else b


@njit(nogil=True)
def maximum_values(src, best, code, c):
    for i in range(best.shape[0]):
        best[i] = np.maximum(best[i], src[i])


@njit(nogil=True)
def ternary_codes(src, best, code, c):
    for i in range(best.shape[0]):
        v, b = src[i], best[i]
        w = (v > b) | (v != v)
        best[i] = v if w else b
        code[i] = c if w else code[i]


@njit(nogil=True)
def float_codes(src, best, code, c):
    for i in range(best.shape[0]):
        v, b = src[i], best[i]
        w = np.float32((v > b) | (v != v))
        best[i] = np.maximum(b, v)
        k = code[i]
        code[i] = k + (c - k) * w


def main() -> None:
    n = 1024
    src = np.random.default_rng(0).random(n).astype(np.float32)
    for fn, code, c in ((ternary_values, np.zeros(n, np.uint32), np.uint32(3)),
                        (maximum_values, np.zeros(n, np.uint32), np.uint32(3)),
                        (ternary_codes, np.zeros(n, np.uint32), np.uint32(3)),
                        (float_codes, np.zeros(n, np.float32), np.float32(3))):
        best = np.zeros(n, np.float32)

        @njit
        def repeat(times, src, best, code, c, fn=fn):
            for _ in range(times):
                fn(src, best, code, c)

        repeat(2, src, best, code, c)
        start = time.perf_counter()
        repeat(50000, src, best, code, c)
        print(f"{fn.__name__:16s} {(time.perf_counter() - start) / 50000 / n * 1e9:.3f} ns/element")


if __name__ == "__main__":
    main()
