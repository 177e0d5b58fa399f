"""Block plans for the Dask paths: what each task owns, evaluates and reads (pure arithmetic, no dask).

Forward: the *output* grid is cut into blocks; a task evaluates the windows
of its block and reads their input rows, halo included (k > s, dilation)
and clipped to the volume, so padding exists only at the true borders.

Backward ("owner computes"): the *input* grid is cut into blocks; a task
owns the gradient of its block and re-evaluates every window with a tap in
it, reading those windows' input rows.  It scatters into a buffer over the
union of the rows read and the rows owned (with k < s an owned row may lie
in no window) and keeps only the owned rows.  No task adds into another's
rows, so there is no reduction and each gradient chunk is written once.

Blocks are cut with extents that are multiples of ``align`` (the output's
chunk or shard extents), so every writer owns whole chunks and shards.
Carried (not pooled) axes are cut too, without halo.  A :class:`BlockPlan`
holds only cut points (a few numbers per axis): small and picklable, the
blocks are computed from it on demand.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

from lucid.io.atomic import human_bytes
from lucid.kernels.maxpool import code_dtype
from lucid.kernels.windows import AxisWindow

MiB = 1 << 20
DEFAULT_BLOCK_BYTES = 128 * MiB  # input bytes per block: big enough that a task's ~ms of overhead is noise
FORWARD, BACKWARD = "forward", "backward"


@dataclass(frozen=True)
class AxisBlock:
    """One block along one axis.

    ``own``: the rows the task writes (forward: output rows; backward: input
    rows).  ``outs``: the outputs whose windows it evaluates; ``reads``: the
    input rows those windows read; ``rows``: the rows of its scatter buffer
    (backward; ``reads`` otherwise).  ``window``: the outputs' window over
    ``reads``; ``scatter``: the same outputs' window over ``rows``.  On a
    carried axis every range is ``own`` and both windows are None.
    """

    own: tuple[int, int]
    outs: tuple[int, int]
    reads: tuple[int, int]
    rows: tuple[int, int]
    window: AxisWindow | None = None
    scatter: AxisWindow | None = None

    @property
    def empty(self) -> bool:
        """No window of this block has a tap along this axis (k < s gaps, backward only)."""
        return self.outs[1] <= self.outs[0]


def forward_axis(w: AxisWindow, o0: int, o1: int) -> AxisBlock:
    """Outputs [o0, o1) along a pooled axis: the rows they read and their window over them."""
    r0, r1, local = w.slab(o0, o1)
    return AxisBlock((o0, o1), (o0, o1), (r0, r1), (r0, r1), local, local)


def touching(w: AxisWindow, b0: int, b1: int) -> tuple[int, int]:
    """The outputs [o_lo, o_hi) whose windows have a tap in input rows [b0, b1) (empty: o_lo >= o_hi).

    Output o has taps at o*s - p + j*d (j < k); a tap past the padded input
    (a ceil-mode overhang) never takes part, but the input rows end before it."""
    s, p, reach = w.stride, w.pad, w.span - 1
    lo = max(0, -(-(b0 + p - reach) // s))
    hi = min(w.size_out, (b1 - 1 + p) // s + 1)
    while lo < hi and not _has_tap(w, lo, b0, b1):  # dilation: a window may straddle the rows without a tap in them
        lo += 1
    while hi > lo and not _has_tap(w, hi - 1, b0, b1):
        hi -= 1
    return lo, max(lo, hi)


def _has_tap(w: AxisWindow, o: int, b0: int, b1: int) -> bool:
    start = o * w.stride - w.pad
    j = max(0, -(-(b0 - start) // w.dilation))  # first tap at or past b0
    return j < w.kernel and start + j * w.dilation < b1


def backward_axis(w: AxisWindow, b0: int, b1: int) -> AxisBlock:
    """Input rows [b0, b1) along a pooled axis, owned by one backward task."""
    o0, o1 = touching(w, b0, b1)
    if o1 <= o0:
        return AxisBlock((b0, b1), (o0, o0), (b0, b0), (b0, b1))
    r0, r1, local = w.slab(o0, o1)
    q0, q1 = min(r0, b0), max(r1, b1)
    _, _, scatter = w.slab(o0, o1, q0, q1)
    return AxisBlock((b0, b1), (o0, o1), (r0, r1), (q0, q1), local, scatter)


def carried_axis(c0: int, c1: int) -> AxisBlock:
    return AxisBlock((c0, c1), (c0, c1), (c0, c1), (c0, c1))


@dataclass(frozen=True)
class Block:
    """One task's block: an :class:`AxisBlock` per file axis."""

    index: tuple[int, ...]
    axes: tuple[AxisBlock, ...]
    pooled: tuple[int, int, int]

    def _box(self, field: str) -> tuple[slice, ...]:
        return tuple(slice(*getattr(a, field)) for a in self.axes)

    @property
    def own_box(self) -> tuple[slice, ...]:
        return self._box("own")

    @property
    def out_box(self) -> tuple[slice, ...]:
        """The outputs evaluated (forward: the block; backward: the windows touching it), on the output grid."""
        return self._box("outs")

    @property
    def read_box(self) -> tuple[slice, ...]:
        return self._box("reads")

    @property
    def rows_box(self) -> tuple[slice, ...]:
        return self._box("rows")

    @property
    def empty(self) -> bool:
        return any(self.axes[a].empty for a in self.pooled)

    @property
    def windows(self) -> list[AxisWindow]:
        return [self.axes[a].window for a in self.pooled]  # type: ignore[misc]

    @property
    def scatter_windows(self) -> list[AxisWindow]:
        return [self.axes[a].scatter for a in self.pooled]  # type: ignore[misc]

    def keep(self) -> tuple[slice, ...]:
        """The owned rows inside the scatter buffer (``rows_box``)."""
        return tuple(slice(a.own[0] - a.rows[0], a.own[1] - a.rows[0]) for a in self.axes)


@dataclass(frozen=True)
class BlockPlan:
    """Cut points of the owned grid per file axis, and the pooling they serve.

    ``bounds[a]`` runs from 0 to the owned grid's size along axis ``a``: the
    output grid on pooled axes for ``forward``, the input grid for
    ``backward``.  ``priority`` is the gradients' accumulation order (the
    winner codes' axis significance), the same as the engine being matched.
    """

    kind: str
    in_shape: tuple[int, ...]
    pooled: tuple[int, int, int]
    windows: tuple[AxisWindow, AxisWindow, AxisWindow]
    bounds: tuple[tuple[int, ...], ...]
    priority: tuple[int, int, int] = (0, 1, 2)

    def __post_init__(self) -> None:
        if self.kind not in (FORWARD, BACKWARD):
            raise ValueError(f"kind must be {FORWARD!r} or {BACKWARD!r}, got {self.kind!r}")
        grid = self.out_shape if self.kind == FORWARD else self.in_shape
        for a, (b, n) in enumerate(zip(self.bounds, grid)):
            if b[0] != 0 or b[-1] != n or any(x >= y for x, y in zip(b, b[1:])):
                raise ValueError(f"bounds along axis {a} must rise strictly from 0 to {n}, got {b}")

    @property
    def out_shape(self) -> tuple[int, ...]:
        shape = list(self.in_shape)
        for a, w in zip(self.pooled, self.windows):
            shape[a] = w.size_out
        return tuple(shape)

    @property
    def grid(self) -> tuple[int, ...]:
        """Blocks along each file axis."""
        return tuple(len(b) - 1 for b in self.bounds)

    def __len__(self) -> int:
        return math.prod(self.grid)

    def indices(self) -> Iterator[tuple[int, ...]]:
        return itertools.product(*(range(n) for n in self.grid))

    def axis_block(self, axis: int, i: int) -> AxisBlock:
        lo, hi = self.bounds[axis][i], self.bounds[axis][i + 1]
        if axis not in self.pooled:
            return carried_axis(lo, hi)
        w = self.windows[self.pooled.index(axis)]
        return forward_axis(w, lo, hi) if self.kind == FORWARD else backward_axis(w, lo, hi)

    def block(self, index: Sequence[int]) -> Block:
        index = tuple(int(i) for i in index)
        return Block(index, tuple(self.axis_block(a, i) for a, i in enumerate(index)), self.pooled)

    def blocks(self) -> Iterator[Block]:
        return (self.block(i) for i in self.indices())

    def chunks(self) -> tuple[tuple[int, ...], ...]:
        """The owned grid's blocks as dask chunks (extents per axis)."""
        return tuple(tuple(y - x for x, y in zip(b, b[1:])) for b in self.bounds)


def even_bounds(size: int, extent: int) -> tuple[int, ...]:
    """0, extent, 2*extent, ... size."""
    extent = max(1, extent)
    return (*range(0, size, extent), size)


def task_bytes(plan_kind: str, read: int, outs: int, rows: int, *, itemsize: int, out_itemsize: int,
               grad_itemsize: int, code_size: int, indices: bool = False) -> int:
    """Peak bytes of one task: ``read`` input elements, ``outs`` windows, ``rows`` scatter-buffer elements.

    The reader's copy and the kernels' intermediate pass hold about two more
    input blocks; the values, winner codes and (backward) upstream gradient,
    flat indices and the kept copy of the buffer come on top."""
    total = 3 * read * itemsize + outs * (2 * out_itemsize + code_size)
    if indices:
        total += outs * 8 * 3
    if plan_kind == BACKWARD:
        total += outs * (2 * grad_itemsize + 8) + 2 * rows * grad_itemsize
    return total


def plan_blocks(kind: str, in_shape: Sequence[int], pooled: Sequence[int], windows: Sequence[AxisWindow], *,
                itemsize: int, out_itemsize: int | None = None, grad_itemsize: int = 4,
                block_bytes: int = DEFAULT_BLOCK_BYTES, memory_limit: int | None = None,
                align: Sequence[int] | None = None, indices: bool = False,
                priority: Sequence[int] = (0, 1, 2)) -> BlockPlan:
    """Cut the owned grid into blocks of about ``block_bytes`` of input, each task within ``memory_limit``.

    Block extents are multiples of ``align`` (per file axis, on the owned
    grid; the last block may be shorter) and as close to cubes of input as
    the alignment allows.  Raises ValueError when even the smallest aligned
    block needs more than ``memory_limit``.
    """
    in_shape = tuple(int(n) for n in in_shape)
    pooled = tuple(pooled)
    windows = tuple(windows)
    out_itemsize = out_itemsize or itemsize
    grid = _owned_shape(kind, in_shape, pooled, windows)
    align = tuple(max(1, int(a)) for a in (align or [1] * len(in_shape)))
    if kind == BACKWARD and not any(a > 1 for a in align):
        align = tuple(windows[pooled.index(a)].stride if a in pooled else 1 for a in range(len(in_shape)))
    code_size = code_dtype(windows).itemsize
    extents = list(grid)

    def worst(ext: Sequence[int]) -> tuple[int, int]:
        """(input bytes, task bytes) of the largest block: axes are cut independently,
        so it takes the largest extent along each axis."""
        plan = BlockPlan(kind, in_shape, pooled, windows, tuple(even_bounds(n, e) for n, e in zip(grid, ext)),
                         tuple(priority))  # type: ignore[arg-type]
        most = {f: 1 for f in ("own", "outs", "reads", "rows")}
        for a, n in enumerate(plan.grid):
            along = [plan.axis_block(a, i) for i in range(n)]
            for f in most:
                most[f] *= max(_size(getattr(b, f)) for b in along)
        need = task_bytes(kind, most["reads"], most["outs"], most["rows"], itemsize=itemsize,
                          out_itemsize=out_itemsize, grad_itemsize=grad_itemsize, code_size=code_size,
                          indices=indices)
        return (most["reads"] if kind == FORWARD else most["own"]) * itemsize, need

    def too_big(ext) -> bool:
        size, need = worst(ext)
        return size > block_bytes or (memory_limit is not None and need > memory_limit)

    while too_big(extents):
        candidates = []
        for a, e in enumerate(extents):
            smaller = _halve(e, align[a])
            if smaller < e:
                span = _input_extent(windows[pooled.index(a)], e) if (a in pooled and kind == FORWARD) else e
                candidates.append((span, -a, a, smaller))
        if not candidates:
            _, need = worst(extents)
            if memory_limit is not None and need > memory_limit:
                raise ValueError(f"memory limit {human_bytes(memory_limit)} is too small for one block of "
                                 f"{'x'.join(map(str, extents))}: need {human_bytes(need)}")
            break
        _, _, a, smaller = max(candidates)
        extents[a] = smaller
    bounds = tuple(even_bounds(n, e) for n, e in zip(grid, extents))
    return BlockPlan(kind, in_shape, pooled, windows, bounds, tuple(priority))  # type: ignore[arg-type]


def _owned_shape(kind, in_shape, pooled, windows) -> tuple[int, ...]:
    if kind == BACKWARD:
        return in_shape
    shape = list(in_shape)
    for a, w in zip(pooled, windows):
        shape[a] = w.size_out
    return tuple(shape)


def _size(r: tuple[int, int]) -> int:
    return max(0, r[1] - r[0])


def _input_extent(w: AxisWindow, outs: int) -> int:
    return min(w.size_in, (outs - 1) * w.stride + w.span)


def _halve(extent: int, align: int) -> int:
    """About half of ``extent``, a multiple of ``align`` (never below it)."""
    half = -(-extent // 2)
    return max(align, -(-half // align) * align) if extent > align else extent
