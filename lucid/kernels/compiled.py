"""Compiled (numba) loops for the forward with winners and for the backward.

Imported only through ``lucid.kernels.backend``, which decides when they run.
Every kernel here is made for one window geometry: kernel sizes, strides,
dilations and code place values are constants of the closure, so numba
unrolls the taps and turns the compare into selects.  Measured on this
project's machine, that is 3-10x faster than the same loop with the geometry
passed at run time, which lost to the numpy kernels on every case.  numba
keeps one cache entry per geometry (closure variables are part of its cache
key), so a run compiles only the one or two kernels it needs.

Arrays are (lead, D, H, W) views of any strides.  The semantics are the numpy
kernels' (``lucid.kernels.maxpool``), bit for bit:
- taps in row-major (d, h, w) order, strictly better wins: the first maximum;
- a NaN always takes over, so the last NaN of a window wins;
- a tap in the padding reads ``pad_value`` (tables mark it -1), or never takes
  part (-2: ``ignore`` mode, and the overhang of a ceil-mode window);
- the backward adds each output's gradient at its winner, outputs in
  ascending order, so every input position sums in PyTorch's order.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

u64 = np.uint64

PADDING = -1  # a tap table entry: the tap reads the pad value
NEVER = -2  # a tap table entry: the tap never takes part


@functools.lru_cache(maxsize=32)
def argpool_kernel(kernel, stride, dilation, mults, minimum: bool):
    """The forward with winners for one geometry:
    ``run(x, out, codes, tab_d, tab_h, tab_w, interior, pads, pad_value)``.

    ``tab_r[o, j]`` is the input row of output ``o``'s tap ``j`` along axis
    ``r`` (or PADDING / NEVER); ``interior[r] = (lo, hi)``: the outputs whose
    taps are all inside the input.  Those run the unrolled loop, with
    addresses by arithmetic; the others go through the tables.
    """
    kd, kh, kw = kernel
    sd, sh, sw = stride
    dd, dh, dw = dilation
    md, mh, mw = mults

    @njit(parallel=True, cache=True, boundscheck=False)
    def run(x, out, codes, tab_d, tab_h, tab_w, interior, pads, pad_value):
        lead, size_d, size_h, size_w = out.shape
        lo_d, hi_d, lo_h, hi_h = interior[0, 0], interior[0, 1], interior[1, 0], interior[1, 1]
        lo_w, hi_w = interior[2, 0], interior[2, 1]
        # Two loops: a test for the interior inside the unrolled loop's nest made it 4x slower.
        for task in prange(lead * size_d):  # the outputs that reach the padding, through the tables
            n = task // size_d
            od = task % size_d
            inside_d = lo_d <= od < hi_d
            for oh in range(size_h):
                whole_row = not inside_d or oh < lo_h or oh >= hi_h
                left, right = (size_w, size_w) if whole_row else (lo_w, hi_w)  # [0, left) and [right, size_w)
                for part in range(2):
                    for ow in range(0 if part == 0 else right, left if part == 0 else size_w):
                        best = pad_value
                        code = -1
                        for jd in range(kd):
                            rd = tab_d[od, jd]
                            for jh in range(kh):
                                rh = tab_h[oh, jh]
                                for jw in range(kw):
                                    rw = tab_w[ow, jw]
                                    if rd == NEVER or rh == NEVER or rw == NEVER:
                                        continue
                                    v = pad_value if rd < 0 or rh < 0 or rw < 0 else x[n, rd, rh, rw]
                                    if code < 0 or ((v < best) if minimum else (v > best)) or v != v:
                                        best = v
                                        code = jd * md + jh * mh + jw * mw
                        out[n, od, oh, ow] = best
                        codes[n, od, oh, ow] = code
        pd, ph, pw = pads[0], pads[1], pads[2]
        rows = hi_d - lo_d
        for task in prange(lead * rows):  # the interior: every tap inside, addresses by arithmetic
            n = task // rows
            od = lo_d + task % rows
            d0 = od * sd - pd
            for oh in range(lo_h, hi_h):
                h0 = oh * sh - ph
                for ow in range(lo_w, hi_w):
                    w0 = ow * sw - pw
                    # unsigned indices: numba skips its negative-index wraparound, which LLVM
                    # cannot prove away for loops from a run-time start (measured 3x)
                    best = x[n, u64(d0), u64(h0), u64(w0)]
                    code = 0
                    for jd in range(kd):
                        for jh in range(kh):
                            for jw in range(kw):
                                v = x[n, u64(d0 + jd * dd), u64(h0 + jh * dh), u64(w0 + jw * dw)]
                                # a NaN always wins, so the last one does (an integer never differs from itself)
                                better = ((v < best) if minimum else (v > best)) | (v != v)
                                best = v if better else best
                                code = (jd * md + jh * mh + jw * mw) if better else code
                    out[n, u64(od), u64(oh), u64(ow)] = best
                    codes[n, u64(od), u64(oh), u64(ow)] = code

    return run


@functools.lru_cache(maxsize=32)
def unpool_kernel(kernel, stride, dilation):
    """The backward for one geometry, axes most significant first (codes row-major in them):
    ``run(grad, codes, out, pads, rows)`` adds ``grad`` into ``out`` at the winners.

    Tasks own ``rows`` input rows along axis 0 and replay every output whose
    window reaches them ("owner computes"): each position is written by one
    task, in ascending output order, so threads change no sum.
    """
    ka, kb, kc = kernel
    sa, sb, sc = stride
    da, db, dc = dilation
    ma, mb = kb * kc, kc
    span_a = da * (ka - 1) + 1

    @njit(parallel=True, cache=True, boundscheck=False)
    def run(grad, codes, out, pads, rows):
        lead, size_a, size_b, size_c = grad.shape
        rows_a, rows_b, rows_c = out.shape[1], out.shape[2], out.shape[3]
        pa, pb, pc = pads[0], pads[1], pads[2]
        chunks = (rows_a + rows - 1) // rows
        for task in prange(lead * chunks):
            n = task // chunks
            r0 = task % chunks * rows
            r1 = min(rows_a, r0 + rows)
            first = max(0, (r0 + pa - span_a) // sa + 1)  # outputs whose windows reach [r0, r1)
            last = min(size_a, (r1 + pa + sa - 1) // sa)
            for a in range(first, last):
                for b in range(size_b):
                    for c in range(size_c):
                        code = codes[n, u64(a), b, c]
                        ia = a * sa - pa + code // ma * da
                        ib = b * sb - pb + code // mb % kb * db
                        ic = c * sc - pc + code % kc * dc
                        if r0 <= ia < r1 and 0 <= ib < rows_b and 0 <= ic < rows_c:  # checked: unsigned from here
                            out[n, u64(ia), u64(ib), u64(ic)] += grad[n, u64(a), b, c]

    return run


@functools.lru_cache(maxsize=64)  # read-only arrays: a training loop asks for the same windows again and again
def tap_table(w, padding_takes_part: bool) -> np.ndarray:
    """Input row of every (output, tap) along one axis of an ``AxisWindow``, or PADDING / NEVER
    (padding never takes part without a pad value)."""
    o = np.arange(w.size_out)[:, None]
    pos = o * w.stride - w.pad + np.arange(w.kernel)[None, :] * w.dilation
    table = np.where((pos >= 0) & (pos < w.size_in), pos, NEVER)
    padding = ((pos < 0) | (pos >= w.size_in)) & (pos < w.size_in + w.pad_end)
    table[padding] = PADDING if padding_takes_part else NEVER
    table = table.astype(np.int64)
    table.flags.writeable = False
    return table
