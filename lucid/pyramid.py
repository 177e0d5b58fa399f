"""``pyramid_file``: a multiscale max (or min) pyramid written as one OME-Zarr image, in one pass.

Level 0 is a copy of the input; level i+1 is ``max_pool3d(level i)`` with
kernel = stride = the step's factors, ``ceil_mode=True`` and no padding (a
partial edge window is reduced over its voxels), so every level equals
repeated ``pool3d_file`` runs bit for bit.

One streaming read: input slabs are cut along the source's slab axis; each
level keeps the few rows of its input that do not yet fill a window (a
*carry*) and passes its finished rows to the next level, so no level is read
back from disk.  Each level's rows are buffered until they fill whole chunks
along the slab axis, and a single writer thread writes whole chunks only:
no chunk is ever written twice or by two writers.  The store is built under a
temporary name and renamed into place on success.
"""

from __future__ import annotations

import itertools
import math
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from lucid.io import LucidIOError, detect_format, ome, open_source
from lucid.io.base import Source
from lucid.io.compression import DEFAULT as DEFAULT_COMPRESSION
from lucid.io.layout import outer_axes
from lucid.io.ome_zarr import OmeStore, group_carry, json_attrs, lucid_metadata
from lucid.kernels import tiled
from lucid.kernels.maxpool import MAX, MIN, along, check_dtype
from lucid.kernels.windows import PoolSpec
from lucid.stream import resources
from lucid.stream.plan import PIPELINE_SLAB_BYTES, MemoryLimitError, parse_size

Progress = Callable[[int, int, int], None]  # (slabs done, slabs total, bytes read)
METHODS = ("max", "min")
MAX_LEVELS = 32
MIN_CHUNK = 8  # the smallest chunk edge chunk_edges picks for a short axis
ANISOTROPY = 1 - 1e-9  # an axis is pooled while voxel < factor * finest voxel (rounding aside)


@dataclass
class PyramidReport:
    """What ``pyramid_file`` wrote; ``to_dict()`` is the CLI's ``--json``.  Level shapes, scales and
    translations are in the stored (NGFF) axis order, ``axes``."""

    input: str
    output: str
    axes: list[str]
    dtype: str
    method: str
    ngff_version: str
    zarr_format: int
    levels: list[dict[str, Any]]
    rows_per_slab: int
    slabs: int
    memory_limit: int
    memory_estimate: int
    seconds: float = 0.0
    peak_memory_mib: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_factors(sizes: Sequence[int], spacing: Sequence[float] | None, factors: Sequence[int],
                 chunks: Sequence[int], levels: int | None = None, isotropic: bool = True) -> list[tuple[int, ...]]:
    """The pooling factors of each step (level i -> i+1), per pooled axis.

    With ``isotropic`` and a known ``spacing`` an axis is pooled only while its voxel
    is finer than ``factor`` times the finest voxel (0.2 x 0.2 x 1.0 gets 1x2x2 steps
    first, then 2x2x2).  ``levels`` None: a step pools only the axes still longer than
    their ``chunks`` edge, and the pyramid ends with the first level that fits in one
    chunk along every axis (or that nothing may pool); else make ``levels`` levels in all
    (fewer when nothing is left to pool)."""
    dims = [int(n) for n in sizes]
    size = None if spacing is None else [float(v) for v in spacing]
    steps: list[tuple[int, ...]] = []
    limit = MAX_LEVELS if levels is None else levels
    while len(steps) + 1 < limit:
        step = [int(f) if dims[a] > 1 else 1 for a, f in enumerate(factors)]
        if isotropic and size is not None:
            finest = min(size)
            step = [f if size[a] < f * finest * ANISOTROPY or f == 1 else 1 for a, f in enumerate(step)]
        if levels is None:
            step = [f if dims[a] > chunks[a] else 1 for a, f in enumerate(step)]
        if all(f == 1 for f in step):
            break
        nxt = [-(-d // f) for d, f in zip(dims, step)]
        steps.append(tuple(step))
        dims = nxt
        if size is not None:
            size = [v * f for v, f in zip(size, step)]
    return steps


def level_spec(step: Sequence[int]) -> PoolSpec:
    """The pool3d parameters of one step: kernel = stride = factors, no padding, ceil mode."""
    return PoolSpec.create(tuple(step), tuple(step), 0, 1, True, "ignore")


class _Stage:
    """Level i+1 from level i's rows along the slab axis, carrying rows that do not fill a window."""

    def __init__(self, pooled, slab_axis: int, step, order, threads):
        self.pooled, self.axis, self.order, self.threads = tuple(pooled), slab_axis, order, threads
        self.spec = level_spec(step)
        self.factor = step[self.pooled.index(slab_axis)]
        self.carry: np.ndarray | None = None

    def _pool(self, block: np.ndarray) -> np.ndarray:
        windows = self.spec.windows([block.shape[a] for a in self.pooled])
        return tiled.pool(block, self.pooled, windows, None, self.order, self.threads)

    def feed(self, block: np.ndarray) -> np.ndarray | None:
        if self.carry is not None:
            block = np.concatenate([self.carry, block], axis=self.axis)
            self.carry = None
        n = block.shape[self.axis]
        whole = n - n % self.factor
        if whole < n:  # a copy: the few rows kept must not hold the whole block alive
            self.carry = block[along(block.ndim, self.axis, slice(whole, n))].copy()
        if whole == 0:
            return None
        return self._pool(block if whole == n else block[along(block.ndim, self.axis, slice(0, whole))])

    def flush(self) -> np.ndarray | None:
        block, self.carry = self.carry, None
        return None if block is None else self._pool(block)


class _Rows:
    """One level's rows along the slab axis, handed on in whole chunks or shards (``chunk_rows``: the
    chunk's or shard's extent along the slab axis; the last one may end the axis)."""

    def __init__(self, level, shape, slab_axis: int, chunk_rows: int, emit):
        self.level, self.shape, self.axis, self.chunk, self.emit = level, shape, slab_axis, chunk_rows, emit
        self.parts: list[np.ndarray] = []
        self.pending = 0
        self.row = 0
        self.outer: dict[int, int] = {}

    def start(self, outer: dict[int, int]) -> None:
        self.outer, self.row, self.parts, self.pending = outer, 0, [], 0

    def add(self, block: np.ndarray) -> None:
        if self.emit is None:  # a level that is not written (linked)
            return
        self.parts.append(block)
        self.pending += block.shape[self.axis]
        if self.pending >= self.chunk:
            self._write(self.pending - self.pending % self.chunk)

    def finish(self) -> None:
        if self.pending:
            self._write(self.pending)

    def _write(self, rows: int) -> None:
        data = self.parts[0] if len(self.parts) == 1 else np.concatenate(self.parts, axis=self.axis)
        rest = data.shape[self.axis] - rows
        self.parts = [np.take(data, range(rows, rows + rest), axis=self.axis)] if rest else []
        if rest:
            data = np.take(data, range(rows), axis=self.axis)
        self.pending = rest
        box = [slice(0, n) for n in self.shape]
        for a, i in self.outer.items():
            box[a] = slice(i, i + 1)
        box[self.axis] = slice(self.row, self.row + rows)
        self.row += rows
        self.emit(self.level, tuple(box), data)


def chunk_edges(shape, pooled, itemsize: int) -> dict[int, int]:
    """The chunk edge of every level along each pooled axis, from level 0's ``shape``: 64 voxels
    (32 for 8-byte values), but for a short axis the smallest power of two that is at least a
    quarter of its extent (8 at least), so a small volume still gets levels: 64x64x48 has
    16x16x16 chunks and levels 64x64x48, 32x32x24, 16x16x12."""
    edge = 64 if itemsize <= 4 else 32
    out = {}
    for a in pooled:
        quarter = -(-int(shape[a]) // 4)
        out[a] = min(edge, max(MIN_CHUNK, 1 << max(0, quarter - 1).bit_length()))
    return out


def _chunks(shape, pooled, slab_axis: int, edges: dict[int, int], slab_chunk: int) -> tuple[int, ...]:
    """Source-order chunk shape of a level: ``edges`` along pooled axes (``slab_chunk``, which
    the memory limit may make thinner, along the slab axis), capped at the level's extent; 1
    along carried axes."""
    out = [1] * len(shape)
    for a in pooled:
        out[a] = max(1, min(edges[a] if a != slab_axis else slab_chunk, int(shape[a])))
    return tuple(out)


def _estimate(rows: int, in_plane: int, planes, factors, write_rows: Sequence[int], itemsize: int, cached: bool,
              copy0: bool = True) -> int:
    """Peak bytes for ``rows`` input rows per slab: reader, queue, compute and a carry's
    concatenation, level 0's buffer and writes in flight (``copy0``), then each level's carry,
    buffer and writes (``write_rows``: each level's rows per write, a chunk's or a shard's)."""
    total = in_plane * itemsize * ((5 if cached else 4) * rows + (2 * (rows + write_rows[0]) if copy0 else 0))
    for plane, f, w in zip(planes, factors, write_rows[1:]):
        total += plane * itemsize * 3 * (-(-rows // f) + w + f)
    return total


def _level_shards(shapes, chunks, axis: int, outer, limit: int, itemsize: int, shards, perm):
    """Each level's shard shape (source order), or None per level when ``shards`` is None/False.

    ``True``/"auto": the whole level across the slab (every axis but the slab axis and the
    outer axes, rounded up to whole chunks) and, along the slab axis, as many chunk rows as
    keep every level's shard buffer together within ``limit / 4``.  A shape (stored order,
    one entry per axis, multiples of level 0's chunks, 1 on the outer carried axes): level 0
    uses it; smaller levels clip it to their chunk-rounded extent.  Whole shards are written
    by one thread (zarr-python cannot merge partial shard writes)."""
    if not shards:
        return [None] * len(shapes)
    whole = [tuple(-(-n // c) * c for n, c in zip(s, ch)) for s, ch in zip(shapes, chunks)]
    if shards is True or shards == "auto":
        step = chunks[0][axis]
        planes = [math.prod(n for a, n in enumerate(w) if a != axis and a not in outer) for w in whole]
        m = max(1, limit // 4 // max(1, step * sum(planes) * itemsize))
        out = []
        for w, ch in zip(whole, chunks):
            sh = [1 if a in outer else n for a, n in enumerate(w)]
            sh[axis] = min(w[axis], max(ch[axis], (m * step) // ch[axis] * ch[axis]))
            out.append(tuple(sh))
        return out
    stored = tuple(int(v) for v in shards)
    if len(stored) != len(shapes[0]):
        raise ValueError(f"shards {stored}: need one extent per axis ({len(shapes[0])})")
    src = [0] * len(stored)
    for j, a in enumerate(perm):
        src[a] = stored[j]
    stored_chunks = tuple(chunks[0][a] for a in perm)
    if any(v <= 0 or v % c for v, c in zip(stored, stored_chunks)):
        raise ValueError(f"shards {stored} must be multiples of level 0's chunks {stored_chunks}")
    if any(src[a] != 1 for a in outer):
        raise ValueError(f"shards {stored}: must be 1 along the carried axes stored before the slab axis "
                         f"(positions {[perm.index(a) for a in outer]}), which are written one index at a time")
    return [tuple(min(v, n) for v, n in zip(src, w)) for w in whole]


def _order(source: Source, method: str):
    """The kernel order giving the physical max (or min): a negative scl_slope swaps them."""
    physical_max = source.meta.scale[0] >= 0
    return MAX if (method == "max") == physical_max else MIN


def pyramid_file(input, output, *, factors=2, levels: int | None = None, isotropic: bool = True,
                 method: str = "max", force_method: bool = False, dataset: str | None = None,
                 axes: str | None = None, level: int | None = None, zarr_format: int | None = None,
                 compression: str = DEFAULT_COMPRESSION, memory_limit="512M", threads: int | None = None,
                 force: bool = False, no_copy: bool = False, shards=None,
                 progress: Progress | None = None) -> PyramidReport:
    """Write ``output`` (a ``.zarr`` directory) as an NGFF multiscale image of ``input``.

    ``factors``: one int or one per pooled axis (file order) for each step; ``levels``
    the number of levels including level 0 (default: until a level would be smaller than
    a chunk); ``isotropic`` pools an axis only while its voxel is not coarser than the
    others (needs a voxel size).  ``method`` "max" or "min"; an NGFF label image is
    refused unless ``force_method``.  NGFF 0.5 + Zarr v3, or 0.4 + v2 with ``zarr_format=2``.
    ``no_copy`` (a Zarr input of the output's Zarr format, stored in NGFF axis order): level 0
    hard-links the input's chunk files instead of copying them (:meth:`OmeStore.link_level`).
    ``shards`` (Zarr v3): True or "auto", or a shard shape in the stored axis order; see
    :func:`_level_shards`.  One thread writes each shard whole, once.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if levels is not None and int(levels) < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    factors = (factors,) * 3 if isinstance(factors, (int, np.integer)) else tuple(int(f) for f in factors)
    if len(factors) != 3 or min(factors) < 1:
        raise ValueError(f"factors must be one integer >= 1 or three, got {factors}")
    fmt, out_file, out_array = detect_format(output)
    if fmt != "zarr" or out_file.lower().endswith(".zip") or (out_array and out_array.strip("/")):
        raise LucidIOError(f"{os.fspath(output)}: a pyramid is written as an OME-Zarr directory (name.ome.zarr)")
    limit = parse_size(memory_limit)
    threads, threads_warning = resources.check_threads(threads)
    source = open_source(input, dataset=dataset, axes=axes, level=level)
    store = None
    try:
        check_dtype(source.dtype)
        info = source.meta.extra.get("ome") or {}
        if info.get("image_label") is not None and not force_method:
            raise LucidIOError(f"{source.name}: is an NGFF label image (image-label): {method} pooling keeps the "
                               f"{'largest' if method == 'max' else 'smallest'} label id of each window, not the "
                               "most common one; use --force-method to pool it anyway")
        frames = [ome.frame_of(source.meta, source.layout, source.name)]
        perm = ome.storage_order(frames[0].axes, source.order)
        if shards and zarr_format is not None and int(zarr_format) == 2:
            raise LucidIOError(f"{os.fspath(output)}: sharding needs Zarr format 3")
        try:
            job = _Job.create(source, factors, levels, isotropic, limit, copy0=not no_copy, shards=shards, perm=perm)
        except ValueError as exc:
            raise LucidIOError(f"{os.fspath(output)}: {exc}") from None
        for step in job.steps:
            frames.append(frames[-1].pooled(source.layout.pooled, level_spec(step)))
        try:
            ome.check_ngff_axes([frames[0].axes[a] for a in perm])
        except ome.NGFFError as exc:
            raise LucidIOError(f"{os.fspath(output)}: {exc}") from None
        from lucid.io.zarr import parse_codec

        store = OmeStore(out_file, zarr_format=zarr_format, force=force, protect=[source.path, *source.files()])
        compressor = parse_codec(compression, store.zarr_format, store.display)
        report = job.report(source, store, frames, perm, method, limit)
        report.warnings += [w for w in (threads_warning,) if w] + list(source.warnings) + list(frames[0].warnings)
        provenance = {"lucid_source": source.name, "lucid_method": method}
        link = _link_dir(source, store, perm) if no_copy else None
        if no_copy and link is None:
            raise LucidIOError(f"{source.name}: --no-copy needs a Zarr v{store.zarr_format} input directory stored "
                               "in NGFF axis order (time, channel, space)")
        arrays = []
        for i, (shape, frame) in enumerate(zip(job.shapes, frames)):
            attrs = json_attrs({**provenance, "lucid_level": i,
                                "lucid_factors": [1, 1, 1] if i == 0 else list(job.steps[i - 1])})
            if frame.affine is not None:
                attrs["lucid_affine"] = ome.stored_affine(frame.affine, source.layout.pooled, perm)
            if i == 0 and link is not None:
                store.link_level("0", link, [frame.axes[a]["name"] for a in perm], attrs)
                arrays.append(None)
                continue
            stored_chunks = [job.chunks[i][a] for a in perm]
            stored_shards = None if job.shards[i] is None else [job.shards[i][a] for a in perm]
            arrays.append(store.add_level(str(i), shape, source.dtype, stored_chunks, perm, frame.axes,
                                          compressors=compressor, shards=stored_shards, attributes=attrs))
        if link is not None:
            report.levels[0]["chunks"] = list(source.meta.extra.get("chunks") or [])
            report.levels[0]["shards"] = list(source.meta.extra["shards"]) if source.meta.extra.get("shards") else None
            report.levels[0]["linked"] = link
        import lucid

        metadata = lucid_metadata({"version": lucid.__version__, "source": source.name,
                                   "factors": [list(s) for s in job.steps], "kernel": "stride = factors",
                                   "ceil_mode": True}, method)
        datasets = [{"path": str(i), "coordinateTransformations": f.transforms(perm)} for i, f in enumerate(frames)]
        start = time.perf_counter()
        _stream(source, job, arrays, _order(source, method), threads, progress)
        source.check_complete()
        store.finish(ome.multiscales(store.version, [frames[0].axes[a] for a in perm], datasets, info.get("name"),
                                     metadata, group_carry(source)))
        store.commit()
        store = None
        from lucid.stream.api import peak_memory_mib

        report.seconds = time.perf_counter() - start
        report.peak_memory_mib = peak_memory_mib()
        return report
    finally:
        if store is not None:
            store.abort()
        source.close()


def _link_dir(source: Source, store: OmeStore, perm) -> str | None:
    """The input array's directory when level 0 can be that array's files; else None."""
    extra = source.meta.extra
    if source.meta.format != "zarr" or extra.get("zarr_format") != store.zarr_format:
        return None
    if tuple(perm) != tuple(range(source.ndim)) or source.path is None or not os.path.isdir(source.path):
        return None
    return os.path.join(source.path, *source.array_path.strip("/").split("/")) \
        if source.array_path.strip("/") else source.path


@dataclass
class _Job:
    """The levels' shapes, steps and chunks, and how the input is cut into slabs."""

    steps: list[tuple[int, ...]]
    shapes: list[tuple[int, ...]]
    chunks: list[tuple[int, ...]]
    rows: int  # input rows per slab
    estimate: int
    outer: tuple[int, ...]
    shards: list[tuple[int, ...] | None]  # per level, source order; None: unsharded

    @classmethod
    def create(cls, source: Source, factors, levels, isotropic: bool, limit: int, copy0: bool = True,
               shards=None, perm: Sequence[int] | None = None) -> "_Job":
        pooled, axis, b = source.layout.pooled, source.slab_axis, source.dtype.itemsize
        outer = outer_axes(source.ndim, pooled, axis, source.order)
        shape = source.shape
        in_plane = math.prod(n for a, n in enumerate(shape) if a != axis and a not in outer)
        edges = chunk_edges(shape, pooled, b)
        slab_chunk = edges[axis]
        while slab_chunk > 1 and slab_chunk * in_plane * b > limit // 8:  # level 0's buffer stays small
            slab_chunk //= 2
        # the levels depend on the nominal chunk edges, never on the memory limit
        steps = plan_factors([shape[a] for a in pooled], source.meta.spacing, factors, [edges[a] for a in pooled],
                             levels, isotropic)
        shapes = [tuple(shape)]
        for step in steps:
            nxt = list(shapes[-1])
            for j, a in enumerate(pooled):
                nxt[a] = -(-nxt[a] // step[j])
            shapes.append(tuple(nxt))
        chunks = [_chunks(s, pooled, axis, edges, slab_chunk) for s in shapes]
        level_shards = _level_shards(shapes, chunks, axis, outer, limit, b, shards,
                                     tuple(perm) if perm is not None else tuple(range(len(shape))))
        write_rows = [sh[axis] if sh else ch[axis] for sh, ch in zip(level_shards, chunks)]
        planes = [math.prod(n for a, n in enumerate(s) if a != axis and a not in outer) for s in shapes[1:]]
        cumulative = list(itertools.accumulate((s[pooled.index(axis)] for s in steps), lambda x, y: x * y))

        def estimate(rows: int) -> int:
            return _estimate(rows, in_plane, planes, cumulative, write_rows, b, source.caches_slab, copy0) \
                + source.reader_overhead()

        n = shape[axis]
        lo, hi = 0, n
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if estimate(mid) <= limit:
                lo = mid
            else:
                hi = mid - 1
        if lo == 0:
            need = estimate(1)
            raise MemoryLimitError(f"{source.name}: memory limit {limit} bytes is too small for the pyramid: "
                                   f"need at least {need} (try --memory-limit {-(-need // (1 << 20))}M)", need)
        cap = max(1, PIPELINE_SLAB_BYTES // max(1, in_plane * b))
        if getattr(source, "whole_chunks", False) and lo >= source.chunk_rows:
            cap = max(cap, source.chunk_rows)  # no chunk cache: a chunk is decoded once per slab
        rows = min(lo, cap)
        align = max(source.chunk_rows, slab_chunk)
        if rows >= n:
            rows = n
        elif rows >= align:
            rows -= rows % align
        elif rows >= source.chunk_rows > 1:
            rows -= rows % source.chunk_rows
        return cls(steps, shapes, chunks, rows, estimate(rows), outer, level_shards)

    def report(self, source: Source, store: OmeStore, frames, perm, method: str, limit: int) -> PyramidReport:
        levels = []
        for i, (shape, frame) in enumerate(zip(self.shapes, frames)):
            ct = frame.transforms(perm)
            levels.append({"path": str(i), "shape": [shape[a] for a in perm],
                           "factors": [1, 1, 1] if i == 0 else list(self.steps[i - 1]),
                           "chunks": [self.chunks[i][a] for a in perm],
                           "shards": None if self.shards[i] is None else [self.shards[i][a] for a in perm],
                           "scale": ct[0]["scale"], "translation": ct[1]["translation"]})
        slabs = math.prod(source.shape[a] for a in self.outer) * -(-source.shape[source.slab_axis] // self.rows)
        return PyramidReport(
            input=source.name, output=store.display, axes=[frames[0].axes[a]["name"] for a in perm],
            dtype=str(source.dtype), method=method, ngff_version=store.version, zarr_format=store.zarr_format,
            levels=levels, rows_per_slab=self.rows, slabs=slabs, memory_limit=limit, memory_estimate=self.estimate)


def _stream(source: Source, job: _Job, arrays, order, threads, progress: Progress | None) -> None:
    """Read the input once; pool every level through the cascade; write whole chunks on one thread."""
    axis, pooled = source.slab_axis, source.layout.pooled
    stop = threading.Event()
    inbox: queue.Queue = queue.Queue(maxsize=1)
    outbox: queue.Queue = queue.Queue(maxsize=2)
    errors: list[BaseException] = []
    done = object()

    def put(q, item) -> None:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def get(q):
        while True:
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                if stop.is_set():
                    return done

    n = source.shape[axis]
    outer_ranges = [range(source.shape[a]) for a in job.outer]
    total = math.prod(len(r) for r in outer_ranges) * -(-n // job.rows)
    source.set_cache(job.rows * source.nbytes // max(1, n) if source.caches_slab else 0)

    def reader() -> None:
        try:
            for index in itertools.product(*outer_ranges):
                for r0 in range(0, n, job.rows):
                    box = [slice(0, s) for s in source.shape]
                    for a, i in zip(job.outer, index):
                        box[a] = slice(i, i + 1)
                    box[axis] = slice(r0, min(n, r0 + job.rows))
                    put(inbox, (index, r0, source.read(tuple(box))))
            put(inbox, done)
        except BaseException as exc:
            put(inbox, exc)

    def writer() -> None:
        try:
            while (item := get(outbox)) is not done:
                lvl, box, data = item
                if arrays[lvl] is not None:  # None: a linked level 0
                    arrays[lvl].write(box, data)
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    def emit(lvl: int, box, data) -> None:
        if errors:
            raise errors[0]
        put(outbox, (lvl, box, data))

    rows = [_Rows(i, shape, axis, (job.shards[i] or job.chunks[i])[axis], emit if arrays[i] is not None else None)
            for i, shape in enumerate(job.shapes)]
    workers = [threading.Thread(target=reader, name="lucid-pyramid-reader", daemon=True),
               threading.Thread(target=writer, name="lucid-pyramid-writer", daemon=True)]
    for t in workers:
        t.start()
    try:
        stages: list[_Stage] = []
        slabs = bytes_read = 0
        current = None
        while (item := get(inbox)) is not done:
            if isinstance(item, BaseException):
                raise item
            index, r0, block = item
            if index != current:
                _finish(stages, rows)
                current = index
                stages = [_Stage(pooled, axis, step, order, threads) for step in job.steps]
                for r in rows:
                    r.start(dict(zip(job.outer, index)))
            bytes_read += block.nbytes
            _cascade(block, stages, rows)
            slabs += 1
            if progress is not None:
                progress(slabs, total, bytes_read)
        if stop.is_set() and not errors:
            raise RuntimeError("the pyramid stream stopped early")
        _finish(stages, rows)
        put(outbox, done)
        workers[1].join()
        if errors:
            raise errors[0]
    finally:
        stop.set()
        for t in workers:
            t.join(timeout=5)
    for i, arr in enumerate(arrays):
        if arr is not None and arr.written != math.prod(job.shapes[i]):
            raise LucidIOError(f"{arr.name}: incomplete level: {arr.written} of {math.prod(job.shapes[i])} values")


def _cascade(block: np.ndarray | None, stages, rows, start: int = 0) -> None:
    """Hand ``block`` (rows of level ``start``) to its writer and the finished rows down the levels."""
    for i in range(start, len(rows)):
        if block is None:
            return
        rows[i].add(block)
        if i < len(stages):
            block = stages[i].feed(block)


def _finish(stages, rows) -> None:
    """The end of the slab axis: every level pools what it carries, then writes its last rows."""
    for i, stage in enumerate(stages):
        _cascade(stage.flush(), stages, rows, i + 1)
    for r in rows:
        r.finish()
