"""lucid.nn.functional.max_pool3d and nn.MaxPool3d against the naive reference, PyTorch and the spec."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lucid
import lucid.nn as nn
from lucid import Tensor
from lucid.kernels import tiled
from lucid.nn.functional import max_pool3d
from tests.reference import naive_max_pool3d, output_size

FLOATS = [np.float16, np.float32, np.float64]
INTS = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32]


@st.composite
def pooling_cases(draw, dtypes=FLOATS + INTS):
    """Small inputs with many ties (few distinct values), NaN and ±inf, and valid parameters."""
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(3))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(3))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(3))
    mode = draw(st.sampled_from(["zeros", "ignore"]))
    padding = tuple(draw(st.integers(0, k // 2 if mode == "ignore" else k)) for k in kernel)
    ceil_mode = draw(st.booleans())
    sizes = []
    for a in range(3):
        span = dilation[a] * (kernel[a] - 1) + 1
        sizes.append(draw(st.integers(max(1, span - 2 * padding[a]), 7)))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2)), *sizes)
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if dtype.kind == "f":
        x = rng.integers(-3, 4, size=shape).astype(dtype)
        specials = rng.random(shape)
        x[specials < 0.05] = np.nan
        x[(specials >= 0.05) & (specials < 0.08)] = np.inf
        x[(specials >= 0.08) & (specials < 0.11)] = -np.inf
    else:
        info = np.iinfo(dtype)
        x = rng.choice(np.array([info.min, info.max, 0, 1, 2], dtype=dtype), size=shape)
    return x, kernel, stride, padding, dilation, ceil_mode, mode


def _windows_all_fit(x, kernel, stride, padding, dilation, ceil_mode, mode):
    if any(output_size(x.shape[2 + a], kernel[a], stride[a], padding[a], dilation[a], ceil_mode) < 1 for a in range(3)):
        return False
    if mode == "ignore":  # lucid refuses windows made only of padding (PyTorch returns garbage)
        for a in range(3):
            n = output_size(x.shape[2 + a], kernel[a], stride[a], padding[a], dilation[a], ceil_mode)
            for o in range(n):
                pos = [o * stride[a] - padding[a] + j * dilation[a] for j in range(kernel[a])]
                if not any(0 <= q < x.shape[2 + a] for q in pos):
                    return False
    return True


def _run(x, kernel, stride, padding, dilation, ceil_mode, mode, grad=None):
    t = Tensor(x, requires_grad=grad is not None)
    y, idx = max_pool3d(
        t, kernel, stride, padding, dilation=dilation, ceil_mode=ceil_mode, return_indices=True, padding_mode=mode
    )
    if grad is not None:
        y.backward(grad)
    return y.data, idx.data, None if grad is None else t.grad.data


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pooling_cases())
def test_forward_matches_naive_reference(case):
    x, kernel, stride, padding, dilation, ceil_mode, mode = case
    if not _windows_all_fit(*case):
        with pytest.raises(ValueError):
            max_pool3d(x, kernel, stride, padding, dilation=dilation, ceil_mode=ceil_mode, padding_mode=mode)
        return
    want_values, want_indices, _ = naive_max_pool3d(x, kernel, stride, padding, dilation, ceil_mode, mode)
    fast = max_pool3d(x, kernel, stride, padding, dilation=dilation, ceil_mode=ceil_mode, padding_mode=mode).data
    values, indices, _ = _run(x, kernel, stride, padding, dilation, ceil_mode, mode)
    assert fast.dtype == x.dtype and values.dtype == x.dtype
    np.testing.assert_array_equal(fast, want_values)
    np.testing.assert_array_equal(values, want_values)
    np.testing.assert_array_equal(indices, want_indices)


@st.composite
def width_pair_cases(draw):
    """Width windows that are adjacent pairs (k=2, s=2, no padding, even width): the kernels'
    own first pass for them, with ties, NaN and ±inf as in ``pooling_cases``."""
    x, kernel, stride, padding, dilation, ceil_mode, mode = draw(pooling_cases())
    width = 2 * draw(st.integers(1, 4))
    x = np.resize(x, x.shape[:-1] + (width,))
    return x, kernel[:2] + (2,), stride[:2] + (2,), padding[:2] + (0,), dilation[:2] + (1,), ceil_mode, mode


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(width_pair_cases(), st.integers(0, 2**32 - 1))
def test_width_pairs_match_naive_reference(case, seed):
    if not _windows_all_fit(*case):
        return
    x, kernel, stride, padding, dilation, ceil_mode, mode = case
    want_values, want_indices, _ = naive_max_pool3d(x, kernel, stride, padding, dilation, ceil_mode, mode)
    grad = np.random.default_rng(seed).standard_normal(want_values.shape).astype(np.float64)
    if x.dtype.kind == "f":
        grad = grad.astype(x.dtype)
        _, _, want_grad = naive_max_pool3d(x, kernel, stride, padding, dilation, ceil_mode, mode, grad=grad)
        values, indices, got_grad = _run(*case, grad=grad)
        np.testing.assert_array_equal(got_grad, want_grad)
    else:
        values, indices, _ = _run(*case)
    np.testing.assert_array_equal(values, want_values)
    np.testing.assert_array_equal(indices, want_indices)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pooling_cases(dtypes=FLOATS), st.integers(0, 2**32 - 1))
def test_backward_matches_naive_reference_bit_for_bit(case, seed):
    x, kernel, stride, padding, dilation, ceil_mode, mode = case
    if not _windows_all_fit(*case):
        return
    values, _, _ = naive_max_pool3d(x, kernel, stride, padding, dilation, ceil_mode, mode)
    grad = np.random.default_rng(seed).standard_normal(values.shape).astype(x.dtype)
    _, _, want = naive_max_pool3d(x, kernel, stride, padding, dilation, ceil_mode, mode, grad=grad)
    _, _, got = _run(x, kernel, stride, padding, dilation, ceil_mode, mode, grad=grad)
    assert got.dtype == x.dtype
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("tile_bytes", [1, 700, 5000])
@pytest.mark.parametrize("threads", [1, 2])
def test_tiles_and_threads_change_no_bit(monkeypatch, tile_bytes, threads):
    rng = np.random.default_rng(7)
    x = rng.integers(-2, 3, size=(2, 3, 13, 11, 9)).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)  # k=3, s=1, p=1 keeps the size
    want = _run(x, 3, 1, 1, 1, False, "zeros", grad=g)
    monkeypatch.setattr(tiled, "TILE_BYTES", tile_bytes)
    monkeypatch.setattr(tiled, "default_threads", lambda: threads)
    got = _run(x, 3, 1, 1, 1, False, "zeros", grad=g)
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)
    # a single (n, c) volume is tiled along depth; its backward runs in blocks of depth planes
    want1 = _run(x[:1, :1], 3, 1, 1, 1, False, "zeros", grad=g[:1, :1])
    monkeypatch.setattr(tiled, "TILE_BYTES", 10**9)
    for a, b in zip(want1, _run(x[:1, :1], 3, 1, 1, 1, False, "zeros", grad=g[:1, :1])):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shape", [(1, 1, 13, 6, 5), (3, 2, 9, 6, 5)])  # tiled along depth / along the batch
@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, 1), (2, 3, 0), (3, 2, 1)])
def test_fresh_gradient_buffer_is_zeroed_where_no_window_adds(monkeypatch, shape, kernel, stride, padding):
    """``fresh=True`` zeroes rows block by block; stride 3 > kernel 2 leaves rows no window reads."""
    from lucid.kernels import maxpool
    from lucid.kernels.windows import PoolSpec

    rng = np.random.default_rng(5)
    x = rng.integers(-3, 4, size=shape).astype(np.float32)
    windows = PoolSpec.create(kernel, stride, padding).windows(shape[-3:])
    mults = maxpool.code_mults(windows)
    _, codes = tiled.argpool(x, (2, 3, 4), windows, mults)
    g = rng.standard_normal(codes.shape).astype(np.float32)
    want = tiled.unpool(g, codes, (2, 3, 4), windows, mults, np.zeros(shape, np.float32), lead=0)
    monkeypatch.setattr(tiled, "TILE_BYTES", 300)  # many blocks
    garbage = np.full(shape, np.nan, np.float32)
    got = tiled.unpool(g, codes, (2, 3, 4), windows, mults, garbage, lead=0, fresh=True)
    np.testing.assert_array_equal(got, want)


def test_memory_order_does_not_change_values_or_winners():
    rng = np.random.default_rng(3)
    x = rng.integers(-2, 3, size=(1, 2, 9, 8, 7)).astype(np.float64)
    g = rng.standard_normal((1, 2, 5, 4, 4))
    want = _run(x, 3, 2, 1, 1, False, "zeros", grad=g)
    got = _run(np.asfortranarray(x), 3, 2, 1, 1, False, "zeros", grad=g)
    np.testing.assert_array_equal(want[0], got[0])
    np.testing.assert_array_equal(want[1], got[1])
    np.testing.assert_allclose(want[2], got[2], rtol=1e-15)


# -- the specification's examples, corrected -------------------------------------------


def test_seed_example_one_channel():
    """Spec: a (1, 1, 2, 2, 2) input, kernel 2 stride 2: the maximum and a one-hot gradient."""
    x = Tensor([[[[[1.0, 3.0], [2.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]]]], requires_grad=True)
    assert x.shape == (1, 1, 2, 2, 2)
    y = nn.MaxPool3d(kernel_size=2, stride=2, padding=0)(x)
    assert y.shape == (1, 1, 1, 1, 1)
    assert repr(y) == "Tensor([[[[[8.]]]]], grad=None)"
    y.backward(Tensor([[[[[1.0]]]]]))
    want = np.zeros((1, 1, 2, 2, 2))
    want[0, 0, 1, 1, 1] = 1.0
    np.testing.assert_array_equal(x.grad.data, want)


def test_seed_example_two_channels():
    """The spec's printed output (4 and 8) is per channel: channels [[1,3],[2,4]] and [[5,6],[7,8]] as 1x2x2 depth slices."""
    x = Tensor([[[[[1.0, 3.0], [2.0, 4.0]]], [[[5.0, 6.0], [7.0, 8.0]]]]], requires_grad=True)
    assert x.shape == (1, 2, 1, 2, 2)
    y = nn.MaxPool3d(kernel_size=(1, 2, 2), stride=(1, 2, 2))(x)
    np.testing.assert_array_equal(y.data, [[[[[4.0]]], [[[8.0]]]]])
    y.backward(Tensor([[[[[1.0]]], [[[1.0]]]]]))
    np.testing.assert_array_equal(x.grad.data, [[[[[0.0, 0.0], [0.0, 1.0]]], [[[0.0, 0.0], [0.0, 1.0]]]]])


def test_unbatched_input_and_default_stride_one():
    x = np.arange(27, dtype=np.float32).reshape(1, 3, 3, 3)
    y = max_pool3d(x, 2)  # stride defaults to 1, as the signature says
    assert y.shape == (1, 2, 2, 2)
    np.testing.assert_array_equal(y.data[0], x[0, 1:, 1:, 1:])


# -- semantics in detail -------------------------------------------------------------


def test_ties_go_to_first_in_row_major_order():
    x = Tensor(np.ones((1, 1, 2, 2, 2)), requires_grad=True)
    y, idx = max_pool3d(x, 2, 2, return_indices=True)
    assert idx.data.item() == 0
    y.backward()
    assert x.grad.data[0, 0, 0, 0, 0] == 1 and x.grad.data.sum() == 1


def test_overlapping_windows_add_up():
    x = Tensor(np.array([[[[[0.0, 5.0, 0.0, 0.0]]]]]), requires_grad=True)
    y = max_pool3d(x, (1, 1, 3), 1)  # both windows pick the 5
    y.backward(np.array([[[[[2.0, 3.0]]]]]))
    np.testing.assert_array_equal(x.grad.data, [[[[[0.0, 5.0, 0.0, 0.0]]]]])


def test_zero_padding_can_win_and_routes_nowhere():
    x = Tensor(np.full((1, 1, 1, 1, 2), -1000.0), requires_grad=True)  # CT air
    y, idx = max_pool3d(x, (1, 1, 3), 1, (0, 0, 1), return_indices=True)
    np.testing.assert_array_equal(y.data, [[[[[0.0, 0.0]]]]])
    np.testing.assert_array_equal(idx.data, [[[[[-1, -1]]]]])
    y.backward()
    np.testing.assert_array_equal(x.grad.data, np.zeros((1, 1, 1, 1, 2)))
    ignored = max_pool3d(x, (1, 1, 3), 1, (0, 0, 1), padding_mode="ignore")
    np.testing.assert_array_equal(ignored.data, [[[[[-1000.0, -1000.0]]]]])


def test_nan_window_routes_to_its_last_nan():
    data = np.zeros((1, 1, 2, 2, 2))
    data[0, 0, 0, 1, 0] = np.nan
    data[0, 0, 1, 0, 1] = np.nan
    x = Tensor(data, requires_grad=True)
    y, idx = max_pool3d(x, 2, 2, return_indices=True)
    assert np.isnan(y.data.item())
    assert idx.data.item() == 1 * 4 + 0 * 2 + 1
    y.backward()
    assert x.grad.data[0, 0, 1, 0, 1] == 1 and np.nansum(x.grad.data) == 1


def test_nan_in_strided_views_is_found(monkeypatch):
    """numpy 2.4 trap: np.isnan into a non-contiguous bool ``out=`` is wrong past 16 elements.

    The kernels compare ``x != x`` into fresh arrays; a strided NaN pattern
    longer than 16 must still be found (tiny tiles make every view strided)."""
    monkeypatch.setattr(tiled, "TILE_BYTES", 1)
    x = np.zeros((1, 1, 2, 2, 64), np.float32)
    x[..., 1::2] = np.nan  # every window along w has one NaN at its second tap
    y, idx = max_pool3d(Tensor(x), (1, 1, 2), (1, 1, 2), return_indices=True)
    assert np.isnan(y.data).all()
    assert (idx.data % 2 == 1).all()


@pytest.mark.parametrize("dtype", INTS + FLOATS)
def test_dtype_is_kept(dtype):
    x = (np.arange(64) % 7).astype(dtype).reshape(1, 1, 4, 4, 4)
    assert max_pool3d(x, 2, 2).dtype == np.dtype(dtype)


def test_integer_extremes_survive():
    x = np.array([-32768, 32767, -32768, 0, 5, 6, 7, 8], np.int16).reshape(1, 1, 2, 2, 2)
    assert max_pool3d(x, 2, 2).data.item() == 32767
    assert max_pool3d(np.full_like(x, -32768), 2, 2, padding_mode="ignore").data.item() == -32768
    u = np.full((1, 1, 2, 2, 2), 65535, np.uint16)
    assert max_pool3d(u, 2, 2, padding=1).data.max() == 65535


def test_ceil_mode_output_size_matches_formula():
    x = np.zeros((1, 1, 5, 6, 7), np.float32)
    assert max_pool3d(x, 2, 2, ceil_mode=True).shape == (1, 1, 3, 3, 4)
    assert max_pool3d(x, 2, 2).shape == (1, 1, 2, 3, 3)


def test_module_repr_and_signature_defaults():
    assert repr(nn.MaxPool3d(2, 2)) == "MaxPool3d(kernel_size=2, stride=2, padding=0)"
    assert "padding_mode='ignore'" in repr(nn.MaxPool3d(3, padding=1, padding_mode="ignore"))
    pool = nn.MaxPool3d()
    assert (pool.kernel_size, pool.stride, pool.padding) == (1, 1, 0)


def test_return_indices_from_module():
    y, idx = nn.MaxPool3d(2, 2, return_indices=True)(np.arange(8.0).reshape(1, 1, 2, 2, 2))
    assert idx.data.dtype == np.int64 and idx.data.item() == 7


# -- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"kernel_size": 0}, ValueError, "kernel_size must be >= 1, got 0"),
        ({"kernel_size": 2, "stride": -1}, ValueError, "stride must be >= 1, got -1"),
        ({"kernel_size": 2, "dilation": 0}, ValueError, "dilation must be >= 1, got 0"),
        ({"kernel_size": 2, "padding": -1}, ValueError, "padding must be >= 0, got -1"),
        ({"kernel_size": (2, 2)}, ValueError, "kernel_size must be an int or a tuple of 3"),
        ({"kernel_size": 2.5}, TypeError, "kernel_size must contain integers, got 2.5"),
        ({"kernel_size": True}, TypeError, "kernel_size must contain integers"),
        ({"kernel_size": 2, "padding_mode": "reflect"}, ValueError, "padding_mode must be one of"),
        ({"kernel_size": 2, "padding": 2, "padding_mode": "ignore"}, ValueError, "exceeds half the kernel"),
    ],
)
def test_bad_arguments_name_argument_and_value(kwargs, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        nn.MaxPool3d(**kwargs)
    with pytest.raises(error):
        max_pool3d(np.zeros((1, 1, 4, 4, 4)), **kwargs)


def test_kernel_that_does_not_fit_names_axis():
    with pytest.raises(ValueError, match="kernel 5 with padding 0 does not fit depth 3"):
        max_pool3d(np.zeros((1, 1, 3, 8, 8)), 5)


@pytest.mark.parametrize("shape", [(4, 4, 4), (1, 1, 1, 4, 4, 4), (1, 1, 0, 4, 4)])
def test_bad_input_shapes(shape):
    with pytest.raises(ValueError, match=r"max_pool3d"):
        max_pool3d(np.zeros(shape), 1)


@pytest.mark.parametrize("dtype", [bool, np.complex64])
def test_bool_and_complex_are_rejected(dtype):
    with pytest.raises(TypeError, match="integer or floating point dtype"):
        max_pool3d(np.zeros((1, 1, 2, 2, 2), dtype), 2)


def test_backward_rejects_wrong_gradient_shape():
    x = Tensor(np.zeros((1, 1, 2, 2, 2)), requires_grad=True)
    y = max_pool3d(x, 2, 2)
    with pytest.raises(ValueError, match=r"gradient shape \(2,\) does not match output shape \(1, 1, 1, 1, 1\)"):
        y.backward(np.zeros(2))


def test_backward_twice_accumulates():
    x = Tensor(np.arange(8.0).reshape(1, 1, 2, 2, 2), requires_grad=True)
    y = max_pool3d(x, 2, 2)
    y.backward()
    y.backward()
    assert x.grad.data[0, 0, 1, 1, 1] == 2


# -- PyTorch parity (padding_mode="ignore" is PyTorch's semantics) --------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pooling_cases(dtypes=[np.float32, np.float64]), st.integers(0, 2**32 - 1))
def test_pytorch_parity_bit_for_bit(case, seed):
    torch = pytest.importorskip("torch")
    x, kernel, stride, padding, dilation, ceil_mode, _ = case
    padding = tuple(min(p, k // 2) for p, k in zip(padding, kernel))
    case = (x, kernel, stride, padding, dilation, ceil_mode, "ignore")
    if not _windows_all_fit(*case):
        return  # PyTorch indexes out of bounds there (heap corruption in its backward)
    tx = torch.tensor(x, requires_grad=True)
    ty, ti = torch.nn.functional.max_pool3d(tx, kernel, stride, padding, dilation, ceil_mode=ceil_mode, return_indices=True)
    g = np.random.default_rng(seed).standard_normal(tuple(ty.shape)).astype(x.dtype)
    ty.backward(torch.tensor(g))
    values, indices, grad = _run(*case, grad=g)
    np.testing.assert_array_equal(values, ty.detach().numpy())
    np.testing.assert_array_equal(indices, ti.numpy())
    assert grad.tobytes() == tx.grad.numpy().tobytes()


def test_lucid_does_not_import_click_or_tqdm():
    import subprocess
    import sys

    code = "import sys, lucid, lucid.nn, lucid.io; print('click' in sys.modules, 'tqdm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"], lucid.__file__
