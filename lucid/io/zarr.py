"""Zarr volumes (v2 and v3) via zarr-python 3: ``ZarrSource`` and ``ZarrSink``.

Addressing
    ``vol.zarr`` (a directory store) or ``vol.zarr.zip``/``vol.zip`` (read only),
    optionally ``:/group/array`` like HDF5 datasets; a store holding exactly one
    array of 3 or more dimensions needs no path.

Reading
    Stores are opened read-only.  Every codec zarr-python ships is read, sharded
    arrays included.  The slab axis is the pooled axis whose chunks are thinnest
    relative to its length (as for HDF5); ``chunk_rows`` is the chunk extent
    along it, so the planner cuts slabs on chunk boundaries and each chunk is
    decoded once per run when kernel = stride.  Axes come from ``axes``, else
    from ``dimension_names`` (v3) or ``_ARRAY_DIMENSIONS`` (v2) when they are
    single letters forming a valid layout.

Writing
    v3 by default (``zarr_format=2`` for v2), chunks of about 1 MiB whose extent
    along the slab axis divides the engine's slab height, so every write covers
    whole chunks; ``shards`` (a multiple of chunks per axis, or True for one
    shard per slab) likewise covers whole slabs: zarr-python cannot merge
    partial shard writes, so each shard is written once.  Attributes are copied,
    ``dimension_names`` written (v3), spacing goes to ``element_size_um``
    multiplied by the stride, provenance attributes are prefixed ``lucid_``.
    The store is built in a temporary directory and renamed into place on
    commit (:class:`lucid.io.zarr_store.DirectoryTarget`).
"""

from __future__ import annotations

import json
import math
import os
import re

import numpy as np

from lucid.io.array import check_dtype, check_shape
from lucid.io.atomic import FileSink, is_no_space, no_space_error
from lucid.io.base import (
    UNIT_TO_UM,
    LucidIOError,
    Source,
    VolumeMeta,
    box_shape,
    normalize_index,
    one_line,
)
from lucid.io.compression import CompressionError
from lucid.io.compression import parse_codec as compression_codec
from lucid.io.layout import outer_axes, parse_layout
from lucid.io.zarr_store import DirectoryTarget

ZARR_RE = re.compile(r"^(?P<file>.*?(?:\.zarr\.zip|\.zarr|\.zip))(?::(?P<ds>.*))?/?$", re.IGNORECASE | re.DOTALL)
COPY_SKIP = {"element_size_um", "_ARRAY_DIMENSIONS", "multiscales", "ome", "affine"}


def _zarr():
    import zarr

    return zarr


def open_store(path: str, name: str, mode: str = "r"):
    """A read-only store for a ``.zarr`` directory or a ``.zip`` file."""
    zarr = _zarr()
    if not os.path.lexists(path):
        raise LucidIOError(f"{name}: no such file or directory")
    if path.lower().endswith(".zip"):
        if os.path.isdir(path):
            raise LucidIOError(f"{name}: is a directory, not a zip file")
        try:
            return zarr.storage.ZipStore(path, mode="r")
        except Exception as exc:
            raise LucidIOError(f"{name}: not a readable zip file: {one_line(exc)}") from None
    if not os.path.isdir(path):
        raise LucidIOError(f"{name}: not a Zarr store (a .zarr store is a directory)")
    if not os.access(path, os.R_OK | os.X_OK):
        raise LucidIOError(f"{name}: permission denied")
    return zarr.storage.LocalStore(path, read_only=True)


def list_arrays(node, prefix: str = "") -> list[tuple[str, tuple[int, ...]]]:
    """Every array under a group: (path, shape)."""
    zarr = _zarr()
    if isinstance(node, zarr.Array):
        return [("/", tuple(node.shape))]
    out = []
    for key, member in node.members(max_depth=None):
        if isinstance(member, zarr.Array):
            out.append(("/" + key, tuple(member.shape)))
    return sorted(out)


def select_array(root, array: str | None, name: str):
    zarr = _zarr()
    if array not in (None, "", "/"):
        if isinstance(root, zarr.Array):
            raise LucidIOError(f"{name}: the store is a single array; it has no {array!r}")
        key = array.strip("/")
        try:
            node = root[key]
        except KeyError:
            found = ", ".join(p for p, _ in list_arrays(root)) or "none"
            raise LucidIOError(f"{name}: no array {array!r} in the store (arrays: {found})") from None
        if not isinstance(node, zarr.Array):
            raise LucidIOError(f"{name}:{array}: is a group, not an array")
        return node, "/" + key
    if isinstance(root, zarr.Array):
        return root, "/"
    arrays = [(p, s) for p, s in list_arrays(root) if len(s) >= 3]
    if len(arrays) != 1:
        listed = ", ".join(f"{p} {s}" for p, s in arrays) or "none with 3 or more dimensions"
        raise LucidIOError(f"{name}: {len(arrays)} arrays in the store, name one as {name}:/path (arrays: {listed})")
    return root[arrays[0][0].strip("/")], arrays[0][0]


def _open_root(store, name: str):
    zarr = _zarr()
    try:
        return zarr.open(store=store, mode="r")
    except Exception as exc:
        text = one_line(exc)
        if isinstance(exc, FileNotFoundError) or "nothing found" in text.lower() or "no group" in text.lower():
            raise LucidIOError(f"{name}: not a Zarr store (no zarr.json, .zgroup or .zarray)") from None
        raise LucidIOError(f"{name}: cannot open the Zarr store: {text}") from None


def _axes_from_names(names, ndim: int) -> str | None:
    if not names or len(names) != ndim or not all(isinstance(n, str) and len(n) == 1 for n in names):
        return None
    axes = "".join(names).lower()
    try:
        parse_layout(axes, ndim, "hdf5")
    except LucidIOError:
        return None
    return axes


def jsonable(value):
    """An attribute value as JSON (numpy arrays and scalars become lists and numbers)."""
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    json.dumps(value)  # raises for what JSON cannot hold
    return value


class ZarrSource(Source):
    """One array of a Zarr store (v2 or v3), read in slabs."""

    order = "C"
    whole_chunks = True  # no chunk cache: the planner reads whole chunk rows when the budget allows

    def __init__(self, path, array: str | None = None, *, axes: str | None = None, name: str | None = None,
                 level: int | None = None):
        shown = name or os.fspath(path)
        self.path = os.path.abspath(os.fspath(path))
        self.store = open_store(self.path, shown)
        try:
            self._init(shown, array, axes, level)
        except LucidIOError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise LucidIOError(f"{getattr(self, 'name', shown)}: cannot read the array (damaged store?): {one_line(exc)}") from None

    def _init(self, shown: str, array: str | None, axes: str | None, level: int | None) -> None:
        from lucid.io import ome, ome_zarr

        root = _open_root(self.store, shown)
        found = ome_zarr.find_level(root, array, level, shown)
        image = None
        if found is None:
            arr, key = select_array(root, array, shown)
        else:
            arr, key, image, level = found
        self.array_path = key
        self.name = shown if key == "/" else f"{shown}:{key}"
        self._arr = arr
        if arr.ndim < 3:
            raise LucidIOError(f"{self.name}: a {arr.ndim}-D array (shape {arr.shape}) cannot be pooled in 3-D")
        self.shape = tuple(int(n) for n in arr.shape)
        self.dtype = check_dtype(np.dtype(arr.dtype).newbyteorder("="), self.name)
        check_shape(self.shape, self.name, self.dtype.itemsize)
        attrs = dict(arr.attrs)
        names = getattr(arr.metadata, "dimension_names", None) or attrs.get("_ARRAY_DIMENSIONS")
        if image is not None:
            ome_zarr.check_dimension_names(arr, image, self.name)
            names = [ome.layout_letters(image.axes)[i] for i in range(arr.ndim)]
        from_names = _axes_from_names(names, arr.ndim)
        if axes is None:
            axes = from_names
        elif names and any(names) and from_names is not None and from_names != axes.lower():
            raise LucidIOError(f"{self.name}: --axes {axes!r} contradicts the array's dimension_names {list(names)}")
        try:
            self.layout = parse_layout(axes, arr.ndim, "hdf5")
        except LucidIOError as exc:
            raise type(exc)(f"{self.name}: {exc}") from None
        self.chunks = tuple(int(c) for c in arr.chunks)
        shards = getattr(arr, "shards", None)
        self.shards = tuple(int(c) for c in shards) if shards else None
        pooled = self.layout.pooled
        self._slab_axis = min(pooled, key=lambda a: (min(self.chunks[a], self.shape[a]) / self.shape[a], a))
        self.chunk_rows = self.chunks[self._slab_axis]
        from lucid.io.zarr_chunks import chunk_reader

        self._chunk_reader = chunk_reader(arr, self.store)  # None: read through zarr-python
        self.meta = self._read_meta(attrs, names)
        if image is not None:
            found = ome.source_meta(image, level, self.layout, attrs)
            self.meta.spacing, self.meta.spacing_unit, self.meta.affine = (
                found["spacing"], found["spacing_unit"], found["affine"])
            self.meta.extra["ome"] = found["ome"]
            self.meta.extra["lucid_affine"] = attrs.get("lucid_affine")

    @property
    def slab_axis(self) -> int:
        return self._slab_axis

    def _read_meta(self, attrs: dict, names) -> VolumeMeta:
        spacing = unit = None
        esu = attrs.get("element_size_um")
        try:
            esu = None if esu is None else np.asarray(esu, dtype=float).ravel()
        except (TypeError, ValueError):
            esu = None
        if esu is not None and len(esu) in (3, len(self.shape)):
            sel = esu if len(esu) == 3 else esu[list(self.layout.pooled)]
            if np.all(np.isfinite(sel)) and np.all(sel > 0):
                spacing, unit = tuple(float(v) for v in sel), "um"
        zarr_format = int(self._arr.metadata.zarr_format)
        return VolumeMeta(
            format="zarr", spacing=spacing, spacing_unit=unit,
            extra={"attrs": attrs, "dim_labels": list(names) if names else [], "chunks": self.chunks,
                   "shards": self.shards, "zarr_format": zarr_format},
        )

    def reader_overhead(self) -> int:
        """The direct chunk reader's buffers: per worker thread, a chunk and its stored bytes."""
        reader = getattr(self, "_chunk_reader", None)
        return 0 if reader is None else reader.memory()

    def read(self, index):
        index = normalize_index(index, self.shape, self.name)
        if 0 in box_shape(index):
            return np.empty(box_shape(index), dtype=self.dtype)
        try:
            if self._chunk_reader is not None:
                return self._chunk_reader.read(index, np.empty(box_shape(index), dtype=self.dtype))
            out = self._arr[index]
        except Exception as exc:
            box = "[" + ", ".join(f"{s.start}:{s.stop}" for s in index) + "]"
            raise LucidIOError(f"{self.name}: cannot read box {box} (corrupt chunk?): {one_line(exc)}") from None
        # zarr-python returns a new array per read: copy only to fix the dtype, layout or a read-only buffer
        # (np.require would copy every time: "<f4" asked as "=f4" is a view that does not own its data)
        if isinstance(out, np.ndarray) and out.dtype == self.dtype and out.flags.c_contiguous and out.flags.writeable:
            return out
        return np.require(out, dtype=self.dtype, requirements=("C", "W"))

    def close(self) -> None:
        reader = getattr(self, "_chunk_reader", None)
        if reader is not None:
            reader.close()
        store = getattr(self, "store", None)
        if store is not None:
            try:
                store.close()
            except Exception:  # pragma: no cover
                pass
            self.store = None


def parse_codec(compression: str | None, zarr_format: int, name: str):
    """A ``--compression`` text (``lucid.io.compression``'s names) -> zarr's ``compressors`` argument.

    gzip, zstd and blosc are zarr-python's own codecs (no plugin); lzf is HDF5's only."""
    try:
        codec = compression_codec(compression)
    except CompressionError as exc:
        raise LucidIOError(f"{name}: {exc}") from None
    if codec.family == "none":
        return None
    if codec.family == "lzf":
        raise LucidIOError(f"{name}: lzf is an HDF5 filter that Zarr does not have; use gzip, zstd or blosc")
    level = codec.level if codec.level is not None else {"gzip": 1, "zstd": 3, "blosc": 5}[codec.family]
    cname = codec.cname or "zstd"
    if zarr_format == 2:
        import numcodecs

        return {"gzip": lambda: numcodecs.GZip(level=level), "zstd": lambda: numcodecs.Zstd(level=level),
                "blosc": lambda: numcodecs.Blosc(cname=cname, clevel=level)}[codec.family]()
    from zarr import codecs

    return {"gzip": lambda: codecs.GzipCodec(level=level), "zstd": lambda: codecs.ZstdCodec(level=level),
            "blosc": lambda: codecs.BloscCodec(cname=cname, clevel=level)}[codec.family]()


def choose_shards(shape, chunks, slab_axis: int, slab_rows: int | None, shards,
                  outer: tuple[int, ...] = ()) -> tuple[int, ...] | None:
    """Shard shape: whole chunks, along the slab axis one slab (or a divisor of it), and 1 along
    the ``outer`` axes the engine writes one index at a time: every write is then whole shards."""
    if not shards:
        return None
    if shards is True or shards == "auto":
        out = list(int(n) for n in shape)
        out[slab_axis] = slab_rows or shape[slab_axis]
        for a in outer:
            out[a] = 1
        return tuple(-(-o // c) * c for o, c in zip(out, chunks))
    shards = tuple(int(s) for s in shards)
    if len(shards) != len(shape) or any(s <= 0 or s % c for s, c in zip(shards, chunks)):
        raise ValueError(f"shards {shards} must have one entry per axis, each a multiple of the chunks {chunks}")
    for a in outer:
        if shards[a] > 1:
            raise ValueError(f"shards {shards}: axis {a} is written one index at a time, so its extent must be 1 "
                             "(zarr-python cannot merge partial shard writes)")
    if slab_rows and slab_rows % shards[slab_axis] and shards[slab_axis] < shape[slab_axis]:
        raise ValueError(f"shards {shards}: the extent along the slab axis must divide the slab height {slab_rows} "
                         "(zarr-python cannot merge partial shard writes)")
    return shards


class ZarrSink(FileSink):
    """One Zarr array written slab by slab into a temporary store directory."""

    def __init__(self, path, shape, dtype, *, like: Source, pooling=None, kind: str = "output",
                 array: str | None = None, compression: str = "gzip", force: bool = False,
                 slab_rows: int | None = None, provenance: dict | None = None, protect=(),
                 zarr_format: int | None = None, shards=None, chunks=None, name: str | None = None,
                 scale=None, staging=None):
        from lucid.io.hdf5 import choose_chunks, provenance_attrs

        zarr = _zarr()
        shown = name or os.fspath(path)
        self._set_array(shape, dtype, like, kind)
        self.zarr_format = 3 if zarr_format is None else int(zarr_format)
        if self.zarr_format not in (2, 3):
            raise LucidIOError(f"{shown}: zarr format must be 2 or 3, got {zarr_format!r}")
        self.array_path = (array or "").strip("/")
        self.name = shown if not self.array_path else f"{shown}:/{self.array_path}"
        compressor = parse_codec(compression, self.zarr_format, self.name)
        slab_axis = like.slab_axis
        outer = outer_axes(len(self.shape), like.layout.pooled, slab_axis, like.order)
        self.chunks = tuple(chunks) if chunks else choose_chunks(self.shape, self.dtype.itemsize, slab_axis, slab_rows, outer)
        try:
            # dask tasks (``staging``) write whole blocks, not the engine's one-index-at-a-time rows
            self.shards = choose_shards(self.shape, self.chunks, slab_axis, slab_rows, shards,
                                        () if staging is not None else outer)
        except ValueError as exc:
            raise LucidIOError(f"{self.name}: {exc}") from None
        if self.shards and self.zarr_format == 2:
            raise LucidIOError(f"{self.name}: sharding needs Zarr format 3")
        self.target = DirectoryTarget(path, force=force, protect=[like.path, *protect], fixed_tmp=staging)
        self.path = os.fspath(self.target.dest)
        self.written = 0
        try:
            store = zarr.storage.LocalStore(os.fspath(self.target.tmp))
            if staging is not None and self._reopen(store):  # a resumed run: the blocks written stay
                return
            attrs = self._attributes(like, pooling, kind, provenance_attrs(like, pooling, kind, provenance))
            kwargs = dict(shape=self.shape, dtype=self.dtype, chunks=self.chunks, zarr_format=self.zarr_format,
                          compressors=compressor, attributes=attrs, fill_value=0)
            if self.zarr_format == 3:
                kwargs["dimension_names"] = list(like.layout.axes)
                if self.shards:
                    kwargs["shards"] = self.shards
            if self.array_path:
                zarr.open_group(store=store, mode="w", zarr_format=self.zarr_format)
            self.arr = zarr.create_array(store=store, name=self.array_path or None, **kwargs)
            from lucid.io.zarr_chunks import chunk_writer

            self._writer = chunk_writer(self.arr, store)  # None: write through zarr-python
        except LucidIOError:
            self.abort()
            raise
        except BaseException as exc:
            self.abort()
            if isinstance(exc, Exception):
                if is_no_space(exc):
                    raise no_space_error(self.name, exc) from None
                raise LucidIOError(f"{self.name}: cannot create the output: {one_line(exc)}") from None
            raise

    def _reopen(self, store) -> bool:
        """Open the array a cut-off run left in the staging store, if it is this one."""
        zarr = _zarr()
        try:
            arr = zarr.open_array(store=store, path=self.array_path or None, mode="r+")
        except Exception:
            return False
        if tuple(arr.shape) != self.shape or arr.dtype != self.dtype or tuple(arr.chunks) != self.chunks:
            return False
        self.arr = arr
        return True

    @property
    def store_path(self) -> str:
        """The directory the array is being written in (workers open it by path)."""
        return os.fspath(self.target.tmp)

    def mark_written(self) -> None:
        """Every value was written by other processes (dask tasks writing whole chunks)."""
        self.written = self.expected_written

    def _attributes(self, like: Source, pooling, kind: str, provenance: dict) -> dict:
        meta = like.meta
        stride = pooling.stride if pooling is not None else (1, 1, 1)
        out = {}
        for key, value in dict(meta.extra.get("attrs", {})).items():
            if key in COPY_SKIP or key.startswith("lucid_") or key in ("DIMENSION_LABELS",):
                continue
            try:
                out[key] = jsonable(value)
            except (TypeError, ValueError):
                continue
        if meta.spacing is not None and meta.spacing_unit in UNIT_TO_UM:
            um = np.asarray(meta.spacing, float) * UNIT_TO_UM[meta.spacing_unit] * np.asarray(stride, float)
            out["element_size_um"] = [float(v) for v in um]
        if self.zarr_format == 2:
            out["_ARRAY_DIMENSIONS"] = list(like.layout.axes)
        for key, value in provenance.items():
            try:
                out[key] = jsonable(value)
            except (TypeError, ValueError):
                out[key] = str(value)
        return out

    def write(self, index, data) -> None:
        index = self._box(index, data)
        data = np.ascontiguousarray(data, dtype=self.dtype)
        if data.size == 0:
            return
        try:
            writer = getattr(self, "_writer", None)
            if writer is None or not writer.write(index, data):
                self.arr[index] = data
        except Exception as exc:
            self.abort()
            if is_no_space(exc):
                raise no_space_error(self.name, exc) from None
            raise LucidIOError(f"{self.name}: cannot write: {one_line(exc)}") from None
        self.written += data.size

    def _finish(self) -> None:
        self._close_writer()
        self.arr = None

    def _close_writer(self) -> None:
        writer, self._writer = getattr(self, "_writer", None), None
        if writer is not None:
            writer.close()

    def abort(self) -> None:
        self._close_writer()
        self.arr = None
        target = getattr(self, "target", None)
        if target is not None:
            target.abort()
