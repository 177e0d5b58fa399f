"""3-D convolution: the differentiable ``conv3d`` op and the ``Conv3d`` layer."""

from __future__ import annotations

import math
import numbers

import numpy as np

from lucid.nn.module import Module, Parameter, positive_int
from lucid.random import uniform
from lucid.tensor import Tensor


def _triple(value, name: str, minimum: int) -> tuple[int, int, int]:
    items = tuple(value) if isinstance(value, (tuple, list)) else (value,) * 3
    if len(items) != 3 or any(isinstance(i, bool) or not isinstance(i, numbers.Integral) for i in items):
        raise ValueError(f"{name} must be an int or a tuple of 3 ints (depth, height, width), got {value!r}")
    if min(items) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return tuple(int(i) for i in items)  # type: ignore[return-value]


def conv3d(input, weight, bias=None, stride=1, padding=0) -> Tensor:
    """Cross-correlate an (N, C, D, H, W) or (C, D, H, W) input with (O, C, kd, kh, kw) filters.

    ``bias`` has shape (O,); ``stride`` and ``padding`` (zeros) are an int or
    a (depth, height, width) triple.  Differentiable in input, weight and bias.
    """
    x = input if isinstance(input, Tensor) else Tensor(input)
    w = weight if isinstance(weight, Tensor) else Tensor(weight)
    b = None if bias is None else bias if isinstance(bias, Tensor) else Tensor(bias)
    s = _triple(stride, "stride", 1)
    p = _triple(padding, "padding", 0)
    if w.ndim != 5:
        raise ValueError(f"conv3d: weight must be 5-D (out_channels, in_channels, kd, kh, kw), got shape {w.shape}")
    if x.ndim not in (4, 5):
        raise ValueError(f"conv3d: input must be (N, C, D, H, W) or (C, D, H, W), got shape {x.shape}")
    if x.shape[-4] != w.shape[1]:
        raise ValueError(
            f"conv3d: input has {x.shape[-4]} channels (shape {x.shape}) but weight expects "
            f"in_channels={w.shape[1]} (weight shape {w.shape})"
        )
    if x.ndim == 4:  # unbatched: run as a batch of one
        out = conv3d(x.reshape((1,) + x.shape), w, b, s, p)
        return out.reshape(out.shape[1:])
    if b is not None and b.shape != (w.shape[0],):
        raise ValueError(f"conv3d: bias must have shape ({w.shape[0]},) to match weight {w.shape}, got {b.shape}")
    kernel = w.shape[2:]
    padded = tuple(n + 2 * q for n, q in zip(x.shape[2:], p))
    if any(k > n for k, n in zip(kernel, padded)):
        raise ValueError(f"conv3d: kernel {kernel} is larger than the padded input {padded} (padding {p})")

    xd, wd = x.data, w.data
    xp = np.pad(xd, [(0, 0), (0, 0)] + [(q, q) for q in p])
    out_spatial = tuple((n - k) // st + 1 for n, k, st in zip(padded, kernel, s))
    # One (N, C, Do, Ho, Wo) strided view of the padded input per kernel tap: each
    # tap is a channel contraction over all voxels at once, and no 27x im2col copy.
    taps = {
        ijk: (slice(None), slice(None))
        + tuple(slice(t, t + st * (n - 1) + 1, st) for t, st, n in zip(ijk, s, out_spatial))
        for ijk in np.ndindex(*kernel)
    }
    acc = np.zeros((wd.shape[0], xd.shape[0]) + out_spatial, dtype=np.result_type(xd, wd))  # (O, N, ...)
    for ijk, region in taps.items():
        acc += np.tensordot(wd[(slice(None), slice(None)) + ijk], xp[region], axes=([1], [1]))
    out = np.ascontiguousarray(acc.swapaxes(0, 1))
    if b is not None:
        out += b.data.reshape(-1, 1, 1, 1)

    def backward(g):
        gw = np.empty(wd.shape, dtype=np.result_type(g, xd))
        gxp = np.zeros(xp.shape, dtype=np.result_type(g, wd))
        gxp_cn = gxp.swapaxes(0, 1)  # (C, N, ...) view: what tensordot over O gives
        for ijk, region in taps.items():
            gw[(slice(None), slice(None)) + ijk] = np.tensordot(g, xp[region], axes=([0, 2, 3, 4], [0, 2, 3, 4]))
            gxp_cn[region] += np.tensordot(wd[(slice(None), slice(None)) + ijk], g, axes=([0], [1]))
        gx = gxp[(slice(None), slice(None)) + tuple(slice(q, q + n) for q, n in zip(p, xd.shape[2:]))]
        grads = [gx.astype(xd.dtype, copy=False), gw.astype(wd.dtype, copy=False)]
        if b is not None:
            grads.append(g.sum(axis=(0, 2, 3, 4)).astype(b.dtype, copy=False))
        return grads

    return Tensor._from_op(out, (x, w) if b is None else (x, w, b), backward)


class Conv3d(Module):
    """3-D convolution layer with PyTorch's default initialization.

    weight: (out_channels, in_channels, kd, kh, kw); weight and bias are drawn
    from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = in_channels * kd * kh * kw
    (PyTorch's ``kaiming_uniform_(a=sqrt(5))``), using ``rng`` or ``lucid.random``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        bias: bool = True,
        *,
        rng: np.random.Generator | None = None,
    ):
        super().__init__()
        self.in_channels = positive_int("Conv3d", "in_channels", in_channels)
        self.out_channels = positive_int("Conv3d", "out_channels", out_channels)
        self.kernel_size = _triple(kernel_size, "kernel_size", 1)
        self.stride = _triple(stride, "stride", 1)
        self.padding = _triple(padding, "padding", 0)
        fan_in = self.in_channels * math.prod(self.kernel_size)
        bound = 1.0 / math.sqrt(fan_in)
        shape = (self.out_channels, self.in_channels) + self.kernel_size
        self.weight = Parameter(uniform(-bound, bound, shape, rng=rng))
        if bias:
            self.bias = Parameter(uniform(-bound, bound, (self.out_channels,), rng=rng))
        else:
            self.register_parameter("bias", None)

    def forward(self, input) -> Tensor:
        return conv3d(input, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if any(self.padding):  # PyTorch's repr leaves out default settings
            text += f", padding={self.padding}"
        return text if self.bias is not None else text + ", bias=False"


Conv3D = Conv3d
