"""``lucid.dask.max_pool3d`` / ``max_pool3d_backward`` against the in-memory op, bit for bit, on many blocks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

import lucid.dask as ldask  # noqa: E402
from lucid.kernels import maxpool, tiled  # noqa: E402
from lucid.kernels.windows import PoolSpec  # noqa: E402
from lucid.nn import functional as F  # noqa: E402
from lucid.tensor import Tensor  # noqa: E402


def reference(a: np.ndarray, g: np.ndarray | None, k, s, p, d, ceil, mode):
    """``lucid.nn.functional.max_pool3d`` (forward values, and x.grad for ``g``) on a 3-, 4- or 5-D array."""
    x = a[None] if a.ndim == 3 else a
    if a.dtype.kind == "f":
        t = Tensor(x, requires_grad=g is not None)
        y = F.max_pool3d(t, k, s, p, dilation=d, ceil_mode=ceil, padding_mode=mode)
        values = y.data
        grad = None
        if g is not None:
            y.backward(g[None] if a.ndim == 3 else g)
            grad = t.grad.data
    else:  # integers cannot require gradients: the op's own backward steps
        values = F.max_pool3d(x, k, s, p, dilation=d, ceil_mode=ceil, padding_mode=mode).data
        grad = None
        if g is not None:
            spec = PoolSpec.create(k, s, p, d, ceil, mode)
            windows, axes = spec.windows(x.shape[-3:]), (x.ndim - 3, x.ndim - 2, x.ndim - 1)
            mults = maxpool.code_mults(windows, (0, 1, 2))
            _, codes = tiled.argpool(x, axes, windows, mults, 0 if mode == "zeros" else None)
            grad = tiled.unpool(g[None] if a.ndim == 3 else g, codes, axes, windows, mults,
                                np.empty(x.shape, g.dtype), lead=0, fresh=True)
    if a.ndim == 3:
        values = values[0]
        grad = None if grad is None else grad[0]
    return values, grad


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


@st.composite
def cases(draw):
    ndim = draw(st.integers(3, 5))
    k = tuple(draw(st.integers(1, 4)) for _ in range(3))
    s = tuple(draw(st.integers(1, 3)) for _ in range(3))
    d = tuple(draw(st.integers(1, 2)) for _ in range(3))
    p = tuple(draw(st.integers(0, kk // 2)) for kk in k)
    ceil = draw(st.booleans())
    mode = draw(st.sampled_from(["zeros", "ignore"]))
    spatial = tuple(draw(st.integers(max(1, dd * (kk - 1) + 1 - 2 * pp), 14)) for kk, dd, pp in zip(k, d, p))
    lead = tuple(draw(st.integers(1, 2)) for _ in range(ndim - 3))
    shape = lead + spatial
    try:
        PoolSpec.create(k, s, p, d, ceil, mode).windows(spatial)
    except ValueError:  # "ignore" with a window over padding only
        mode = "zeros"
    dtype = draw(st.sampled_from(["float32", "float64", "int16", "uint8"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    a = rng.integers(-3 if dtype[0] in "fi" else 0, 4, shape).astype(dtype)  # few values: many ties
    if dtype[0] == "f" and draw(st.booleans()):
        a.ravel()[rng.random(a.size) < 0.1] = np.nan
    chunks = tuple(draw(st.integers(1, max(1, n))) for n in shape)
    return a, chunks, (k, s, p, d, ceil, mode)


@given(cases(), st.integers(0, 2**32 - 1))
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_forward_and_backward_equal_the_in_memory_op(case, seed):
    a, chunks, (k, s, p, d, ceil, mode) = case
    x = da.from_array(a, chunks=chunks)
    y = ldask.max_pool3d(x, k, s, p, dilation=d, ceil_mode=ceil, padding_mode=mode)
    values, _ = reference(a, None, k, s, p, d, ceil, mode)
    with dask.config.set(scheduler="synchronous"):
        got = y.compute()
    assert same_bits(got, values)
    gdtype = a.dtype if a.dtype.kind == "f" else np.dtype("float32")
    g = np.random.default_rng(seed).standard_normal(values.shape).astype(gdtype)
    g[g == 0] = 1  # no -0.0: the kernels' "+0.0 at a dropped winner" would show as a sign bit
    _, grad = reference(a, g, k, s, p, d, ceil, mode)
    gx = ldask.max_pool3d_backward(x, da.from_array(g, chunks=y.chunks), k, s, p, dilation=d, ceil_mode=ceil,
                                   padding_mode=mode)
    assert gx.chunks == x.chunks
    with dask.config.set(scheduler="synchronous"):
        assert same_bits(gx.compute(), grad)


def test_one_task_per_block_on_top_of_the_input():
    a = np.random.default_rng(0).standard_normal((32, 32, 32), np.float32)
    x = da.from_array(a, chunks=16)  # 8 input chunks
    y = ldask.max_pool3d(x, 3, 2, 1)
    assert len(dict(y.__dask_graph__())) == 8 + 8 and y.chunks == ((8, 8),) * 3
    g = ldask.max_pool3d_backward(x, da.ones(y.shape, chunks=8, dtype=np.float32), 3, 2, 1)
    assert g.chunks == x.chunks
    assert ldask.max_pool3d(x, 3, 2, 1, out_chunks=(4, 8, 16)).chunks == ((4,) * 4, (8, 8), (16,))
    assert ldask.max_pool3d_backward(x, y, 3, 2, 1, in_chunks=(8, 32, 16)).chunks == ((8,) * 4, (32,), (16, 16))


def test_one_task_per_output_block_and_halo_from_neighbours():
    a = np.random.default_rng(1).standard_normal((32, 32, 32)).astype(np.float32)
    x = da.from_array(a, chunks=8)
    y = ldask.max_pool3d(x, 3, 2, 1)
    layers = dict(y.dask.layers)
    assert len(layers[y.name]) == y.npartitions == 64
    gx = ldask.max_pool3d_backward(x, y, 3, 2, 1)
    assert len(dict(gx.dask.layers)[gx.name]) == x.npartitions
    with dask.config.set(scheduler="threads"):
        values, grad = dask.compute(y, gx)
    ref, ref_grad = reference(a, reference(a, None, 3, 2, 1, 1, False, "zeros")[0], 3, 2, 1, 1, False, "zeros")
    assert same_bits(values, ref)
    assert same_bits(grad, ref_grad)


def test_ties_and_nan_follow_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    a = rng.integers(0, 3, (2, 3, 17, 12, 10)).astype(np.float32)
    a.ravel()[rng.random(a.size) < 0.05] = np.nan
    x = da.from_array(a, chunks=(1, 2, 5, 4, 3))
    for k, s, p, d, ceil in [(3, 2, 1, 1, False), (2, 2, 0, 1, True), ((3, 2, 3), (1, 2, 2), 1, (2, 1, 1), True)]:
        y = ldask.max_pool3d(x, k, s, p, dilation=d, ceil_mode=ceil, padding_mode="ignore")
        t = torch.tensor(a, requires_grad=True)
        ty = torch.nn.functional.max_pool3d(t, k, s, p, d, ceil_mode=ceil)
        g = rng.standard_normal(ty.shape).astype(np.float32)
        ty.backward(torch.tensor(g))
        gx = ldask.max_pool3d_backward(x, da.from_array(g, chunks=y.chunks), k, s, p, dilation=d, ceil_mode=ceil,
                                       padding_mode="ignore")
        values, grad = dask.compute(y, gx, scheduler="threads")
        np.testing.assert_array_equal(values, ty.detach().numpy())
        np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-6, atol=1e-6)  # PyTorch's own sums may differ in the last bit


def test_on_a_local_cluster_and_against_pytorch(local_client):
    a = np.random.default_rng(2).standard_normal((2, 3, 20, 18, 17)).astype(np.float32)
    x = da.from_array(a, chunks=(1, 3, 7, 9, 6))
    y = ldask.max_pool3d(x, 3, 2, 1)
    g = ldask.max_pool3d_backward(x, da.ones(y.shape, chunks=4, dtype=np.float32), 3, 2, 1)
    got, grad = local_client.compute([y, g], sync=True)
    want, want_grad = reference(a, np.ones(y.shape, np.float32), 3, 2, 1, 1, False, "zeros")
    assert same_bits(got, want) and same_bits(grad, want_grad)
    torch = pytest.importorskip("torch")
    t = torch.tensor(a, requires_grad=True)
    ty = torch.nn.functional.max_pool3d(t, 3, 2, 1)
    ty.backward(torch.ones(y.shape))
    np.testing.assert_array_equal(got, ty.detach().numpy())
    np.testing.assert_array_equal(grad, t.grad.numpy())


def test_numpy_inputs_and_errors():
    a = np.arange(4 * 6 * 8, dtype=np.float64).reshape(4, 6, 8)
    assert same_bits(ldask.max_pool3d(a, 2).compute(), reference(a, None, 2, 2, 0, 1, False, "zeros")[0])
    with pytest.raises(ValueError, match="at least 3 axes"):
        ldask.max_pool3d(np.zeros((4, 4)), 2)
    with pytest.raises(ValueError, match="grad_output has shape"):
        ldask.max_pool3d_backward(a, np.zeros((1, 1, 1)), 2)
    with pytest.raises(TypeError, match="integer or floating"):
        ldask.max_pool3d(np.zeros((4, 4, 4), bool), 2)


def test_on_a_local_cluster(local_client):
    a = np.random.default_rng(3).integers(0, 5, (2, 20, 18, 16)).astype(np.float32)
    x = da.from_array(a, chunks=(1, 7, 6, 5))
    y = ldask.max_pool3d(x, 3, 2, 1, ceil_mode=True)
    g = np.ones(y.shape, np.float32)
    gx = ldask.max_pool3d_backward(x, da.from_array(g, chunks=4), 3, 2, 1, ceil_mode=True)
    values, grad = local_client.compute([y, gx], sync=True)
    ref, ref_grad = reference(a, g, 3, 2, 1, 1, True, "zeros")
    assert same_bits(values, ref)
    assert same_bits(grad, ref_grad)


def test_without_dask_one_line_names_the_extra():
    import subprocess
    import sys

    code = """
import sys
class NoDask:
    def find_spec(self, name, path=None, target=None):
        if name == "dask" or name.startswith("dask."):
            raise ImportError(f"No module named {name!r}")
sys.meta_path.insert(0, NoDask())
import lucid, lucid.dask
try:
    lucid.dask.max_pool3d
except ImportError as exc:
    print(exc)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "lucid.dask.max_pool3d needs dask; install the dask extra: pip install 'lucid-pool[dask]'"
