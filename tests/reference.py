"""A deliberately naive max_pool3d: one Python loop per output and per tap.

It spells out the rules the fast kernels must follow, nothing more:
windows read ``o*s - p + j*dilation`` per axis; zero padding takes part with
the value 0 (``"zeros"``) or not at all (``"ignore"``); a ceil_mode window's
overhang past the padded input never takes part; the first maximum in
row-major (d, h, w) tap order wins, NaN beats any number and a later NaN
beats an earlier one; the backward adds each output's gradient to its
winner in row-major output order (nothing for a winner in the padding).
"""

from __future__ import annotations

import itertools

import numpy as np


def output_size(n, k, s, p, d, ceil_mode):
    room = n + 2 * p - d * (k - 1) - 1
    out = (-(-room // s) if ceil_mode else room // s) + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return out


def naive_max_pool3d(x, kernel, stride, padding, dilation=(1, 1, 1), ceil_mode=False, padding_mode="zeros", grad=None):
    """x: (N, C, D, H, W). Returns (values, flat indices with -1 in padding, input gradient or None)."""
    n_, c_, *sizes = x.shape
    outs = [output_size(sizes[a], kernel[a], stride[a], padding[a], dilation[a], ceil_mode) for a in range(3)]
    values = np.zeros((n_, c_, *outs), x.dtype)
    indices = np.zeros((n_, c_, *outs), np.int64)
    grad_in = None if grad is None else np.zeros(x.shape, grad.dtype)
    for n, c in itertools.product(range(n_), range(c_)):
        for o in itertools.product(*(range(m) for m in outs)):
            best, best_index = None, None
            for taps in itertools.product(*(range(k) for k in kernel)):
                pos = [o[a] * stride[a] - padding[a] + taps[a] * dilation[a] for a in range(3)]
                if any(pos[a] >= sizes[a] + padding[a] for a in range(3)):
                    continue  # the overhang of a ceil_mode window: outside the padded input
                inside = all(0 <= pos[a] < sizes[a] for a in range(3))
                if inside:
                    val = x[n, c, pos[0], pos[1], pos[2]]
                    index = (pos[0] * sizes[1] + pos[1]) * sizes[2] + pos[2]
                elif padding_mode == "zeros":
                    val, index = x.dtype.type(0), -1
                else:
                    continue
                if best is None or val > best or val != val:
                    best, best_index = val, index
            values[(n, c, *o)] = best
            indices[(n, c, *o)] = best_index
            if grad is not None and best_index >= 0:
                pos = np.unravel_index(best_index, sizes)
                grad_in[(n, c, *pos)] = grad_in[(n, c, *pos)] + grad[(n, c, *o)]
    return values, indices, grad_in
