"""Module and Parameter: registration, traversal, gradients, state_dict, repr, modes."""

from __future__ import annotations

import numpy as np
import pytest

import lucid
import lucid.nn as nn
from lucid import Tensor


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(2, 3, 2)
        self.act = nn.ReLU()
        self.scale = nn.Parameter(np.array([2.0]))


class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.block = Block()
        self.gain = nn.Parameter(np.ones(1))
        self.name = "not registered"
        self.pool = nn.MaxPool3d(kernel_size=2, stride=2)
        self.fc = nn.Linear(3, 1)

    def forward(self, x):
        x = self.block.act(self.block.conv(x)) * self.block.scale
        x = self.pool(x)
        return self.fc(x.view(x.size(0), -1)) * self.gain


def make_net(seed=0) -> Net:
    lucid.random.seed(seed)
    return Net()


def make_input(seed=0) -> Tensor:
    return Tensor(np.random.default_rng(seed).standard_normal((2, 2, 3, 3, 3)), requires_grad=True)


def test_parameters_are_named_and_ordered_by_assignment():
    net = make_net()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["gain", "block.scale", "block.conv.weight", "block.conv.bias", "fc.weight", "fc.bias"]
    assert [id(p) for p in net.parameters()] == [id(p) for _, p in net.named_parameters()]
    assert net.block.conv.weight is dict(net.named_parameters())["block.conv.weight"]
    assert [n for n, _ in net.named_parameters(recurse=False)] == ["gain"]
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in net.parameters())


def test_parameter_and_module_order_match_torch():
    torch = pytest.importorskip("torch")

    class TorchBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(2, 3, 2)
            self.act = torch.nn.ReLU()
            self.scale = torch.nn.Parameter(torch.ones(1))

    class TorchNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = TorchBlock()
            self.gain = torch.nn.Parameter(torch.ones(1))
            self.pool = torch.nn.MaxPool3d(2, 2)
            self.fc = torch.nn.Linear(3, 1)

    ours, theirs = make_net(), TorchNet()
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for (name, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert p.shape == tuple(q.shape), name


def test_children_and_modules():
    net = make_net()
    assert [n for n, _ in net.named_children()] == ["block", "pool", "fc"]
    assert list(net.children()) == [net.block, net.pool, net.fc]
    assert [n for n, _ in net.named_modules()] == ["", "block", "block.conv", "block.act", "pool", "fc"]
    assert net.name == "not registered" and "name" not in dict(net.named_children())


def test_reassignment_deletion_and_bad_assignments():
    net = make_net()
    net.gain = None  # empties the slot, keeps it a parameter slot
    assert "gain" not in dict(net.named_parameters()) and net.gain is None
    with pytest.raises(TypeError, match="cannot assign Tensor as parameter 'gain'"):
        net.gain = Tensor([1.0])
    net.gain = nn.Parameter([3.0])
    assert [n for n, _ in net.named_parameters()][0] == "gain"
    with pytest.raises(TypeError, match="cannot assign int as child module 'fc'"):
        net.fc = 3
    del net.fc
    assert "fc" not in dict(net.named_children()) and not hasattr(net, "fc")
    net.fc = nn.Parameter([1.0])  # a name can change kind
    assert "fc" in dict(net.named_parameters()) and "fc" not in dict(net.named_children())
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        net.missing


def test_shared_parameter_listed_once():
    net = make_net()
    net.tied = net.fc.weight
    assert sum(p is net.fc.weight for p in net.parameters()) == 1


def test_assigning_before_super_init_is_a_clear_error():
    class Forgot(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(1, 1)

    with pytest.raises(AttributeError, match=r"before Module.__init__\(\).*Forgot"):
        Forgot()


def test_forward_must_be_defined():
    with pytest.raises(NotImplementedError, match="Module must define forward"):
        nn.Module()(Tensor([1.0]))


def test_zero_grad_and_backward_twice_accumulates():
    net, x = make_net(), make_input()
    net(x).sum().backward()
    first = {n: p.grad.data.copy() for n, p in net.named_parameters()}
    first_x = x.grad.data.copy()
    assert any(np.abs(g).sum() > 0 for g in first.values())
    net(x).sum().backward()
    for n, p in net.named_parameters():
        np.testing.assert_allclose(p.grad.data, 2 * first[n], rtol=1e-12)
    np.testing.assert_allclose(x.grad.data, 2 * first_x, rtol=1e-12)
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    net(x).sum().backward()
    for n, p in net.named_parameters():
        np.testing.assert_allclose(p.grad.data, first[n], rtol=1e-12)


def test_state_dict_round_trip():
    a, b = make_net(0), make_net(1)
    x = make_input()
    assert not np.allclose(a(x).data, b(x).data)
    state = a.state_dict()
    assert list(state) == [n for n, _ in a.named_parameters()]
    assert all(isinstance(v, np.ndarray) for v in state.values())
    result = b.load_state_dict(state)
    assert result.missing_keys == [] and result.unexpected_keys == []
    np.testing.assert_array_equal(a(x).data, b(x).data)
    # the snapshot is a copy: neither training a nor b changes it
    before = state["fc.weight"].copy()
    a.fc.weight.data += 1
    b.fc.weight.data += 1
    np.testing.assert_array_equal(state["fc.weight"], before)


def test_load_state_dict_keeps_parameter_objects_and_dtype():
    net = make_net()
    weight = net.fc.weight
    state = {k: v.astype(np.float32) for k, v in net.state_dict().items()}
    state["fc.weight"] = Tensor(np.full((1, 3), 0.5))
    net.load_state_dict(state)
    assert net.fc.weight is weight and weight.dtype == np.float64
    np.testing.assert_array_equal(weight.data, np.full((1, 3), 0.5))


def test_load_state_dict_errors():
    net = make_net()
    original = net.state_dict()
    state = dict(original)
    del state["fc.bias"]
    state["fc.extra"] = np.zeros(2)
    with pytest.raises(RuntimeError, match=r"missing key\(s\): fc.bias.*unexpected key\(s\): fc.extra"):
        net.load_state_dict(state)

    bad_shape = {k: v + 1 for k, v in original.items()}
    bad_shape["block.conv.weight"] = np.zeros((3, 2, 2, 2, 1))
    with pytest.raises(RuntimeError, match=r"block.conv.weight: checkpoint has \(3, 2, 2, 2, 1\), model has \(3, 2, 2, 2, 2\)"):
        net.load_state_dict(bad_shape, strict=False)  # shape mismatch is an error even when not strict
    for name, value in net.state_dict().items():  # a failed load changes nothing
        np.testing.assert_array_equal(value, original[name])

    partial = {"fc.bias": np.array([7.0]), "other": np.zeros(1)}
    result = net.load_state_dict(partial, strict=False)
    assert result.unexpected_keys == ["other"]
    assert result.missing_keys == [n for n in original if n != "fc.bias"]
    assert net.fc.bias.data.tolist() == [7.0]


def test_train_eval_flags_propagate():
    net = make_net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.block.train()
    assert net.block.conv.training and not net.training and not net.pool.training
    net.train()
    assert all(m.training for m in net.modules())


def test_repr_lists_children_with_extra_repr():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(2, 2, bias=False)

        def extra_repr(self):
            return "factor=2"

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.scaled = Scaled()
            self.act = nn.ReLU()
            self.empty = None

    outer = Outer()
    outer.add_module("slot", None)
    expected = (
        "Outer(\n"
        "  (scaled): Scaled(\n"
        "    factor=2\n"
        "    (inner): Linear(in_features=2, out_features=2, bias=False)\n"
        "  )\n"
        "  (act): ReLU()\n"
        "  (slot): None\n"
        ")"
    )
    assert repr(outer) == expected
    net = make_net()
    assert f"  (pool): {net.pool!r}\n" in repr(net)
    assert repr(nn.Module()) == "Module()"


def test_leaf_layer_repr_matches_torch():
    torch = pytest.importorskip("torch")
    pairs = [
        (nn.Conv3d(2, 4, 3, 1, 1), torch.nn.Conv3d(2, 4, 3, 1, 1)),
        (nn.Conv3d(2, 4, (1, 2, 3), stride=2, bias=False), torch.nn.Conv3d(2, 4, (1, 2, 3), stride=2, bias=False)),
        (nn.Linear(4, 1), torch.nn.Linear(4, 1)),
        (nn.ReLU(), torch.nn.ReLU()),
    ]
    for ours, theirs in pairs:
        assert repr(ours) == repr(theirs)


def test_parameter_is_a_tensor_whose_ops_give_tensors():
    p = nn.Parameter(np.arange(3.0))
    assert isinstance(p, Tensor) and p.requires_grad
    out = p * 2
    assert type(out) is Tensor
    out.sum().backward()
    np.testing.assert_array_equal(p.grad.data, [2.0, 2.0, 2.0])
    assert repr(p).startswith("Parameter containing:\nTensor(")
    with pytest.raises(TypeError):
        nn.Parameter(np.arange(3))  # integers cannot require gradients
