"""Kernel benchmark: lucid's numpy max_pool3d against PyTorch CPU, side by side in one run.

Run:  python benchmarks/bench_kernels.py [--repeat 7] [--quick]
Needs torch (pip install -e '.[bench]'); prints a markdown table of medians and ratios.
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


def median_seconds(fn, repeat: int) -> float:
    fn()  # warm-up: page faults, thread pools
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="skip the 256^3 shape")
    args = parser.parse_args()
    import torch

    print(f"lucid {lucid.__version__}, numpy {np.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), float32, median of {args.repeat}\n")
    print("| shape | k, s, p | torch fwd ms | lucid fwd ms | fwd speed-up | torch fwd+bwd ms | lucid fwd+bwd ms | fwd+bwd speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        if args.quick and shape[-1] == 256:
            continue
        data = rng.standard_normal(shape, dtype=np.float32)
        tx = torch.from_numpy(data)
        for k, s, p in PARAMS:
            t_fwd = median_seconds(lambda: torch.nn.functional.max_pool3d(tx, k, s, p), args.repeat)
            l_fwd = median_seconds(lambda: max_pool3d(data, k, s, p), args.repeat)

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

            t_fb = median_seconds(torch_fb, args.repeat)
            l_fb = median_seconds(lucid_fb, args.repeat)
            print(
                f"| {shape} | {k}, {s}, {p} | {t_fwd*1e3:.1f} | {l_fwd*1e3:.1f} | {t_fwd/l_fwd:.1f}x "
                f"| {t_fb*1e3:.1f} | {l_fb*1e3:.1f} | {t_fb/l_fb:.1f}x |",
                flush=True,
            )
        if shape[-1] == 256:
            out = np.empty_like(data)
            copy = median_seconds(lambda: np.copyto(out, data), args.repeat)
            fwd = median_seconds(lambda: max_pool3d(data, 2, 2, 0), args.repeat)
            print(f"\nforward {shape} k=2 s=2: {fwd*1e3:.1f} ms = {fwd/copy:.2f}x one np.copyto of the input ({copy*1e3:.1f} ms)")


if __name__ == "__main__":
    main()
