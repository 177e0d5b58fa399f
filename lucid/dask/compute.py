"""What one task computes on its block, with the streaming engine's kernels (no dask).

Forward: pooled values (and winner codes) of a block's windows from the
input rows they read.  Backward: the gradient of the rows a block owns,
from every window touching them, summed in ascending output order along
``mults``' axis significance, so results equal the whole-volume backward.
"""

from __future__ import annotations

import contextlib

import numpy as np

from lucid.dask.blocks import Block
from lucid.kernels import backend, maxpool, tiled
from lucid.kernels.maxpool import MAX, Order


@contextlib.contextmanager
def task_kernels(name: str | None = None):
    """The kernels of one task: ``name``, the run's choice (``Context.kernels``: "numpy", or
    one that loads numba, whose own RSS the run's plan took out of each task's memory), else
    the numpy kernels under ``auto``: a lazy array's tasks have no plan that counts numba's
    RSS (about 115 MB a worker).  ``LUCID_KERNELS=numba`` compiles those."""
    if name is None:
        name = "numpy" if backend.backend() == "auto" else None
    elif name != "numpy":
        backend.preload()  # a worker that will run many blocks: compiled from the first
    with backend.kernels(name):
        yield


def shape_of(box) -> tuple[int, ...]:
    return tuple(s.stop - s.start for s in box)


def forward_values(data: np.ndarray, block: Block, pad_value, order: Order = MAX,
                   kernels: str | None = None) -> np.ndarray:
    """Pooled values of one forward block from its input rows (``block.read_box``)."""
    with task_kernels(kernels):
        return tiled.pool(data, block.pooled, block.windows, pad_value, order, threads=1)


def forward_codes(data: np.ndarray, block: Block, mults, pad_value, order: Order = MAX,
                  kernels: str | None = None):
    """``(values, winner codes)`` of one forward block."""
    with task_kernels(kernels):
        return tiled.argpool(data, block.pooled, block.windows, mults, pad_value, order, threads=1)


def backward_gradient(data: np.ndarray, grad: np.ndarray | None, block: Block, mults, lead: int, pad_value,
                      dtype, order: Order = MAX, kernels: str | None = None) -> np.ndarray:
    """The gradient of the rows one backward block owns: every window touching it, re-evaluated.

    ``data``: the input rows those windows read (``block.read_box``); ``grad``:
    their upstream gradient (``block.out_box``), or None for ones.  ``lead``
    is ``priority[0]``, the most significant axis of ``mults``; ``kernels``:
    see ``task_kernels``."""
    dtype = np.dtype(dtype)
    if block.empty:
        return np.zeros(shape_of(block.own_box), dtype)
    with task_kernels(kernels):
        _, codes = tiled.argpool(data, block.pooled, block.windows, mults, pad_value, order, threads=1)
        buffer = maxpool.empty_like_layout(data, shape_of(block.rows_box), dtype)
        buffer[...] = 0
        values = maxpool.empty_like_layout(codes, codes.shape, dtype)
        if grad is None:
            values[...] = 1
        else:
            np.copyto(values, grad, casting="unsafe")
        tiled.unpool(values, codes, block.pooled, block.scatter_windows, mults, buffer, lead=lead, threads=1)
        return np.ascontiguousarray(buffer[block.keep()])
