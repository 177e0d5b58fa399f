"""Compiled (numba) loops for the forward (values, or values and winners) and for the backward.

Imported only through ``lucid.kernels.backend``, which decides when they run.
Every kernel here is made for one window geometry: kernel sizes, strides,
dilations and code place values are constants of the closure, so numba
unrolls the taps and turns the compare into selects.  Measured on this
project's machine, that is 3-10x faster than the same loop with the geometry
passed at run time, which lost to the numpy kernels on every case.  numba
keeps one cache entry per geometry (closure variables are part of its cache
key), so a run compiles only the one or two kernels it needs.

Two forwards: ``argpool_kernel`` reads every tap of every window (the
fastest while windows overlap little: k=2 s=2), ``separable_kernel`` takes
the maximum along d, then h, then w, carrying each candidate's rank, so each
input is read about k_d + k_h + k_w times instead of k_d * k_h * k_w.
Two backwards: ``tiling_unpool_kernel`` writes each position once where
windows tile the input (stride = kernel, no padding), ``unpool_kernel``
scatter-adds for any windows.

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
def argpool_kernel(kernel, stride, dilation, mults, minimum: bool, winners: bool = True):
    """The direct forward for one geometry:
    ``run(x, out, codes, tab_d, tab_h, tab_w, interior, pads, pad_value)``
    (``codes`` is not touched unless ``winners``).

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
                        if winners:
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
                    if winners:
                        codes[n, u64(od), u64(oh), u64(ow)] = code

    return run


# Module functions, not closures: numba keys a closure's cache entry by its cell values, and a
# dispatcher in a cell pickles differently in every process (the kernel recompiled every run).
@njit(inline="always")
def _beats(v, b, minimum):
    return (v < b) if minimum else (v > b)


@njit(inline="always")
def _takes(v, rank, b, b_rank, minimum):
    """(v, rank) takes over from (b, b_rank): better, a tie with the smaller rank, or a later NaN."""
    return _beats(v, b, minimum) | ((v == b) & (rank < b_rank)) | ((v != v) & ((b == b) | (rank > b_rank)))


@njit(inline="always")
def _code(rank, row_major, plane, kh, kw, md, mh, mw):
    """A candidate's row-major rank as a winner code of place values (md, mh, mw)."""
    if row_major:
        return rank
    r = u64(rank)  # unsigned: division by a constant without sign fix-ups
    return r // plane * md + r // kw % kh * mh + r % kw * mw


# The separable forward's passes are module functions, not code inside its prange loop: LLVM
# compiled the same loops much better there (measured on (8, 16, 16, 32, 32) k3s2p1: the pass
# along w took 1.8 ms of the kernel's 2.6 inside the loop, 0.25 ms in a function of its own).
# The kernel passes its geometry as constants, which numba types as literals, so each pass is
# compiled (and cached) per geometry with its taps unrolled, as the kernel itself is.  Loops
# start at zero over slices, so LLVM sees no negative index and vectorises (a loop from a
# run-time start kept numba's wraparound checks: 3x).
@njit(cache=True, boundscheck=False)
def _d_first(best, rank, src, rk):
    for f in range(src.size):
        best[f] = src[f]
        rank[f] = rk


@njit(cache=True, boundscheck=False)
def _d_take(best, rank, src, rk, minimum):
    """Along d, a later tap in rank order: strictly better, or a NaN, takes over."""
    for f in range(src.size):
        v = src[f]
        b = best[f]
        better = _beats(v, b, minimum) | (v != v)
        best[f] = v if better else b
        rank[f] = rk if better else rank[f]


@njit(cache=True, boundscheck=False)
def _d_pad(best, rank, flat, have, pad_value, rk, minimum):
    """Along d, a tap in the padding."""
    for f in range(flat):
        better = (not have) | _beats(pad_value, best[f], minimum)
        best[f] = pad_value if better else best[f]
        rank[f] = rk if better else rank[f]


@njit(cache=True, boundscheck=False)
def _h_rows(best, rank, h_best, h_rank, top, count, hs, rows_w, sh, kh, dh, kw, minimum):
    """Along h, ``count`` interior output rows whose first tap is band row ``top`` (then every
    ``sh``-th), all taps at once, into rows of ``h_best`` at stride ``hs``."""
    for i in range(count):
        src = best[(top + i * sh) * rows_w:]
        src_rank = rank[(top + i * sh) * rows_w:]
        dst = h_best[i * hs:]
        dst_rank = h_rank[i * hs:]
        for w in range(rows_w):
            b = src[w]
            r = src_rank[w]
            for jh in range(1, kh):
                v = src[jh * dh * rows_w + w]
                rk = np.int32(src_rank[jh * dh * rows_w + w] + jh * kw)
                better = _takes(v, rk, b, r, minimum)
                b = v if better else b
                r = rk if better else r
            dst[w] = b
            dst_rank[w] = r


@njit(cache=True, boundscheck=False)
def _h_table(best, rank, row_best, row_rank, taps, r0, rows_w, pad_value, kw, minimum):
    """Along h, one output row through its tap table: padding, or taps that never take part."""
    first = True
    for jh in range(taps.size):
        rh = taps[jh]
        if rh == NEVER:
            continue
        step = np.int32(jh * kw)
        if rh < 0:
            for w in range(rows_w):
                better = first | _takes(pad_value, step, row_best[w], row_rank[w], minimum)
                row_best[w] = pad_value if better else row_best[w]
                row_rank[w] = step if better else row_rank[w]
        else:
            src = best[(rh - r0) * rows_w:]
            src_rank = rank[(rh - r0) * rows_w:]
            for w in range(rows_w):
                v = src[w]
                rk = np.int32(src_rank[w] + step)
                better = first | _takes(v, rk, row_best[w], row_rank[w], minimum)
                row_best[w] = v if better else row_best[w]
                row_rank[w] = rk if better else row_rank[w]
        first = False


@njit(cache=True, boundscheck=False)
def _w_run(h_best, h_rank, dst, dst_codes, f0, f1, pw, sw, kw, dw, minimum,
           write_codes, as_codes, row_major, plane, kh, md, mh, mw):
    """Along w, outputs [f0, f1) of the band's rows as one run: rows of ``h_best`` are
    ``sw`` times those of ``dst`` apart, so output ``f`` reads from ``f * sw - pw`` on.
    The outputs between two rows' interiors read across a row end; the edges rewrite them.
    ``dst_codes`` gets ranks, or winner codes ``as_codes``.  (LLVM loads the strided taps
    as whole vectors and shuffles: one loop per tap gathered, 2x slower.)"""
    src = h_best[f0 * sw - pw:]
    src_rank = h_rank[f0 * sw - pw:]
    out = dst[f0:f1]
    out_codes = dst_codes[f0:f1] if write_codes else dst_codes
    for f in range(f1 - f0):
        b = src[f * sw]
        r = src_rank[f * sw]
        for jw in range(1, kw):
            v = src[f * sw + jw * dw]
            rk = np.int32(src_rank[f * sw + jw * dw] + jw)
            better = _takes(v, rk, b, r, minimum)
            b = v if better else b
            r = rk if better else r
        out[f] = b
        if write_codes:
            out_codes[f] = _code(r, row_major, plane, kh, kw, md, mh, mw) if as_codes else r


@njit(cache=True, boundscheck=False)
def _w_emit(w_best, w_rank, out, codes, b0, b1, m, size_w, lo_w, hi_w, winners, row_major, plane, kh, kw, md, mh, mw):
    """The interior outputs of rows [b0, b1) of a flat output plane (rows ``size_w`` apart),
    from a run along w whose rows are ``m`` apart."""
    for oh in range(b0, b1):
        src = w_best[(oh - b0) * m + lo_w:]
        src_rank = w_rank[(oh - b0) * m + lo_w:]
        out_row = out[oh * size_w + lo_w:oh * size_w + hi_w]
        for t in range(hi_w - lo_w):
            out_row[t] = src[t]
        if winners:
            codes_row = codes[oh * size_w + lo_w:oh * size_w + hi_w]
            for t in range(hi_w - lo_w):
                codes_row[t] = _code(src_rank[t], row_major, plane, kh, kw, md, mh, mw)


@njit(cache=True, boundscheck=False)
def _w_edges(h_best, h_rank, out, codes, b0, b1, hs, tab_w, lo_w, hi_w, pad_value, minimum,
             winners, row_major, plane, kh, kw, md, mh, mw):
    """Along w, the outputs of rows [b0, b1) outside [lo_w, hi_w), through the tap table."""
    size_w = tab_w.shape[0]
    for oh in range(b0, b1):
        row_best = h_best[(oh - b0) * hs:]
        row_rank = h_rank[(oh - b0) * hs:]
        for part in range(2):
            for ow in range(0 if part == 0 else hi_w, lo_w if part == 0 else size_w):
                b = pad_value
                r = np.int32(-1)
                for jw in range(kw):
                    rw = tab_w[ow, jw]
                    if rw == NEVER:
                        continue
                    v = pad_value if rw < 0 else row_best[u64(rw)]
                    rk = np.int32(jw) if rw < 0 else np.int32(row_rank[u64(rw)] + jw)
                    if r < 0 or _takes(v, rk, b, r, minimum):
                        b = v
                        r = rk
                out[u64(oh * size_w + ow)] = b
                if winners:
                    codes[u64(oh * size_w + ow)] = _code(r, row_major, plane, kh, kw, md, mh, mw)


@functools.lru_cache(maxsize=32)
def separable_kernel(kernel, stride, dilation, mults, minimum: bool, winners: bool = True):
    """The separable forward for one geometry:
    ``run(planes, rows_w, out, codes, tab_d, tab_h, tab_w, interior, pads, pad_value, band, chunks)``.

    ``planes`` is the input as (lead, D, H * rows_w), ``out`` and ``codes``
    the outputs as (lead, D', H' * W'): rows of one plane follow each other
    at one stride, so the pass along d runs over a band of rows as one flat
    loop, and so does the pass along w over the band's interior columns.
    Tasks are (lead, output plane, band of ``band`` output rows), ``chunks``
    runs of them, one scratch set each.  Candidates carry their row-major
    rank in the window (jd, jh, jw): along d the taps come in rank order, so
    the plain rule of the direct loop holds; along h and w a tie goes to the
    smaller rank (the first maximum) and a NaN to the larger (the last NaN).
    A padding line takes part with the smallest rank of its taps.  Interior
    rows (every tap inside) take all their taps in one loop.
    """
    kd, kh, kw = kernel
    sh, sw = stride[1], stride[2]
    dh, dw = dilation[1], dilation[2]
    md, mh, mw = mults
    plane = kh * kw
    row_major = (md, mh, mw) == (plane, kw, 1)  # the codes are the ranks themselves

    @njit(parallel=True, cache=True, boundscheck=False)
    def run(planes, rows_w, out, codes, tab_d, tab_h, tab_w, interior, pads, pad_value, band, chunks):
        lead, size_d = out.shape[0], out.shape[1]
        size_h, size_w = tab_h.shape[0], tab_w.shape[0]
        rows_h = planes.shape[2] // rows_w
        ph, pw = pads[1], pads[2]
        lo_h, hi_h = interior[1, 0], interior[1, 1]
        lo_w, hi_w = interior[2, 0], interior[2, 1]
        bands = (size_h + band - 1) // band
        tasks = lead * size_d * bands
        band_rows = min(rows_h, (band - 1) * sh + (kh - 1) * dh + 1)
        m = max(size_w, (rows_w + sw - 1) // sw)  # outputs per row of the run along w
        hs = m * sw  # its input rows' stride: at least rows_w
        # Scratch per chunk, not per task: allocations inside prange cost more than a small task.
        for chunk in prange(chunks):
            best = np.empty(band_rows * rows_w, planes.dtype)
            rank = np.empty(band_rows * rows_w, np.int32)
            h_best = np.empty(band * hs, planes.dtype)
            h_rank = np.empty(band * hs, np.int32)
            w_best = np.empty(band * m if m > size_w else 0, planes.dtype)
            w_rank = np.empty(band * m if m > size_w else 0, np.int32)
            for task in range(chunk * tasks // chunks, (chunk + 1) * tasks // chunks):
                n = task // (size_d * bands)
                od = task // bands % size_d
                b0 = task % bands * band
                b1 = min(size_h, b0 + band)
                r0 = max(0, b0 * sh - ph)  # the input rows this band reads
                rows = max(0, min(rows_h, (b1 - 1) * sh - ph + (kh - 1) * dh + 1) - r0)
                flat = rows * rows_w
                have = False
                for jd in range(kd):  # along d: the band's rows as one run
                    rd = tab_d[od, jd]
                    if rd == NEVER:
                        continue
                    rk = np.int32(jd * plane)
                    if rd < 0:
                        _d_pad(best, rank, flat, have, pad_value, rk, minimum)
                    elif have:
                        _d_take(best, rank, planes[n, u64(rd), r0 * rows_w:r0 * rows_w + flat], rk, minimum)
                    else:
                        _d_first(best, rank, planes[n, u64(rd), r0 * rows_w:r0 * rows_w + flat], rk)
                    have = True
                i0, i1 = max(b0, lo_h), min(b1, hi_h)  # along h: the interior rows at once ...
                if i1 > i0:
                    _h_rows(best, rank, h_best[(i0 - b0) * hs:], h_rank[(i0 - b0) * hs:], i0 * sh - ph - r0,
                            i1 - i0, hs, rows_w, sh, kh, dh, kw, minimum)
                for oh in range(b0, b1):  # ... the others through the table
                    if oh < i0 or oh >= i1:
                        _h_table(best, rank, h_best[(oh - b0) * hs:], h_rank[(oh - b0) * hs:], tab_h[oh], r0,
                                 rows_w, pad_value, kw, minimum)
                out_plane = out[n, u64(od)]
                codes_plane = codes[n, u64(od)] if winners else codes[0, 0]
                if hi_w > lo_w:  # along w: the interior columns of every row as one run ...
                    f1 = (b1 - b0 - 1) * m + hi_w
                    if m == size_w:  # ... into the output rows themselves
                        _w_run(h_best, h_rank, out_plane[b0 * size_w:], codes_plane[b0 * size_w:] if winners
                               else codes_plane, lo_w, f1, pw, sw, kw, dw, minimum,
                               winners, True, row_major, plane, kh, md, mh, mw)
                    else:  # ... or through scratch rows, longer than the output's
                        _w_run(h_best, h_rank, w_best, w_rank, lo_w, f1, pw, sw, kw, dw, minimum,
                               True, False, row_major, plane, kh, md, mh, mw)
                        _w_emit(w_best, w_rank, out_plane, codes_plane, b0, b1, m, size_w, lo_w, hi_w,
                                winners, row_major, plane, kh, kw, md, mh, mw)
                _w_edges(h_best, h_rank, out_plane, codes_plane, b0, b1, hs, tab_w, lo_w, hi_w, pad_value,
                         minimum, winners, row_major, plane, kh, kw, md, mh, mw)

    return run


@functools.lru_cache(maxsize=32)
def unpool_kernel(kernel, stride, dilation):
    """The backward for one geometry, axes most significant first (codes row-major in them):
    ``run(grad, codes, out, pads, rows, fresh)`` adds ``grad`` into ``out`` at the winners
    (``fresh``: ``out`` is uninitialised, and each task zeroes its rows first, in cache).

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
    def run(grad, codes, out, pads, rows, fresh):
        lead, size_a, size_b, size_c = grad.shape
        rows_a, rows_b, rows_c = out.shape[1], out.shape[2], out.shape[3]
        pa, pb, pc = pads[0], pads[1], pads[2]
        chunks = (rows_a + rows - 1) // rows
        for task in prange(lead * chunks):
            n = task // chunks
            r0 = task % chunks * rows
            r1 = min(rows_a, r0 + rows)
            if fresh:  # zeroed here, in cache: 1.1-2.2x faster than a zero pass before the scatter
                for ia in range(r0, r1):
                    for ib in range(rows_b):
                        for ic in range(rows_c):
                            out[n, u64(ia), ib, ic] = 0
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


@functools.lru_cache(maxsize=32)
def tiling_unpool_kernel(kernel):
    """The backward of windows that tile the input (stride = kernel, no padding
    or dilation) into an uninitialised ``out``: ``run(grad, codes, out, zero)``.

    Each input position is covered by at most one window, so it is written
    once, its gradient or ``zero``, with no zero pass and no read of ``out``
    (2x the scatter-add on rows of 32-64).  Tasks own one output row along
    axis 0 and its input rows; the last also owns the rows past every window.
    """
    ka, kb, kc = kernel
    ma, mb = kb * kc, kc

    @njit(parallel=True, cache=True, boundscheck=False)
    def run(grad, codes, out, zero):
        lead, size_a, size_b, size_c = grad.shape
        rows_a, rows_b, rows_c = out.shape[1], out.shape[2], out.shape[3]
        whole_b, whole_c = min(size_b, rows_b // kb), min(size_c, rows_c // kc)  # windows wholly inside
        for task in prange(lead * size_a):
            n = task // size_a
            a = task % size_a
            r0 = a * ka
            r1 = rows_a if a == size_a - 1 else min(rows_a, r0 + ka)
            for ia in range(r0, r1):
                ja = ia - r0
                if ja >= ka:  # past the last window
                    for ib in range(rows_b):
                        for ic in range(rows_c):
                            out[n, u64(ia), ib, ic] = zero
                    continue
                for b in range(whole_b):
                    for jb in range(kb):
                        ib = b * kb + jb
                        base = ja * ma + jb * mb  # the code of this input row's first tap
                        for c in range(whole_c):  # kc taps per window: LLVM interleaves the stores
                            g = grad[n, u64(a), b, c] + zero  # + 0: a -0.0 gradient lands as +0.0, as on zeros
                            at = np.int64(codes[n, u64(a), b, c]) - base
                            for jc in range(kc):
                                out[n, u64(ia), u64(ib), u64(c * kc + jc)] = g if at == jc else zero
                        for ic in range(whole_c * kc, rows_c):  # a partial window, or past every window
                            c = min(ic // kc, size_c - 1)
                            hit = ic < size_c * kc and np.int64(codes[n, u64(a), b, c]) - base == ic - c * kc
                            out[n, u64(ia), u64(ib), ic] = (grad[n, u64(a), b, c] + zero) if hit else zero
                for ib in range(whole_b * kb, rows_b):  # the same along b
                    b = min(ib // kb, size_b - 1)
                    base = ja * ma + (ib - b * kb) * mb
                    for ic in range(rows_c):
                        c = min(ic // kc, size_c - 1)
                        hit = (ib < size_b * kb and ic < size_c * kc
                               and np.int64(codes[n, u64(a), b, c]) - base == ic - c * kc)
                        out[n, u64(ia), u64(ib), ic] = (grad[n, u64(a), b, c] + zero) if hit else zero

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
