"""``max_pool3d`` and ``max_pool3d_backward`` on dask arrays: lazy in, lazy out, one task per block.

Pooling runs over the last three axes; leading axes (N, C, time) are carried
with the input's chunking.  Each output block is one task that receives its
input rows (halo included) and runs the same kernels as ``lucid.nn`` and the
streaming engine, so results are bit-identical to the in-memory call.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from lucid.dask.blocks import AxisBlock, OwnerBlock, forward_blocks, owner_blocks
from lucid.dask.cluster import INSTALL_HINT
from lucid.kernels import maxpool
from lucid.kernels.windows import PoolSpec


def _dask_array():
    try:
        import dask.array as da
    except ImportError:
        raise ImportError(f"lucid.dask needs dask; {INSTALL_HINT}") from None
    return da


def _setup(x, kernel_size, stride, padding, dilation, ceil_mode, padding_mode):
    if x.ndim < 3:
        raise ValueError(f"max_pool3d needs at least 3 axes (D, H, W), got shape {x.shape}")
    maxpool.check_dtype(np.dtype(x.dtype))
    spec = PoolSpec.create(kernel_size, stride, padding, dilation, ceil_mode, padding_mode)
    windows = spec.windows(x.shape[-3:])
    axes = tuple(range(x.ndim - 3, x.ndim))
    pad_value = 0 if padding_mode == "zeros" else None
    return spec, windows, axes, pad_value


def _per_block(chunks: Sequence[int], stride: int) -> int:
    """Outputs per block along an axis: one input chunk's worth (at least one)."""
    return max(1, max(chunks) // stride)


def _pool_block(data: np.ndarray, axes, windows, pad_value) -> np.ndarray:
    return maxpool.pool(np.ascontiguousarray(data), axes, windows, pad_value)


def _region_task(x, region: list[tuple[int, int]]):
    """The keys of ``x``'s chunks that overlap ``region`` and their boxes (for ``_gather``)."""
    offsets = [list(_offsets(c)) for c in x.chunks]
    picks = [[i for i, (a, b) in enumerate(axis) if a < hi and b > lo] for axis, (lo, hi) in zip(offsets, region)]
    keys, boxes = [], []
    for idx in itertools.product(*picks):
        keys.append((x.name,) + idx)
        boxes.append([list(offsets[a][i]) for a, i in enumerate(idx)])
    return keys, boxes


def _gather(chunks: list[np.ndarray], boxes, region, dtype) -> np.ndarray:
    """Copy the parts of ``chunks`` (at ``boxes``) that fall in ``region`` into one C-ordered array."""
    out = np.empty([hi - lo for lo, hi in region], dtype)
    for chunk, box in zip(chunks, boxes):
        src = tuple(slice(max(a, lo) - a, min(b, hi) - a) for (a, b), (lo, hi) in zip(box, region))
        dst = tuple(slice(max(a, lo) - lo, min(b, hi) - lo) for (a, b), (lo, hi) in zip(box, region))
        out[dst] = np.asarray(chunk)[src]
    return out


def _pool_task(chunks, boxes, region, dtype, axes, windows, pad_value) -> np.ndarray:
    return maxpool.pool(_gather(chunks, boxes, region, dtype), axes, windows, pad_value)


def _owner_task(chunks, boxes, region, gchunks, gboxes, gregion, dtype, gdtype, axes, read, own, mults, pad_value,
                shape) -> np.ndarray:
    """The gradient of one owned input block: the winners of every window touching it, added in."""
    out = np.zeros(shape, gdtype)
    if 0 in [hi - lo for lo, hi in gregion]:
        return out
    _, codes = maxpool.argpool(_gather(chunks, boxes, region, dtype), axes, read, mults, pad_value)
    return maxpool.unpool(_gather(gchunks, gboxes, gregion, gdtype), codes, axes, own, mults, out)


def _array(name: str, dsk: dict, deps: list, chunks, dtype):
    da = _dask_array()
    from dask.highlevelgraph import HighLevelGraph

    graph = HighLevelGraph.from_collections(name, dsk, dependencies=deps)
    return da.Array(graph, name, chunks=chunks, dtype=dtype, meta=np.empty((0,) * len(chunks), dtype))


def max_pool3d(x, kernel_size=1, stride=None, padding=0, *, dilation=1, ceil_mode=False, padding_mode="zeros",
               out_chunks: Sequence[int] | None = None):
    """Lazy 3-D max pooling of the last three axes of dask array ``x``, one task per output block.

    ``stride`` defaults to ``kernel_size``.  ``out_chunks`` (three ints) sets the output block
    shape of the pooled axes; by default each block covers about one input chunk.  Equal, bit for
    bit, to ``lucid.nn.functional.max_pool3d`` on the computed array.
    """
    _dask_array()  # without dask: the line naming the extra
    from dask.base import tokenize

    spec, windows, axes, pad_value = _setup(x, kernel_size, stride, padding, dilation, ceil_mode, padding_mode)
    dtype = np.dtype(x.dtype)
    per = out_chunks or [_per_block(x.chunks[a], spec.stride[r]) for r, a in enumerate(axes)]
    plans = [forward_blocks(w, n) for w, n in zip(windows, per)]
    lead = [list(_offsets(c)) for c in x.chunks[: x.ndim - 3]]
    name = "lucid-max-pool3d-" + tokenize(x.name, spec, tuple(per))
    dsk = {}
    for lead_idx in itertools.product(*[range(len(c)) for c in lead]):
        lead_rows = [lead[a][i] for a, i in enumerate(lead_idx)]
        for idx in itertools.product(*[range(len(p)) for p in plans]):
            blocks: list[AxisBlock] = [plans[r][i] for r, i in enumerate(idx)]
            region = lead_rows + [(b.r0, b.r1) for b in blocks]
            keys, boxes = _region_task(x, region)
            dsk[(name,) + lead_idx + idx] = (_pool_task, keys, boxes, region, dtype, axes,
                                             tuple(b.window for b in blocks), pad_value)
    chunks = x.chunks[: x.ndim - 3] + tuple(tuple(b.o1 - b.o0 for b in p) for p in plans)
    return _array(name, dsk, [x], chunks, dtype)


def _offsets(chunks: Sequence[int]):
    start = 0
    for c in chunks:
        yield start, start + c
        start += c


def max_pool3d_backward(x, grad_output, kernel_size=1, stride=None, padding=0, *, dilation=1, ceil_mode=False,
                        padding_mode="zeros", in_chunks: Sequence[int] | None = None):
    """Lazy gradient map of ``max_pool3d`` with respect to ``x``, for the upstream ``grad_output``.

    "Owner computes": each input block (``in_chunks``, by default ``x``'s chunks) re-evaluates
    every window that touches it and adds those windows' gradients into itself, in ascending output
    order: no reduction between tasks, one task per input block, bit-identical to the in-memory backward.
    """
    da = _dask_array()
    from dask.base import tokenize

    spec, windows, axes, pad_value = _setup(x, kernel_size, stride, padding, dilation, ceil_mode, padding_mode)
    if not hasattr(grad_output, "dask"):
        grad_output = da.from_array(np.asarray(grad_output))
    want = x.shape[: x.ndim - 3] + tuple(w.size_out for w in windows)
    if tuple(grad_output.shape) != want:
        raise ValueError(f"grad_output has shape {tuple(grad_output.shape)}; "
                         f"max_pool3d of {tuple(x.shape)} gives {want}")
    dtype, gdtype = np.dtype(x.dtype), np.dtype(grad_output.dtype)
    mults = maxpool.code_mults(windows, (0, 1, 2))  # PyTorch's row-major order for the sums
    rows = in_chunks or [max(x.chunks[a]) for a in axes]
    plans = [owner_blocks(w, n) for w, n in zip(windows, rows)]
    lead = [list(_offsets(c)) for c in x.chunks[: x.ndim - 3]]
    name = "lucid-max-pool3d-backward-" + tokenize(x.name, grad_output.name, spec, tuple(rows))
    dsk = {}
    for lead_idx in itertools.product(*[range(len(c)) for c in lead]):
        lead_rows = [lead[a][i] for a, i in enumerate(lead_idx)]
        for idx in itertools.product(*[range(len(p)) for p in plans]):
            blocks: list[OwnerBlock] = [plans[r][i] for r, i in enumerate(idx)]
            region = lead_rows + [(b.r0, b.r1) for b in blocks]
            gregion = lead_rows + [(b.o0, b.o1) for b in blocks]
            keys, boxes = _region_task(x, region)
            gkeys, gboxes = _region_task(grad_output, gregion) if all(b.o1 > b.o0 for b in blocks) else ([], [])
            shape = tuple(hi - lo for lo, hi in lead_rows) + tuple(b.i1 - b.i0 for b in blocks)
            dsk[(name,) + lead_idx + idx] = (
                _owner_task, keys, boxes, region, gkeys, gboxes, gregion, dtype, gdtype, axes,
                tuple(b.read for b in blocks), tuple(b.own for b in blocks), mults, pad_value, shape)
    chunks = x.chunks[: x.ndim - 3] + tuple(tuple(b.i1 - b.i0 for b in p) for p in plans)
    return _array(name, dsk, [x, grad_output], chunks, gdtype)
