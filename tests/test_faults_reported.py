"""Faults found while testing issue 6 in code other engineers own, pinned as strict xfails.

Each test states the expected behaviour; when the owner fixes the bug the test
starts passing, ``strict=True`` turns that into a failure, and the marker (and
the workaround named in the reason, if any) can go.
"""

from __future__ import annotations

import pytest

from lucid.kernels.windows import PoolSpec
from lucid.stream.plan import MemoryLimitError, plan_slabs


@pytest.mark.xfail(strict=True, reason=(
    "lucid/stream/plan.py: plan_slabs multiplies plane sizes with np.prod(dtype=int64), which wraps for "
    "huge shapes: (2**40)^3 float32 gets a plan of 32768 slabs with slab_bytes=0 instead of MemoryLimitError "
    "(and (2**62)^3 loops for ever in cut_slabs). Files cannot reach it any more: lucid.io refuses shapes "
    "over 1 EiB (check_shape), but library callers with their own Source can. Fix: Python ints (math.prod)."))
def test_planner_refuses_a_shape_whose_size_overflows_int64():
    n = 1 << 40
    with pytest.raises(MemoryLimitError):
        plan_slabs((n, n, n), (0, 1, 2), PoolSpec.create(2, 2, 0), slab_axis=0, in_itemsize=4, out_itemsize=4,
                   memory_limit=512 << 20)


def test_planner_refuses_a_large_but_representable_shape():
    """The same check below the overflow works (so the xfail above is about int64 only)."""
    n = 1 << 20
    with pytest.raises(MemoryLimitError, match="too small for one slab"):
        plan_slabs((n, n, n), (0, 1, 2), PoolSpec.create(2, 2, 0), slab_axis=0, in_itemsize=4, out_itemsize=4,
                   memory_limit=512 << 20)


# lucid/inspect.py: describe() on a NIfTI whose xyzt_units byte is not a valid code raises KeyError
# (nibabel's get_xyzt_units); pinned in tests/test_fuzz_inputs.py::test_describe_survives_invalid_units_code,
# next to the fuzzer that found it.
