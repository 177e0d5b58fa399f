"""Separable max pooling on any three axes of a numpy array (knows nothing of Tensor).

A 3-D window maximum is a maximum along one axis of maxima along the others,
so each pass is a strided 1-D sliding maximum: the data is read
k_d + k_h + k_w times instead of k_d * k_h * k_w times, and every pass is a
handful of whole-array ufunc calls (no Python loop over voxels).

Winners.  For the backward pass each 1-D stage records which tap won
(``offsets``, a small unsigned array).  Stages run innermost logical axis
first (w, then h, then d), so the final winner is the *first* maximum in
row-major (d, h, w) window order, PyTorch's rule: the last stage to choose
(d) decides first.  NaN beats every number and a later NaN beats an earlier
one, which is where PyTorch's ``val > max || isnan(val)`` lands: the LAST NaN
of the window in row-major order.

Padding.  ``pad_value`` is the value padded positions take part with
(0 for ``padding_mode="zeros"``) or None: they never win ("ignore").  A winner
in the padding has an offset whose position lies outside the input, and its
gradient goes nowhere.

Backward (``scatter_axis``) runs the stages in reverse and adds each
destination's contributions in ascending output order, so a streaming
engine that accumulates slab after slab into a carry buffer gets the same
bits as one in-memory call.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from lucid.kernels.windows import AxisWindow

Axes = tuple[int, int, int]
Windows = Sequence[AxisWindow]


class Order(NamedTuple):
    """max pooling (the default) or min pooling (a negative NIfTI slope)."""

    combine: np.ufunc  # np.maximum / np.minimum (both propagate NaN)
    beats: np.ufunc  # np.greater / np.less: strictly better


MAX = Order(np.maximum, np.greater)
MIN = Order(np.minimum, np.less)


def check_dtype(dtype: np.dtype) -> None:
    """Pooling is defined for real numbers: floats and integers only."""
    if dtype.kind not in "fiu":
        raise TypeError(f"max pooling needs an integer or floating point dtype, got {dtype}")


def worst_value(dtype: np.dtype, order: Order = MAX):
    """The value every candidate beats or equals (-inf, or the integer minimum)."""
    if dtype.kind == "f":
        return -np.inf if order is MAX else np.inf
    info = np.iinfo(dtype)
    return info.min if order is MAX else info.max


def empty_like_layout(x: np.ndarray, shape: Sequence[int], dtype) -> np.ndarray:
    """An empty array of ``shape`` whose axes are laid out in memory like ``x``'s."""
    perm = sorted(range(x.ndim), key=lambda a: -abs(x.strides[a]) if x.shape[a] > 1 else 0)
    if perm == list(range(x.ndim)):
        return np.empty(shape, dtype)
    arr = np.empty([shape[a] for a in perm], dtype)
    return arr.transpose(np.argsort(perm))


def _at(ndim: int, axis: int, index) -> tuple:
    key = [slice(None)] * ndim
    key[axis] = index
    return tuple(key)


def _offset_dtype(kernel: int) -> np.dtype:
    return np.dtype(np.uint8 if kernel <= 255 else np.uint16)


def _first_valid_tap(w: AxisWindow, outputs: np.ndarray) -> np.ndarray:
    starts = outputs * w.stride - w.pad
    return np.maximum(0, -(starts // w.dilation))


def _pooled_shape(shape: Sequence[int], axis: int, size: int) -> list[int]:
    shape = list(shape)
    shape[axis] = size
    return shape


def pool_axis(x: np.ndarray, axis: int, w: AxisWindow, pad_value, order: Order = MAX) -> np.ndarray:
    """Sliding extreme along one axis: values only (the fast forward path)."""
    out = empty_like_layout(x, _pooled_shape(x.shape, axis, w.size_out), x.dtype)
    n = x.ndim
    for j in range(w.kernel):
        lo, hi = w.tap_range(j)
        src = x[_at(n, axis, w.input_slice(j))]
        dst = out[_at(n, axis, slice(lo, hi))]
        if j == 0:
            np.copyto(dst, src)
            fill = worst_value(x.dtype, order) if pad_value is None else pad_value
            out[_at(n, axis, slice(0, lo))] = fill
            out[_at(n, axis, slice(hi, None))] = fill
            continue
        order.combine(dst, src, out=dst)
        if pad_value is not None:
            for border in (slice(0, lo), slice(hi, None)):
                part = out[_at(n, axis, border)]
                order.combine(part, pad_value, out=part)
    return out


def argpool_axis(x: np.ndarray, axis: int, w: AxisWindow, pad_value, order: Order = MAX):
    """Sliding extreme along one axis and the winning tap of every window.

    Returns ``(values, offsets)``; ties go to the first tap, NaN to the last NaN.
    """
    shape = _pooled_shape(x.shape, axis, w.size_out)
    out = empty_like_layout(x, shape, x.dtype)
    offsets = empty_like_layout(x, shape, _offset_dtype(w.kernel))
    n = x.ndim
    is_float = x.dtype.kind == "f"
    for j in range(w.kernel):
        lo, hi = w.tap_range(j)
        src = x[_at(n, axis, w.input_slice(j))]
        dst = out[_at(n, axis, slice(lo, hi))]
        won = offsets[_at(n, axis, slice(lo, hi))]
        if j == 0:
            np.copyto(dst, src)
            won[...] = 0
            _init_borders(out, offsets, axis, w, lo, hi, pad_value, order)
            continue
        better = order.beats(src, dst)
        if is_float:
            better |= src != src  # NaN wins, and a later NaN beats an earlier one
        np.copyto(won, j, where=better)
        order.combine(dst, src, out=dst)
        if pad_value is not None:  # padded taps take part with pad_value
            for border in (slice(0, lo), slice(hi, None)):
                part = out[_at(n, axis, border)]
                np.copyto(offsets[_at(n, axis, border)], j, where=order.beats(pad_value, part))
                order.combine(part, pad_value, out=part)
    return out, offsets


def _init_borders(out, offsets, axis, w: AxisWindow, lo, hi, pad_value, order) -> None:
    """Outputs whose first tap lies in the padding."""
    n = out.ndim
    for border in (slice(0, lo), slice(hi, w.size_out)):
        if border.stop <= border.start:
            continue
        if pad_value is not None:
            out[_at(n, axis, border)] = pad_value
            offsets[_at(n, axis, border)] = 0
        else:  # nothing to compare yet: start from the first real tap, at the worst value
            out[_at(n, axis, border)] = worst_value(out.dtype, order)
            first = _first_valid_tap(w, np.arange(border.start, border.stop)).astype(offsets.dtype)
            offsets[_at(n, axis, border)] = first.reshape([-1 if a == axis else 1 for a in range(n)])


def pool(x: np.ndarray, axes: Axes, windows: Windows, pad_value=0, order: Order = MAX) -> np.ndarray:
    """Max (or min) pool ``x`` over ``axes``; values only.

    Passes run outermost-in-memory axis first: those see contiguous rows, so
    the strided pass comes last, on the smallest array.
    """
    check_dtype(x.dtype)
    stages = sorted(range(3), key=lambda r: -abs(x.strides[axes[r]]))
    for r in stages:
        x = pool_axis(x, axes[r], windows[r], pad_value, order)
    return x


def argpool(x: np.ndarray, axes: Axes, windows: Windows, pad_value=0, order: Order = MAX):
    """Max (or min) pool ``x`` over ``axes`` keeping the winners.

    Returns ``(values, offsets)`` where ``offsets[r]`` is the winning tap along
    ``axes[r]``, on the grid of stage r (axes after r pooled, r and before not).
    """
    check_dtype(x.dtype)
    offsets: list[np.ndarray] = [None, None, None]  # type: ignore[list-item]
    for r in (2, 1, 0):
        x, offsets[r] = argpool_axis(x, axes[r], windows[r], pad_value, order)
    return x, offsets


def scatter_axis(grad: np.ndarray, offsets: np.ndarray, axis: int, w: AxisWindow, out: np.ndarray) -> np.ndarray:
    """Add each output's gradient to the input position its winning tap names.

    ``out`` (input length along ``axis``) may already hold partial sums from
    earlier outputs; taps run last to first, so every position receives its
    contributions in ascending output order.  Taps in the padding are dropped.
    """
    n = grad.ndim
    for j in reversed(range(w.kernel)):
        lo, hi = w.tap_range(j)
        if hi <= lo:
            continue
        rows = _at(n, axis, slice(lo, hi))
        dst = out[_at(n, axis, w.input_slice(j))]
        np.add(dst, grad[rows], out=dst, where=offsets[rows] == j)
    return out


def unpool(grad: np.ndarray, offsets, axes: Axes, windows: Windows, dtype=None) -> np.ndarray:
    """Backward of ``argpool``: route every output gradient to its window's winner."""
    g = grad if dtype is None else grad.astype(dtype, copy=False)
    for r in (0, 1, 2):
        w = windows[r]
        buf = np.zeros(_pooled_shape(g.shape, axes[r], w.size_in), g.dtype)
        g = scatter_axis(g, offsets[r], axes[r], w, buf)
    return g


def winner_positions(offsets, axes: Axes, windows: Windows) -> list[np.ndarray]:
    """Input coordinate of every output's winner along each pooled axis (-1 in the padding).

    Arrays have the output's shape; other axes index as in the output.
    """
    out_shape = offsets[0].shape
    n = len(out_shape)
    grids = list(np.indices(out_shape, sparse=True))
    positions: list[np.ndarray] = []
    coords = list(grids)
    for r in (0, 1, 2):
        a, w = axes[r], windows[r]
        # offsets[r] lives on a grid where axes before r are input-sized: look it up at
        # the winner coordinates found so far.
        key = tuple(coords[b] for b in range(n))
        tap = offsets[r][key].astype(np.int64)
        o = grids[a]
        pos = o * w.stride - w.pad + tap * w.dilation
        inside = (pos >= 0) & (pos < w.size_in)
        positions.append(np.where(inside, pos, -1))
        coords[a] = np.clip(pos, 0, w.size_in - 1)
    return positions


def flat_indices(offsets, axes: Axes, windows: Windows) -> np.ndarray:
    """PyTorch's ``return_indices``: flat int64 index into D*H*W of every winner, -1 in padding."""
    pd, ph, pw = winner_positions(offsets, axes, windows)
    h_in, w_in = windows[1].size_in, windows[2].size_in
    flat = (pd * h_in + ph) * w_in + pw
    return np.where((pd < 0) | (ph < 0) | (pw < 0), -1, flat).astype(np.int64)
