"""Volume I/O for the streaming engine: HDF5, NIfTI and in-memory arrays.

``open_source`` and ``open_sink`` pick the format from the file suffix; the
engine then only uses the :class:`Source` / :class:`Sink` interface.

>>> src = open_source("ct.nii.gz")                       # doctest: +SKIP
>>> sink = open_sink("ct_pooled.h5", out_shape, src.dtype, like=src, pooling=spec)  # doctest: +SKIP
>>> sink.write(box, values); sink.commit()               # doctest: +SKIP
"""

from __future__ import annotations

import os
import re

import numpy as np

from lucid.io.array import ArraySink, ArraySource, check_dtype
from lucid.io.atomic import AtomicTarget
from lucid.io.compression import DEFAULT as DEFAULT_COMPRESSION
from lucid.io.base import Layout, LayoutError, LucidIOError, Sink, Source, VolumeMeta, pooling_matrix
from lucid.io.layout import default_axes, nifti_axis_order, parse_layout

__all__ = [
    "open_source",
    "open_sink",
    "open_gradient",
    "sink_name",
    "stored_shape",
    "detect_format",
    "primary_file",
    "Source",
    "Sink",
    "Layout",
    "VolumeMeta",
    "LucidIOError",
    "LayoutError",
    "ArraySource",
    "ArraySink",
    "HDF5Source",
    "HDF5Sink",
    "NiftiSource",
    "NiftiSink",
    "ZarrSource",
    "ZarrSink",
    "AtomicTarget",
    "parse_layout",
    "default_axes",
    "nifti_axis_order",
    "pooling_matrix",
    "SUPPORTED_SUFFIXES",
    "NIBABEL_SUFFIXES",
    "SINK_KINDS",
]

SUPPORTED_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nii", ".nii.gz", ".hdr", ".img", ".mgh", ".mgz", ".zarr", ".zarr.zip")
# Read through nibabel (format "nifti" here: the same Fortran-order, x-y-z-first storage): NIfTI-1/-2
# single files, Analyze and NIfTI pairs (.hdr/.img), FreeSurfer MGH/MGZ (lucid.io.nib_relatives).
NIBABEL_SUFFIXES = (".nii", ".nii.gz", ".hdr", ".img", ".mgh", ".mgz")
SINK_KINDS = ("output", "gradient", "indices")
_H5_RE = re.compile(r"^(?P<file>.*?\.(?:h5|hdf5|hdf))(?::(?P<ds>.*))?$", re.IGNORECASE | re.DOTALL)


def __getattr__(name):  # lazy: importing lucid.io does not import h5py/nibabel
    if name in ("HDF5Source", "HDF5Sink"):
        from lucid.io import hdf5

        return getattr(hdf5, name)
    if name in ("NiftiSource", "NiftiSink"):
        from lucid.io import nifti

        return getattr(nifti, name)
    if name in ("ZarrSource", "ZarrSink"):
        from lucid.io import zarr as zarr_io

        return getattr(zarr_io, name)
    raise AttributeError(f"module 'lucid.io' has no attribute {name!r}")


def detect_format(path: str | os.PathLike) -> tuple[str, str, str | None]:
    """``(format, file path, dataset or None)`` from a path's suffix; LucidIOError if unknown.

    ``"scan.h5:/group/data"`` addresses a dataset inside an HDF5 file.
    """
    text = os.fspath(path)
    lower = text.lower()
    if lower.endswith(NIBABEL_SUFFIXES):
        return "nifti", text, None
    from lucid.io.zarr import ZARR_RE

    m = ZARR_RE.match(text)
    if m and not _H5_RE.match(text):
        return "zarr", m.group("file"), m.group("ds") or None
    m = _H5_RE.match(text)
    if m:
        ds = m.group("ds") or None
        return "hdf5", m.group("file"), ds
    raise LucidIOError(f"{text}: unsupported file type; supported: {', '.join(SUPPORTED_SUFFIXES)} (file.h5:/dataset)")


def primary_file(path: str | os.PathLike) -> str:
    """The file that stands for a volume's files: the ``.hdr`` of a ``.hdr``/``.img`` pair, else ``path``
    (so that ``a.hdr`` and ``a.img`` count as one file when outputs are checked against inputs)."""
    from lucid.io.nifti import pair_paths

    file = detect_format(path)[1]
    pair = pair_paths(file)
    return pair[0] if pair is not None else file


def open_source(path, *, dataset: str | None = None, axes: str | None = None, level: int | None = None) -> Source:
    """Open a volume for reading: ``.h5/.hdf5/.hdf`` (``file.h5:/ds``), ``.nii``/``.nii.gz``, ``.zarr`` or an ndarray.

    ``level`` picks an OME-Zarr image's resolution level (default 0); other formats refuse it.

    Every problem with the file (missing, unreadable, truncated, not a volume,
    wrong dtype, ...) is a one-line :class:`LucidIOError` naming it.
    """
    if isinstance(path, np.ndarray):
        return ArraySource(path, axes=axes)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"open_source needs a path or a numpy array, got {type(path).__name__}")
    fmt, file, ds = detect_format(path)
    if level is not None and fmt != "zarr":
        raise LucidIOError(f"{file}: --level needs an OME-Zarr image; this is a {fmt} file")
    if fmt == "nifti":
        if dataset is not None:
            raise LucidIOError(f"{file}: a NIfTI file has no datasets (got dataset={dataset!r})")
        from lucid.io.nib_relatives import open_source as open_nibabel

        return open_nibabel(file, axes)
    if fmt == "zarr":
        from lucid.io.zarr import ZarrSource

        return ZarrSource(file, dataset if dataset is not None else ds, axes=axes, level=level)
    from lucid.io.hdf5 import HDF5Source

    return HDF5Source(file, dataset if dataset is not None else ds, axes=axes)


# Formats whose sinks store pooled axes first as x, y, z (lucid.io.layout.nifti_axis_order).
F_ORDER_FORMATS = ("nifti",)


def sink_axis_order(path, like: Source) -> tuple[int, ...]:
    """``like``'s axes in the order a sink at ``path`` stores them (file axis j = like axis perm[j])."""
    if isinstance(path, (str, os.PathLike)) and detect_format(path)[0] in F_ORDER_FORMATS:
        return nifti_axis_order(like.layout, like.order)
    return tuple(range(like.ndim))


def shape_in_letters(shape, letters: str) -> str:
    """``"x=16 y=8 z=4"``: a shape with the user's axis letters (bare ``16x8x4`` if they do not fit)."""
    if len(letters) != len(shape):
        return "x".join(str(n) for n in shape)
    return " ".join(f"{ch}={n}" for ch, n in zip(letters, shape))


def open_gradient(path, like: Source, shape) -> Source:
    """Open an upstream gradient on the output grid ``shape`` of ``like``, read in ``like``'s axis order.

    The gradient file's axes are mapped as an output written there would have
    them (a NIfTI gradient for an HDF5 "dhw" input is x=w, y=h, z=d).  A shape
    that does not match is one LucidIOError naming both shapes in axis letters.
    """
    if isinstance(path, np.ndarray):
        src = ArraySource(path, axes=like.layout.axes if path.ndim == like.ndim else None)
        perm = tuple(range(like.ndim))
    else:
        perm = sink_axis_order(path, like)
        letters = "".join(like.layout.axes[a] for a in perm)
        try:
            src = open_source(path, axes=letters)
        except LayoutError:  # another number of dimensions: report the shapes, not the letters
            src = open_source(path)
            letters = src.layout.axes
    want = tuple(int(shape[a]) for a in perm)
    if src.shape != want:
        src.close()
        file_letters = "".join(like.layout.axes[a] for a in perm)
        got = shape_in_letters(src.shape, src.layout.axes if len(src.shape) != len(want) else file_letters)
        raise LucidIOError(f"{src.name}: upstream gradient is {got}, expected the output's grid "
                           f"{shape_in_letters(want, file_letters)}")
    if perm == tuple(range(like.ndim)):
        return src
    from lucid.io.permuted import PermutedSource

    return PermutedSource(src, perm, like.layout)


def expected_shape(like: Source, pooling) -> tuple[int, ...]:
    """The output shape for ``like`` pooled with ``pooling`` (``like.shape`` if None)."""
    shape = list(like.shape)
    if pooling is not None:
        sizes = [like.shape[a] for a in like.layout.pooled]
        names = tuple(like.layout.axes[a] for a in like.layout.pooled)
        for a, n in zip(like.layout.pooled, pooling.output_shape(sizes, names)):
            shape[a] = n
    return tuple(shape)


def sink_name(path, like: Source, dataset: str | None = None) -> str:
    """How an output at ``path`` is named in reports: an HDF5 file with its dataset."""
    fmt, file, ds = detect_format(path)
    if fmt == "nifti":
        return file
    if fmt == "zarr":
        ds = dataset if dataset is not None else ds
        return file if not ds or ds == "/" else f"{file}:/{ds.strip('/')}"
    from lucid.io.hdf5 import dataset_for

    return f"{file}:{dataset_for(dataset if dataset is not None else ds, like)}"


def stored_shape(path, shape, like: Source) -> tuple[int, ...]:
    """``shape`` (in ``like``'s axis order) as the file at ``path`` stores it: NIfTI reorders axes to x, y, z."""
    shape = tuple(int(n) for n in shape)
    if path is None or isinstance(path, np.ndarray) or detect_format(path)[0] != "nifti":
        return shape
    return tuple(shape[a] for a in nifti_axis_order(like.layout, like.order))


def open_sink(
    path,
    shape,
    dtype,
    *,
    like: Source,
    pooling=None,
    kind: str = "output",
    dataset: str | None = None,
    compression: str = DEFAULT_COMPRESSION,
    force: bool = False,
    slab_rows: int | None = None,
    provenance: dict | None = None,
    scale: tuple[float, float] | None = None,
    protect=(),
    zarr_format: int | None = None,
    shards=None,
    chunks=None,
    staging=None,
) -> Sink:
    """Open an output volume shaped like ``like`` (same axis order), format by ``path``'s suffix.

    ``pooling=None`` means the input grid (gradient maps); otherwise the grid of
    ``like`` pooled with that PoolSpec.  ``kind`` is "output", "gradient" or
    "indices".  ``path`` None (or an ndarray to fill) gives an :class:`ArraySink`.
    The destination must not exist unless ``force``; it must never be ``like``'s
    file or one of ``protect``.  ``slab_rows`` is the number of output rows along
    ``like.slab_axis`` per write (HDF5 and Zarr chunks divide it).  ``zarr_format``
    (2 or 3, default 3) and ``shards`` apply to ``.zarr`` outputs.  ``scale`` overrides the
    NIfTI scl_slope/scl_inter (default: the input's for kind="output", none else).
    Zarr only: ``chunks`` (explicit chunk shape) and ``staging`` (a fixed temporary
    directory that a resumed run reopens, see :class:`lucid.io.zarr.ZarrSink`).
    """
    if kind not in SINK_KINDS:
        raise ValueError(f"kind must be one of {SINK_KINDS}, got {kind!r}")
    shape = tuple(int(n) for n in shape)
    want = expected_shape(like, pooling)
    if shape != want:
        raise ValueError(f"output shape {shape} does not match {like.name} {like.shape} pooled: {want}")
    dtype = np.dtype(dtype)
    check_dtype(dtype, "output")
    if path is None or isinstance(path, np.ndarray):
        return ArraySink(shape, dtype, like=like, kind=kind, out=path)
    fmt, file, ds = detect_format(path)
    common = dict(like=like, pooling=pooling, kind=kind, compression=compression, force=force,
                  slab_rows=slab_rows, provenance=provenance, protect=protect)
    if fmt == "nifti":
        from lucid.io.nib_relatives import open_sink as open_nibabel_sink

        if dataset is not None:
            raise LucidIOError(f"{file}: a NIfTI file has no datasets (got dataset={dataset!r})")
        return open_nibabel_sink(file, shape, dtype, scale=scale, **common)
    if fmt == "zarr":
        from lucid.io.ome_zarr import OmeZarrSink, is_ome_path
        from lucid.io.zarr import ZarrSink

        if file.lower().endswith(".zip"):
            raise LucidIOError(f"{file}: zip stores are read-only; write a .zarr directory")
        if is_ome_path(file):
            if dataset or (ds and ds.strip("/")):
                raise LucidIOError(f"{file}: an OME-Zarr output holds the image at its root; name no array in it")
            return OmeZarrSink(file, shape, dtype, shards=shards, zarr_format=zarr_format, **common)
        return ZarrSink(file, shape, dtype, array=dataset if dataset is not None else ds, scale=scale,
                        zarr_format=zarr_format, shards=shards, chunks=chunks, staging=staging, **common)
    from lucid.io.hdf5 import HDF5Sink

    return HDF5Sink(file, shape, dtype, dataset=dataset if dataset is not None else ds, scale=scale, **common)
