"""Block plans for the Dask path: which input rows each output block reads, and which outputs
touch each input block (the "owner computes" backward).  Pure arithmetic on ``AxisWindow``s."""

from __future__ import annotations

from dataclasses import dataclass

from lucid.kernels.windows import AxisWindow


@dataclass(frozen=True)
class AxisBlock:
    """Along one pooled axis: outputs ``[o0, o1)``, reading input rows ``[r0, r1)``, with the
    window local to those rows (what the kernels take)."""

    o0: int
    o1: int
    r0: int
    r1: int
    window: AxisWindow


def cut(extent: int, size: int) -> list[tuple[int, int]]:
    """``[0, extent)`` in pieces of ``size`` (the last may be shorter)."""
    size = max(1, int(size))
    return [(a, min(extent, a + size)) for a in range(0, extent, size)]


def forward_blocks(w: AxisWindow, outputs_per_block: int) -> list[AxisBlock]:
    """Output blocks of ``outputs_per_block`` outputs and the input rows (halo included) each reads."""
    blocks = []
    for o0, o1 in cut(w.size_out, outputs_per_block):
        r0, r1, local = w.slab(o0, o1)
        blocks.append(AxisBlock(o0, o1, r0, r1, local))
    return blocks


def touching(w: AxisWindow, i0: int, i1: int) -> tuple[int, int]:
    """The outputs ``[o0, o1)`` whose windows reach input rows ``[i0, i1)`` (possibly empty)."""
    # window o covers rows [o*s - p, o*s - p + span); it reaches [i0, i1) iff o*s - p < i1 and o*s - p + span > i0
    lo = max(0, -((-(i0 - w.span + 1 + w.pad)) // w.stride))
    hi = min(w.size_out, (i1 - 1 + w.pad) // w.stride + 1)
    return lo, max(lo, hi)


@dataclass(frozen=True)
class OwnerBlock:
    """Along one pooled axis, for the backward: the input rows ``[i0, i1)`` this block owns, the outputs
    ``[o0, o1)`` touching them, the rows ``[r0, r1)`` those outputs read (to find their winners), and the
    windows local to each: ``read`` for the winners, ``own`` for adding into the owned rows."""

    i0: int
    i1: int
    o0: int
    o1: int
    r0: int
    r1: int
    read: AxisWindow
    own: AxisWindow


def owner_blocks(w: AxisWindow, rows_per_block: int) -> list[OwnerBlock]:
    """Input blocks of ``rows_per_block`` rows; each re-evaluates every window touching it."""
    blocks = []
    for i0, i1 in cut(w.size_in, rows_per_block):
        o0, o1 = touching(w, i0, i1)
        if o1 > o0:
            r0, r1, read = w.slab(o0, o1)
            _, _, own = w.slab(o0, o1, i0, i1)
        else:  # no window reaches these rows (k < s): their gradient is zero
            r0 = r1 = i0
            read = own = AxisWindow(w.kernel, w.stride, w.dilation, 0, 0, 0, 0)
        blocks.append(OwnerBlock(i0, i1, o0, o1, r0, r1, read, own))
    return blocks
