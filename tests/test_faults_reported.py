"""Planner faults found while testing issue 6: sizes beyond int64 must be refused, not wrapped."""

from __future__ import annotations

import pytest

from lucid.kernels.windows import PoolSpec
from lucid.stream.plan import MemoryLimitError, plan_slabs


def test_planner_refuses_a_shape_whose_size_overflows_int64():
    n = 1 << 40
    with pytest.raises(MemoryLimitError):
        plan_slabs((n, n, n), (0, 1, 2), PoolSpec.create(2, 2, 0), slab_axis=0, in_itemsize=4, out_itemsize=4,
                   memory_limit=512 << 20)


def test_planner_refuses_a_large_but_representable_shape():
    """The same check below the overflow."""
    n = 1 << 20
    with pytest.raises(MemoryLimitError, match="too small for one slab"):
        plan_slabs((n, n, n), (0, 1, 2), PoolSpec.create(2, 2, 0), slab_axis=0, in_itemsize=4, out_itemsize=4,
                   memory_limit=512 << 20)


