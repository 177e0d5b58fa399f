"""The streaming engine: any slab height gives the in-memory result bit for bit."""

from __future__ import annotations

import dataclasses

import h5py

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lucid import Tensor
from lucid.io import ArraySink, ArraySource, LucidIOError
from lucid.kernels.maxpool import MAX, MIN
from lucid.kernels.windows import AxisWindow, PoolSpec
from lucid.nn.functional import max_pool3d
from lucid.stream import engine
from lucid.stream.api import pool3d_file
from lucid.stream.plan import MemoryLimitError, cut_slabs, outer_axes, parse_size, plan_slabs
from tests.reference import naive_max_pool3d

# -- planner (pure arithmetic) ---------------------------------------------------------------


@pytest.mark.parametrize("k, s, p, d, n", [(2, 2, 0, 1, 9), (3, 1, 1, 1, 7), (3, 2, 1, 2, 12), (1, 3, 0, 1, 10), (5, 1, 2, 1, 5)])
@pytest.mark.parametrize("rows", [1, 2, 3, 100])
def test_slabs_cover_outputs_and_read_exactly_their_windows(k, s, p, d, n, rows):
    (w,) = PoolSpec.create(k, s, p, d).windows((n, n, n))[:1]
    slabs = cut_slabs(w, rows)
    assert [sl.out_rows[0] for sl in slabs] == list(range(0, w.size_out, rows))
    assert slabs[-1].out_rows[1] == w.size_out
    for slab in slabs:
        o0, o1 = slab.out_rows
        assert slab.in_rows == (max(0, o0 * s - p), min(n, (o1 - 1) * s - p + d * (k - 1) + 1))
        local = slab.window
        assert local.size_out == o1 - o0 and local.size_in == slab.in_rows[1] - slab.in_rows[0]
        for o in range(local.size_out):  # every tap lands on the same global row as in the whole volume
            for j in range(k):
                here = o * s - local.pad + j * d
                there = (o0 + o) * s - p + j * d
                assert (0 <= here < local.size_in) == (0 <= there < n)
                if 0 <= there < n:
                    assert here + slab.in_rows[0] == there


def test_outer_axes_follow_memory_order():
    assert outer_axes(5, (2, 3, 4), 2, "C") == (0, 1)  # ncdhw: n and c one at a time
    assert outer_axes(4, (0, 1, 2), 0, "C") == ()  # thwc: channels stay in the slab
    assert outer_axes(4, (0, 1, 2), 2, "F") == (3,)  # xyzt NIfTI: t outer
    assert outer_axes(5, (0, 1, 2), 2, "F") == (4, 3)


def test_plan_respects_budget_and_reports_minimum():
    spec = PoolSpec.create(2, 2, 0)
    plan = plan_slabs((64, 64, 64), (0, 1, 2), spec, slab_axis=0, in_itemsize=4, out_itemsize=4, memory_limit=1 << 20)
    assert plan.slab_bytes <= 1 << 20 and plan.rows_per_slab >= 1
    bigger = plan_slabs((64, 64, 64), (0, 1, 2), spec, slab_axis=0, in_itemsize=4, out_itemsize=4, memory_limit=4 << 20)
    assert bigger.rows_per_slab > plan.rows_per_slab
    with pytest.raises(MemoryLimitError, match=r"too small for one slab of the input: need at least [0-9.]+ (KiB|MiB)"):
        plan_slabs((64, 64, 64), (0, 1, 2), spec, slab_axis=0, in_itemsize=4, out_itemsize=4, memory_limit=1000)


def test_chunk_alignment():
    spec = PoolSpec.create(2, 2, 0)
    plan = plan_slabs((256, 32, 32), (0, 1, 2), spec, slab_axis=0, in_itemsize=4, out_itemsize=4,
                      memory_limit=2 << 20, chunk_rows=16)
    assert (plan.rows_per_slab * 2) % 16 == 0


@pytest.mark.parametrize("text, value", [("512M", 512 << 20), ("2G", 2 << 30), ("64k", 64 << 10), ("1.5GiB", 3 << 29), (4096, 4096)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "lots", "-1M", "0", "M", "inf"])
def test_parse_size_rejects_garbage(text):
    with pytest.raises(ValueError, match="memory limit"):
        parse_size(text)


# -- engine == in-memory ---------------------------------------------------------------------


def _stream(x, spec, rows, *, grad=None, axes=None, order=MAX, pad_value=0, backward=True, indices=True):
    source = ArraySource(x, axes=axes)
    plan = plan_slabs(x.shape, source.layout.pooled, spec, slab_axis=source.slab_axis, in_itemsize=x.itemsize,
                      out_itemsize=x.itemsize, memory_limit=1 << 40, backward=backward)
    plan = dataclasses.replace(plan, slabs=cut_slabs(plan.windows[plan.slab_r], rows))
    out = ArraySink(plan.out_shape, x.dtype)
    grad_sink = ArraySink(x.shape, np.float32) if backward else None
    idx = ArraySink(plan.out_shape, np.int64) if indices else None
    grad_source = None if grad is None else ArraySource(grad, axes=axes)
    engine.run(source, plan, out=out, grad_out=grad_sink, indices_out=idx, grad_in=grad_source, pad_value=pad_value, order=order)
    return out.array, None if idx is None else idx.array, None if grad_sink is None else grad_sink.array


@st.composite
def stream_cases(draw):
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(3))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(3))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    mode = draw(st.sampled_from(["zeros", "ignore"]))
    ceil_mode = draw(st.booleans())
    sizes = tuple(draw(st.integers(k, 9)) for k in kernel)
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2)), *sizes)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.integers(-3, 3, size=shape).astype(np.float32)
    x[rng.random(shape) < 0.03] = np.nan
    return x, PoolSpec.create(kernel, stride, padding, 1, ceil_mode, mode), draw(st.integers(1, 10)), rng


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream_cases())
def test_streaming_equals_in_memory_for_every_slab_height(case):
    x, spec, rows, rng = case
    pad = 0 if spec.padding_mode == "zeros" else None
    t = Tensor(x, requires_grad=True)
    y, idx = max_pool3d(t, spec.kernel, spec.stride, spec.padding, ceil_mode=spec.ceil_mode,
                        padding_mode=spec.padding_mode, return_indices=True)
    g = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(g)
    values, indices, grad = _stream(x, spec, rows, grad=g, pad_value=pad)
    np.testing.assert_array_equal(values, y.data)
    np.testing.assert_array_equal(indices, idx.data)
    assert grad.tobytes() == t.grad.data.tobytes()


@pytest.mark.parametrize("rows", [1, 2, 5])
def test_gradient_carry_across_slabs_with_overlap(rows):
    """k=3, s=1: every input plane gets contributions from three slabs when rows=1."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 1, 12, 6, 5)).astype(np.float32)
    g = rng.standard_normal((1, 1, 12, 6, 5)).astype(np.float32)
    spec = PoolSpec.create(3, 1, 1)
    want = naive_max_pool3d(x, spec.kernel, spec.stride, spec.padding, grad=g)
    got = _stream(x, spec, rows, grad=g)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[2], want[2])


def test_ones_gradient_counts_selections_and_gaps_stay_zero():
    x = np.arange(2 * 9 * 4 * 4, dtype=np.float32).reshape(2, 9, 4, 4)  # cdhw
    spec = PoolSpec.create((2, 2, 2), (3, 2, 2))  # stride 3 > kernel 2 along depth: planes 2, 5, 8 unread
    _, _, grad = _stream(x, spec, 1)
    assert grad.sum() == 2 * 3 * 2 * 2
    assert not grad[:, 2::3].any()
    np.testing.assert_array_equal(grad[:, 1::3, 1::2, 1::2], 1)


@pytest.mark.parametrize("layout, shape, slab_source_axes", [("thwc", (7, 6, 5, 3), None), ("xyzt", (5, 6, 7, 2), None)])
def test_other_layouts_match_moved_axes(layout, shape, slab_source_axes):
    rng = np.random.default_rng(5)
    x = rng.integers(0, 255, size=shape).astype(np.uint8)
    spec = PoolSpec.create(2, 2, 0)
    values, indices, _ = _stream(x, spec, 2, axes=layout, backward=False)
    src = ArraySource(x, axes=layout)
    carried = src.layout.carried[0]
    as_ncdhw = np.moveaxis(x, carried, 0)[None]
    want = max_pool3d(as_ncdhw, 2, 2).data[0]
    np.testing.assert_array_equal(np.moveaxis(values, carried, 0), want)


def test_min_pooling_for_negative_slopes():
    x = np.random.default_rng(1).integers(-50, 50, size=(1, 1, 6, 6, 6)).astype(np.int16)
    values, _, _ = _stream(x, PoolSpec.create(2, 2, 0), 1, order=MIN, backward=False, indices=False)
    want = -max_pool3d((-x.astype(np.int32)), 2, 2).data
    np.testing.assert_array_equal(values, want)


def test_padding_won_is_reported():
    source = ArraySource(np.full((1, 1, 4, 4, 4), -1000, np.int16))
    spec = PoolSpec.create(3, 1, 1)
    plan = plan_slabs(source.shape, source.layout.pooled, spec, slab_axis=2, in_itemsize=2, out_itemsize=2, memory_limit=1 << 30)
    stats = engine.run(source, plan, out=ArraySink(plan.out_shape, np.int16), pad_value=np.int16(0))
    assert stats.padding_won
    stats = engine.run(source, plan, out=ArraySink(plan.out_shape, np.int16), pad_value=None)
    assert not stats.padding_won


def test_errors_in_the_writer_surface_and_stop_the_run():
    class Broken(ArraySink):
        def write(self, index, data):
            raise OSError(28, "No space left on device")

    source = ArraySource(np.zeros((1, 1, 40, 8, 8), np.float32))
    spec = PoolSpec.create(2, 2, 0)
    plan = plan_slabs(source.shape, (2, 3, 4), spec, slab_axis=2, in_itemsize=4, out_itemsize=4, memory_limit=1 << 30)
    plan = dataclasses.replace(plan, slabs=cut_slabs(plan.windows[0], 1))
    with pytest.raises(OSError, match="No space left"):
        engine.run(source, plan, out=Broken(plan.out_shape, np.float32))


def test_errors_in_the_reader_surface():
    class Broken(ArraySource):
        def read(self, index):
            raise OSError(5, "Input/output error")

    source = Broken(np.zeros((1, 1, 8, 8, 8), np.float32))
    plan = plan_slabs(source.shape, (2, 3, 4), PoolSpec.create(2, 2), slab_axis=2, in_itemsize=4, out_itemsize=4, memory_limit=1 << 30)
    with pytest.raises(OSError, match="Input/output"):
        engine.run(source, plan, out=ArraySink(plan.out_shape, np.float32))


def test_progress_callback_counts_slabs():
    calls = []
    x = np.zeros((1, 1, 8, 8, 8), np.float32)
    source = ArraySource(x)
    plan = plan_slabs(x.shape, (2, 3, 4), PoolSpec.create(2, 2), slab_axis=2, in_itemsize=4, out_itemsize=4, memory_limit=1 << 30)
    plan = dataclasses.replace(plan, slabs=cut_slabs(plan.windows[0], 1))
    engine.run(source, plan, out=ArraySink(plan.out_shape, np.float32), progress=lambda *a: calls.append(a))
    assert [c[0] for c in calls] == [1, 2, 3, 4] and all(c[1] == 4 for c in calls)
    assert calls[-1][2] == x.nbytes


# -- the Python file API on arrays ----------------------------------------------------------------------


def test_pool3d_file_on_arrays_defaults_stride_to_kernel():
    x = np.random.default_rng(2).standard_normal((1, 1, 8, 8, 8)).astype(np.float32)
    out = np.zeros((1, 1, 4, 4, 4), np.float32)
    grad = np.zeros(x.shape, np.float32)
    report = pool3d_file(x, out, 2, grad_out=grad, memory_limit="1M")
    np.testing.assert_array_equal(out, max_pool3d(x, 2, 2).data)
    assert grad.sum() == 64 and report.out_shape == (1, 1, 4, 4, 4) and report.stride == (2, 2, 2)


def test_pool3d_file_dry_run_writes_nothing():
    x = np.ones((1, 1, 8, 8, 8), np.float32)
    out = np.zeros((1, 1, 4, 4, 4), np.float32)
    report = pool3d_file(x, out, 2, dry_run=True)
    assert report.dry_run and not out.any()


def test_pool3d_file_dry_run_checks_the_outputs_as_the_run_would(tmp_path):
    src = tmp_path / "in.nii"
    nib.save(nib.Nifti1Image(np.arange(512, dtype=np.int16).reshape(8, 8, 8), np.eye(4)), src)
    with pytest.raises(LucidIOError, match="output directory .*missing does not exist"):
        pool3d_file(src, tmp_path / "missing" / "o.nii", 2, dry_run=True)
    with pytest.raises(LucidIOError, match="output is the input file"):
        pool3d_file(src, tmp_path / "o.nii", 2, grad_out=src, force=True, dry_run=True)
    existing = tmp_path / "old.nii"
    existing.write_bytes(b"keep me")
    report = pool3d_file(src, existing, 2, dry_run=True)
    assert len(report.warnings) == 1 and str(existing) in report.warnings[0] and "--force" in report.warnings[0]
    assert pool3d_file(src, existing, 2, dry_run=True, force=True).warnings == []
    assert existing.read_bytes() == b"keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["in.nii", "old.nii"]


def test_pool3d_file_outputs_must_be_different_files_hard_links_too(tmp_path):
    src = tmp_path / "in.nii"
    nib.save(nib.Nifti1Image(np.arange(512, dtype=np.int16).reshape(8, 8, 8), np.eye(4)), src)
    (tmp_path / "grad.nii").write_bytes(b"keep me")
    (tmp_path / "link.nii").hardlink_to(tmp_path / "grad.nii")
    with pytest.raises(ValueError, match=r"grad.nii: output, grad_out and indices_out must be different files \(same file as .*link.nii\)"):
        pool3d_file(src, tmp_path / "link.nii", 2, grad_out=tmp_path / "grad.nii", force=True)
    assert (tmp_path / "grad.nii").read_bytes() == b"keep me"


def test_pool3d_file_argument_errors():
    x = np.ones((1, 1, 8, 8, 8), np.float32)
    with pytest.raises(ValueError, match="grad_in needs grad_out"):
        pool3d_file(x, np.zeros((1, 1, 4, 4, 4), np.float32), grad_in=np.ones((1, 1, 4, 4, 4)))
    with pytest.raises(ValueError, match="nothing to write"):
        pool3d_file(x)
    with pytest.raises(MemoryLimitError, match="need at least"):
        pool3d_file(x, np.zeros((1, 1, 4, 4, 4), np.float32), memory_limit="1K")


def test_axis_window_dataclass_is_hashable():
    assert hash(AxisWindow(2, 2, 1, 0, 4, 2, 0))


def test_pool_job_is_small_picklable_data_that_runs_like_pool3d_file(tmp_path):
    import pickle

    from lucid.stream.api import pool3d_file
    from lucid.stream.job import PoolJob

    a = np.random.default_rng(3).standard_normal((9, 10, 11)).astype(np.float32)
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f["data"] = a
    job = PoolJob(str(tmp_path / "in.h5"), str(tmp_path / "a.h5"), 3, 2, 1, memory_limit="2M")
    again = pickle.loads(pickle.dumps(job))
    assert again == job and len(pickle.dumps(job)) < 1000
    assert PoolJob.from_dict(job.to_dict()) == job
    again.run()
    pool3d_file(str(tmp_path / "in.h5"), str(tmp_path / "b.h5"), 3, 2, 1, memory_limit="2M")
    other = job.with_files(str(tmp_path / "in.h5"), str(tmp_path / "c.h5"))
    assert other.kernel_size == 3 and other.output.endswith("c.h5")
    other.run()
    with h5py.File(tmp_path / "a.h5") as fa, h5py.File(tmp_path / "b.h5") as fb, h5py.File(tmp_path / "c.h5") as fc:
        np.testing.assert_array_equal(fa["data"][:], fb["data"][:])
        np.testing.assert_array_equal(fa["data"][:], fc["data"][:])
    with pytest.raises(TypeError):
        pool3d_file(str(tmp_path / "in.h5"), str(tmp_path / "d.h5"), 2, no_such_option=1)
