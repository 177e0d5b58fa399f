"""Block plans (``lucid.dask.blocks``): partitions, halos and owner-computes ranges, against brute force."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lucid.dask import blocks
from lucid.kernels.windows import PoolSpec


@st.composite
def axis_windows(draw):
    k = draw(st.integers(1, 5))
    s = draw(st.integers(1, 4))
    d = draw(st.integers(1, 3))
    p = draw(st.integers(0, k // 2))
    ceil = draw(st.booleans())
    n = draw(st.integers(max(1, d * (k - 1) + 1 - 2 * p), 40))
    spec = PoolSpec.create(k, s, p, d, ceil)
    return spec.windows((n, 1 + 2 * p + d * (k - 1), 1 + 2 * p + d * (k - 1)))[0]


def taps(w, o):
    return [o * w.stride - w.pad + j * w.dilation for j in range(w.kernel)]


def cuts(draw, n):
    inner = draw(st.lists(st.integers(1, max(1, n - 1)), max_size=6, unique=True)) if n > 1 else []
    return tuple(sorted({0, n, *inner}))


@given(axis_windows(), st.data())
@settings(max_examples=300, deadline=None)
def test_forward_blocks_read_their_windows_span(w, data):
    bounds = cuts(data.draw, w.size_out)
    for o0, o1 in zip(bounds, bounds[1:]):
        b = blocks.forward_axis(w, o0, o1)
        inside = [t for o in range(o0, o1) for t in taps(w, o) if 0 <= t < w.size_in]
        assert b.reads == (max(0, o0 * w.stride - w.pad), min(w.size_in, (o1 - 1) * w.stride - w.pad + w.span))
        assert all(b.reads[0] <= t < b.reads[1] for t in inside)
        local = b.window
        assert local.size_out == o1 - o0 and local.size_in == b.reads[1] - b.reads[0]
        for o in range(o0, o1):
            for t, lt in zip(taps(w, o), taps(local, o - o0)):
                assert lt == t - b.reads[0]
                assert w.takes_part(t) == local.takes_part(lt)
                assert w.is_padding(t) == local.is_padding(lt)


@given(axis_windows(), st.data())
@settings(max_examples=300, deadline=None)
def test_backward_blocks_evaluate_every_window_touching_them(w, data):
    bounds = cuts(data.draw, w.size_in)
    owned = []
    for b0, b1 in zip(bounds, bounds[1:]):
        b = blocks.backward_axis(w, b0, b1)
        owned += range(*b.own)
        touching = {o for o in range(w.size_out) if any(b0 <= t < b1 for t in taps(w, o))}
        lo, hi = b.outs
        assert touching <= set(range(lo, hi))
        if touching:
            assert lo in touching and hi - 1 in touching
            assert b.rows[0] <= min(b.reads[0], b0) and b.rows[1] >= max(b.reads[1], b1)
            for o in range(lo, hi):
                for t, lt in zip(taps(w, o), taps(b.scatter, o - lo)):
                    assert lt == t - b.rows[0]
                    if 0 <= t < w.size_in:  # every real tap lands in the buffer
                        assert 0 <= lt < b.scatter.size_in
        else:
            assert b.empty
    assert owned == list(range(w.size_in))


def test_backward_gap_rows_belong_to_no_window():
    w = PoolSpec.create(1, 3, 0).windows((9, 9, 9))[0]  # k < s: rows 1, 2, 4, 5, ... are read by no window
    assert blocks.backward_axis(w, 1, 3).empty
    assert blocks.backward_axis(w, 2, 4).outs == (1, 2)


@st.composite
def volumes(draw):
    ndim = draw(st.integers(3, 5))
    shape = [draw(st.integers(1, 3)) for _ in range(ndim - 3)] + [draw(st.integers(4, 40)) for _ in range(3)]
    k = draw(st.integers(1, 4))
    s = draw(st.integers(1, 3))
    spec = PoolSpec.create(k, s, draw(st.integers(0, k // 2)), 1, draw(st.booleans()))
    pooled = (ndim - 3, ndim - 2, ndim - 1)
    return tuple(shape), pooled, spec.windows(shape[-3:])


@given(volumes(), st.sampled_from([blocks.FORWARD, blocks.BACKWARD]), st.integers(2, 40000), st.data())
@settings(max_examples=150, deadline=None)
def test_plans_cover_the_grid_in_aligned_blocks_within_budget(vol, kind, budget, data):
    shape, pooled, windows = vol
    align = [data.draw(st.integers(1, 6)) for _ in shape]
    plan = blocks.plan_blocks(kind, shape, pooled, windows, itemsize=4, block_bytes=budget, align=align)
    grid = plan.out_shape if kind == blocks.FORWARD else plan.in_shape
    assert tuple(b[-1] for b in plan.bounds) == tuple(grid)
    for a, b in enumerate(plan.bounds):
        assert all((y - x) % align[a] == 0 for x, y in zip(b, b[1:-1]))  # whole chunks, but for the last block
    assert len(plan) == math.prod(plan.grid) == len(list(plan.blocks()))
    if kind == blocks.BACKWARD and max(align) == 1:  # unaligned backward blocks default to the stride
        align = [windows[pooled.index(a)].stride if a in pooled else 1 for a in range(len(shape))]
    minimal = all(len(set(c)) == 1 or c[0] <= align[a] for a, c in enumerate(plan.chunks()))
    for block in plan.blocks():
        read = math.prod(r.reads[1] - r.reads[0] for r in block.axes) if kind == blocks.FORWARD else \
            math.prod(r.own[1] - r.own[0] for r in block.axes)
        assert read * 4 <= budget or minimal


def test_default_block_is_about_128_mib_of_input():
    shape = (1024, 1024, 1024)
    windows = PoolSpec.create(3, 2, 1).windows(shape)
    plan = blocks.plan_blocks(blocks.FORWARD, shape, (0, 1, 2), windows, itemsize=4, align=(64, 64, 64))
    block = plan.block((1, 1, 1))
    read = math.prod(a.reads[1] - a.reads[0] for a in block.axes) * 4
    assert 32 * blocks.MiB < read <= blocks.DEFAULT_BLOCK_BYTES
    assert all(e % 64 == 0 for c in plan.chunks() for e in c[:-1])


def test_memory_limit_too_small_for_one_block():
    shape = (64, 64, 64)
    windows = PoolSpec.create(3, 2, 1).windows(shape)
    with pytest.raises(ValueError, match="too small for one block"):
        blocks.plan_blocks(blocks.FORWARD, shape, (0, 1, 2), windows, itemsize=4, memory_limit=1000,
                           align=(32, 32, 32))


def test_plan_is_small_and_picklable():
    import pickle

    shape = (4096, 4096, 4096)
    windows = PoolSpec.create(3, 2, 1).windows(shape)
    plan = blocks.plan_blocks(blocks.BACKWARD, shape, (0, 1, 2), windows, itemsize=4)
    assert len(plan) > 500 and len(pickle.dumps(plan)) < 4000
    assert pickle.loads(pickle.dumps(plan)) == plan
