"""Pooling parameters: validation, output sizes and per-axis windows (pure arithmetic)."""

from __future__ import annotations

import functools
import numbers
from dataclasses import dataclass

import numpy as np

PADDING_MODES = ("zeros", "ignore")
AXIS_NAMES = ("depth", "height", "width")


@dataclass(frozen=True)
class AxisWindow:
    """Windows along one axis of a (possibly sliced) input.

    Output ``o`` (0 <= o < size_out) reads input positions ``o*stride - pad + j*dilation``
    for taps ``j = 0..kernel-1``.  Positions in ``[-pad, 0)`` and
    ``[size_in, size_in + pad_end)`` are padding; positions from
    ``size_in + pad_end`` on are the overhang of a ``ceil_mode`` window, which
    lies outside the padded input and never takes part (PyTorch's rule).
    For a slab, ``pad``, ``size_in`` and ``pad_end`` are local to the slab.
    """

    kernel: int
    stride: int
    dilation: int
    pad: int
    size_in: int
    size_out: int
    pad_end: int  # padding after the input: the same as ``pad`` for a whole axis

    def takes_part(self, position: int) -> bool:
        """Whether a tap at ``position`` reads the input or the padding (not the overhang)."""
        return position < self.size_in + self.pad_end

    def is_padding(self, position: int) -> bool:
        return position < 0 or self.size_in <= position < self.size_in + self.pad_end

    @property
    def span(self) -> int:
        """Input extent of one window: dilation*(kernel-1) + 1."""
        return self.dilation * (self.kernel - 1) + 1

    def slab(self, o0: int, o1: int, r0: int | None = None, r1: int | None = None) -> tuple[int, int, "AxisWindow"]:
        """Outputs [o0, o1) as a window over input rows [r0, r1) of their own.

        By default the rows are those the outputs read, clipped to the input, so
        padding stays where it truly is; a backward block that adds into a
        whole buffer passes all its rows.  Taps outside the rows count as
        padding, up to the end of the whole axis' padding; the overhang stays overhang.
        Returns ``(r0, r1, local_window)``.
        """
        if r0 is None:
            r0 = max(0, o0 * self.stride - self.pad)
        if r1 is None:
            r1 = min(self.size_in, (o1 - 1) * self.stride - self.pad + self.span)
        r1 = max(r0, r1)
        local = AxisWindow(self.kernel, self.stride, self.dilation, self.pad - o0 * self.stride + r0, r1 - r0, o1 - o0,
                           self.size_in + self.pad_end - r1)
        return r0, r1, local


def _triple(value, name: str) -> tuple[int, int, int]:
    if type(value) is int:  # the common case, without the abstract-class checks below
        return (value, value, value)
    items = tuple(value) if isinstance(value, (tuple, list)) else (value,) * 3
    if len(items) != 3:
        raise ValueError(f"{name} must be an int or a tuple of 3 ints (depth, height, width), got {value!r}")
    for item in items:
        if isinstance(item, (bool, np.bool_)) or not isinstance(item, numbers.Integral):
            raise TypeError(f"{name} must contain integers, got {value!r}")
    return tuple(int(i) for i in items)  # type: ignore[return-value]


@dataclass(frozen=True)
class PoolSpec:
    """Validated MaxPool3d parameters, one value per pooled axis."""

    kernel: tuple[int, int, int]
    stride: tuple[int, int, int]
    padding: tuple[int, int, int]
    dilation: tuple[int, int, int] = (1, 1, 1)
    ceil_mode: bool = False
    padding_mode: str = "zeros"

    @classmethod
    def create(cls, kernel_size=1, stride=1, padding=0, dilation=1, ceil_mode=False, padding_mode="zeros",
               names=AXIS_NAMES) -> "PoolSpec":
        """Validate the parameters; ``names`` (one per pooled axis) word the errors, e.g. "axis 0 (x)"."""
        kernel = _triple(kernel_size, "kernel_size")
        stride_t = kernel if stride is None else _triple(stride, "stride")
        padding_t = _triple(padding, "padding")
        dilation_t = _triple(dilation, "dilation")
        for name, values in (("kernel_size", kernel), ("stride", stride_t), ("dilation", dilation_t)):
            if min(values) < 1:
                raise ValueError(f"{name} must be >= 1, got {values if len(set(values)) > 1 else values[0]}")
        if min(padding_t) < 0:
            raise ValueError(f"padding must be >= 0, got {padding_t if len(set(padding_t)) > 1 else padding_t[0]}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        if padding_mode == "ignore":
            for axis, (k, p) in enumerate(zip(kernel, padding_t)):
                if p > k // 2:
                    raise ValueError(
                        f"padding {p} exceeds half the kernel {k} along {names[axis]}: "
                        "with padding_mode='ignore' a window could hold only padding"
                    )
        return cls(kernel, stride_t, padding_t, dilation_t, bool(ceil_mode), padding_mode)

    def output_size(self, size: int, axis: int, names=AXIS_NAMES) -> int:
        k, s, p, d = self.kernel[axis], self.stride[axis], self.padding[axis], self.dilation[axis]
        room = size + 2 * p - (d * (k - 1) + 1)
        out = (-(-room // s) if self.ceil_mode else room // s) + 1
        if self.ceil_mode and (out - 1) * s >= size + p:
            out -= 1  # the last window must start inside the input or the left padding (PyTorch rule)
        if size < 1 or out < 1:
            pad_text = f"with padding {p}" + (f" and dilation {d}" if d > 1 else "")
            raise ValueError(f"kernel {k} {pad_text} does not fit {names[axis]} {size}")
        return out

    def output_shape(self, sizes, names=AXIS_NAMES) -> tuple[int, int, int]:
        return tuple(self.output_size(n, a, names) for a, n in enumerate(sizes))  # type: ignore[return-value]

    def windows(self, sizes, names=AXIS_NAMES) -> tuple[AxisWindow, AxisWindow, AxisWindow]:
        return _windows(self, tuple(int(n) for n in sizes), tuple(names))


@functools.lru_cache(maxsize=128)  # a training loop asks again and again for the same shape
def _windows(spec: PoolSpec, sizes: tuple[int, ...], names: tuple[str, ...]) -> tuple[AxisWindow, AxisWindow, AxisWindow]:
    out = spec.output_shape(sizes, names)
    wins = tuple(
        AxisWindow(spec.kernel[a], spec.stride[a], spec.dilation[a], spec.padding[a], sizes[a], out[a], spec.padding[a])
        for a in range(3)
    )
    if spec.padding_mode == "ignore":
        for a, w in enumerate(wins):
            _check_every_window_has_input(w, names[a])
    return wins  # type: ignore[return-value]


def _check_every_window_has_input(w: AxisWindow, name: str) -> None:
    starts = np.arange(w.size_out) * w.stride - w.pad
    first_tap = np.maximum(0, -(starts // w.dilation))
    pos = starts + first_tap * w.dilation
    bad = (first_tap >= w.kernel) | (pos >= w.size_in)
    if bad.any():
        o = int(np.argmax(bad))
        raise ValueError(
            f"with padding_mode='ignore' output {o} along {name} covers only padding "
            f"(kernel {w.kernel}, dilation {w.dilation}, padding {w.pad}, size {w.size_in})"
        )


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)

