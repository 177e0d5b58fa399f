"""Slab planning: which rows each slab reads and writes, and how many fit the budget.

Pure arithmetic, no I/O.  Output rows [o0, o1) along the slab axis read input
rows [o0*s - p, (o1 - 1)*s - p + dilation*(k - 1) + 1) clipped to the volume,
so padding exists only at the true borders.  Carried axes that are slower in
memory than the slab axis are walked one index at a time (outer loop), so
every sink receives its writes in file order.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from lucid.io.atomic import human_bytes
from lucid.io.layout import outer_axes
from lucid.kernels import backend
from lucid.kernels.maxpool import _interior, code_dtype
from lucid.kernels.windows import AxisWindow, PoolSpec

MiB = 1 << 20
PIPELINE_SLAB_BYTES = 16 * MiB  # input bytes per slab when the budget allows more: keeps the reader, the kernels and the writer busy at once


class MemoryLimitError(ValueError):
    """The memory limit cannot hold even one slab (``need``: the bytes one slab takes)."""

    def __init__(self, message: str, need: int | None = None):
        super().__init__(message)
        self.need = need


@dataclass(frozen=True)
class Slab:
    """Output rows ``out_rows`` along the slab axis and the input rows they read."""

    out_rows: tuple[int, int]
    in_rows: tuple[int, int]
    window: AxisWindow  # the slab axis's window, local to in_rows


@dataclass(frozen=True)
class Plan:
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    pooled: tuple[int, int, int]  # file axes pooled, in file order
    windows: tuple[AxisWindow, AxisWindow, AxisWindow]  # global windows, one per pooled axis
    slab_r: int  # which pooled axis slabs are cut along (index into ``pooled``)
    outer: tuple[int, ...]  # carried file axes walked one index at a time
    slabs: tuple[Slab, ...]
    slab_bytes: int  # estimated peak bytes of the slab buffers, the reader's included
    cache_bytes: int = 0  # what the reader's chunk cache may hold: one input slab, counted in slab_bytes
    numba_bytes: int = 0  # numba's RSS, counted in slab_bytes; 0: the run keeps the numpy kernels

    @property
    def kernels(self) -> str:
        """The kernels this run uses, on this machine's engine and in its dask tasks alike: the
        process's choice, and under ``auto`` numba only where this plan counted its memory."""
        name = backend.backend()
        if name != "auto":
            return name
        return "auto" if self.numba_bytes else "numpy"

    @property
    def slab_axis(self) -> int:
        return self.pooled[self.slab_r]

    @property
    def priority(self) -> tuple[int, int, int]:
        """Accumulation order of gradients: the slab axis first, then the others in file order."""
        return (self.slab_r, *(r for r in range(3) if r != self.slab_r))  # type: ignore[return-value]

    @property
    def rows_per_slab(self) -> int:
        return self.slabs[0].out_rows[1] - self.slabs[0].out_rows[0]

    def outer_indices(self) -> Iterator[tuple[int, ...]]:
        return itertools.product(*(range(self.in_shape[a]) for a in self.outer))

    @property
    def job_count(self) -> int:
        return math.prod(self.in_shape[a] for a in self.outer) * len(self.slabs)

    def box(self, outer_index: Sequence[int], rows: tuple[int, int], shape: Sequence[int]) -> tuple[slice, ...]:
        """The box of one slab: ``rows`` along the slab axis, one index on outer axes, all else whole."""
        key = [slice(0, n) for n in shape]
        for axis, i in zip(self.outer, outer_index):
            key[axis] = slice(i, i + 1)
        key[self.slab_axis] = slice(*rows)
        return tuple(key)

    def local_windows(self, slab: Slab) -> list[AxisWindow]:
        windows = list(self.windows)
        windows[self.slab_r] = slab.window
        return windows


def cut_slabs(w: AxisWindow, rows: int) -> tuple[Slab, ...]:
    """Cut the outputs along one axis into slabs of ``rows`` outputs (the last may be shorter)."""
    slabs = []
    for o0 in range(0, w.size_out, max(1, rows)):
        o1 = min(w.size_out, o0 + max(1, rows))
        r0, r1, local = w.slab(o0, o1)
        slabs.append(Slab((o0, o1), (r0, r1), local))
    return tuple(slabs)


def plan_slabs(
    shape: Sequence[int],
    pooled: Sequence[int],
    spec: PoolSpec,
    *,
    slab_axis: int,
    order: str = "C",
    in_itemsize: int,
    out_itemsize: int,
    memory_limit: int,
    backward: bool = False,
    grad_itemsize: int = 4,
    indices: bool = False,
    chunk_rows: int = 1,
    names: Sequence[str] | None = None,
    what: str = "the input",
    reader_overhead: int = 0,
    cached_input: bool = False,
    whole_chunks: bool = False,
) -> Plan:
    """Choose the slab height that keeps the estimated buffers within ``memory_limit`` bytes.

    The reader's own memory counts too: ``reader_overhead`` bytes whatever the
    slab (decompression buffers, one compressed chunk), and with ``cached_input``
    a chunk cache that holds one input slab (``Plan.cache_bytes``).  ``whole_chunks``: the
    reader has no chunk cache (Zarr), so slabs of whole chunk rows are preferred to the
    pipeline's 16 MiB when the budget holds them."""
    shape = tuple(int(n) for n in shape)
    pooled = tuple(pooled)
    if slab_axis not in pooled:
        raise ValueError(f"slab axis {slab_axis} is not one of the pooled axes {pooled}")
    sizes = [shape[a] for a in pooled]
    windows = spec.windows(sizes, tuple(names) if names else ("depth", "height", "width"))
    out_shape = list(shape)
    for a, w in zip(pooled, windows):
        out_shape[a] = w.size_out
    slab_r = pooled.index(slab_axis)
    w = windows[slab_r]
    outer = outer_axes(len(shape), pooled, slab_axis, order)

    def plane(dims: Sequence[int]) -> int:
        # Python ints: a header may claim sizes whose product overflows int64
        return math.prod(n for a, n in enumerate(dims) if a != slab_axis and a not in outer)

    in_plane, out_plane = plane(shape), plane(out_shape)
    code_size = code_dtype(windows).itemsize
    # Winner codes turn into offsets and edge masks through tables with one
    # entry per window tap (k_d*k_h*k_w), one mask per output plane at a border.
    taps = math.prod(x.kernel for x in windows)
    edge_planes = sum(x.size_out - (hi - lo) for x in windows for lo, hi in [_interior(x)])
    tap_tables = taps * (16 + edge_planes) if backward or indices else 0

    # The compiled kernels load numba, whose own RSS the budget must hold; when it cannot,
    # or the run is too small to gain from them, the run keeps the numpy kernels.
    kinds = ("argpool", "unpool") if backward or indices else ("pool",)
    compiled = backend.for_run(windows, kinds, math.prod(shape) * in_itemsize)
    numba_bytes = backend.NUMBA_RSS_BYTES if compiled else 0

    def estimate(rows: int) -> int:
        in_rows = min(w.size_in, (rows - 1) * w.stride + w.span)
        # Reader, compute and writer each hold a slab: two input slabs in flight,
        # three output slabs (computed, queued, being written) and the kernels'
        # intermediate pass (at most half the input of a slab with stride >= 2).
        total = in_rows * in_plane * in_itemsize * (4 if cached_input else 3) + rows * out_plane * out_itemsize * 3
        total += reader_overhead + tap_tables + numba_bytes
        if backward:
            total += rows * out_plane * (code_size + 2 * grad_itemsize)  # codes, upstream gradient
            total += in_rows * in_plane * grad_itemsize * 4  # carry, masks, rows queued to the writer
        if indices:
            total += rows * out_plane * 8 * 3
        return total

    rows = _largest_fitting(estimate, w.size_out, memory_limit)
    if rows == 0 and numba_bytes:
        numba_bytes = 0
        rows = _largest_fitting(estimate, w.size_out, memory_limit)
    per_row = max(1, w.stride * in_plane * in_itemsize)
    cap = max(1, PIPELINE_SLAB_BYTES // per_row)
    if whole_chunks and chunk_rows > 1 and rows * w.stride >= chunk_rows:  # a reader without a chunk cache
        cap = max(cap, -(-chunk_rows // w.stride))  # decodes a chunk once per slab: read whole chunk rows
    rows = min(rows, cap)
    if rows == 0:
        need = estimate(1)
        raise MemoryLimitError(
            f"memory limit {_mib(memory_limit)} is too small for one slab of {what}: "
            f"need at least {_mib(need)} (try --memory-limit {int(np.ceil(need / MiB))}M)",
            need,
        )
    if chunk_rows > 1 and rows * w.stride >= chunk_rows:  # whole chunks per slab where possible
        rows = max(1, (rows * w.stride // chunk_rows) * chunk_rows // w.stride)
    slabs = cut_slabs(w, rows)
    cache = max(s.in_rows[1] - s.in_rows[0] for s in slabs) * in_plane * in_itemsize if cached_input else 0
    return Plan(shape, tuple(out_shape), pooled, windows, slab_r, outer, slabs, estimate(rows), cache, numba_bytes)


def _largest_fitting(estimate, limit_rows: int, budget: int) -> int:
    lo, hi = 0, limit_rows
    while lo < hi:  # estimate is increasing in rows
        mid = (lo + hi + 1) // 2
        if estimate(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _mib(n: int) -> str:
    return human_bytes(n)  # "1 byte", "54.0 KiB", "1.5 GiB": never "0.0 KiB"


def parse_size(text: str | int) -> int:
    """Bytes from ``512M``, ``2G``, ``64K``, ``1.5G`` or a plain number of bytes."""
    if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        value = int(text)
    else:
        raw = str(text).strip().upper().removesuffix("IB").removesuffix("B")
        factor = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(raw[-1:], 1)
        number = raw[:-1] if factor > 1 else raw
        try:
            value = int(float(number) * factor)
        except (ValueError, OverflowError):
            raise ValueError(f"memory limit must be a size like 512M, 2G or 65536, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"memory limit must be positive, got {text!r}")
    return value
