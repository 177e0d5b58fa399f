"""conv3d, linear, relu and max_pool3d: gradients vs finite differences, values vs torch, init, errors."""

from __future__ import annotations

import numpy as np
import pytest

import lucid
import lucid.nn as nn
from lucid import Tensor
from lucid.nn import functional as F


def numerical_grads(loss, tensors, eps=1e-6, max_entries=64, seed=0):
    """Central finite differences of ``loss()`` w.r.t. each tensor's data (perturbed in place).

    Returns, per tensor, the flat indices checked (all, or ``max_entries`` random ones) and their values.
    """
    rng = np.random.default_rng(seed)
    results = []
    for t in tensors:
        flat = t.data.reshape(-1)
        assert np.shares_memory(flat, t.data)  # writes to flat must perturb the tensor
        picked = np.arange(flat.size) if flat.size <= max_entries else rng.choice(flat.size, max_entries, replace=False)
        values = np.empty(len(picked))
        for n, i in enumerate(picked):
            orig = flat[i]
            flat[i] = orig + eps
            up = loss()
            flat[i] = orig - eps
            down = loss()
            flat[i] = orig
            values[n] = (up - down) / (2 * eps)
        results.append((picked, values))
    return results


def check_gradients(op, tensors, seed=0):
    """Compare autograd of sum(op(*tensors) * G) against finite differences, G random."""
    out = op(*tensors)
    weights = np.random.default_rng(seed).standard_normal(out.shape)
    (out * Tensor(weights)).sum().backward()
    numeric = numerical_grads(lambda: float((op(*tensors).data * weights).sum()), tensors)
    for t, (picked, expected) in zip(tensors, numeric):
        assert t.grad is not None and t.grad.shape == t.shape
        np.testing.assert_allclose(t.grad.data.reshape(-1)[picked], expected, rtol=1e-6, atol=1e-7)


def randn(rng, *shape):
    return Tensor(rng.standard_normal(shape), requires_grad=True)


CONV_CASES = [
    # (input shape, out_channels, kernel, stride, padding)
    ((2, 2, 3, 4, 4), 3, 3, 1, 0),
    ((1, 2, 4, 4, 4), 2, 3, 1, 1),
    ((2, 1, 5, 4, 4), 2, 2, 2, 0),
    ((1, 2, 5, 5, 4), 2, 3, 2, 1),
    ((1, 2, 4, 5, 6), 2, (1, 2, 3), (2, 1, 2), (0, 1, 1)),
]


@pytest.mark.parametrize("shape, out_ch, k, s, p", CONV_CASES)
def test_conv3d_gradients_match_finite_differences(shape, out_ch, k, s, p):
    _check_conv3d_gradients(shape, out_ch, k, s, p, bias=True)


@pytest.mark.parametrize("shape, out_ch, k, s, p", [CONV_CASES[1], CONV_CASES[3]])
def test_conv3d_without_bias_gradients_match_finite_differences(shape, out_ch, k, s, p):
    _check_conv3d_gradients(shape, out_ch, k, s, p, bias=False)


def _check_conv3d_gradients(shape, out_ch, k, s, p, bias):
    rng = np.random.default_rng(1)
    kernel = (k,) * 3 if isinstance(k, int) else k
    tensors = [randn(rng, *shape), randn(rng, out_ch, shape[1], *kernel)]
    if bias:
        tensors.append(randn(rng, out_ch))
    check_gradients(lambda *t: F.conv3d(*t, stride=s, padding=p) if len(t) == 3 else F.conv3d(*t, None, s, p), tensors)


def test_conv3d_unbatched_gradients_and_values():
    rng = np.random.default_rng(2)
    x, w, b = randn(rng, 2, 3, 4, 3), randn(rng, 2, 2, 2, 2, 2), randn(rng, 2)
    check_gradients(lambda *t: F.conv3d(*t, stride=(1, 2, 1), padding=1), [x, w, b])
    batched = F.conv3d(Tensor(x.data[None]), w, b, stride=(1, 2, 1), padding=1)
    unbatched = F.conv3d(x, w, b, stride=(1, 2, 1), padding=1)
    assert unbatched.shape == batched.shape[1:]
    np.testing.assert_array_equal(unbatched.data, batched.data[0])


@pytest.mark.parametrize("x_shape", [(3, 4), (2, 3, 4), (4,)])
def test_linear_gradients_match_finite_differences(x_shape):
    rng = np.random.default_rng(3)
    check_gradients(F.linear, [randn(rng, *x_shape), randn(rng, 5, 4), randn(rng, 5)])
    check_gradients(F.linear, [randn(rng, *x_shape), randn(rng, 5, 4)])


def test_relu_gradients_match_finite_differences_and_values():
    rng = np.random.default_rng(4)
    x = randn(rng, 3, 4, 5)
    check_gradients(F.relu, [x])
    np.testing.assert_array_equal(F.relu(x).data, np.where(x.data > 0, x.data, 0.0))
    np.testing.assert_array_equal(nn.ReLU()(x).data, F.relu(x).data)


@pytest.mark.parametrize(
    "shape, k, s, p",
    [
        ((2, 2, 4, 4, 4), 2, 2, 0),
        ((1, 2, 5, 5, 5), 3, 2, 1),
        ((1, 1, 4, 5, 6), 3, 1, 1),
        ((2, 4, 4, 4), (2, 3, 1), (1, 2, 2), (1, 1, 0)),
    ],
)
def test_max_pool3d_gradients_match_finite_differences(shape, k, s, p):
    # continuous random values: no ties, and none within eps of another or of the zero padding
    x = randn(np.random.default_rng(5), *shape)
    check_gradients(lambda t: F.max_pool3d(t, k, s, p), [x])


@pytest.mark.parametrize("shape, out_ch, k, s, p", CONV_CASES)
def test_conv3d_matches_torch(shape, out_ch, k, s, p):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    kernel = (k,) * 3 if isinstance(k, int) else k
    arrays = [rng.standard_normal(shape), rng.standard_normal((out_ch, shape[1]) + kernel), rng.standard_normal(out_ch)]
    ours = [Tensor(a, requires_grad=True) for a in arrays]
    theirs = [torch.tensor(a, requires_grad=True) for a in arrays]
    out = F.conv3d(*ours, stride=s, padding=p)
    expected = torch.nn.functional.conv3d(*theirs, stride=s, padding=p)
    np.testing.assert_allclose(out.data, expected.detach().numpy(), rtol=1e-10, atol=1e-12)
    g = rng.standard_normal(out.shape)
    out.backward(g)
    expected.backward(torch.tensor(g))
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.grad.data, b.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_linear_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    arrays = [rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 4)), rng.standard_normal(5)]
    ours = [Tensor(a, requires_grad=True) for a in arrays]
    theirs = [torch.tensor(a, requires_grad=True) for a in arrays]
    out, expected = F.linear(*ours), torch.nn.functional.linear(*theirs)
    np.testing.assert_allclose(out.data, expected.detach().numpy(), rtol=1e-12)
    g = rng.standard_normal(out.shape)
    out.backward(g)
    expected.backward(torch.tensor(g))
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.grad.data, b.grad.numpy(), rtol=1e-12)


def test_float32_stays_float32():
    rng = np.random.default_rng(8)
    x = Tensor(rng.standard_normal((1, 2, 3, 3, 3)), requires_grad=True, dtype=np.float32)
    w = Tensor(rng.standard_normal((2, 2, 2, 2, 2)), requires_grad=True, dtype=np.float32)
    out = F.relu(F.conv3d(x, w, padding=1))
    assert out.dtype == np.float32
    out.sum().backward()
    assert x.grad.dtype == np.float32 and w.grad.dtype == np.float32


@pytest.mark.parametrize(
    "op, shapes",
    [
        (lambda a, b: a + b, [(3, 4), (4,)]),
        (lambda a, b: a - b, [(2, 1, 4), (3, 1)]),
        (lambda a, b: a * b, [(2, 3, 4), (3, 1)]),
        (lambda a, b: a @ b, [(2, 3, 4), (4, 5)]),
        (lambda a: a.sum(axis=1), [(2, 3, 4)]),
        (lambda a: a.sum(axis=(0, 2)), [(2, 3, 4)]),
        (lambda a: a.mean(axis=-1, keepdims=True), [(2, 3, 4)]),
        (lambda a: a.mean(), [(2, 3, 4)]),
        (lambda a: a.view(a.size(0), -1) * 3.0, [(2, 3, 2, 1, 1)]),
    ],
)
def test_tensor_ops_used_by_models_match_finite_differences(op, shapes):
    rng = np.random.default_rng(10)
    check_gradients(op, [randn(rng, *shape) for shape in shapes])


# -- layers: shapes, init, reproducibility ---------------------------------------------


def test_conv3d_layer_shapes_and_forward():
    conv = nn.Conv3d(2, 4, kernel_size=(3, 1, 2), stride=2, padding=(1, 0, 0))
    assert nn.Conv3D is nn.Conv3d
    assert conv.weight.shape == (4, 2, 3, 1, 2) and conv.bias.shape == (4,)
    assert conv.weight.requires_grad and isinstance(conv.weight, nn.Parameter)
    x = Tensor(np.random.default_rng(0).standard_normal((1, 2, 5, 4, 6)))
    out = conv(x)
    np.testing.assert_array_equal(out.data, F.conv3d(x, conv.weight, conv.bias, 2, (1, 0, 0)).data)
    assert out.shape == (1, 4, 3, 2, 3)  # floor((n + 2p - k) / s) + 1 per axis
    assert nn.Conv3d(2, 4, 3, bias=False).bias is None


@pytest.mark.parametrize(
    "make, fan_in",
    [
        (lambda rng: nn.Conv3d(4, 64, 3, rng=rng), 4 * 27),
        (lambda rng: nn.Linear(50, 200, rng=rng), 50),
    ],
)
def test_default_init_is_uniform_with_pytorch_bound(make, fan_in):
    layer = make(np.random.default_rng(9))
    bound = 1 / np.sqrt(fan_in)
    for p in (layer.weight.data, layer.bias.data):
        assert np.abs(p).max() <= bound
    w = layer.weight.data.ravel()
    # U(-b, b): mean 0, variance b^2/3, and it reaches close to both ends
    assert abs(w.mean()) < 0.05 * bound
    assert abs(w.var() / (bound**2 / 3) - 1) < 0.05
    assert w.min() < -0.99 * bound and w.max() > 0.99 * bound


def test_init_reproducible_with_seed_and_rng():
    lucid.random.seed(123)
    a = nn.Conv3d(2, 3, 2)
    lucid.random.seed(123)
    b = nn.Conv3d(2, 3, 2)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    np.testing.assert_array_equal(a.bias.data, b.bias.data)
    c = nn.Conv3d(2, 3, 2)  # the stream has moved on
    assert not np.array_equal(a.weight.data, c.weight.data)

    lucid.random.seed(123)
    d = nn.Linear(3, 2, rng=np.random.default_rng(5))
    e = nn.Conv3d(2, 3, 2)  # rng= did not consume the global stream
    np.testing.assert_array_equal(a.weight.data, e.weight.data)
    f = nn.Linear(3, 2, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(d.weight.data, f.weight.data)
    with pytest.raises(TypeError, match="Generator"):
        nn.Linear(3, 2, rng=5)


# -- errors -------------------------------------------------------------------------------


def test_conv3d_errors_name_argument_and_value():
    w = Tensor(np.zeros((4, 2, 3, 3, 3)))
    with pytest.raises(ValueError, match=r"input has 1 channels.*in_channels=2"):
        F.conv3d(Tensor(np.zeros((1, 1, 2, 2, 2))), w, padding=1)
    with pytest.raises(ValueError, match=r"input has 3 channels.*in_channels=2"):
        F.conv3d(Tensor(np.zeros((3, 4, 4, 4))), w)
    with pytest.raises(ValueError, match=r"input must be .*got shape \(2, 4, 4\)"):
        F.conv3d(Tensor(np.zeros((2, 4, 4))), w)
    with pytest.raises(ValueError, match=r"weight must be 5-D.*\(4, 2, 3\)"):
        F.conv3d(Tensor(np.zeros((1, 2, 4, 4, 4))), np.zeros((4, 2, 3)))
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\).*\(3,\)"):
        F.conv3d(Tensor(np.zeros((1, 2, 4, 4, 4))), w, np.zeros(3))
    with pytest.raises(ValueError, match=r"kernel \(3, 3, 3\) is larger than the padded input \(2, 2, 2\)"):
        F.conv3d(Tensor(np.zeros((1, 2, 2, 2, 2))), w)
    with pytest.raises(ValueError, match=r"stride must be >= 1, got 0"):
        F.conv3d(Tensor(np.zeros((1, 2, 4, 4, 4))), w, stride=0)
    with pytest.raises(ValueError, match=r"padding must be >= 0, got \(0, -1, 0\)"):
        F.conv3d(Tensor(np.zeros((1, 2, 4, 4, 4))), w, padding=(0, -1, 0))
    with pytest.raises(ValueError, match=r"kernel_size must be .*got \(3, 3\)"):
        nn.Conv3d(2, 4, (3, 3))
    with pytest.raises(ValueError, match=r"in_channels must be a positive int, got 0"):
        nn.Conv3d(0, 4, 3)


def test_linear_errors_name_argument_and_value():
    with pytest.raises(ValueError, match=r"input of shape \(2, 3\) has 3 features but weight expects in_features=4"):
        F.linear(Tensor(np.zeros((2, 3))), Tensor(np.zeros((5, 4))))
    with pytest.raises(ValueError, match=r"bias must have shape \(5,\)"):
        F.linear(Tensor(np.zeros((2, 4))), Tensor(np.zeros((5, 4))), Tensor(np.zeros(4)))
    with pytest.raises(ValueError, match=r"out_features must be a positive int, got -1"):
        nn.Linear(3, -1)
