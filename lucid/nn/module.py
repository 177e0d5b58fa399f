"""Module and Parameter: the PyTorch-style containers (minimal; see issue 3)."""

from __future__ import annotations

from lucid.tensor import Tensor


class Parameter(Tensor):
    """A Tensor that a Module registers as trainable (requires_grad=True)."""

    def __init__(self, data, requires_grad: bool = True, dtype=None):
        super().__init__(data, requires_grad=requires_grad, dtype=dtype)


class Module:
    """Base class of layers: subclasses set attributes in ``__init__`` and define ``forward``."""

    def __init__(self):
        pass

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)
