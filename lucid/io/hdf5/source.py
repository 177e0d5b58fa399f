"""``HDF5Source``: a dataset read in slabs through a chunk cache sized to one slab."""

from __future__ import annotations

import math
import os

import h5py
import numpy as np

from lucid.io.array import check_dtype, check_shape
from lucid.io.base import (
    LucidIOError,
    Source,
    VolumeMeta,
    box_shape,
    normalize_index,
    one_line,
)
from lucid.io.hdf5.files import (
    SKIP_ATTRS,
    axes_from_labels,
    dimension_labels,
    files_read,
    filter_problem,
    open_h5_file,
    select_dataset,
)
from lucid.io.layout import parse_layout


def _next_prime(n: int) -> int:
    n = max(n, 2)
    while True:
        if all(n % p for p in range(2, int(math.isqrt(n)) + 1)):
            return n
        n += 1


class HDF5Source(Source):
    """One dataset of an HDF5 file, read in slabs of raw values.

    Axes: ``axes`` if given, else the dataset's dimension labels when they are
    single letters forming a valid layout (``"thwc"``), else the default for
    its rank (3-D "dhw", 4-D "cdhw", 5-D "ncdhw").
    """

    order = "C"

    def __init__(self, path: str | os.PathLike, dataset: str | None = None, *, axes: str | None = None,
                 name: str | None = None):
        shown = name or os.fspath(path)
        self.path = os.path.abspath(os.fspath(path))
        self.file = open_h5_file(self.path, shown)
        try:
            self._init(shown, dataset, axes)
        except LucidIOError:
            self.file.close()
            raise
        except Exception as exc:  # h5py errors from a damaged file (KeyError, ValueError, OSError, ...)
            self.file.close()
            raise LucidIOError(f"{getattr(self, 'name', shown)}: cannot read the dataset (damaged file?): {one_line(exc)}") from exc
        except BaseException:
            self.file.close()
            raise

    def _init(self, shown: str, dataset: str | None, axes: str | None) -> None:
        ds = select_dataset(self.file, dataset, shown)
        self.dataset_path = ds.name
        self.name = f"{shown}:{ds.name}"
        self._ds = ds
        if ds.shape is None or ds.ndim < 3:
            shape = () if ds.shape is None else ds.shape
            raise LucidIOError(f"{self.name}: a {len(shape)}-D dataset (shape {shape}) cannot be pooled in 3-D")
        key = ds.name if dataset is None else "/" + dataset.lstrip("/")  # ds.name is its name in its own file
        self._files = files_read(self.file, key, ds, self.name)
        self.shape = tuple(int(n) for n in ds.shape)
        try:
            stored = ds.dtype
        except ValueError as exc:  # e.g. a float type numpy has no equivalent for
            raise LucidIOError(f"{self.name}: unsupported data type ({one_line(exc)})") from None
        self.dtype = check_dtype(stored, self.name)
        check_shape(self.shape, self.name, self.dtype.itemsize)
        problem = filter_problem(ds)
        if problem:
            raise LucidIOError(f"{self.name}: {problem}")
        guessed = axes is None and (axes := axes_from_labels(ds)) is None
        try:
            self.layout = parse_layout(axes, ds.ndim, "hdf5")
        except LucidIOError as exc:
            raise type(exc)(f"{self.name}: {exc}") from None
        if guessed and ds.ndim == 4 and self.shape[3] in (3, 4) and self.shape[0] not in (3, 4):
            self.warnings = (
                f"{self.name}: no dimension labels, so {'x'.join(map(str, self.shape))} is read as "
                f"c,d,h,w; its last axis of {self.shape[3]} looks like colour: for a video give "
                f"axes 'thwc' (--axes thwc)",
            )
        self.chunks = tuple(ds.chunks) if ds.chunks else None
        filtered = bool(self.chunks) and ds.id.get_create_plist().get_nfilters() > 0
        self._chunk_bytes_filtered = math.prod(self.chunks) * self.dtype.itemsize if filtered else 0
        self._slab_axis = self._pick_slab_axis()
        self.chunk_rows = int(self.chunks[self._slab_axis]) if self.chunks else 1
        self.meta = self._read_meta(ds)

    def _pick_slab_axis(self) -> int:
        pooled = self.layout.pooled
        if not self.chunks:
            return pooled[0]
        # thinnest chunk relative to the axis length; ties go to the outermost axis
        return min(pooled, key=lambda a: (min(self.chunks[a], self.shape[a]) / self.shape[a], a))

    @property
    def slab_axis(self) -> int:
        return self._slab_axis

    def _read_meta(self, ds: h5py.Dataset) -> VolumeMeta:
        attrs: dict = {}
        for key in ds.attrs:
            if key in SKIP_ATTRS:
                continue
            try:
                attrs[key] = ds.attrs[key]
            except Exception:  # unreadable attribute types: skip
                continue
        labels = dimension_labels(ds)
        spacing = unit = None
        esu = attrs.get("element_size_um")
        if esu is not None:
            try:
                esu = np.asarray(esu, dtype=float).ravel()
            except (TypeError, ValueError):
                esu = None
        if esu is not None and len(esu) in (3, ds.ndim):
            sel = esu if len(esu) == 3 else esu[list(self.layout.pooled)]
            if np.all(np.isfinite(sel)) and np.all(sel > 0):
                spacing, unit = tuple(float(v) for v in sel), "um"
        affine = None
        aff = attrs.get("affine")
        if aff is not None:
            try:
                aff = np.asarray(aff, dtype=float)
                if aff.shape == (4, 4) and np.all(np.isfinite(aff)):
                    affine = aff
            except (TypeError, ValueError):
                pass
        slope = attrs.get("scl_slope")
        inter = attrs.get("scl_inter")
        scale = (1.0, 0.0)
        try:
            if slope is not None or inter is not None:
                s = 1.0 if slope is None else float(np.asarray(slope).ravel()[0])
                i = 0.0 if inter is None else float(np.asarray(inter).ravel()[0])
                if math.isfinite(s) and math.isfinite(i) and s != 0:
                    scale = (s, i)
        except (TypeError, ValueError, IndexError):
            pass
        return VolumeMeta(
            format="hdf5",
            spacing=spacing,
            spacing_unit=unit,
            affine=affine,
            scale=scale,
            extra={"attrs": attrs, "dim_labels": labels, "dataset": ds.name, "chunks": self.chunks,
                   "compression": ds.compression},
        )

    def files(self) -> tuple[str, ...]:
        return self._files

    @property
    def caches_slab(self) -> bool:  # only filtered chunks are worth keeping: unfiltered ones are read in place
        return self._chunk_bytes_filtered > 0

    def reader_overhead(self) -> int:
        """A filtered chunk is decompressed whole: its compressed bytes and the decompressed
        chunk (when the cache cannot take it) are the reader's own."""
        return 2 * self._chunk_bytes_filtered

    def set_cache(self, nbytes: int) -> None:
        """Re-open the dataset with a chunk cache of ``nbytes`` (+ one chunk); see module doc."""
        if not self.caches_slab:
            return
        chunk_bytes = int(np.prod(self.chunks)) * self._ds.dtype.itemsize
        total = int(max(nbytes, 0)) + chunk_bytes
        nslots = _next_prime(max(521, 100 * (total // chunk_bytes + 1)))
        dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
        dapl.set_chunk_cache(nslots, total, 1.0)
        dsid = h5py.h5d.open(self.file.id, self.dataset_path.encode(), dapl)
        self._ds = h5py.Dataset(dsid)
        self.cache_nbytes = total

    def read(self, index):
        index = normalize_index(index, self.shape, self.name)
        out = np.empty(box_shape(index), dtype=self.dtype)
        if out.size == 0:
            return out
        try:
            self._ds.read_direct(out, source_sel=index)
        except Exception as exc:
            raise LucidIOError(f"{self.name}: cannot read box {format_box(index)}: {one_line(exc)}") from None
        return out

    def close(self) -> None:
        f = getattr(self, "file", None)
        if f is not None:
            try:
                f.close()
            except Exception:  # pragma: no cover
                pass
            self.file = None


def format_box(index) -> str:
    return "[" + ", ".join(f"{s.start}:{s.stop}" for s in index) + "]"


# ---------------------------------------------------------------- writing


