"""Kernel benchmark: lucid's numpy max_pool3d against PyTorch CPU, side by side in one run.

Run:  python benchmarks/bench_kernels.py [--repeat 15] [--quick]
Needs torch (pip install -e '.[bench]'); prints a markdown table of medians and ratios.
Torch and lucid run in alternating blocks, so a slow spell on a shared machine hits both alike.
Forward is values only (no gradient); forward+backward routes a ones gradient.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import lucid
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


def paired_medians(a, b, repeat: int, blocks: int = 3) -> tuple[float, float]:
    """Median seconds of ``a`` and of ``b``, timed in alternating blocks.

    Blocks, not single calls: each library's steady state (warm allocator and
    caches) is what a loop of calls sees, and switching after every call
    measured lucid up to 2x slower.  Alternating blocks lets a slow spell on
    this shared machine hit both sides alike."""
    times: tuple[list[float], list[float]] = ([], [])
    for block in range(blocks):
        for fn, spent in zip((a, b), times):
            warm_up(fn)  # after the switch: torch's spinning workers and lucid's sleeping ones settle
            for _ in range(-(-repeat // blocks)):
                start = time.perf_counter()
                fn()
                spent.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


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
    args = parser.parse_args()
    import torch

    print(f"lucid {lucid.__version__}, numpy {np.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), float32, median of {args.repeat} (alternating blocks of {-(-args.repeat // 3)}, each after {WARM_UP_SECONDS*1e3:.0f} ms of warm-up calls)\n")
    print("| shape | k, s, p | torch fwd ms | lucid fwd ms | fwd speed-up | torch fwd+bwd ms | lucid fwd+bwd ms | fwd+bwd speed-up |")
    print("|---|---|---|---|---|---|---|---|")
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
                lambda: torch.nn.functional.max_pool3d(tx, k, s, p), lambda: max_pool3d(data, k, s, p), args.repeat
            )

            tleaf = tx.detach().requires_grad_(True)
            lleaf = lucid.Tensor(data, requires_grad=True)

            def torch_fb():
                tleaf.grad = None
                y = torch.nn.functional.max_pool3d(tleaf, k, s, p)
                y.backward(torch.ones_like(y))

            def lucid_fb():
                lleaf.grad = None
                y = max_pool3d(lleaf, k, s, p)
                y.backward()

            t_fb, l_fb = paired_medians(torch_fb, lucid_fb, args.repeat)
            if (k, s, p) == (2, 2, 0):
                torch_k2s2 = t_fwd
            print(
                f"| {shape} | {k}, {s}, {p} | {t_fwd*1e3:.1f} | {l_fwd*1e3:.1f} | {t_fwd/l_fwd:.1f}x "
                f"| {t_fb*1e3:.1f} | {l_fb*1e3:.1f} | {t_fb/l_fb:.1f}x |",
                flush=True,
            )
        if shape[0] > 1:  # the small batched shapes: how far numpy itself can go
            bare = median_of(bare_passes_k2s2(data), args.repeat)
            floors.append(f"{shape} k=2 s=2: three bare np.maximum passes on one thread take {bare*1e3:.1f} ms, "
                          f"{torch_k2s2/bare:.1f}x faster than torch's forward")
        if shape[-1] == 256:
            out = np.empty_like(data)
            copy, fwd = paired_medians(lambda: np.copyto(out, data), lambda: max_pool3d(data, 2, 2, 0), args.repeat)
            print(f"\nforward {shape} k=2 s=2: {fwd*1e3:.1f} ms = {fwd/copy:.2f}x one np.copyto of the input ({copy*1e3:.1f} ms)")
    for line in floors:
        print(f"\nnumpy floor for {line}")


if __name__ == "__main__":
    main()
