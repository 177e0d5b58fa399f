"""Kernel benchmark: lucid's max_pool3d (numpy kernels, and compiled ones) against PyTorch CPU, side by side.

Run:  python benchmarks/bench_kernels.py [--repeat 15] [--quick] [--dtypes]
Needs torch (pip install -e '.[bench]'); prints markdown tables of medians and ratios.
Torch, lucid with ``numpy`` kernels and lucid with ``auto`` kernels (numba
where it wins, ``lucid.kernels.backend``) run in alternating blocks, so a slow
spell on a shared machine hits all alike.  Forward is values only, with
``auto`` after ``preload()`` (compiled, but numpy's passes for stride 1,
at memory speed there); forward+backward routes a ones gradient.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import lucid
from lucid.kernels import backend
from lucid.nn.functional import max_pool3d

SHAPES = [(1, 1, 128, 128, 128), (2, 4, 32, 64, 64), (8, 16, 16, 32, 32), (1, 1, 256, 256, 256)]
PARAMS = [(2, 2, 0), (3, 1, 1), (3, 2, 1)]


WARM_UP_SECONDS = 0.03


def warm_up(fn) -> None:
    """Call ``fn`` at least 3 times and for at least WARM_UP_SECONDS.

    Time, not a count: after each call PyTorch's OpenMP workers busy-wait for
    about 10 ms (libgomp's default spin) and hold this machine's second core.
    Measured: lucid's calls in the 10 ms after a block of torch calls ran
    1.2-1.4x slower (the first one 2x); with GOMP_SPINCOUNT=0 they did not."""
    start = time.perf_counter()
    calls = 0
    while calls < 3 or time.perf_counter() - start < WARM_UP_SECONDS:
        fn()
        calls += 1


def median_of(fn, repeat: int) -> float:
    warm_up(fn)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired_medians(*fns, repeat: int, blocks: int = 3) -> tuple[float, ...]:
    """Median seconds of each of ``fns``, timed in alternating blocks.

    Blocks, not single calls: each library's steady state (warm allocator and
    caches) is what a loop of calls sees, and switching after every call
    measured lucid up to 2x slower.  Alternating blocks lets a slow spell on
    this shared machine hit every side alike."""
    times: list[list[float]] = [[] for _ in fns]
    for block in range(blocks):
        for fn, spent in zip(fns, times):
            warm_up(fn)  # after the switch: torch's spinning workers and lucid's sleeping ones settle
            for _ in range(-(-repeat // blocks)):
                start = time.perf_counter()
                fn()
                spent.append(time.perf_counter() - start)
    return tuple(statistics.median(t) for t in times)


def with_kernels(name: str, fn):
    def run():
        backend.set_backend(name)
        try:
            fn()
        finally:
            backend.set_backend(None)
    return run


def bare_passes_k2s2(x: np.ndarray):
    """The least numpy work for k=2 s=2: one np.maximum per axis into arrays made beforehand, one thread."""
    n, c, d, h, w = x.shape
    a = np.empty((n, c, d // 2, h, w), x.dtype)
    b = np.empty((n, c, d // 2, h // 2, w), x.dtype)
    out = np.empty((n, c, d // 2, h // 2, w // 2), x.dtype)

    def run() -> None:
        np.maximum(x[:, :, 0::2], x[:, :, 1::2], out=a)
        np.maximum(a[..., 0::2, :], a[..., 1::2, :], out=b)
        np.maximum(b[..., 0::2], b[..., 1::2], out=out)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="skip the 256^3 shape")
    parser.add_argument("--dtypes", action="store_true", help="also float64, int16 and uint8 on 128^3")
    parser.add_argument("--busy", action="store_true",
                        help="run beside a busy loop in another process (a shared machine's other tenant)")
    args = parser.parse_args()
    if args.busy:
        import atexit
        import subprocess
        import sys

        loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        atexit.register(loop.kill)
        print("beside a busy loop in another process (one core of two taken)\n")
    import torch

    if not backend.preload():
        raise SystemExit("numba did not load: the compiled kernels cannot be measured")

    print(f"lucid {lucid.__version__}, numpy {np.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), float32, median of {args.repeat} (alternating blocks of {-(-args.repeat // 3)}, each after {WARM_UP_SECONDS*1e3:.0f} ms of warm-up calls)\n")
    print("| shape | k, s, p | torch fwd ms | lucid fwd ms | fwd speed-up | torch fwd+bwd ms | lucid numpy fwd+bwd ms "
          "| lucid auto fwd+bwd ms | numpy speed-up | auto speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    floors: list[str] = []
    for shape in SHAPES:
        if args.quick and shape[-1] == 256:
            continue
        data = rng.standard_normal(shape, dtype=np.float32)
        tx = torch.from_numpy(data)
        torch_k2s2 = None
        for k, s, p in PARAMS:
            t_fwd, l_fwd = paired_medians(
                lambda: torch.nn.functional.max_pool3d(tx, k, s, p), lambda: max_pool3d(data, k, s, p),
                repeat=args.repeat)
            torch_fb, lucid_fb = fwd_bwd(torch, data, k, s, p)
            t_fb, n_fb, a_fb = paired_medians(torch_fb, with_kernels("numpy", lucid_fb), with_kernels("auto", lucid_fb),
                                              repeat=args.repeat)
            if (k, s, p) == (2, 2, 0):
                torch_k2s2 = t_fwd
            print(
                f"| {shape} | {k}, {s}, {p} | {t_fwd*1e3:.1f} | {l_fwd*1e3:.1f} | {t_fwd/l_fwd:.1f}x "
                f"| {t_fb*1e3:.1f} | {n_fb*1e3:.1f} | {a_fb*1e3:.1f} | {t_fb/n_fb:.1f}x | {t_fb/a_fb:.1f}x |",
                flush=True,
            )
        if shape[0] > 1:  # the small batched shapes: how far numpy itself can go
            bare = median_of(bare_passes_k2s2(data), args.repeat)
            floors.append(f"{shape} k=2 s=2: three bare np.maximum passes on one thread take {bare*1e3:.1f} ms, "
                          f"{torch_k2s2/bare:.1f}x faster than torch's forward")
        if shape[-1] == 256:
            out = np.empty_like(data)
            _, lucid_fb = fwd_bwd(None, data, 2, 2, 0)
            copy, fwd, fb = paired_medians(lambda: np.copyto(out, data), lambda: max_pool3d(data, 2, 2, 0),
                                           with_kernels("auto", lucid_fb), repeat=args.repeat)
            print(f"\n{shape} k=2 s=2: forward {fwd*1e3:.1f} ms = {fwd/copy:.2f}x one np.copyto of the input "
                  f"({copy*1e3:.1f} ms); forward+backward (compiled) {fb*1e3:.1f} ms = {fb/copy:.2f}x")
    for line in floors:
        print(f"\nnumpy floor for {line}")
    if args.dtypes:
        other_dtypes(torch, args.repeat)


def fwd_bwd(torch, data: np.ndarray, k, s, p):
    """forward+backward of one case, for torch (None without it) and for lucid."""
    lleaf = lucid.Tensor(data, requires_grad=True)

    def lucid_fb():
        lleaf.grad = None
        y = max_pool3d(lleaf, k, s, p)
        y.backward()

    if torch is None:
        return None, lucid_fb
    tleaf = torch.from_numpy(data).requires_grad_(True)

    def torch_fb():
        tleaf.grad = None
        y = torch.nn.functional.max_pool3d(tleaf, k, s, p)
        y.backward(torch.ones_like(y))

    return torch_fb, lucid_fb


def other_dtypes(torch, repeat: int) -> None:
    """float64, int16 and uint8 on one shape.  PyTorch has no integer max_pool3d on the CPU
    ("max_pool3d" not implemented for 'Short'/'Byte'), so integers compare lucid's two kernels."""
    shape = (1, 1, 128, 128, 128)
    print(f"\n{shape}, forward+backward (float gradient for integer inputs: lucid's backward of an integer "
          "input is the float gradient of its winners)\n")
    print("| dtype | k, s, p | torch ms | lucid numpy ms | lucid auto ms | numpy vs torch | auto vs torch "
          "| auto vs numpy |")
    print("|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(1)
    for dtype in (np.float64, np.int16, np.uint8):
        data = (rng.standard_normal(shape) * 50).astype(dtype)
        for k, s, p in PARAMS:
            lucid_fb = integer_fb(data, k, s, p) if data.dtype.kind != "f" else fwd_bwd(None, data, k, s, p)[1]
            sides = [with_kernels("numpy", lucid_fb), with_kernels("auto", lucid_fb)]
            if data.dtype.kind == "f":
                sides.insert(0, fwd_bwd(torch, data, k, s, p)[0])
            got = paired_medians(*sides, repeat=repeat)
            t, n, a = got if len(got) == 3 else (None, *got)

            def vs(v, t=t):
                return "no integer max_pool3d" if t is None else f"{t/v:.1f}x"
            print(f"| {np.dtype(dtype).name} | {k}, {s}, {p} | {'-' if t is None else f'{t*1e3:.1f}'} | {n*1e3:.1f} "
                  f"| {a*1e3:.1f} | {vs(n)} | {vs(a)} | {n/a:.1f}x |", flush=True)


def integer_fb(data: np.ndarray, k, s, p):
    """An integer input's forward with winners and its backward, through the kernels (Tensor grads are float)."""
    from lucid.kernels import maxpool, tiled
    from lucid.kernels.windows import PoolSpec

    windows = PoolSpec.create(k, s, p).windows(data.shape[-3:])
    axes = (2, 3, 4)
    mults = maxpool.code_mults(windows)

    def run():
        values, codes = tiled.argpool(data, axes, windows, mults, 0)
        out = np.empty(data.shape, np.float32)
        tiled.unpool(np.ones(values.shape, np.float32), codes, axes, windows, mults, out, lead=0, fresh=True)

    return run


if __name__ == "__main__":
    main()
