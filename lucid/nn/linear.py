"""Fully connected layer: the differentiable ``linear`` op and the ``Linear`` layer."""

from __future__ import annotations

import math

import numpy as np

from lucid.nn.module import Module, Parameter, positive_int
from lucid.random import uniform
from lucid.tensor import Tensor


def linear(input, weight, bias=None) -> Tensor:
    """``input @ weight.T + bias`` for input (..., in), weight (out, in), bias (out,)."""
    x = input if isinstance(input, Tensor) else Tensor(input)
    w = weight if isinstance(weight, Tensor) else Tensor(weight)
    b = None if bias is None else bias if isinstance(bias, Tensor) else Tensor(bias)
    if w.ndim != 2:
        raise ValueError(f"linear: weight must be 2-D (out_features, in_features), got shape {w.shape}")
    if x.ndim < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(
            f"linear: input of shape {x.shape} has {x.shape[-1] if x.ndim else 0} features "
            f"but weight expects in_features={w.shape[1]} (weight shape {w.shape})"
        )
    if b is not None and b.shape != (w.shape[0],):
        raise ValueError(f"linear: bias must have shape ({w.shape[0]},) to match weight {w.shape}, got {b.shape}")
    xd, wd = x.data, w.data
    out = xd @ wd.T
    if b is not None:
        out = out + b.data

    def backward(g):
        g2 = g.reshape(-1, wd.shape[0])
        grads = [(g @ wd).astype(xd.dtype, copy=False), (g2.T @ xd.reshape(-1, wd.shape[1])).astype(wd.dtype, copy=False)]
        if b is not None:
            grads.append(g2.sum(axis=0).astype(b.dtype, copy=False))
        return grads

    return Tensor._from_op(out, (x, w) if b is None else (x, w, b), backward)


class Linear(Module):
    """``y = x @ weight.T + bias`` with PyTorch's default initialization.

    weight: (out_features, in_features); weight and bias are drawn from
    U(-1/sqrt(in_features), 1/sqrt(in_features)), using ``rng`` or ``lucid.random``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        rng: np.random.Generator | None = None,
    ):
        super().__init__()
        self.in_features = positive_int("Linear", "in_features", in_features)
        self.out_features = positive_int("Linear", "out_features", out_features)
        bound = 1.0 / math.sqrt(self.in_features)
        self.weight = Parameter(uniform(-bound, bound, (self.out_features, self.in_features), rng=rng))
        if bias:
            self.bias = Parameter(uniform(-bound, bound, (self.out_features,), rng=rng))
        else:
            self.register_parameter("bias", None)

    def forward(self, input) -> Tensor:
        return linear(input, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
