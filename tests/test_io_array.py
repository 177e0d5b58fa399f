"""In-memory sources/sinks, and every sink against random box orders (hypothesis)."""

import os

import h5py
import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lucid.io import ArraySink, ArraySource, LucidIOError, open_sink, open_source
from lucid.kernels.windows import PoolSpec


def test_array_source_reads_copies_in_native_order():
    data = np.arange(4 * 5 * 6, dtype=">i4").reshape(4, 5, 6)
    src = open_source(data)
    assert isinstance(src, ArraySource) and src.path is None
    assert src.dtype == np.int32 and src.dtype.isnative
    assert src.layout.axes == "dhw" and src.slab_axis == 0 and src.chunk_rows == 1
    box = src.read((slice(1, 3), slice(0, 5), slice(2, 4)))
    assert np.array_equal(box, data[1:3, :, 2:4])
    box[...] = -1  # a copy: the caller may modify it
    assert data.min() == 0
    assert open_source(np.zeros((2, 3, 4, 5, 6)), axes="nczyx").layout.pooled == (2, 3, 4)


@pytest.mark.parametrize(
    "array, words",
    [
        (np.zeros((4, 4, 4), bool), "boolean"),
        (np.zeros((4, 4, 4), np.complex128), "complex"),
        (np.zeros((4, 4, 4), object), "unsupported data type"),
        (np.zeros((4, 4)), "2-D"),
        (np.zeros((4, 0, 4)), "zero-sized"),
    ],
)
def test_array_source_errors(array, words):
    with pytest.raises(LucidIOError, match=words):
        open_source(array)


def test_array_sink():
    src = open_source(np.zeros((8, 8, 8), np.float32))
    sink = open_sink(None, (4, 4, 4), np.float32, like=src, pooling=PoolSpec.create(2, 2))
    assert isinstance(sink, ArraySink)
    sink.write((slice(0, 4), slice(0, 4), slice(0, 4)), np.ones((4, 4, 4)))
    sink.commit()
    assert sink.array.sum() == 64
    out = np.zeros((8, 8, 8), np.float32)
    sink = open_sink(out, (8, 8, 8), np.float32, like=src, kind="gradient")
    sink.write((slice(2, 3), slice(0, 8), slice(0, 8)), np.full((1, 8, 8), 2.0))
    assert out.sum() == 128
    with pytest.raises(ValueError, match="output array"):
        open_sink(np.zeros((8, 8, 8), np.float64), (8, 8, 8), np.float32, like=src)
    with pytest.raises(TypeError):
        open_source(12)


def boxes(shape, cuts, order):
    """Split ``shape`` into a grid of boxes (cut positions per axis), in a permuted order."""
    edges = [sorted({0, n, *(c % n for c in cs)}) for n, cs in zip(shape, cuts)]
    grid = [list(zip(e[:-1], e[1:])) for e in edges]
    items = [tuple(slice(a, b) for a, b in combo) for combo in np.ndindex(*[len(g) for g in grid])
             for combo in [tuple(grid[i][j] for i, j in enumerate(combo))]]
    order = [o % len(items) for o in order]
    ranked = sorted(range(len(items)), key=lambda i: (order[i % len(order)] if order else 0, i))
    return [items[i] for i in ranked]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 5), st.integers(1, 3)),
    cuts=st.lists(st.lists(st.integers(0, 10), max_size=2), min_size=4, max_size=4),
    order=st.lists(st.integers(0, 50), max_size=20),
    suffix=st.sampled_from([".nii", ".nii.gz", ".h5"]),
    axes=st.sampled_from(["xyzt", "zyxc", "thwc"]),
)
def test_any_write_order_reads_back_exactly(tmp_path_factory, shape, cuts, order, suffix, axes):
    tmp = tmp_path_factory.mktemp("order")
    data = np.random.default_rng(sum(shape)).integers(-30000, 30000, shape).astype(np.int16)
    src = open_source(data, axes=axes)
    sink = open_sink(tmp / ("out" + suffix), shape, np.int16, like=src, kind="gradient")
    for box in boxes(shape, cuts, order):
        sink.write(box, data[box])
    sink.commit()
    if suffix == ".h5":
        with h5py.File(tmp / "out.h5") as f:
            assert np.array_equal(f["data"][...], data)
    else:
        got = np.asarray(nib.load(tmp / ("out" + suffix)).dataobj)
        assert np.array_equal(got, data.transpose(sink.perm))
    assert sorted(os.listdir(tmp)) == ["out" + suffix]
