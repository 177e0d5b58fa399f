"""Activations: the differentiable ``relu`` op and the ``ReLU`` layer."""

from __future__ import annotations

import numpy as np

from lucid.nn.module import Module
from lucid.tensor import Tensor


def relu(input) -> Tensor:
    """``max(input, 0)`` elementwise; the gradient at exactly 0 is 0 (as in PyTorch)."""
    x = input if isinstance(input, Tensor) else Tensor(input)
    xd = x.data
    return Tensor._from_op(np.maximum(xd, 0).astype(xd.dtype, copy=False), (x,), lambda g: (g * (xd > 0),))


class ReLU(Module):
    """Applies ``relu`` elementwise."""

    def forward(self, input) -> Tensor:
        return relu(input)
