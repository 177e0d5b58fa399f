"""``nn.MaxPool3d``: the module around ``functional.max_pool3d``."""

from __future__ import annotations

from lucid.kernels.windows import PoolSpec
from lucid.nn.module import Module
from lucid.nn.pool_op import max_pool3d


class MaxPool3d(Module):
    """Max pooling over the last three axes (D, H, W); see ``functional.max_pool3d``."""

    def __init__(
        self,
        kernel_size=1,
        stride=1,
        padding=0,
        *,
        dilation=1,
        ceil_mode: bool = False,
        return_indices: bool = False,
        padding_mode: str = "zeros",
    ):
        super().__init__()
        PoolSpec.create(kernel_size, stride, padding, dilation, ceil_mode, padding_mode)  # fail early
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.ceil_mode = ceil_mode
        self.return_indices = return_indices
        self.padding_mode = padding_mode

    def forward(self, input):
        return max_pool3d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            dilation=self.dilation,
            ceil_mode=self.ceil_mode,
            return_indices=self.return_indices,
            padding_mode=self.padding_mode,
        )

    def extra_repr(self) -> str:
        text = f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
        defaults = {"dilation": 1, "ceil_mode": False, "return_indices": False, "padding_mode": "zeros"}
        for name, default in defaults.items():
            value = getattr(self, name)
            if value != default:
                text += f", {name}={value!r}"
        return text

    def __repr__(self) -> str:
        return f"MaxPool3d({self.extra_repr()})"
