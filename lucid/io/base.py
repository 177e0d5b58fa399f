"""The one source/sink interface every volume format hides behind.

The streaming engine only sees ``Source`` and ``Sink``: it never asks which
format it has.  Formats live in their own modules (``hdf5``, ``nifti``,
``array``) and are picked by ``open_source``/``open_sink`` in ``lucid.io``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Letters that may name a pooled axis and letters for carried (not pooled) axes.
POOLED_LETTERS = "dhwzyxt"
CARRIED_LETTERS = "nc" + "tuvw"  # t is carried in NIfTI xyzt; see Layout.parse


class LucidIOError(Exception):
    """A problem with an input or output file; ``str()`` is one line naming the file."""


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


@dataclass
class VolumeMeta:
    """Format-neutral metadata a sink needs to write a faithful output.

    ``spacing`` is the physical size of one voxel along each pooled axis (file
    order) or None; ``affine`` the 4x4 voxel-to-world matrix (NIfTI) or None;
    ``scale`` the (slope, intercept) that turns stored values into physical ones.
    ``extra`` holds format specifics (the NIfTI header, HDF5 attributes, ...)
    that a sink of the same format may copy.
    """

    format: str
    spacing: tuple[float, float, float] | None = None
    spacing_unit: str | None = None
    affine: np.ndarray | None = None
    scale: tuple[float, float] = (1.0, 0.0)
    extra: dict[str, Any] = field(default_factory=dict)


class Source(ABC):
    """A lazily read volume: shape, dtype, layout, metadata and slab reads."""

    name: str  # for messages, e.g. "ct.nii.gz" or "clip.h5:/frames"
    shape: tuple[int, ...]
    dtype: np.dtype  # dtype of what read() returns: the raw stored values, native byte order
    layout: Layout
    meta: VolumeMeta

    @property
    def slab_axis(self) -> int:
        """The pooled file axis along which consecutive slabs are cheapest to read."""
        return self.layout.pooled[0]

    @abstractmethod
    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        """Read a box (one slice per file axis, step 1) of raw stored values."""

    def close(self) -> None:
        """Release the file; idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Sink(ABC):
    """A volume written slab by slab, in increasing order along one axis.

    Data goes to a temporary file beside the destination; ``commit`` renames it
    into place, ``abort`` deletes it.  Nothing is visible at the destination
    before ``commit`` succeeds.
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @abstractmethod
    def write(self, index: tuple[slice, ...], data: np.ndarray) -> None:
        """Write a box of values (in the sink's dtype) at ``index``."""

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
