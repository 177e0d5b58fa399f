"""The one source/sink interface every volume format hides behind.

The streaming engine only sees ``Source`` and ``Sink``: it never asks which
format it has.  Formats live in their own modules (``hdf5``, ``nifti``,
``array``) and are picked by ``open_source``/``open_sink`` in ``lucid.io``.

What engine code may rely on
----------------------------
Source: ``name``, ``path`` (absolute path or None), ``shape``, ``dtype`` (native
byte order, what ``read`` returns), ``layout``, ``meta``, ``order`` ("C" or "F":
the file's memory order), ``slab_axis``, ``warnings``, ``chunk_rows``, ``caches_slab``,
``set_cache(nbytes)``, ``read(index)`` (a fresh, writable array the caller owns),
``files()``, ``reader_overhead()``, ``check_complete()``, ``close()``.

Sink: ``name``, ``path``, ``shape``, ``dtype``, ``kind``, ``layout``,
``write(index, data)``, ``prepare()``, ``commit()``, ``abort()``; indexes and data are in the
*source's* file-axis order whatever the output format.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Letters that may name a pooled axis and letters for carried (not pooled) axes.
# "t" and "w" can be either: see lucid.io.layout.parse_layout for the rule.
POOLED_LETTERS = "dhwzyxt"
CARRIED_LETTERS = "nc" + "tuvw"


class LucidIOError(Exception):
    """A problem with an input or output file; ``str()`` is one line naming the file."""


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def check_input_file(path: str, name: str, what: str) -> None:
    """Refuse, in one line naming the file, an input that cannot be a ``what`` file at all."""
    if not os.path.lexists(path):
        raise LucidIOError(f"{name}: no such file")
    if not os.path.exists(path):
        raise LucidIOError(f"{name}: broken symbolic link")
    if os.path.isdir(path):
        raise LucidIOError(f"{name}: is a directory, not {what} file")
    if not os.access(path, os.R_OK):
        raise LucidIOError(f"{name}: permission denied")
    if os.path.getsize(path) == 0:
        raise LucidIOError(f"{name}: file is empty")


class LayoutError(LucidIOError, ValueError):
    """An invalid axes string (a LucidIOError that is also a ValueError)."""


@dataclass(frozen=True)
class Layout:
    """Which file axes are pooled (exactly three, in file order) and which are carried.

    ``axes`` has one letter per file axis, e.g. ``"nczyx"``, ``"thwc"``, ``"xyzt"``.
    """

    axes: str
    pooled: tuple[int, int, int]

    @property
    def carried(self) -> tuple[int, ...]:
        return tuple(i for i in range(len(self.axes)) if i not in self.pooled)

    @property
    def ndim(self) -> int:
        return len(self.axes)

    @property
    def pooled_letters(self) -> str:
        return "".join(self.axes[i] for i in self.pooled)

    @classmethod
    def parse(cls, axes: str | None, ndim: int, format: str) -> "Layout":
        from lucid.io.layout import parse_layout

        return parse_layout(axes, ndim, format)


@dataclass
class VolumeMeta:
    """Format-neutral metadata a sink needs to write a faithful output.

    ``spacing`` is the physical size of one voxel along each pooled axis (file
    order) or None, in ``spacing_unit`` ("mm", "um", "m" or None if unknown);
    ``affine`` the 4x4 matrix taking (i, j, k) voxel indices along the pooled
    axes, in file order, to world coordinates (NIfTI: the sform if its code > 0,
    else the qform if its code > 0, else None), in ``spacing_unit``;
    ``scale`` the (slope, intercept) that turns stored values into physical ones.
    ``extra`` holds format specifics (the NIfTI header, HDF5 attributes, ...)
    that a sink may copy.
    """

    format: str
    spacing: tuple[float, float, float] | None = None
    spacing_unit: str | None = None
    affine: np.ndarray | None = None
    scale: tuple[float, float] = (1.0, 0.0)
    extra: dict[str, Any] = field(default_factory=dict)


def normalize_index(index, shape: tuple[int, ...], name: str) -> tuple[slice, ...]:
    """Check a box: one step-1 slice per axis; returns slices with explicit bounds."""
    if not isinstance(index, tuple):
        index = tuple(index)
    if len(index) != len(shape):
        raise ValueError(f"{name}: box {index!r} has {len(index)} slices for a {len(shape)}-D volume")
    out = []
    for s, n in zip(index, shape):
        if not isinstance(s, slice):
            raise TypeError(f"{name}: box entries must be slices, got {s!r}")
        start, stop, step = s.indices(n)
        if step != 1:
            raise ValueError(f"{name}: box slices must have step 1, got {s!r}")
        out.append(slice(start, max(start, stop)))
    return tuple(out)


def box_shape(index: tuple[slice, ...]) -> tuple[int, ...]:
    return tuple(s.stop - s.start for s in index)


class Source(ABC):
    """A lazily read volume: shape, dtype, layout, metadata and slab reads."""

    name: str  # for messages, e.g. "ct.nii.gz" or "clip.h5:/frames"
    path: str | None = None  # absolute path of the file read, None for in-memory sources
    shape: tuple[int, ...]
    dtype: np.dtype  # dtype of what read() returns: the raw stored values, native byte order
    layout: Layout
    meta: VolumeMeta
    order: str = "C"  # memory order of the file: "C" (last axis fastest) or "F"
    chunk_rows: int = 1  # extent of one storage chunk along slab_axis (1: no chunking)
    warnings: tuple[str, ...] | list[str] = ()  # one line each: a guessed layout, a header field ignored

    @property
    def slab_axis(self) -> int:
        """The pooled file axis along which consecutive slabs are cheapest to read."""
        return self.layout.pooled[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def files(self) -> tuple[str, ...]:
        """Every file reading this source touches (absolute paths): no output may be one
        of them.  HDF5 adds external-link targets, virtual-dataset sources and external storage."""
        return (self.path,) if self.path else ()

    caches_slab: bool = False  # set_cache keeps up to one input slab (decompressed chunks)

    def reader_overhead(self) -> int:
        """Bytes the reader holds itself whatever the slab (decompressor buffers, one
        compressed chunk), counted by the planner."""
        return 0

    def set_cache(self, nbytes: int) -> None:
        """Size the reader's cache to hold one input slab (``nbytes``); a no-op where there is none."""

    def check_complete(self) -> None:
        """Check what only the end of the file can show (a gzip trailer's CRC and length).

        Called once after the last read and before any output is committed;
        raises LucidIOError.  A no-op where there is nothing to check.
        """

    @abstractmethod
    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        """Read a box (one slice per file axis, step 1) of raw stored values.

        Returns a new writable array owned by the caller, native byte order.
        """

    def close(self) -> None:
        """Release the file; idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.shape} {self.dtype} axes={self.layout.axes!r}>"


class Sink(ABC):
    """A volume written slab by slab, in increasing order along one axis.

    Data goes to a temporary file beside the destination; ``commit`` renames it
    into place, ``abort`` deletes it.  Nothing is visible at the destination
    before ``commit`` succeeds.  ``shape`` and every ``write`` box are in the
    file-axis order of the source the sink was opened ``like``.
    """

    name: str
    path: str | None = None
    shape: tuple[int, ...]
    dtype: np.dtype
    kind: str = "output"
    layout: Layout

    @abstractmethod
    def write(self, index: tuple[slice, ...], data: np.ndarray) -> None:
        """Write a box of values (in the sink's dtype) at ``index``."""

    def prepare(self) -> None:
        """Finish the file (flush, close, fsync) without moving it into place yet.

        Everything that can fail (a full disk included) happens here, so a caller
        writing several outputs prepares them all before committing any: a failure
        then leaves every destination as it was.  ``commit`` prepares if needed.
        """

    @abstractmethod
    def commit(self) -> None:
        """Flush, close and move the finished file into place."""

    @abstractmethod
    def abort(self) -> None:
        """Close and remove the temporary file; idempotent, never raises for a missing file."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.shape} {self.dtype} kind={self.kind!r}>"


def pooling_matrix(pooling) -> np.ndarray:
    """4x4 map from output voxel indices to input voxel indices (window centres).

    ``[[diag(s), c], [0, 1]]`` with ``c = dilation*(k-1)/2 - p`` per pooled axis, so a
    new affine is ``old @ pooling_matrix(spec)``; for k = s, p = 0 this is SimpleITK's
    BinShrink geometry (output voxel 0 sits at the mean of the window's input voxels).
    """
    m = np.eye(4)
    for a in range(3):
        k, s, p, d = pooling.kernel[a], pooling.stride[a], pooling.padding[a], pooling.dilation[a]
        m[a, a] = s
        m[a, 3] = d * (k - 1) / 2.0 - p
    return m


UNIT_TO_UM = {"um": 1.0, "mm": 1e3, "m": 1e6}
