"""In-memory volumes: ``ArraySource`` wraps an ndarray, ``ArraySink`` fills one."""

from __future__ import annotations

import math

import numpy as np

from lucid.io.base import Layout, LucidIOError, Sink, Source, VolumeMeta, box_shape, normalize_index
from lucid.io.layout import parse_layout


def check_dtype(dtype: np.dtype, name: str) -> np.dtype:
    """Return the native-byte-order version of a poolable dtype, else raise LucidIOError."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        raise LucidIOError(f"{name}: boolean data cannot be max-pooled here; convert it to uint8")
    if dtype.kind == "c":
        raise LucidIOError(f"{name}: complex data ({dtype}) has no order, so it cannot be max-pooled")
    if dtype.kind not in "iuf" or dtype.fields is not None or dtype.subdtype is not None:
        raise LucidIOError(f"{name}: unsupported data type {dtype} (need integers or floats)")
    return np.dtype(dtype.str).newbyteorder("=")


# No volume lucid streams can hold more bytes than this (1 EiB): a larger shape is a
# corrupt header, and keeping sizes below it keeps the planner's int64 arithmetic exact.
MAX_VOLUME_BYTES = 1 << 60


def check_shape(shape: tuple[int, ...], name: str, itemsize: int = 1) -> None:
    if len(shape) < 3:
        raise LucidIOError(f"{name}: a {len(shape)}-D array cannot be pooled in 3-D (shape {shape}); need 3+ dimensions")
    if min(shape) < 0:
        raise LucidIOError(f"{name}: shape {shape} has a negative dimension (corrupt header?)")
    if min(shape) == 0:
        raise LucidIOError(f"{name}: shape {shape} has a zero-sized dimension")
    nbytes = math.prod(int(n) for n in shape) * int(itemsize)  # Python ints: no overflow
    if nbytes > MAX_VOLUME_BYTES:
        raise LucidIOError(f"{name}: shape {shape} would hold {nbytes:.3g} bytes, more than any real file (corrupt header?)")


class ArraySource(Source):
    """A numpy array (or memmap) read slab by slab; ``read`` always returns a copy."""

    order = "C"
    chunk_rows = 1

    def __init__(self, array: np.ndarray, *, axes: str | None = None, name: str | None = None):
        self.array = np.asarray(array)
        self.shape = tuple(int(n) for n in self.array.shape)
        self.name = name or f"<array {'x'.join(map(str, self.shape))} {self.array.dtype}>"
        self.path = None
        self.dtype = check_dtype(self.array.dtype, self.name)
        check_shape(self.shape, self.name)
        self.layout: Layout = parse_layout(axes, self.array.ndim, "array")
        self.meta = VolumeMeta(format="array")

    def read(self, index):
        index = normalize_index(index, self.shape, self.name)
        return np.array(self.array[index], dtype=self.dtype, copy=True)


class ArraySink(Sink):
    """An output held in memory as ``.array`` (for tests and Python callers)."""

    def __init__(self, shape, dtype, *, like: Source | None = None, kind: str = "output", out: np.ndarray | None = None):
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.kind = kind
        self.name = "<array output>"
        self.path = None
        self.layout = like.layout if like is not None else parse_layout(None, len(self.shape), "array")
        if out is not None:
            if tuple(out.shape) != self.shape or out.dtype != self.dtype:
                raise ValueError(
                    f"output array has shape {out.shape} and dtype {out.dtype}, expected {self.shape} {self.dtype}"
                )
            self.array = out
        else:
            self.array = np.zeros(self.shape, self.dtype)
        self.committed = False
        self.aborted = False

    def write(self, index, data):
        if self.committed or self.aborted:
            raise LucidIOError(f"{self.name}: write after {'commit' if self.committed else 'abort'}")
        index = normalize_index(index, self.shape, self.name)
        data = np.asarray(data)
        if data.shape != box_shape(index):
            raise ValueError(f"{self.name}: data of shape {data.shape} for box of shape {box_shape(index)}")
        self.array[index] = data

    def commit(self):
        if self.aborted:
            raise LucidIOError(f"{self.name}: cannot commit an aborted output")
        self.committed = True

    def abort(self):
        if not self.committed:
            self.aborted = True
