"""The specification's model (Conv3d -> MaxPool3d -> Linear): gradients, torch parity, example script."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lucid
import lucid.nn as nn
from lucid import Tensor

EXAMPLE = Path(__file__).resolve().parents[1] / "lucid" / "examples" / "maxpool3d_model.py"
NUMBER = re.compile(r"[-+]?\d+\.\d*(?:e[-+]?\d+)?")


def load_example():
    spec = importlib.util.spec_from_file_location("maxpool3d_model_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example = load_example()


def make_model(seed=0):
    lucid.random.seed(seed)
    return example.MaxPool3dModel()


class ReluModel(nn.Module):
    """A bigger variant: batch of 2, ReLU, stride-2 conv with padding, overlapping pooling."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv3d(1, 3, kernel_size=3, stride=2, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool3d(kernel_size=2, stride=1)
        self.fc = nn.Linear(3 * 2 * 2 * 2, 2)

    def forward(self, x):
        x = self.act(self.pool(self.conv1(x)))  # relu after the pool: no ties among zeros
        return self.fc(x.view(x.size(0), -1))


def check_model_gradients(model, x, eps=1e-6):
    """Autograd vs central finite differences for the input and every parameter (float64)."""
    out = model(x)
    weights = np.random.default_rng(0).standard_normal(out.shape)
    out.backward(Tensor(weights))
    for name, t in [("input", x)] + list(model.named_parameters()):
        numeric = np.zeros_like(t.data)
        for idx in np.ndindex(t.shape):
            orig = t.data[idx]
            t.data[idx] = orig + eps
            up = (model(x).data * weights).sum()
            t.data[idx] = orig - eps
            down = (model(x).data * weights).sum()
            t.data[idx] = orig
            numeric[idx] = (up - down) / (2 * eps)
        np.testing.assert_allclose(t.grad.data, numeric, rtol=1e-6, atol=1e-7, err_msg=name)


def test_seed_model_gradients_match_finite_differences():
    check_model_gradients(make_model(), example.make_input())


def test_relu_model_gradients_match_finite_differences():
    lucid.random.seed(3)
    model = ReluModel()
    x = Tensor(np.random.default_rng(4).standard_normal((2, 1, 5, 6, 5)), requires_grad=True)
    model.conv1.bias.data -= 0.6  # make part of the pooled values negative so ReLU's zero branch counts
    assert 0.2 < (model.pool(model.conv1(x)).data < 0).mean() < 0.8
    assert model(x).shape == (2, 2)
    check_model_gradients(model, x)


def torch_seed_model(torch, model):
    """The seed's model in torch with ``model``'s weights copied in (float64)."""
    conv = torch.nn.Conv3d(2, 4, kernel_size=3, stride=1, padding=1).double()
    fc = torch.nn.Linear(4, 1).double()
    with torch.no_grad():
        for layer, ours in ((conv, model.conv1), (fc, model.fc)):
            layer.weight.copy_(torch.from_numpy(ours.weight.data))
            layer.bias.copy_(torch.from_numpy(ours.bias.data))
    pool = torch.nn.MaxPool3d(kernel_size=2, stride=2, padding=0)
    return conv, fc, lambda x: fc(pool(conv(x)).view(x.size(0), -1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_seed_model_matches_torch(seed):
    torch = pytest.importorskip("torch")
    model = make_model(seed)
    x = example.make_input()
    out = model(x)
    out.backward(Tensor([[1.0]]))

    conv, fc, forward = torch_seed_model(torch, model)
    xt = torch.from_numpy(x.data.copy()).requires_grad_(True)
    expected = forward(xt)
    expected.backward(torch.tensor([[1.0]], dtype=torch.float64))

    assert out.shape == (1, 1)
    np.testing.assert_allclose(out.data, expected.detach().numpy(), rtol=1e-5)
    np.testing.assert_allclose(x.grad.data, xt.grad.numpy(), rtol=1e-5, atol=1e-12)
    for ours, theirs in ((model.conv1, conv), (model.fc, fc)):
        np.testing.assert_allclose(ours.weight.grad.data, theirs.weight.grad.numpy(), rtol=1e-5, atol=1e-12)
        np.testing.assert_allclose(ours.bias.grad.data, theirs.bias.grad.numpy(), rtol=1e-5, atol=1e-12)


def test_seed_input_as_written_fails_with_a_clear_error():
    # the specification's input has 1 channel while conv1 expects 2
    x = Tensor([[[[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]]]], requires_grad=True)
    assert x.shape == (1, 1, 2, 2, 2)
    with pytest.raises(ValueError, match=r"input has 1 channels.*in_channels=2"):
        make_model()(x)


@pytest.fixture(scope="module")
def script_output() -> str:
    result = subprocess.run([sys.executable, "-m", "lucid.examples.maxpool3d_model"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def parse(stdout: str) -> tuple[str, np.ndarray, np.ndarray]:
    head, rest = stdout.split("output:", 1)
    out_text, grad_text = rest.split("input_data.grad:", 1)
    return head, np.array(NUMBER.findall(out_text), dtype=float), np.array(NUMBER.findall(grad_text), dtype=float)


def test_example_script_prints_model_output_and_input_grad(script_output):
    head, printed_out, printed_grad = parse(script_output)
    assert head.startswith("MaxPool3dModel(\n  (conv1): Conv3d(2, 4, kernel_size=(3, 3, 3)")
    assert printed_out.size == 1 and printed_grad.size == 16

    model, x = make_model(0), example.make_input()
    out = model(x)
    out.backward(Tensor([[1.0]]))
    np.testing.assert_allclose(printed_out, out.data.ravel(), rtol=1e-6)
    np.testing.assert_allclose(printed_grad, x.grad.data.ravel(), rtol=1e-6, atol=1e-8)
    assert np.count_nonzero(printed_grad) == 16  # a 3x3x3 conv with padding 1 spreads to every voxel


def test_example_script_numbers_match_torch(script_output):
    torch = pytest.importorskip("torch")
    _, printed_out, printed_grad = parse(script_output)
    _, _, forward = torch_seed_model(torch, make_model(0))  # same seed as the script
    xt = torch.arange(1.0, 17.0, dtype=torch.float64).reshape(1, 2, 2, 2, 2).requires_grad_(True)
    expected = forward(xt)
    expected.backward(torch.ones(1, 1, dtype=torch.float64))
    np.testing.assert_allclose(printed_out, expected.detach().numpy().ravel(), rtol=1e-6)
    np.testing.assert_allclose(printed_grad, xt.grad.numpy().ravel(), rtol=1e-6, atol=1e-8)
