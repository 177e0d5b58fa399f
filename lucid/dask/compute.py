"""What one task computes on its block, with the streaming engine's kernels (numpy only, no dask).

Forward: pooled values (and winner codes) of a block's windows from the
input rows they read.  Backward: the gradient of the rows a block owns,
from every window touching them, summed in ascending output order along
``mults``' axis significance, so results equal the whole-volume backward.
"""

from __future__ import annotations

import numpy as np

from lucid.dask.blocks import Block
from lucid.kernels import backend, maxpool, tiled
from lucid.kernels.maxpool import MAX, Order


def _task_kernels():
    """Tasks keep the numpy kernels under ``auto``: the per-task memory plan does not count
    numba's own RSS (about 115 MB a worker).  ``LUCID_KERNELS=numba`` compiles them."""
    return backend.kernels("numpy" if backend.backend() == "auto" else None)


def shape_of(box) -> tuple[int, ...]:
    return tuple(s.stop - s.start for s in box)


def forward_values(data: np.ndarray, block: Block, pad_value, order: Order = MAX) -> np.ndarray:
    """Pooled values of one forward block from its input rows (``block.read_box``)."""
    return tiled.pool(data, block.pooled, block.windows, pad_value, order, threads=1)


def forward_codes(data: np.ndarray, block: Block, mults, pad_value, order: Order = MAX):
    """``(values, winner codes)`` of one forward block."""
    with _task_kernels():
        return tiled.argpool(data, block.pooled, block.windows, mults, pad_value, order, threads=1)


def backward_gradient(data: np.ndarray, grad: np.ndarray | None, block: Block, mults, lead: int, pad_value,
                      dtype, order: Order = MAX) -> np.ndarray:
    """The gradient of the rows one backward block owns: every window touching it, re-evaluated.

    ``data``: the input rows those windows read (``block.read_box``); ``grad``:
    their upstream gradient (``block.out_box``), or None for ones.  ``lead``
    is ``priority[0]``, the most significant axis of ``mults``."""
    dtype = np.dtype(dtype)
    if block.empty:
        return np.zeros(shape_of(block.own_box), dtype)
    with _task_kernels():
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
