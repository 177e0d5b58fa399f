"""``pool3d_file``: the whole job (open, plan, stream, commit) as one Python call.

The command line is a thin layer over this; batch scripts call it directly.
"""

from __future__ import annotations

import os
import resource
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

import lucid
from lucid.io import LucidIOError, detect_format, dirs, primary_file, open_gradient, open_sink, open_source, sink_name, stored_shape
from lucid.io.atomic import check_destination, file_identity, human_bytes
from lucid.io.base import Source, pooling_matrix
from lucid.io.pywarnings import into_report
from lucid.kernels.maxpool import MAX, MIN, check_dtype
from lucid.kernels.windows import PoolSpec
from lucid.stream import engine, resources
from lucid.stream.job import DEFAULT_MEMORY_LIMIT, PoolJob
from lucid.stream.plan import MemoryLimitError, Plan, parse_size, plan_slabs

MAX_AXIS_VALUE = 2**31 - 1  # a larger kernel, stride, padding or dilation fits no file axis and overflows attributes


@dataclass
class PoolReport:
    """What a run read, planned and wrote (``to_dict()`` is the CLI's ``--json``)."""

    input: str
    output: str | None
    grad_in: str | None
    grad_out: str | None
    indices_out: str | None
    axes: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    dtype: str
    out_dtype: str
    grad_dtype: str
    kernel: tuple[int, int, int]
    stride: tuple[int, int, int]
    padding: tuple[int, int, int]
    dilation: tuple[int, int, int]
    ceil_mode: bool
    padding_mode: str
    slab_axis: str
    rows_per_slab: int
    slabs: int  # in all: slabs along slab_axis times the indices of the outer axes
    memory_limit: int
    memory_estimate: int
    spacing_in: tuple[float, ...] | None = None
    spacing_out: tuple[float, ...] | None = None
    spacing_unit: str | None = None
    affine_out: list[list[float]] | None = None
    dry_run: bool = False
    seconds: float = 0.0
    peak_memory_mib: float = 0.0
    padding_won: bool = False
    slabs_along_axis: int = 0  # slabs along slab_axis, repeated for each index of the outer axes
    outer_axes: dict[str, int] = field(default_factory=dict)  # carried axes walked one index at a time: size
    file_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # each file's shape in its own axis order
    created_dirs: list[str] = field(default_factory=list)  # made for the outputs (or, dry run, to be made)
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pool3d_file(input, output=None, kernel_size=2, stride=None, padding=0, *,
                progress: engine.Progress | None = None, **options: Any) -> PoolReport:
    """Max-pool a volume file (HDF5, NIfTI or Zarr) into another, streaming within ``memory_limit``.

    ``options`` are :class:`PoolJob`'s fields (``dilation``, ``ceil_mode``,
    ``padding_mode``, ``axes``, ``dataset``, ``grad_in``, ``grad_out``,
    ``indices_out``, ``out_dtype``, ``compression``, ``memory_limit``,
    ``threads``, ``force``, ``make_dirs``, ``dry_run``, ...).  ``stride``
    defaults to ``kernel_size`` (the specification's text).  With ``grad_out``
    the backward pass writes the gradient map on the input grid, routing
    ``grad_in`` (a file on the output grid; ones when omitted).  Outputs
    appear only when everything succeeded; inputs are only read.
    ``threads`` above the usable CPUs is clamped to them and a ``memory_limit``
    above the machine's memory is kept, each with a line in ``report.warnings``.
    ``make_dirs`` creates missing output directories as ``mkdir -p`` does
    (and removes them again if the run fails).  ``level`` picks an OME-Zarr input's resolution level.
    """
    return run_job(PoolJob(input, output, kernel_size, stride, padding, **options), progress)


@into_report
def run_job(job: PoolJob, progress: engine.Progress | None = None) -> PoolReport:
    """Run ``job``: open, plan, stream, commit (``PoolJob.run``)."""
    spec = pool_spec(job.input, job.kernel_size, job.stride, job.padding, job.dilation, job.ceil_mode,
                     job.padding_mode, dataset=job.dataset, axes=job.axes)
    limit = parse_size(job.memory_limit)
    threads, threads_warning = resources.check_threads(job.threads)
    machine_warnings = [w for w in (threads_warning, resources.memory_warning(limit)) if w]
    if job.output is None and job.grad_out is None and job.indices_out is None and not job.dry_run:
        raise ValueError("nothing to write: give an output, grad_out or indices_out")
    if job.grad_in is not None and job.grad_out is None:
        raise ValueError("grad_in needs grad_out: the upstream gradient is only used to write a gradient map")
    seen: dict[str, Any] = {}
    for p in (job.output, job.grad_out, job.indices_out):
        if isinstance(p, (str, os.PathLike)):
            identity = file_identity(primary_file(p))  # a.hdr and a.img: one volume
            if identity in seen:
                raise ValueError(f"{os.fspath(p)}: output, grad_out and indices_out must be different files "
                                 f"(same file as {os.fspath(seen[identity])})")
            seen[identity] = p

    opened: list = []
    sinks: list = []
    created: list = []
    try:
        source = open_source(job.input, dataset=job.dataset, axes=job.axes, level=job.level)
        opened.append(source)
        check_dtype(source.dtype)
        out_dtype = np.dtype(job.out_dtype) if job.out_dtype is not None else source.dtype
        check_dtype(out_dtype)
        pad_value, order = padding_rule(source, spec)
        try:
            plan = plan_slabs(
                source.shape,
                source.layout.pooled,
                spec,
                slab_axis=source.slab_axis,
                order=getattr(source, "order", "C"),
                in_itemsize=source.dtype.itemsize,
                out_itemsize=out_dtype.itemsize,
                memory_limit=limit,
                backward=job.grad_out is not None,
                grad_itemsize=np.dtype(job.grad_dtype).itemsize,
                indices=job.indices_out is not None,
                chunk_rows=getattr(source, "chunk_rows", 1),
                names=[_axis_name(source, a) for a in source.layout.pooled],
                what=source.name,
                reader_overhead=source.reader_overhead(),
                cached_input=source.caches_slab,
                whole_chunks=getattr(source, "whole_chunks", False),
            )
            _check_fits_machine(plan.slab_bytes, spec, source.name)  # a limit above the machine's memory lets it through
        except MemoryLimitError as exc:
            _check_fits_machine(exc.need, spec, source.name)  # no --memory-limit to suggest when the machine is too small
            raise type(exc)(f"{source.name}: {exc}" if source.name not in str(exc) else str(exc), exc.need) from None
        except ValueError as exc:  # a kernel that does not fit, a memory limit too small: name the file
            if source.name in str(exc):
                raise
            raise type(exc)(f"{source.name}: {exc}") from None
        gradient = None
        if job.grad_in is not None:
            gradient = open_gradient(job.grad_in, source, plan.out_shape)
            opened.append(gradient)
            if gradient.dtype.kind not in "fiu":
                raise LucidIOError(f"{gradient.name}: upstream gradient must be numeric, got dtype {gradient.dtype}")
        report = _report(source, plan, spec, out_dtype, job.grad_dtype, limit, job.input, job.output, job.grad_in,
                         job.grad_out, job.indices_out, job.out_dataset)
        report.warnings += machine_warnings
        protect = [_protected(g, f) for g in opened for f in g.files()]  # links, VDS sources: every file read
        report.warnings.extend(w for g in opened for w in g.warnings)
        if source.meta.extra.get("ome"):
            report.extra["ome_level"] = source.meta.extra["ome"]["level"]
        if job.dry_run:
            report.dry_run = True
            for target, ds in ((job.output, job.out_dataset), (job.grad_out, None), (job.indices_out, None)):
                if isinstance(target, (str, os.PathLike)):  # what the run would refuse, it refuses now
                    file = detect_format(target)[1]
                    missing = dirs.missing_dirs(file) if job.make_dirs else []
                    if missing:  # nothing to check in a directory the run will create
                        dirs.check_creatable(file)
                        report.created_dirs += [str(d) for d in missing if str(d) not in report.created_dirs]
                        continue
                    report.warnings.extend(_dry_run_check(target, ds, source, protect, job.force))
            runner = _cluster_runner(job, source, plan, pad_value, order, out_dtype, limit, report, start=False)
            if runner is not None:  # the block plan is arithmetic: no cluster is reached
                report.extra["dask_plan"] = runner.summary
            return report

        provenance = {
            "lucid_version": lucid.__version__,
            "kernel": spec.kernel,
            "stride": spec.stride,
            "padding": spec.padding,
            "dilation": spec.dilation,
            "ceil_mode": spec.ceil_mode,
            "padding_mode": spec.padding_mode,
            "source": source.name,
            "job": job.fingerprint(),  # lets a rerun (lucid batch) recognise this run's outputs
        }
        if job.make_dirs:
            created = dirs.make_dirs(detect_format(p)[1] for p in (job.output, job.grad_out, job.indices_out)
                                     if isinstance(p, (str, os.PathLike)))
            report.created_dirs = [str(d) for d in created]
        common = dict(like=source, compression=job.compression, force=job.force, slab_rows=plan.rows_per_slab,
                      provenance=provenance, protect=protect, zarr_format=job.zarr_format, shards=job.shards)
        runner = _cluster_runner(job, source, plan, pad_value, order, out_dtype, limit, report)
        extra = runner.sink_options if runner is not None else (lambda kind: {})
        out_sink = grad_sink = index_sink = None
        if job.output is not None:
            out_sink = open_sink(job.output, plan.out_shape, out_dtype, pooling=spec, kind="output", dataset=job.out_dataset,
                                 **{**common, **extra("output")})
            sinks.append(out_sink)
        if job.grad_out is not None:
            in_rows = plan.rows_per_slab * plan.windows[plan.slab_r].stride  # the gradient map is on the input grid
            grad_sink = open_sink(job.grad_out, plan.in_shape, job.grad_dtype, pooling=None, kind="gradient",
                                  **{**common, "slab_rows": in_rows, **extra("gradient")})
            sinks.append(grad_sink)
        if job.indices_out is not None:
            index_sink = open_sink(job.indices_out, plan.out_shape, np.int64, pooling=spec, kind="indices",
                                   **{**common, **extra("indices")})
            sinks.append(index_sink)
        source.set_cache(plan.cache_bytes)

        if runner is None:
            stats = engine.run(
                source, plan, out=out_sink, grad_out=grad_sink, indices_out=index_sink, grad_in=gradient,
                pad_value=pad_value, order=order, out_dtype=out_dtype, grad_dtype=job.grad_dtype,
                threads=threads, progress=progress,
            )
        else:  # the same job, one dask task per block
            stats = runner.run(out=out_sink, grad_out=grad_sink, indices_out=index_sink, progress=progress)
        for src in opened:  # what only the end of an input shows (a gzip CRC), before any commit
            src.check_complete()
        report.warnings.extend(w for s in sinks for w in getattr(s, "warnings", ()))
        for sink in sinks:  # finish every output first: a full disk then leaves all destinations alone
            sink.prepare()
        for sink in sinks:
            sink.commit()
        report.warnings.extend(_cleaned_notes(sinks))
        sinks.clear()
        created = []  # the outputs are in them now
        report.seconds = stats.seconds
        report.padding_won = stats.padding_won
        if runner is not None:
            report.extra["dask"] = runner.summary
        report.peak_memory_mib = peak_memory_mib()
        return report
    finally:
        for sink in sinks:  # anything not committed: an error or an interrupt
            sink.abort()
        dirs.remove_dirs(created)
        for src in opened:
            src.close()


def _cluster_runner(job: PoolJob, source, plan: Plan, pad_value, order, out_dtype, limit: int, report: PoolReport,
                    start: bool = True):
    """The dask runner of a job given a cluster (``lucid.dask.volume``), started unless ``start`` is
    False (a dry run), or None: this machine's engine.

    A job whose files cannot be read or written in parallel (.nii.gz) runs here, with one warning."""
    if job.cluster is None:
        return None
    from lucid.dask import volume

    reason = volume.serial_reason(job)
    if reason is not None:
        report.warnings.append(reason)
        return None
    runner = volume.plan_runner(job, source, plan, pad_value, order, out_dtype, limit)
    if start:
        runner.start()
    return runner


class PaddingValueError(ValueError):
    """Zero padding would take part, but the stored dtype cannot hold physical zero."""

    def __init__(self, problem: str):
        self.problem = problem  # without the way out, which callers word in their own terms
        super().__init__(f"{problem}; use padding_mode='ignore' or no padding")


def pool_spec(input, kernel_size=2, stride=None, padding=0, dilation=1, ceil_mode=False, padding_mode="zeros", *,
              dataset: str | None = None, axes: str | None = None) -> PoolSpec:
    """The validated parameters (``stride`` None: the kernel); errors name ``input``'s pooled axes
    (``axis 0 (x)``), not depth/height/width, when the input can be opened."""
    stride = kernel_size if stride is None else stride
    try:
        spec = PoolSpec.create(kernel_size, stride, padding, dilation, ceil_mode, padding_mode)
    except ValueError as plain:
        try:
            with open_source(input, dataset=dataset, axes=axes) as source:
                names, shown = [_axis_name(source, a) for a in source.layout.pooled], source.name
        except Exception:  # an input that cannot be opened: the plain message
            raise plain from None
        try:
            spec = PoolSpec.create(kernel_size, stride, padding, dilation, ceil_mode, padding_mode, names=names)
        except ValueError as exc:
            raise ValueError(f"{shown}: {exc}") from None
    for name, values in (("kernel_size", spec.kernel), ("stride", spec.stride), ("padding", spec.padding),
                         ("dilation", spec.dilation)):
        if max(values) > MAX_AXIS_VALUE:
            raise ValueError(f"{name} must be <= {MAX_AXIS_VALUE}, got {max(values)}")
    return spec


def _protected(source: Source, file: str):
    """A file an input reads, as the sinks protect it: (file, dataset) for the HDF5
    file holding the input dataset, so its other datasets can be written; other
    files it reads (external links, VDS sources) whole."""
    dataset = getattr(source, "dataset_path", None)
    return (file, dataset) if dataset is not None and file == source.path else file


def _dry_run_check(target, dataset: str | None, source: Source, protect: list, force: bool) -> list[str]:
    """Refuse what the run would refuse; the warnings for what it would need --force for."""
    fmt, file, in_path = detect_format(target)
    if fmt == "hdf5":
        from lucid.io.hdf5 import check_hdf5_output, dataset_for

        ds = dataset_for(dataset if dataset is not None else in_path, source)
        update, exists, _ = check_hdf5_output(file, ds, force=True, protect=protect)
        if exists and not force:
            what = f"{file}:{ds}: output dataset exists" if update else f"{file}: output exists"
            return [f"{what}; the run will refuse it without --force"]
        return []
    check_destination(file, force=True, protect=protect)
    if not force and os.path.lexists(file):
        return [f"{file}: output exists; the run will refuse it without --force"]
    return []


def _cleaned_notes(sinks) -> list[str]:
    removed: dict[str, int] = {}
    for sink in sinks:
        target = getattr(sink, "target", None)
        for _name in getattr(target, "cleaned", ()):
            directory = os.path.dirname(target.display) or "."
            removed[directory] = removed.get(directory, 0) + 1
    return [f"removed {n} stale temporary file{'s' if n > 1 else ''} of killed lucid runs from {d}"
            for d, n in removed.items()]


def padding_rule(source: Source, spec: PoolSpec):
    """The raw stored value zero padding takes part with, and max or min pooling.

    Stored values map to physical ones as ``slope * raw + inter``: a negative
    slope turns the physical maximum into the raw minimum, and physical zero
    is stored as ``-inter / slope``.  Without padding no window reads any
    (a ceil-mode overhang is not padding), so nothing needs storing: None.
    """
    slope, inter = source.meta.scale
    order = MIN if slope < 0 else MAX
    if spec.padding_mode == "ignore" or not any(spec.padding):
        return None, order
    raw = -inter / slope
    dtype = source.dtype
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if raw != int(raw) or not info.min <= raw <= info.max:
            raise PaddingValueError(
                f"{source.name}: zero padding means the physical value 0, stored as {raw:g}, which "
                f"{dtype} cannot hold (scl_slope {slope:g}, scl_inter {inter:g})"
            )
        return dtype.type(int(raw)), order
    return dtype.type(raw), order


def peak_memory_mib() -> float:
    """Peak resident memory of this process (Linux: VmHWM, which unlike ru_maxrss
    does not carry over the parent's peak across fork and exec)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def _check_fits_machine(need: int | None, spec: PoolSpec, what: str) -> None:
    total = resources.machine_memory()
    if need is not None and total is not None and need > total:
        raise MemoryLimitError(
            f"{what}: one slab needs {human_bytes(need)}, more than this machine's {human_bytes(total)} of memory "
            f"(kernel {spec.kernel}, padding {spec.padding})",
            need,
        )


def _axis_name(source: Source, axis: int) -> str:
    return f"axis {axis} ({source.layout.axes[axis]})"


def _file_shapes(source, plan: Plan, **outputs) -> dict[str, tuple[int, ...]]:
    """The input's and each output's shape in that file's own axis order (a NIfTI output is x, y, z first)."""
    shapes = {"input": tuple(plan.in_shape)}
    for key, path in outputs.items():
        if path is not None:
            grid = plan.in_shape if key == "grad_out" else plan.out_shape  # the gradient is on the input grid
            shapes[key] = stored_shape(path, grid, source)
    return shapes


def _report(source, plan: Plan, spec: PoolSpec, out_dtype, grad_dtype, limit, input, output, grad_in, grad_out,
            indices_out, out_dataset) -> PoolReport:
    meta = source.meta
    spacing_out = None
    if meta.spacing is not None:
        spacing_out = tuple(float(sp * st) for sp, st in zip(meta.spacing, spec.stride))
    affine_out = None
    if meta.affine is not None:
        affine_out = (np.asarray(meta.affine, float) @ pooling_matrix(spec)).tolist()

    def name(p, sink: bool = False, dataset: str | None = None):
        if p is None or isinstance(p, np.ndarray):
            return None if p is None else "<array>"
        return sink_name(p, source, dataset) if sink else os.fspath(p)

    return PoolReport(
        input=source.name,
        output=name(output, True, out_dataset),
        grad_in=name(grad_in),
        grad_out=name(grad_out, True),
        indices_out=name(indices_out, True),
        axes=source.layout.axes,
        in_shape=tuple(plan.in_shape),
        out_shape=tuple(plan.out_shape),
        dtype=str(source.dtype),
        out_dtype=str(out_dtype),
        grad_dtype=str(np.dtype(grad_dtype)),
        kernel=spec.kernel,
        stride=spec.stride,
        padding=spec.padding,
        dilation=spec.dilation,
        ceil_mode=spec.ceil_mode,
        padding_mode=spec.padding_mode,
        slab_axis=source.layout.axes[plan.slab_axis],
        rows_per_slab=plan.rows_per_slab,
        slabs=plan.job_count,
        slabs_along_axis=len(plan.slabs),
        outer_axes={source.layout.axes[a]: int(plan.in_shape[a]) for a in plan.outer},
        file_shapes=_file_shapes(source, plan, output=output, grad_out=grad_out, indices_out=indices_out),
        memory_limit=limit,
        memory_estimate=plan.slab_bytes,
        spacing_in=None if meta.spacing is None else tuple(float(v) for v in meta.spacing),
        spacing_out=spacing_out,
        spacing_unit=meta.spacing_unit,
        affine_out=affine_out,
        extra={"scale": list(meta.scale)},
    )
