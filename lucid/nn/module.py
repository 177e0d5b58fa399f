"""Module and Parameter: PyTorch-style containers of layers and trainable tensors."""

from __future__ import annotations

import numbers
from typing import Any, Iterator, Mapping, NamedTuple

import numpy as np

from lucid.tensor import Tensor


def positive_int(layer: str, name: str, value) -> int:
    """A layer's size argument as an int; a ValueError naming layer, argument and value otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{layer}: {name} must be a positive int, got {value!r}")
    return int(value)


class Parameter(Tensor):
    """A Tensor that a Module registers as trainable (requires_grad=True)."""

    def __init__(self, data, requires_grad: bool = True, dtype=None):
        super().__init__(data, requires_grad=requires_grad, dtype=dtype)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict(strict=False)`` skipped."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class Module:
    """Base class of layers: subclasses call ``super().__init__()``, set attributes, define ``forward``.

    Assigning a ``Parameter`` or a ``Module`` to an attribute registers it, in
    assignment order; other values stay plain attributes.
    """

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # -- registration -------------------------------------------------------
    def _registries(self) -> tuple[dict, dict]:
        try:
            return self.__dict__["_parameters"], self.__dict__["_modules"]
        except KeyError:
            raise AttributeError(
                f"cannot assign parameters or modules before Module.__init__() call "
                f"(call super().__init__() first in {type(self).__name__}.__init__)"
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, (Parameter, Module)):
            params, modules = self._registries()
            own, other = (params, modules) if isinstance(value, Parameter) else (modules, params)
            self.__dict__.pop(name, None)
            other.pop(name, None)
            own[name] = value
            return
        params = self.__dict__.get("_parameters", {})
        modules = self.__dict__.get("_modules", {})
        if name in params:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as parameter {name!r} (use Parameter or None)")
            params[name] = None
        elif name in modules:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as child module {name!r} (use Module or None)")
            modules[name] = None
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: registered entries live in the registries.
        d = self.__dict__
        for registry in ("_parameters", "_modules"):
            if registry in d and name in d[registry]:
                return d[registry][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        for registry in (self._parameters, self._modules):
            if name in registry:
                del registry[name]
                return
        object.__delattr__(self, name)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._modules))

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Register ``param`` (or an empty slot, None) under ``name``."""
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"cannot register {type(param).__name__} as parameter {name!r} (use Parameter or None)")
        params, _ = self._registries()
        if param is None:
            self.__dict__.pop(name, None)
            params[name] = None
        else:
            setattr(self, name, param)

    def add_module(self, name: str, module: Module | None) -> None:
        """Register ``module`` (or an empty slot, None) as a child under ``name``."""
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"cannot register {type(module).__name__} as child module {name!r} (use Module or None)")
        _, modules = self._registries()
        if module is None:
            self.__dict__.pop(name, None)
            modules[name] = None
        else:
            setattr(self, name, module)

    # -- traversal --------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, Module]]:
        """Direct sub-modules with their attribute names, in registration order."""
        for name, module in self._modules.items():
            if module is not None:
                yield name, module

    def children(self) -> Iterator[Module]:
        for _, module in self.named_children():
            yield module

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """This module (named ``prefix``) and all its descendants, each once, depth first."""
        seen: set[int] = set()
        stack = [(prefix, self)]
        while stack:
            name, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            kids = [(f"{name}.{n}" if name else n, m) for n, m in module.named_children()]
            stack.extend(reversed(kids))

    def modules(self) -> Iterator[Module]:
        for _, module in self.named_modules():
            yield module

    def named_parameters(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Parameter]]:
        """Parameters with dotted names (``conv1.weight``); a shared parameter is listed once."""
        seen: set[int] = set()
        owners = self.named_modules(prefix) if recurse else iter([(prefix, self)])
        for owner_name, module in owners:
            for name, param in module._parameters.items():
                if param is None or id(param) in seen:
                    continue
                seen.add(id(param))
                yield (f"{owner_name}.{name}" if owner_name else name), param

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, param in self.named_parameters(recurse=recurse):
            yield param

    def zero_grad(self) -> None:
        """Forget the accumulated gradients of every parameter (``grad = None``)."""
        for param in self.parameters():
            param.grad = None

    # -- mode -----------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        """Set ``training`` on this module and all descendants; returns self."""
        for module in self.modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self) -> Module:
        return self.train(False)

    # -- state ----------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter's array, keyed by dotted name."""
        return {name: param.data.copy() for name, param in self.named_parameters()}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Copy arrays into the parameters (cast to each parameter's dtype).

        Nothing is changed if any error is found: a shape mismatch is always an
        error; missing or unexpected keys are errors when ``strict``.
        """
        params = dict(self.named_parameters())
        missing = [k for k in params if k not in state_dict]
        unexpected = [k for k in state_dict if k not in params]
        errors = []
        if strict and missing:
            errors.append("missing key(s): " + ", ".join(missing))
        if strict and unexpected:
            errors.append("unexpected key(s): " + ", ".join(unexpected))
        arrays = {}
        for name, param in params.items():
            if name not in state_dict:
                continue
            value = state_dict[name]
            array = np.asarray(value.data if isinstance(value, Tensor) else value)
            if array.shape != param.shape:
                errors.append(f"shape mismatch for {name}: checkpoint has {array.shape}, model has {param.shape}")
            arrays[name] = array
        if errors:
            raise RuntimeError(f"error(s) loading state_dict into {type(self).__name__}: " + "; ".join(errors))
        for name, array in arrays.items():
            params[name].data = array.astype(params[name].dtype, copy=True)
        return IncompatibleKeys(missing, unexpected)

    # -- display --------------------------------------------------------------
    def extra_repr(self) -> str:
        """This module's own settings for ``repr``; subclasses override it."""
        return ""

    def __repr__(self) -> str:
        extra = self.extra_repr()
        extra_lines = extra.split("\n") if extra else []
        child_lines = [f"({name}): {_indent(repr(module), 2)}" for name, module in self._modules.items()]
        lines = extra_lines + child_lines
        body = ""
        if len(extra_lines) == 1 and not child_lines:
            body = extra_lines[0]
        elif lines:
            body = "\n  " + "\n  ".join(lines) + "\n"
        return f"{type(self).__name__}({body})"


def _indent(text: str, spaces: int) -> str:
    """Indent every line of ``text`` but the first (it follows a ``(name): `` label)."""
    first, *rest = text.split("\n")
    return "\n".join([first] + [" " * spaces + line for line in rest])
