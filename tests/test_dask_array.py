"""lucid.dask.max_pool3d / max_pool3d_backward: bit-identical to the in-memory functions,
one task per block, on the threaded scheduler and on a real LocalCluster."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lucid.nn.functional as F
from lucid import Tensor
from lucid.dask.blocks import forward_blocks, owner_blocks, touching
from lucid.kernels.windows import PoolSpec

da = pytest.importorskip("dask.array")

from lucid.dask import max_pool3d, max_pool3d_backward  # noqa: E402


def reference(a, g, k, s, p, d, ceil, mode):
    t = Tensor(a, requires_grad=g is not None)
    y = F.max_pool3d(t, k, s, p, dilation=d, ceil_mode=ceil, padding_mode=mode)
    if g is None:
        return y.data, None
    y.backward(g)
    return y.data, t.grad.data


@st.composite
def cases(draw):
    k = draw(st.integers(1, 4))
    s = draw(st.integers(1, 4))
    d = draw(st.integers(1, 2))
    mode = draw(st.sampled_from(["zeros", "ignore"]))
    p = draw(st.integers(0, k // 2 if mode == "ignore" else k))
    ceil = draw(st.booleans())
    span = d * (k - 1) + 1
    shape = tuple(draw(st.integers(max(1, span - 2 * p), span + 9)) for _ in range(3))
    lead = draw(st.sampled_from([(), (2,), (1, 2)]))
    chunks = tuple(draw(st.integers(1, n)) for n in lead + shape)
    kind = draw(st.sampled_from(["ties", "normal", "nan", "int16"]))
    return k, s, p, d, ceil, mode, lead + shape, chunks, kind, draw(st.integers(0, 2**31))


def make(kind, shape, seed):
    rng = np.random.default_rng(seed)
    if kind == "int16":
        return rng.integers(-3, 3, shape).astype(np.int16)
    a = rng.integers(-3, 3, shape).astype(np.float32) if kind != "normal" else rng.standard_normal(shape, np.float32)
    if kind == "nan":
        a[rng.random(shape) < 0.1] = np.nan
    return a


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_forward_and_backward_equal_the_in_memory_functions(case):
    k, s, p, d, ceil, mode, shape, chunks, kind, seed = case
    a = make(kind, shape, seed)
    a5 = a.reshape((1,) * (5 - a.ndim) + a.shape) if a.ndim < 5 else a
    try:
        want, _ = reference(a5, None, k, s, p, d, ceil, mode)
    except ValueError:  # the window does not fit: both sides refuse
        with pytest.raises(ValueError):
            max_pool3d(da.from_array(a, chunks=chunks), k, s, p, dilation=d, ceil_mode=ceil, padding_mode=mode)
        return
    x = da.from_array(a, chunks=chunks)
    y = max_pool3d(x, k, s, p, dilation=d, ceil_mode=ceil, padding_mode=mode)
    got = y.compute(scheduler="threads")
    np.testing.assert_array_equal(got, want.reshape(got.shape))
    assert got.dtype == a.dtype
    if a.dtype.kind != "f":
        return
    g = np.random.default_rng(seed + 1).standard_normal(want.shape).astype(np.float32)
    _, want_grad = reference(a5, g, k, s, p, d, ceil, mode)
    grad = max_pool3d_backward(x, da.from_array(g.reshape(got.shape), chunks=3), k, s, p, dilation=d,
                               ceil_mode=ceil, padding_mode=mode).compute(scheduler="threads")
    assert grad.tobytes() == want_grad.reshape(grad.shape).tobytes()  # bit for bit, NaN included


def test_one_task_per_block_on_top_of_the_input():
    a = np.random.default_rng(0).standard_normal((32, 32, 32), np.float32)
    x = da.from_array(a, chunks=16)  # 8 input chunks
    y = max_pool3d(x, 3, 2, 1)
    assert len(dict(y.__dask_graph__())) == 8 + 8 and y.chunks == ((8, 8),) * 3
    g = max_pool3d_backward(x, da.ones(y.shape, chunks=8, dtype=np.float32), 3, 2, 1)
    assert g.chunks == x.chunks


def test_block_arithmetic_covers_every_window_once():
    spec = PoolSpec.create(3, 2, 1, ceil_mode=True)
    (w, _, _) = spec.windows((17, 5, 5))
    blocks = forward_blocks(w, 3)
    assert [(b.o0, b.o1) for b in blocks] == [(0, 3), (3, 6), (6, 9)]
    assert [(b.r0, b.r1) for b in blocks] == [(0, 6), (5, 12), (11, 17)]
    own = owner_blocks(w, 5)
    assert [(b.i0, b.i1) for b in own] == [(0, 5), (5, 10), (10, 15), (15, 17)]
    for b in own:  # every output whose window reaches the block, and no other
        reach = [o for o in range(w.size_out) if o * 2 - 1 < b.i1 and o * 2 - 1 + 3 > b.i0]
        assert (b.o0, b.o1) == (reach[0], reach[-1] + 1) == touching(w, b.i0, b.i1)


def test_on_a_local_cluster_and_against_pytorch(local_client):
    a = np.random.default_rng(2).standard_normal((2, 3, 20, 18, 17)).astype(np.float32)
    x = da.from_array(a, chunks=(1, 3, 7, 9, 6))
    y = max_pool3d(x, 3, 2, 1)
    g = max_pool3d_backward(x, da.ones(y.shape, chunks=4, dtype=np.float32), 3, 2, 1)
    got, grad = local_client.compute([y, g], sync=True)
    want, want_grad = reference(a, np.ones(want_shape := y.shape, np.float32), 3, 2, 1, 1, False, "zeros")
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(grad, want_grad)
    torch = pytest.importorskip("torch")
    t = torch.tensor(a, requires_grad=True)
    ty = torch.nn.functional.max_pool3d(t, 3, 2, 1)
    ty.backward(torch.ones(want_shape))
    np.testing.assert_array_equal(got, ty.detach().numpy())
    np.testing.assert_array_equal(grad, t.grad.numpy())
