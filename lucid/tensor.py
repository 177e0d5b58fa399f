"""Tensor: a numpy array with a gradient and the op that made it.

Autograd in the style of micrograd: every differentiable op builds its output
with ``Tensor._from_op(data, parents, backward)``, where ``backward(g)``
returns one gradient array per parent, written right beside the forward.
``Tensor.backward`` walks the graph once in reverse topological order.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np

ArrayLike = "np.ndarray | Tensor | float | int | Sequence"
BackwardFn = Callable[[np.ndarray], Sequence["np.ndarray | None"]]


class Tensor:
    """An n-dimensional array that can record operations for autograd."""

    __array_priority__ = 100  # so ndarray (op) Tensor defers to Tensor

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        if isinstance(data, Tensor):
            data = data.data
        array = np.array(data, dtype=dtype, copy=True)
        if array.dtype == object:
            raise TypeError(f"Tensor data must be numeric, got {data!r}")
        if requires_grad and not np.issubdtype(array.dtype, np.floating):
            raise TypeError(f"only floating point tensors can require gradients, got dtype {array.dtype}")
        self.data: np.ndarray = array
        self.requires_grad = bool(requires_grad)
        self.grad: Tensor | None = None
        self._parents: tuple[Tensor, ...] = ()
        self._backward: BackwardFn | None = None

    @classmethod
    def _wrap(cls, data: np.ndarray) -> "Tensor":
        """A leaf around ``data`` without copying it (internal: results the caller owns)."""
        return cls._from_op(data, (), None)

    @classmethod
    def _from_op(cls, data: np.ndarray, parents: Iterable["Tensor"], backward: BackwardFn) -> "Tensor":
        """Wrap an op's result; record the graph only when a parent needs gradients."""
        out = cls.__new__(cls)
        out.data = data
        out.grad = None
        parents = tuple(parents)
        out.requires_grad = any(p.requires_grad for p in parents)
        out._parents = parents if out.requires_grad else ()
        out._backward = backward if out.requires_grad else None
        return out

    # -- array protocol -------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def numpy(self) -> np.ndarray:
        return self.data

    def __array__(self, dtype=None, copy=None):
        if dtype is not None and dtype != self.data.dtype:
            return self.data.astype(dtype)
        return self.data.copy() if copy else self.data

    def __len__(self) -> int:
        return len(self.data)

    def size(self, dim: int | None = None):
        """Shape as a tuple, or the length of one dimension (PyTorch's ``size``)."""
        if dim is None:
            return self.shape
        if not -self.ndim <= dim < self.ndim:
            raise IndexError(f"dimension {dim} out of range for a tensor of {self.ndim} dimensions")
        return self.shape[dim]

    def item(self):
        return self.data.item()

    def __repr__(self) -> str:
        body = np.array2string(self.data, separator=", ", prefix="Tensor(")
        return f"Tensor({body}, grad={None if self.grad is None else self.grad.data!r})"

    # -- autograd ---------------------------------------------------------
    def backward(self, grad=None) -> None:
        """Accumulate d(self)/d(leaf) * grad into ``.grad`` of every leaf that requires it."""
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require gradients")
        if grad is None:
            seed = np.ones_like(self.data)
        else:
            seed = np.asarray(grad.data if isinstance(grad, Tensor) else grad)
            if seed.shape != self.shape:
                raise ValueError(f"backward: gradient shape {seed.shape} does not match output shape {self.shape}")
            seed = seed.astype(self.dtype)  # a copy: .grad must not alias the caller's array

        order: list[Tensor] = []
        seen: set[int] = set()
        stack: list[tuple[Tensor, bool]] = [(self, False)]
        while stack:  # iterative DFS: deep graphs must not hit the recursion limit
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.append((node, True))
            stack.extend((p, False) for p in node._parents if p.requires_grad and id(p) not in seen)

        grads: dict[int, np.ndarray] = {id(self): seed}
        for node in reversed(order):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if node._backward is None:  # a leaf
                node.grad = Tensor._wrap(g) if node.grad is None else Tensor._wrap(node.grad.data + g)
                continue
            for parent, pg in zip(node._parents, node._backward(g)):
                if pg is None or not parent.requires_grad:
                    continue
                key = id(parent)
                grads[key] = pg if key not in grads else grads[key] + pg

    def zero_grad(self) -> None:
        self.grad = None

    def detach(self) -> "Tensor":
        return Tensor(self.data)

    # -- differentiable ops (forward and backward side by side) -----------
    def reshape(self, *shape) -> "Tensor":
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        try:
            out = self.data.reshape(shape)
        except ValueError as exc:
            raise ValueError(f"cannot view a tensor of shape {self.shape} as {shape}") from exc
        in_shape = self.shape
        return Tensor._from_op(out, (self,), lambda g: (g.reshape(in_shape),))

    view = reshape

    def __add__(self, other) -> "Tensor":
        other = _as_tensor(other, self.dtype)
        a_shape, b_shape = self.shape, other.shape
        return Tensor._from_op(
            self.data + other.data,
            (self, other),
            lambda g: (_unbroadcast(g, a_shape), _unbroadcast(g, b_shape)),
        )

    __radd__ = __add__

    def __neg__(self) -> "Tensor":
        return Tensor._from_op(-self.data, (self,), lambda g: (-g,))

    def __sub__(self, other) -> "Tensor":
        return self + (-_as_tensor(other, self.dtype))

    def __rsub__(self, other) -> "Tensor":
        return _as_tensor(other, self.dtype) + (-self)

    def __mul__(self, other) -> "Tensor":
        other = _as_tensor(other, self.dtype)
        a, b = self.data, other.data
        return Tensor._from_op(
            a * b,
            (self, other),
            lambda g: (_unbroadcast(g * b, a.shape), _unbroadcast(g * a, b.shape)),
        )

    __rmul__ = __mul__

    def __matmul__(self, other) -> "Tensor":
        other = _as_tensor(other, self.dtype)
        a, b = self.data, other.data
        if a.ndim < 2 or b.ndim != 2:
            raise ValueError(f"matmul supports (..., n) @ (n, m); got {a.shape} @ {b.shape}")

        def backward(g):
            ga = g @ b.T
            gb = a.reshape(-1, a.shape[-1]).T @ g.reshape(-1, g.shape[-1])
            return ga, gb

        return Tensor._from_op(a @ b, (self, other), backward)

    def sum(self, axis=None, keepdims: bool = False) -> "Tensor":
        in_shape = self.shape

        def backward(g):
            if axis is not None and not keepdims:
                g = np.expand_dims(g, axis)
            return (np.broadcast_to(g, in_shape).copy(),)

        return Tensor._from_op(np.asarray(self.data.sum(axis=axis, keepdims=keepdims)), (self,), backward)

    def mean(self, axis=None, keepdims: bool = False) -> "Tensor":
        count = self.data.size if axis is None else np.prod([self.shape[a] for a in np.atleast_1d(axis)])
        return self.sum(axis=axis, keepdims=keepdims) * (1.0 / count)


def _as_tensor(value, dtype) -> Tensor:
    return value if isinstance(value, Tensor) else Tensor(np.asarray(value, dtype=dtype))


def _unbroadcast(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum a broadcast gradient back down to ``shape``."""
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    for axis, n in enumerate(shape):
        if n == 1 and g.shape[axis] != 1:
            g = g.sum(axis=axis, keepdims=True)
    return g
