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
from lucid.io import LucidIOError, detect_format, open_sink, open_source, sink_name
from lucid.io.atomic import check_destination, file_identity
from lucid.io.base import Source, pooling_matrix
from lucid.io.compression import DEFAULT as DEFAULT_COMPRESSION
from lucid.kernels.maxpool import MAX, MIN, check_dtype
from lucid.kernels.windows import PoolSpec
from lucid.stream import engine
from lucid.stream.plan import Plan, parse_size, plan_slabs

DEFAULT_MEMORY_LIMIT = "512M"


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
    slabs: int
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
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pool3d_file(
    input,
    output=None,
    kernel_size=2,
    stride=None,
    padding=0,
    *,
    dilation=1,
    ceil_mode: bool = False,
    padding_mode: str = "zeros",
    axes: str | None = None,
    dataset: str | None = None,
    out_dataset: str | None = None,
    grad_in=None,
    grad_out=None,
    indices_out=None,
    out_dtype=None,
    grad_dtype="float32",
    compression: str = DEFAULT_COMPRESSION,
    memory_limit=DEFAULT_MEMORY_LIMIT,
    threads: int | None = None,
    force: bool = False,
    progress: engine.Progress | None = None,
    dry_run: bool = False,
) -> PoolReport:
    """Max-pool a volume file (HDF5 or NIfTI) into another, streaming within ``memory_limit``.

    ``stride`` defaults to ``kernel_size`` (the specification's text).  Tuples
    follow the order in which the pooled axes appear in the file.  With
    ``grad_out`` the backward pass writes the gradient map on the input grid,
    routing ``grad_in`` (a file on the output grid; ones when omitted).
    Outputs appear only when everything succeeded; inputs are only read.
    """
    spec = PoolSpec.create(kernel_size, kernel_size if stride is None else stride, padding, dilation, ceil_mode, padding_mode)
    limit = parse_size(memory_limit)
    if output is None and grad_out is None and indices_out is None and not dry_run:
        raise ValueError("nothing to write: give an output, grad_out or indices_out")
    if grad_in is not None and grad_out is None:
        raise ValueError("grad_in needs grad_out: the upstream gradient is only used to write a gradient map")
    seen: dict[str, Any] = {}
    for p in (output, grad_out, indices_out):
        if isinstance(p, (str, os.PathLike)):
            identity = file_identity(detect_format(p)[1])
            if identity in seen:
                raise ValueError(f"{os.fspath(p)}: output, grad_out and indices_out must be different files "
                                 f"(same file as {os.fspath(seen[identity])})")
            seen[identity] = p

    opened: list = []
    sinks: list = []
    try:
        source = open_source(input, dataset=dataset, axes=axes)
        opened.append(source)
        check_dtype(source.dtype)
        out_dtype = np.dtype(out_dtype) if out_dtype is not None else source.dtype
        check_dtype(out_dtype)
        pad_value, order = padding_rule(source, padding_mode)
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
                backward=grad_out is not None,
                grad_itemsize=np.dtype(grad_dtype).itemsize,
                indices=indices_out is not None,
                chunk_rows=getattr(source, "chunk_rows", 1),
                names=[_axis_name(source, a) for a in source.layout.pooled],
                what=source.name,
            )
        except ValueError as exc:  # a kernel that does not fit, a memory limit too small: name the file
            if source.name in str(exc):
                raise
            raise type(exc)(f"{source.name}: {exc}") from None
        gradient = None
        if grad_in is not None:
            gradient = open_source(grad_in, axes=source.layout.axes)
            opened.append(gradient)
            if gradient.shape != plan.out_shape:
                raise LucidIOError(
                    f"{gradient.name}: upstream gradient has shape {gradient.shape}, "
                    f"expected the output shape {plan.out_shape}"
                )
            if gradient.dtype.kind not in "fiu":
                raise LucidIOError(f"{gradient.name}: upstream gradient must be numeric, got dtype {gradient.dtype}")
        report = _report(source, plan, spec, out_dtype, grad_dtype, limit, input, output, grad_in, grad_out, indices_out,
                         out_dataset)
        protect = [_protected(g) for g in opened if getattr(g, "path", None)]
        if dry_run:
            report.dry_run = True
            for target, ds in ((output, out_dataset), (grad_out, None), (indices_out, None)):
                if isinstance(target, (str, os.PathLike)):  # what the run would refuse, it refuses now
                    report.warnings.extend(_dry_run_check(target, ds, source, protect, force))
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
        }
        common = dict(like=source, compression=compression, force=force, slab_rows=plan.rows_per_slab,
                      provenance=provenance, protect=protect)
        out_sink = grad_sink = index_sink = None
        if output is not None:
            out_sink = open_sink(output, plan.out_shape, out_dtype, pooling=spec, kind="output", dataset=out_dataset, **common)
            sinks.append(out_sink)
        if grad_out is not None:
            in_rows = plan.rows_per_slab * plan.windows[plan.slab_r].stride  # the gradient map is on the input grid
            grad_sink = open_sink(grad_out, plan.in_shape, grad_dtype, pooling=None, kind="gradient",
                                  **{**common, "slab_rows": in_rows})
            sinks.append(grad_sink)
        if indices_out is not None:
            index_sink = open_sink(indices_out, plan.out_shape, np.int64, pooling=spec, kind="indices", **common)
            sinks.append(index_sink)
        if hasattr(source, "set_cache"):
            source.set_cache(plan.slab_bytes)

        stats = engine.run(
            source, plan, out=out_sink, grad_out=grad_sink, indices_out=index_sink, grad_in=gradient,
            pad_value=pad_value, order=order, out_dtype=out_dtype, grad_dtype=grad_dtype,
            threads=threads, progress=progress,
        )
        for sink in sinks:  # finish every output first: a full disk then leaves all destinations alone
            sink.prepare()
        for sink in sinks:
            sink.commit()
        report.warnings.extend(_cleaned_notes(sinks))
        sinks.clear()
        report.seconds = stats.seconds
        report.padding_won = stats.padding_won
        report.peak_memory_mib = peak_memory_mib()
        return report
    finally:
        for sink in sinks:  # anything not committed: an error or an interrupt
            sink.abort()
        for src in opened:
            src.close()


def _protected(source: Source):
    """An input as the sinks protect it: (file, dataset) for HDF5, so other datasets of the file can be written."""
    dataset = getattr(source, "dataset_path", None)
    return (source.path, dataset) if dataset is not None else source.path


def _dry_run_check(target, dataset: str | None, source: Source, protect: list, force: bool) -> list[str]:
    """Refuse what the run would refuse; the warnings for what it would need --force for."""
    fmt, file, in_path = detect_format(target)
    if fmt == "hdf5":
        from lucid.io.hdf5 import check_hdf5_output, dataset_for

        ds = dataset_for(dataset if dataset is not None else in_path, source)
        update, exists, _ = check_hdf5_output(file, ds, force=True, protect=[_protected(source)] + protect)
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


def padding_rule(source: Source, padding_mode: str):
    """The raw stored value zero padding takes part with, and max or min pooling.

    Stored values map to physical ones as ``slope * raw + inter``: a negative
    slope turns the physical maximum into the raw minimum, and physical zero
    is stored as ``-inter / slope``.
    """
    slope, inter = source.meta.scale
    order = MIN if slope < 0 else MAX
    if padding_mode == "ignore":
        return None, order
    raw = -inter / slope
    dtype = source.dtype
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if raw != int(raw) or not info.min <= raw <= info.max:
            raise ValueError(
                f"{source.name}: zero padding means the physical value 0, stored as {raw:g}, which "
                f"{dtype} cannot hold (scl_slope {slope:g}, scl_inter {inter:g}); use padding_mode 'ignore'"
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


def _axis_name(source: Source, axis: int) -> str:
    return f"axis {axis} ({source.layout.axes[axis]})"


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
        memory_limit=limit,
        memory_estimate=plan.slab_bytes,
        spacing_in=None if meta.spacing is None else tuple(float(v) for v in meta.spacing),
        spacing_out=spacing_out,
        spacing_unit=meta.spacing_unit,
        affine_out=affine_out,
        extra={"scale": list(meta.scale)},
    )
