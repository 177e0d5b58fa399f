"""``max_pool3d`` as a differentiable op: forward and backward side by side."""

from __future__ import annotations

import numpy as np

from lucid.kernels import maxpool, tiled
from lucid.kernels.windows import PoolSpec
from lucid.tensor import Tensor


def max_pool3d(
    input,
    kernel_size=1,
    stride=1,
    padding=0,
    *,
    dilation=1,
    ceil_mode: bool = False,
    return_indices: bool = False,
    padding_mode: str = "zeros",
):
    """3-D max pooling of an (N, C, D, H, W) or (C, D, H, W) tensor.

    ``padding_mode="zeros"`` (the specification's behaviour) pads with zeros
    that can win the maximum; ``"ignore"`` never lets padding win (PyTorch).
    The gradient of each output goes to the first maximum of its window in
    (d, h, w) order (a NaN window: to its last NaN); a maximum in the zero
    padding sends its gradient nowhere.  With ``return_indices`` also returns
    flat int64 indices into D*H*W (-1 for a maximum in the zero padding).
    """
    x = input if isinstance(input, Tensor) else Tensor._wrap(np.asarray(input))  # read-only use: no copy
    data = x.data
    if data.ndim not in (4, 5):
        raise ValueError(f"max_pool3d expects a 4-D (C, D, H, W) or 5-D (N, C, D, H, W) input, got shape {data.shape}")
    maxpool.check_dtype(data.dtype)
    if data.size == 0:
        raise ValueError(f"max_pool3d got an empty input of shape {data.shape}")
    spec = PoolSpec.create(kernel_size, stride, padding, dilation, ceil_mode, padding_mode)
    windows = spec.windows(data.shape[-3:])
    axes = (data.ndim - 3, data.ndim - 2, data.ndim - 1)
    pad_value = 0 if padding_mode == "zeros" else None

    if not (x.requires_grad or return_indices):
        return Tensor._from_op(tiled.pool(data, axes, windows, pad_value), (x,), None)

    mults = maxpool.code_mults(windows, (0, 1, 2))  # gradients add up in PyTorch's row-major order
    values, codes = tiled.argpool(data, axes, windows, mults, pad_value)

    def backward(g):
        grad_in = np.empty(data.shape, g.dtype)  # zeroed block by block, in cache
        return (tiled.unpool(g, codes, axes, windows, mults, grad_in, lead=0, fresh=True),)

    out = Tensor._from_op(values, (x,), backward)
    if return_indices:
        return out, Tensor._wrap(maxpool.flat_indices(codes, axes, windows, mults))
    return out
