"""One huge volume on a dask cluster: ``run_job``'s execution step when ``PoolJob.cluster`` is set.

``run_job`` opens the input, plans, opens the sinks and commits them as for
the streaming engine; only the step in between differs.  Here it is one
task per block (``lucid.dask.blocks``): forward tasks own output blocks,
backward tasks own input blocks (owner computes).  Every task opens the
input by path (HDF5, Zarr or uncompressed NIfTI; never an h5py object in
the graph), reads its block and halo, runs the engine's kernels and writes
whole chunks (or shards) of a Zarr array by path, then drops a marker
file in the run's manifest directory.

Outputs.  A Zarr output is written in place by the tasks: its temporary
store (a fixed ``.<name>.lucid-part-<key>`` directory) becomes the output on
commit.  HDF5 and NIfTI files cannot take parallel writes (h5py has no MPI
here, and a second HDF5 writer gets "unable to lock file"), so for them the
tasks return their blocks and this process is the one writer, block by
block as they arrive, with at most a few blocks per worker in flight (so
finished blocks never pile up in worker memory).  Staging those blocks in
Zarr and copying them afterwards was measured 4x slower than the engine
for a 2 GiB gradient map (an extra write and read of it); the one writer
costs the loopback transfer only.

Faults.  A block write covers whole chunks and is idempotent, so a task
dask re-runs after a worker died rewrites the same bytes.  When the
scheduler (or this process's link to it) is lost, the staged stores and the
manifest stay; ``resume`` skips the blocks marked done.  Only blocks whose
outputs are all Zarr get a marker: an HDF5 or NIfTI output is rewritten
from the start by a resumed run (its temporary file went with the client).  ``<key>`` hashes
the parameters, the input files' identities and the block plans, so a
resumed run only reuses blocks of the very same job.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import math
import os
import shutil
import sys
import time
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lucid.dask import blocks, compute
from lucid.dask.blocks import BlockPlan
from lucid.dask.cluster import ClusterError, ClusterSpec
from lucid.io import LucidIOError, detect_format, open_gradient, open_source
from lucid.io.base import one_line
from lucid.io.tempfiles import PART_MARK
from lucid.kernels import maxpool
from lucid.kernels.maxpool import MAX, MIN
from lucid.stream import engine
from lucid.stream.engine import EngineStats
from lucid.stream.job import PoolJob
from lucid.stream.plan import Plan, parse_size

CHUNK_BYTES = 1 << 20  # staged and Zarr output chunks: at most this, and at most 1/8 of a block
PARALLEL_FORMATS = ("hdf5", "zarr", "nifti")


def serial_reason(job: PoolJob) -> str | None:
    """Why this job cannot run on a cluster (one line), or None when it can."""
    for path, output in ((job.input, False), (job.grad_in, False), (job.output, True), (job.grad_out, True),
                         (job.indices_out, True)):
        if path is None:
            continue
        if not isinstance(path, (str, os.PathLike)):
            return "an in-memory array cannot be read by other processes; running on this machine's engine"
        fmt, file, _ = detect_format(path)
        lower = file.lower()
        if fmt == "nifti" and lower.endswith((".gz", ".mgz")):
            return (f"{file}: a gzip-compressed file can only be read or written from start to end, not in "
                    "parallel; running on this machine's engine")
        if fmt == "nifti" and not lower.endswith(".nii"):
            return f"{file}: only .nii of the NIfTI family runs on a cluster; running on this machine's engine"
        if fmt == "zarr" and output and _is_ome(file):
            return f"{file}: an OME-Zarr output is written by its own sink; running on this machine's engine"
    return None


def _is_ome(file: str) -> bool:
    from lucid.io.ome_zarr import is_ome_path

    return is_ome_path(file)


@dataclass(frozen=True)
class Staged:
    """An array the tasks write by path: a Zarr store directory and the array in it."""

    store: str
    array: str | None
    dtype: str
    name: str  # the output's name, for messages


@dataclass(frozen=True)
class Context:
    """What every task needs: the job, the block plans and where to write (small, picklable)."""

    job: PoolJob
    forward: BlockPlan | None
    backward: BlockPlan | None
    mults: tuple[int, int, int]
    pad_value: Any
    minimum: bool
    out_dtype: str
    grad_dtype: str
    values: Staged | None  # None: returned to the client, which writes it
    indices: Staged | None
    gradient: Staged | None
    want: frozenset[str]  # the outputs asked for: "output", "indices", "gradient"
    done_dir: str
    mark: frozenset[str]  # task kinds ("f", "b") whose outputs are all Zarr: a marker records them done
    kernels: str = "numpy"  # the run's kernels (``compute.task_kernels``): numba only where the plan counted it


# -- tasks (run on the workers) --------------------------------------------------------------------------


def _marker(ctx: Context, kind: str, index) -> str:
    return os.path.join(ctx.done_dir, kind + "-" + "-".join(str(i) for i in index))


def _open_input(job: PoolJob):
    return open_source(job.input, dataset=job.dataset, axes=job.axes, level=job.level)


def _write(staged: Staged, box, data: np.ndarray) -> None:
    import zarr
    from zarr.storage import LocalStore

    from lucid.io.zarr_chunks import chunk_writer

    try:
        store = LocalStore(staged.store)
        arr = zarr.open_array(store=store, path=staged.array or None, mode="r+")
    except Exception as exc:  # an OSError here is the disk's, not the cluster's
        raise LucidIOError(f"{staged.name}: cannot open {staged.store}: {one_line(exc)}") from None
    unit = arr.shards or arr.chunks
    if not whole_units(box, unit, arr.shape):  # two writers of one chunk or shard: the last one wins
        raise AssertionError(f"{staged.name}: block {box} is not whole chunks/shards of {unit}")
    try:
        writer = chunk_writer(arr, store, workers=1)  # the engine's direct chunk writes; one thread per task
        if writer is None or not writer.write(box, data):  # the writer casts chunk by chunk: no block copy
            arr[box] = np.ascontiguousarray(data, dtype=staged.dtype)
    except Exception as exc:
        raise LucidIOError(f"{staged.name}: cannot write a block into {staged.store}: {one_line(exc)}") from None


def whole_units(box, unit, shape) -> bool:
    """Does ``box`` cover whole ``unit``-sized pieces (chunks or shards) of an array of ``shape``?"""
    return all(s.start % u == 0 and (s.stop % u == 0 or s.stop == n) for s, u, n in zip(box, unit, shape))


def _done(marker: str) -> None:
    with open(marker, "a"):
        pass


def _result(kind: str, index, read: int, won: bool = False, skipped: bool = False, arrays=None) -> dict:
    from lucid.stream.api import peak_memory_mib

    return {"kind": kind, "index": tuple(index), "read": read, "padding_won": won, "skipped": skipped,
            "pid": os.getpid(), "peak_mib": peak_memory_mib(), "numba": "numba" in sys.modules,
            "arrays": arrays or {}}


def _put(kind: str, staged: Staged | None, box, data: np.ndarray, arrays: dict) -> None:
    """Write a block into its Zarr output, or hand it back for the client to write."""
    if staged is not None:
        _write(staged, box, data)
    else:
        arrays[kind] = data


def block_task(kind: str, index: tuple[int, ...], ctx: Context) -> dict:
    """One block ("f": forward, "b": backward), unless a marker says an earlier run did it."""
    marker = _marker(ctx, kind, index)
    resumable = kind in ctx.mark
    if resumable and os.path.exists(marker):
        return _result(kind, index, 0, skipped=True)
    read, won, arrays = (_forward if kind == "f" else _backward)(ctx, index)
    if resumable:
        _done(marker)  # after every write of the block
    return _result(kind, index, read, won, arrays=arrays)


def _forward(ctx: Context, index) -> tuple[int, bool, dict]:
    """Pool one output block: values and (if asked) flat indices."""
    plan = ctx.forward
    block = plan.block(index)
    with _open_input(ctx.job) as source:
        data = source.read(block.read_box)
    order = MIN if ctx.minimum else MAX
    if "indices" in ctx.want:
        values, codes = compute.forward_codes(data, block, ctx.mults, ctx.pad_value, order, ctx.kernels)
    else:
        values, codes = compute.forward_values(data, block, ctx.pad_value, order, ctx.kernels), None
    won = ctx.pad_value is not None and engine._padding_won(data, block.pooled, block.windows, ctx.pad_value,
                                                             order, values)
    arrays: dict[str, np.ndarray] = {}
    if "output" in ctx.want:
        named = types.SimpleNamespace(name=ctx.values.name if ctx.values else ctx.job.output)
        _put("output", ctx.values, block.own_box, engine._cast(values, np.dtype(ctx.out_dtype), named), arrays)
    if "indices" in ctx.want:
        origin = [block.axes[a].reads[0] for a in block.pooled]
        sizes = [plan.in_shape[a] for a in block.pooled]
        flat = maxpool.flat_indices(codes, block.pooled, block.windows, ctx.mults, origin, sizes)
        _put("indices", ctx.indices, block.own_box, flat, arrays)
    return data.nbytes, bool(won), arrays


def _backward(ctx: Context, index) -> tuple[int, bool, dict]:
    """The gradient of one input block, from every window touching it (owner computes)."""
    plan = ctx.backward
    block = plan.block(index)
    read = 0
    if block.empty:
        grad = np.zeros(compute.shape_of(block.own_box), ctx.grad_dtype)
    else:
        upstream = None
        with _open_input(ctx.job) as source:
            data = source.read(block.read_box)
            if ctx.job.grad_in is not None:
                gsource = open_gradient(ctx.job.grad_in, source, plan.out_shape)
                try:
                    upstream = gsource.read(block.out_box)
                finally:
                    gsource.close()
        read = data.nbytes + (0 if upstream is None else upstream.nbytes)
        grad = compute.backward_gradient(data, upstream, block, ctx.mults, plan.priority[0], ctx.pad_value,
                                         ctx.grad_dtype, MIN if ctx.minimum else MAX, ctx.kernels)
    arrays: dict[str, np.ndarray] = {}
    _put("gradient", ctx.gradient, block.own_box, grad, arrays)
    return read, False, arrays


# -- planning (in this process) ---------------------------------------------------------------------------


def chunk_shape(shape, itemsize: int, target: int) -> tuple[int, ...]:
    """Chunks of at most ``target`` bytes: the largest extent halves (to a power of two) first."""
    chunks = [int(n) for n in shape]
    while math.prod(chunks) * itemsize > target and max(chunks) > 1:
        a = max(range(len(chunks)), key=lambda i: (chunks[i], -i))
        chunks[a] = 1 << max(0, (chunks[a] - 1).bit_length() - 1)
    return tuple(chunks)


def _identity(path) -> list:
    if path is None:
        return []
    file = detect_format(path)[1]
    try:
        st = os.stat(file)
    except OSError:
        return [file]
    return [os.path.abspath(file), st.st_size, st.st_mtime_ns, st.st_ino]


def _part_path(dest, key: str, suffix: str = "") -> str:
    file = os.path.abspath(detect_format(dest)[1])
    return os.path.join(os.path.dirname(file), f".{os.path.basename(file)}{PART_MARK}{key}{suffix}")


@dataclass
class Runner:
    """A planned cluster run of one job: block plans, staged outputs, then :meth:`run`."""

    job: PoolJob
    plan: Plan
    cluster: ClusterSpec
    forward: BlockPlan | None
    backward: BlockPlan | None
    chunks: dict[str, tuple[int, ...]]
    shards: dict[str, tuple[int, ...] | None]
    key: str
    pad_value: Any
    minimum: bool
    out_dtype: np.dtype
    kernels: str = "numpy"
    summary: dict = field(default_factory=dict)
    _sinks: list = field(default_factory=list)

    @property
    def done_dir(self) -> str:
        first = next(p for p in (self.job.output, self.job.grad_out, self.job.indices_out) if p is not None)
        return _part_path(first, self.key, ".done")

    def staging(self, kind: str) -> str:
        return _part_path(self._dest(kind), self.key)

    def _dest(self, kind: str):
        return {"output": self.job.output, "gradient": self.job.grad_out, "indices": self.job.indices_out}[kind]

    def _is_zarr(self, kind: str) -> bool:
        return detect_format(self._dest(kind))[0] == "zarr"

    def sink_options(self, kind: str) -> dict:
        """``open_sink`` options for an output: a Zarr output is built where the tasks write."""
        if not self._is_zarr(kind):
            return {}
        return {"chunks": self.chunks[kind], "shards": self.shards[kind], "staging": self.staging(kind),
                "slab_rows": None}

    def start(self) -> None:
        """A fresh run removes what an earlier, cut-off run of the same job left; a resumed one keeps it."""
        paths = [self.done_dir] + [self.staging(k) for k in ("output", "gradient", "indices")
                                   if self._dest(k) is not None and self._is_zarr(k)]
        if not self.job.resume:
            for path in paths:
                shutil.rmtree(path, ignore_errors=True)

    def _staged(self, kind: str, sink) -> Staged | None:
        if not self._is_zarr(kind):
            return None  # this process writes it
        return Staged(sink.store_path, sink.array_path or None, str(sink.dtype), sink.name)

    def context(self, sinks: dict) -> Context:
        """What every task gets, for these open sinks (by kind; None where not asked for)."""
        staged = {k: self._staged(k, s) for k, s in sinks.items() if s is not None}
        mark = frozenset(t for t, kinds in (("f", ("output", "indices")), ("b", ("gradient",)))
                         if all(staged.get(k) is not None for k in kinds if sinks.get(k) is not None))
        return Context(self.job, self.forward, self.backward,
                       maxpool.code_mults(self.plan.windows, self.plan.priority), self.pad_value, self.minimum,
                       str(self.out_dtype), str(np.dtype(self.job.grad_dtype)), staged.get("output"),
                       staged.get("indices"), staged.get("gradient"), frozenset(staged), self.done_dir, mark,
                       self.kernels)

    def run(self, *, out=None, grad_out=None, indices_out=None, progress=None) -> EngineStats:
        """Every block on the cluster; returned blocks go into their sinks here (nothing is committed)."""
        from lucid.dask.cluster import connect

        start = time.perf_counter()
        sinks = {"output": out, "gradient": grad_out, "indices": indices_out}
        self._sinks = [(k, s) for k, s in sinks.items() if s is not None]
        ctx = self.context(sinks)
        tasks = []
        if self.forward is not None and (out is not None or indices_out is not None):
            tasks += [("f", i) for i in self.forward.indices()]
        if self.backward is not None and grad_out is not None:
            tasks += [("b", i) for i in self.backward.indices()]
        todo = [t for t in tasks if not (t[0] in ctx.mark and os.path.exists(_marker(ctx, *t)))]
        stats = EngineStats()
        peaks: dict[int, float] = {}
        compiled: set[int] = set()  # the workers with numba loaded
        done = len(tasks) - len(todo)
        self.summary.update(tasks=len(tasks), resumed_blocks=done, cluster=self.cluster.describe())
        connected = False
        try:
            with connect(self.cluster) as client:
                from distributed import as_completed

                connected = True
                os.makedirs(self.done_dir, exist_ok=True)  # only now: a run that never started leaves nothing
                workers = max(1, len(client.scheduler_info().get("workers", {})))
                self.summary["workers"] = workers
                pending = iter(todo)
                running = as_completed()

                def submit_next() -> None:
                    item = next(pending, None)
                    if item is not None:
                        kind, index = item
                        key = f"lucid-{kind}-{self.key}-" + "-".join(map(str, index))
                        running.add(client.submit(block_task, kind, index, ctx, key=key, retries=1, pure=False))

                for _ in range(4 * workers):  # a few blocks per worker in flight: results never pile up
                    submit_next()
                for future in running:
                    result = future.result()
                    future.release()
                    submit_next()
                    self._write_returned(result)
                    done += 1
                    stats.bytes_read += result["read"]
                    stats.padding_won |= bool(result["padding_won"])
                    peaks[result["pid"]] = max(peaks.get(result["pid"], 0.0), result["peak_mib"])
                    compiled |= {result["pid"]} if result.get("numba") else set()
                    if progress is not None:
                        progress(done, len(tasks), stats.bytes_read)
        except BaseException as exc:
            if not connected:  # nothing ran: the error as it is; a resumed run's earlier blocks stay
                if self.job.resume:
                    self._keep()
                raise
            if _cluster_lost(exc):
                self._keep()
                raise ClusterError(
                    f"{self._name()}: lost the dask {self.cluster.describe()} ({_why(exc)}); {done} of "
                    f"{len(tasks)} blocks are done, run again with --resume to continue") from None
            if isinstance(exc, KeyboardInterrupt):
                self._keep()
            else:
                shutil.rmtree(self.done_dir, ignore_errors=True)
            raise
        stats.slabs = len(tasks)
        self.summary["worker_peak_mib"] = {str(pid): round(mib, 1) for pid, mib in sorted(peaks.items())}
        self.summary["workers_with_numba"] = len(compiled)
        for kind, sink in self._sinks:
            if self._is_zarr(kind):
                sink.mark_written()
        shutil.rmtree(self.done_dir, ignore_errors=True)
        stats.seconds = time.perf_counter() - start
        return stats

    def _write_returned(self, result: dict) -> None:
        """The blocks a task handed back (HDF5 and NIfTI outputs: this process is their one writer)."""
        if not result["arrays"]:
            return
        plan = self.forward if result["kind"] == "f" else self.backward
        box = plan.block(result["index"]).own_box
        for kind, sink in self._sinks:
            if kind in result["arrays"]:
                sink.write(box, result["arrays"][kind])

    def _keep(self) -> None:
        for kind, sink in self._sinks:
            if self._is_zarr(kind):
                sink.target.keep()

    def _name(self) -> str:
        return self._sinks[0][1].name if self._sinks else os.fspath(self.job.output)


def _why(exc: BaseException) -> str:
    if isinstance(exc, concurrent.futures.CancelledError):
        return "the tasks were cancelled"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return "connection closed" if "closed" in str(exc).lower() or "reset" in str(exc).lower() else one_line(exc)[:120]


def _cluster_lost(exc: BaseException) -> bool:
    """A lost scheduler or connection (not an error of the work itself, which tasks raise as LucidIOError)."""
    if isinstance(exc, (LucidIOError, ClusterError)):
        return isinstance(exc, ClusterError)
    return isinstance(exc, (OSError, TimeoutError, concurrent.futures.CancelledError))


def plan_runner(job: PoolJob, source, plan: Plan, pad_value, order, out_dtype, limit: int) -> Runner:
    """Block plans, output chunks and the run's key for ``job`` (nothing is written yet)."""
    cluster = job.cluster if isinstance(job.cluster, ClusterSpec) else ClusterSpec(**job.cluster)
    block_bytes = parse_size(job.block_bytes) if job.block_bytes is not None else blocks.DEFAULT_BLOCK_BYTES
    in_itemsize = source.dtype.itemsize
    out_grid_itemsize = max(out_dtype.itemsize, 8 if job.indices_out is not None else 0)
    target = max(1, min(CHUNK_BYTES, block_bytes // 8, limit // 32))  # blocks are whole chunks: leave room for several
    chunks: dict[str, tuple[int, ...]] = {}
    shards: dict[str, tuple[int, ...] | None] = {}
    explicit = tuple(int(s) for s in job.shards) if job.shards not in (None, True, "auto", False) else None
    out_chunks = _fit(chunk_shape(plan.out_shape, out_grid_itemsize, target), explicit)
    grad_chunks = _fit(chunk_shape(plan.in_shape, np.dtype(job.grad_dtype).itemsize, target), explicit)
    common = dict(itemsize=in_itemsize, out_itemsize=out_dtype.itemsize,
                  grad_itemsize=np.dtype(job.grad_dtype).itemsize, block_bytes=block_bytes,
                  indices=job.indices_out is not None, priority=plan.priority)
    slab_rows = {"output": plan.rows_per_slab, "indices": plan.rows_per_slab,
                 "gradient": plan.rows_per_slab * plan.windows[plan.slab_r].stride}
    itemsizes = {"output": out_dtype.itemsize, "indices": 8, "gradient": np.dtype(job.grad_dtype).itemsize}
    zarr_align = {"output": explicit or out_chunks, "indices": explicit or out_chunks,
                  "gradient": explicit or grad_chunks}
    dests = {"output": job.output, "indices": job.indices_out, "gradient": job.grad_out}

    def align(kinds) -> tuple[int, ...]:
        """Block extents every output of these kinds can take as whole chunks (one writer per chunk)."""
        out = [1] * len(plan.in_shape)
        for kind in kinds:
            if dests[kind] is None:
                continue
            fmt = detect_format(dests[kind])[0]
            if fmt == "zarr":
                each = zarr_align[kind]
            elif fmt == "hdf5":  # the chunks HDF5Sink will choose
                from lucid.io.hdf5 import choose_chunks
                from lucid.io.layout import outer_axes

                shape = plan.in_shape if kind == "gradient" else plan.out_shape
                outer = outer_axes(len(shape), source.layout.pooled, source.slab_axis, getattr(source, "order", "C"))
                each = choose_chunks(shape, itemsizes[kind], source.slab_axis, slab_rows[kind], outer)
            else:
                continue
            out = [math.lcm(a, b) for a, b in zip(out, each)]
        return tuple(out)

    def plan_both(task_limit: int):
        forward = backward = None
        if job.output is not None or job.indices_out is not None:
            forward = blocks.plan_blocks(blocks.FORWARD, plan.in_shape, plan.pooled, plan.windows,
                                         align=align(("output", "indices")), **common, memory_limit=task_limit)
        if job.grad_out is not None:
            backward = blocks.plan_blocks(blocks.BACKWARD, plan.in_shape, plan.pooled, plan.windows,
                                          align=align(("gradient",)), **common, memory_limit=task_limit)
        return forward, backward

    # The tasks run the kernels the run's plan chose (``Plan.kernels``): where it counted numba's
    # own RSS, each task's memory leaves room for it in its worker, and when no block fits beside
    # it, ``auto`` tasks keep the numpy kernels.
    kernels = plan.kernels
    try:
        try:
            forward, backward = plan_both(limit - plan.numba_bytes)
        except ValueError:
            if not plan.numba_bytes:
                raise
            forward, backward = plan_both(limit)
            kernels = "numpy" if kernels == "auto" else kernels
    except ValueError as exc:
        raise ValueError(f"{source.name}: {exc} (raise --memory-limit)") from None
    for kind, bp, ch in (("output", forward, out_chunks), ("indices", forward, out_chunks),
                         ("gradient", backward, grad_chunks)):
        chunks[kind] = ch
        if explicit is not None:
            shards[kind] = explicit
        elif job.shards and bp is not None:  # one shard per block: each task writes exactly one
            shards[kind] = tuple(c[0] if len(c) else 1 for c in bp.chunks())
        else:
            shards[kind] = None
    ident = {k: v for k, v in job.to_dict().items() if k not in ("cluster", "resume", "force", "threads",
                                                                  "dry_run", "make_dirs")}
    ident["files"] = [_identity(p) for p in (job.input, job.grad_in)]
    ident["plans"] = [None if bp is None else [bp.kind, bp.bounds] for bp in (forward, backward)]
    ident["chunks"], ident["shards"] = chunks, shards
    key = hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Runner(job, plan, cluster, forward, backward, chunks, shards, key, pad_value, order is MIN,
                  np.dtype(out_dtype), kernels,
                  summary={"kernels": kernels, "forward_blocks": 0 if forward is None else len(forward),
                           "backward_blocks": 0 if backward is None else len(backward),
                           "forward_grid": None if forward is None else list(forward.grid),
                           "backward_grid": None if backward is None else list(backward.grid)})


def _fit(chunks: tuple[int, ...], shards: tuple[int, ...] | None) -> tuple[int, ...]:
    """Chunks that divide explicit shards."""
    if shards is None:
        return chunks
    if len(shards) != len(chunks) or min(shards) < 1:
        raise ValueError(f"shards {shards} must have one positive entry per axis")
    return tuple(math.gcd(c, s) for c, s in zip(chunks, shards))
