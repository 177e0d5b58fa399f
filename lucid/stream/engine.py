"""The executor: stream slabs from a Source through the kernels into Sinks.

A reader thread prefetches slabs, the calling thread computes (the kernels
use their own tile threads), a writer thread drains results; bounded
queues (one slab in, two results out) cap what is in flight.  The engine
never asks which format it reads or writes.

Backward: upstream gradients are routed slab by slab into a *carry* buffer
over the slab's input rows.  Windows that overlap (k > s) make neighbouring
slabs share input rows, so a row is written only once no later slab can
touch it.  Gradients add up along the slab axis in ascending output order,
slab after slab, so any slab height gives the same bits.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from lucid.io.base import LucidIOError, Sink, Source
from lucid.kernels import backend, maxpool, tiled
from lucid.kernels.maxpool import MAX, Order, along
from lucid.stream.plan import Plan, Slab

Progress = Callable[[int, int, int], None]  # (slabs done, slabs total, bytes read)
_DONE = object()


@dataclass
class EngineStats:
    slabs: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    padding_won: bool = False  # zero padding beat negative real values somewhere
    seconds: float = 0.0


@dataclass
class _Job:
    outer: tuple[int, ...]
    slab: Slab
    data: np.ndarray
    grad: np.ndarray | None


def run(
    source: Source,
    plan: Plan,
    *,
    out: Sink | None = None,
    grad_out: Sink | None = None,
    indices_out: Sink | None = None,
    grad_in: Source | None = None,
    pad_value=0,
    order: Order = MAX,
    out_dtype=None,
    grad_dtype=np.float32,
    threads: int | None = None,
    progress: Progress | None = None,
    check_padding: bool = True,
) -> EngineStats:
    """Pool ``source`` as ``plan`` says; write values, gradient map and indices to the given sinks.

    ``pad_value`` is the raw value zero padding takes part with (None: padding
    never wins).  ``grad_in`` is the upstream gradient (output grid); without it
    a gradient map counts how many windows chose each voxel.  Sinks are written
    but not committed: the caller commits or aborts them.
    """
    stats = EngineStats()
    start = time.perf_counter()
    out_dtype = np.dtype(out_dtype or source.dtype)
    need_codes = grad_out is not None or indices_out is not None
    mults = maxpool.code_mults(plan.windows, plan.priority)
    stop = threading.Event()
    inbox: queue.Queue = queue.Queue(maxsize=1)
    outbox: queue.Queue = queue.Queue(maxsize=2)
    errors: list[BaseException] = []
    sizes = [plan.in_shape[a] for a in plan.pooled]

    def put(q: queue.Queue, item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def reader() -> None:
        try:
            for outer in plan.outer_indices():
                for slab in plan.slabs:
                    data = source.read(plan.box(outer, slab.in_rows, plan.in_shape))
                    grad = None
                    if grad_in is not None:
                        grad = grad_in.read(plan.box(outer, slab.out_rows, plan.out_shape))
                    if not put(inbox, _Job(outer, slab, data, grad)):
                        return
            put(inbox, _DONE)
        except BaseException as exc:  # handed to the main thread
            put(inbox, exc)

    def get(q: queue.Queue):
        while True:  # a timeout keeps the wait interruptible and lets threads see ``stop``
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                if stop.is_set():
                    return _DONE

    def writer() -> None:
        try:
            while (item := get(outbox)) is not _DONE:
                sink, key, data = item
                sink.write(key, data)
                stats.bytes_written += data.nbytes
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    def emit(sink: Sink, key, data: np.ndarray) -> None:
        if errors:
            raise errors[0]
        if not put(outbox, (sink, key, data)):
            raise errors[0] if errors else RuntimeError("writer stopped")

    threads_ = [threading.Thread(target=reader, name="lucid-reader", daemon=True),
                threading.Thread(target=writer, name="lucid-writer", daemon=True)]
    for t in threads_:
        t.start()
    carry = _Carry(plan, grad_out, emit, grad_dtype) if grad_out is not None else None
    total = plan.job_count
    # The plan decided (``backend.for_run``): numba from the first slab, or the numpy kernels
    # (a small run, or a budget that cannot hold numba's own memory).
    kernels = plan.kernels
    if kernels == "auto":
        backend.preload()
    try:
        with backend.kernels(kernels):
            while True:
                job = get(inbox)
                if job is _DONE:
                    break
                if isinstance(job, BaseException):
                    raise job
                stats.bytes_read += job.data.nbytes
                windows = plan.local_windows(job.slab)
                out_key = plan.box(job.outer, job.slab.out_rows, plan.out_shape)
                if need_codes:
                    values, codes = tiled.argpool(job.data, plan.pooled, windows, mults, pad_value, order, threads)
                else:
                    values = tiled.pool(job.data, plan.pooled, windows, pad_value, order, threads)
                if check_padding and pad_value is not None and not stats.padding_won:
                    stats.padding_won = _padding_won(job.data, plan.pooled, windows, pad_value, order, values)
                if out is not None:
                    emit(out, out_key, _cast(values, out_dtype, out))
                if indices_out is not None:
                    origin = [0, 0, 0]
                    origin[plan.slab_r] = job.slab.in_rows[0]
                    emit(indices_out, out_key, maxpool.flat_indices(codes, plan.pooled, windows, mults, origin, sizes))
                if carry is not None:
                    grad = _gradient_like(values, job.grad, grad_dtype, grad_in)
                    carry.add(job.outer, job.slab, grad, codes, windows, mults, threads, like=job.data)
                stats.slabs += 1
                if progress is not None:
                    progress(stats.slabs, total, stats.bytes_read)
            if carry is not None:
                carry.finish()
            put(outbox, _DONE)
            threads_[1].join()
            if errors:
                raise errors[0]
            if stop.is_set():
                raise RuntimeError("the streaming engine stopped early")
    finally:
        stop.set()
        for t in threads_:
            t.join(timeout=5)
    stats.seconds = time.perf_counter() - start
    return stats


class _Carry:
    """Input-gradient rows that later slabs may still add to, and the writes of finished rows."""

    def __init__(self, plan: Plan, sink: Sink, emit, dtype):
        self.plan, self.sink, self.emit, self.dtype = plan, sink, emit, np.dtype(dtype)
        self.outer: tuple[int, ...] | None = None
        self.rows = (0, 0)  # input rows held in self.buffer
        self.written = 0  # rows before this are written
        self.buffer: np.ndarray | None = None

    def _shape(self, rows: int) -> list[int]:
        shape = list(self.plan.in_shape)
        for a in self.plan.outer:
            shape[a] = 1
        shape[self.plan.slab_axis] = rows
        return shape

    def add(self, outer, slab: Slab, grad, codes, windows, mults, threads, like: np.ndarray) -> None:
        if outer != self.outer:
            self.finish()
            self.outer, self.rows, self.written, self.buffer = outer, (0, 0), 0, None
        r0, r1 = slab.in_rows
        self._flush(r0)
        axis = self.plan.slab_axis
        buffer = maxpool.empty_like_layout(like, self._shape(r1 - r0), self.dtype)  # kernels are slow on mixed layouts
        buffer[...] = 0
        if self.buffer is not None and self.rows[1] > r0:  # rows shared with the previous slab
            keep = slice(r0 - self.rows[0], self.rows[1] - self.rows[0])
            buffer[along(buffer.ndim, axis, slice(0, self.rows[1] - r0))] = self.buffer[along(buffer.ndim, axis, keep)]
        self.buffer, self.rows = buffer, (r0, r1)
        tiled.unpool(grad, codes, self.plan.pooled, windows, mults, buffer, lead=self.plan.slab_r, threads=threads)

    def _flush(self, upto: int) -> None:
        """Write every row before ``upto``: finished carry rows, zeros for rows no window reads."""
        axis = self.plan.slab_axis
        while self.written < upto:
            if self.buffer is not None and self.rows[0] <= self.written < self.rows[1]:
                stop = min(upto, self.rows[1])
                rows = self.buffer[along(self.buffer.ndim, axis, slice(self.written - self.rows[0], stop - self.rows[0]))]
                data = np.array(rows)  # the writer gets its own copy: the buffer lives on
            else:
                nxt = self.rows[0] if self.buffer is not None and self.rows[0] > self.written else upto
                stop = min(upto, nxt, self.written + max(1, self.plan.rows_per_slab))
                data = np.zeros(self._shape(stop - self.written), self.dtype)
            self.emit(self.sink, self.plan.box(self.outer, (self.written, stop), self.plan.in_shape), data)
            self.written = stop

    def finish(self) -> None:
        if self.outer is not None:
            self._flush(self.plan.in_shape[self.plan.slab_axis])
            self.outer, self.buffer = None, None


def _cast(values: np.ndarray, dtype: np.dtype, sink: Sink) -> np.ndarray:
    if values.dtype == dtype:
        return values
    if dtype.kind in "iu" and values.size:
        info = np.iinfo(dtype)
        lo, hi = values.min(), values.max()
        if (values.dtype.kind == "f" and np.isnan(lo)) or lo < info.min or hi > info.max:
            raise LucidIOError(f"{sink.name}: values from {lo} to {hi} do not fit the output dtype {dtype}")
    try:
        with np.errstate(over="raise"):  # a finite float too large for a narrower float: refused, not inf
            return values.astype(dtype)
    except FloatingPointError:
        value = _first_overflow(values, dtype)
        raise LucidIOError(f"{sink.name}: value {value:g} does not fit the output dtype {dtype} "
                         f"(largest {float(np.finfo(dtype).max):g})") from None


def _gradient_like(values: np.ndarray, grad: np.ndarray | None, dtype, source: Source | None = None) -> np.ndarray:
    """The upstream gradient in ``values``' memory layout (ones when none is given).

    A finite upstream value too large for ``dtype`` (1e300 into float32) is
    refused in one line naming the gradient file: cast, it would turn into inf
    in the gradient map.  NaN and +-inf pass through as they are."""
    out = maxpool.empty_like_layout(values, values.shape, dtype)
    if grad is None:
        out[...] = 1
        return out
    try:
        with np.errstate(over="raise"):
            np.copyto(out, grad, casting="unsafe")
    except FloatingPointError:
        value = _first_overflow(grad, out.dtype)
        name = source.name if source is not None else "grad_in"
        raise LucidIOError(f"{name}: upstream gradient value {value:g} does not fit the gradient map's dtype "
                           f"{out.dtype} (largest {float(np.finfo(out.dtype).max):g})") from None
    return out


def _first_overflow(values: np.ndarray, dtype) -> float:
    """The first finite value of ``values`` beyond the range of the float ``dtype`` (row-major order)."""
    flat = np.asarray(values).reshape(-1)
    finite = flat[np.isfinite(flat)]  # a fresh boolean array: no out= (numpy 2.4's non-contiguous out= trap)
    big = finite[np.abs(finite) > np.finfo(dtype).max]
    return float(big[0]) if big.size else float("inf")


def _padding_won(data, axes, windows, pad_value, order, values) -> bool:
    """Whether zero padding beat all the real values of some window (CT air at the border).

    Recomputes only the outputs whose windows reach into the padding, with a
    padding that never wins, and compares."""
    never = maxpool.worst_value(data.dtype, order)
    for r, w in enumerate(windows):
        lo, hi = maxpool._interior(w)
        for o0, o1 in ((0, lo), (hi, w.size_out)) if hi > lo else ((0, w.size_out),):
            if o1 <= o0:
                continue
            r0, r1, local = w.slab(o0, o1)
            wins = list(windows)
            wins[r] = local
            real = tiled.pool(data[along(data.ndim, axes[r], slice(r0, r1))], axes, wins, never, order, threads=1)
            if not np.array_equal(real, values[along(values.ndim, axes[r], slice(o0, o1))], equal_nan=real.dtype.kind == "f"):
                return True
    return False
