"""Max pooling of dask arrays: lazy, one task per block, bit-identical to ``lucid.nn.functional.max_pool3d``.

``max_pool3d(x, 3, 2, 1)`` pools the last three axes of a 3-D, 4-D or 5-D
dask array (leading axes are carried with their chunks).  Each output block
(about one input chunk's worth of outputs) is one task that takes the input
chunks its windows read (halo included) and runs the same kernels as the
streaming engine.  Not ``map_overlap``, which costs tens of tasks per 3-D block.

``max_pool3d_backward(x, grad_output, 3, 2, 1)`` is the gradient map on
``x``'s chunks by "owner computes": the task of each input chunk
re-evaluates every window with a tap in it and keeps what lands inside, so
no task adds into another's result.  Contributions add up in ascending
output order (row-major), as in the in-memory backward: same bits.
"""

from __future__ import annotations

import bisect
import itertools
import math
from typing import Any, Sequence

import numpy as np

import dask.array as da
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from lucid.dask import blocks, compute
from lucid.dask.blocks import Block, BlockPlan
from lucid.kernels import maxpool
from lucid.kernels.windows import PoolSpec

Box = tuple[slice, ...]


def _spec(kernel_size, stride, padding, dilation, ceil_mode, padding_mode) -> PoolSpec:
    return PoolSpec.create(kernel_size, kernel_size if stride is None else stride, padding, dilation, ceil_mode,
                           padding_mode)


def _check(x, what: str):
    x = x if isinstance(x, da.Array) else da.asarray(x)
    if x.ndim < 3:
        raise ValueError(f"{what} needs at least 3 axes (D, H, W; leading axes are carried), got shape {x.shape}")
    maxpool.check_dtype(x.dtype)
    if x.size == 0:
        raise ValueError(f"{what} is empty (shape {x.shape})")
    if any(math.isnan(n) for n in x.shape):
        raise ValueError(f"{what} has unknown chunk sizes; call compute_chunk_sizes() first")
    return x


def _cuts(chunks: Sequence[int]) -> tuple[int, ...]:
    return tuple(itertools.accumulate(chunks, initial=0))


def _pieces(cuts: Sequence[Sequence[int]], box: Box):
    """The chunks of an array cut at ``cuts`` that ``box`` overlaps: ``(chunk index, box in chunk, box in result)``."""
    ranges = []
    for c, s in zip(cuts, box):
        first = bisect.bisect_right(c, s.start) - 1
        last = bisect.bisect_left(c, s.stop)
        ranges.append([(i, slice(max(s.start, c[i]) - c[i], min(s.stop, c[i + 1]) - c[i]),
                        slice(max(s.start, c[i]) - s.start, min(s.stop, c[i + 1]) - s.start))
                       for i in range(max(0, first), max(first + 1, last))])
    return [(tuple(p[0] for p in combo), tuple(p[1] for p in combo), tuple(p[2] for p in combo))
            for combo in itertools.product(*ranges)]


def _assemble(shape: tuple[int, ...], dtype, places, chunks) -> np.ndarray:
    """One array from the pieces of chunks (a view when one chunk holds it all)."""
    if len(chunks) == 1:
        return chunks[0][places[0][0]]
    out = np.empty(shape, dtype)
    for (src, dst), chunk in zip(places, chunks):
        out[dst] = chunk[src]
    return out


def _shape(box: Box) -> tuple[int, ...]:
    return tuple(s.stop - s.start for s in box)


def _forward_task(block: Block, pad_value, dtype, places, *chunks):
    data = _assemble(_shape(block.read_box), dtype, places, chunks)
    return compute.forward_values(data, block, pad_value)


def _backward_task(block: Block, mults, lead, pad_value, dtype, grad_dtype, n_data, places, *chunks):
    if block.empty:
        return np.zeros(_shape(block.own_box), grad_dtype)
    data = _assemble(_shape(block.read_box), dtype, places[:n_data], chunks[:n_data])
    grad = _assemble(_shape(block.out_box), grad_dtype, places[n_data:], chunks[n_data:])
    return compute.backward_gradient(data, grad, block, mults, lead, pad_value, grad_dtype)


def _inputs(x: da.Array, box: Box) -> tuple[list, list]:
    """Keys of ``x``'s chunks that ``box`` overlaps, and where each piece goes."""
    keys, places = [], []
    for index, src, dst in _pieces([_cuts(c) for c in x.chunks], box):
        keys.append((x.name, *index))
        places.append((src, dst))
    return keys, places


def _block_bounds(size: int, given: Sequence[int] | None, axis: int, default: int) -> tuple[int, ...]:
    return blocks.even_bounds(size, int(given[axis]) if given is not None else default)


def max_pool3d(x, kernel_size=1, stride=None, padding=0, *, dilation=1, ceil_mode: bool = False,
               padding_mode: str = "zeros", out_chunks: Sequence[int] | None = None) -> da.Array:
    """Max pooling of the last three axes of a dask array, lazily (``stride`` None: the kernel).

    Bit-identical to ``lucid.nn.functional.max_pool3d`` on the computed array;
    ``padding_mode="ignore"`` never lets padding win (PyTorch), ``"zeros"``
    pads with zeros that can win.  One task per output block: ``out_chunks``
    (three ints) outputs per block along the pooled axes, by default about
    one input chunk's worth.
    """
    x = _check(x, "max_pool3d input")
    spec = _spec(kernel_size, stride, padding, dilation, ceil_mode, padding_mode)
    pooled = (x.ndim - 3, x.ndim - 2, x.ndim - 1)
    windows = spec.windows(x.shape[-3:])
    bounds = [_cuts(c) for c in x.chunks]
    for r, (a, w) in enumerate(zip(pooled, windows)):
        bounds[a] = _block_bounds(w.size_out, out_chunks, r, max(1, max(x.chunks[a]) // w.stride))
    plan = BlockPlan(blocks.FORWARD, tuple(x.shape), pooled, windows, tuple(bounds))
    pad_value = 0 if padding_mode == "zeros" else None
    name = "lucid-max_pool3d-" + tokenize(x, spec, plan.bounds)
    graph: dict[Any, Any] = {}
    for index in plan.indices():
        block = plan.block(index)
        keys, places = _inputs(x, block.read_box)
        graph[(name, *index)] = (_forward_task, block, pad_value, x.dtype, places, *keys)
    hlg = HighLevelGraph.from_collections(name, graph, dependencies=[x])
    return da.Array(hlg, name, plan.chunks(), dtype=x.dtype, meta=np.empty((0,) * x.ndim, x.dtype))


def max_pool3d_backward(x, grad_output, kernel_size=1, stride=None, padding=0, *, dilation=1,
                        ceil_mode: bool = False, padding_mode: str = "zeros",
                        in_chunks: Sequence[int] | None = None) -> da.Array:
    """The gradient of ``max_pool3d`` with respect to ``x``, lazily, on ``x``'s chunks.

    Each output's ``grad_output`` goes to the first maximum of its window in
    (d, h, w) order (a NaN window: its last NaN); a maximum in the zero
    padding sends it nowhere.  Bit-identical to the in-memory backward of
    ``lucid.nn.functional.max_pool3d``; the result has ``grad_output``'s dtype.
    "Owner computes": each input block (``in_chunks`` rows per pooled axis,
    by default ``x``'s chunks) re-evaluates every window touching it.
    """
    x = _check(x, "max_pool3d_backward input")
    grad_output = _check(grad_output, "grad_output")
    spec = _spec(kernel_size, stride, padding, dilation, ceil_mode, padding_mode)
    pooled = (x.ndim - 3, x.ndim - 2, x.ndim - 1)
    windows = spec.windows(x.shape[-3:])
    bounds = [_cuts(c) for c in x.chunks]
    if in_chunks is not None:
        for r, a in enumerate(pooled):
            bounds[a] = _block_bounds(x.shape[a], in_chunks, r, 1)
    plan = BlockPlan(blocks.BACKWARD, tuple(x.shape), pooled, windows, tuple(bounds))
    if tuple(grad_output.shape) != plan.out_shape:
        raise ValueError(f"grad_output has shape {tuple(grad_output.shape)}, the pooled shape is {plan.out_shape}")
    mults = maxpool.code_mults(windows, plan.priority)
    pad_value = 0 if padding_mode == "zeros" else None
    dtype = grad_output.dtype
    name = "lucid-max_pool3d_backward-" + tokenize(x, grad_output, spec, plan.bounds)
    graph: dict[Any, Any] = {}
    for index in plan.indices():
        block = plan.block(index)
        if block.empty:
            graph[(name, *index)] = (_backward_task, block, mults, 0, pad_value, x.dtype, dtype, 0, [])
            continue
        keys, places = _inputs(x, block.read_box)
        gkeys, gplaces = _inputs(grad_output, block.out_box)
        graph[(name, *index)] = (_backward_task, block, mults, plan.priority[0], pad_value, x.dtype, dtype,
                                 len(keys), places + gplaces, *keys, *gkeys)
    hlg = HighLevelGraph.from_collections(name, graph, dependencies=[x, grad_output])
    return da.Array(hlg, name, plan.chunks(), dtype=dtype, meta=np.empty((0,) * x.ndim, dtype))
