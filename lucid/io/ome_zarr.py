"""OME-Zarr stores: find the image level a source reads, and build NGFF images atomically.

Reading: ``find_level(root, array, level, name)`` resolves ``img.ome.zarr``
(or ``img.ome.zarr:/labels/cells``, or a level array ``img.ome.zarr:/1``) to
one level array and its :class:`lucid.io.ome.Image`.

Writing: :class:`OmeStore` is a temporary store directory holding level arrays
``0``, ``1``, ... and, on ``finish``, the group's ``multiscales``; it becomes
the destination only on commit.  :class:`LevelArray` writes boxes given in the
source's axis order into an array stored in NGFF order (time, channel, space).
:class:`OmeZarrSink` is the one-level image ``pool3d`` writes.
"""

from __future__ import annotations

import os

import numpy as np

from lucid.io import ome
from lucid.io.atomic import FileSink, is_no_space, no_space_error
from lucid.io.base import LucidIOError, Source, one_line
from lucid.io.layout import outer_axes
from lucid.io.zarr_store import DirectoryTarget

OME_SUFFIX = ".ome.zarr"


def is_ome_path(path) -> bool:
    return os.fspath(path).lower().rstrip("/").endswith(OME_SUFFIX)


def find_level(root, array: str | None, level: int | None, name: str):
    """``(level array, its key, Image, level)`` when ``array`` names an NGFF image or one of its
    levels; None when it names no NGFF image (a plain Zarr array or store)."""
    import zarr

    key = (array or "").strip("/")
    node = root
    if key:
        try:
            node = root[key]
        except KeyError:
            return None
    group, want = node, None
    if isinstance(node, zarr.Array):
        if not key:
            return None
        parent_key, _, want = key.rpartition("/")
        group = root[parent_key] if parent_key else root
        if not isinstance(group, zarr.Group):
            return None
    try:
        image = ome.parse_image(dict(group.attrs))
    except ome.NGFFError as exc:
        raise LucidIOError(f"{name}: bad OME-Zarr metadata: {exc}") from None
    if image is None:
        if level is not None:
            raise LucidIOError(f"{name}: --level {level} needs an OME-Zarr image (no multiscales metadata)")
        return None
    if want is not None:
        if want not in image.paths:
            return None
        found = image.paths.index(want)
        if level is not None and level != found:
            raise LucidIOError(f"{name}: {array} is level {found}, not level {level}")
        level = found
    level = 0 if level is None else int(level)
    if not 0 <= level < len(image.paths):
        raise LucidIOError(f"{name}: no level {level}; the image has levels 0 to {len(image.paths) - 1}")
    path = image.paths[level].strip("/")
    try:
        arr = group[path]
    except KeyError:
        raise LucidIOError(f"{name}: level {level} array {path!r} is missing (no zarr.json or .zarray)") from None
    except Exception as exc:
        raise LucidIOError(f"{name}: level {level} array {path!r} cannot be opened: {one_line(exc)}") from None
    if not isinstance(arr, zarr.Array):
        raise LucidIOError(f"{name}: level {level} path {path!r} is a group, not an array")
    if arr.ndim != len(image.axes):
        raise LucidIOError(f"{name}: level {level} array has {arr.ndim} dimensions for {len(image.axes)} NGFF axes")
    group_key = group.path.strip("/")
    full = "/" + "/".join(p for p in (group_key, path) if p)
    return arr, full, image, level


def check_dimension_names(arr, image: ome.Image, name: str) -> None:
    """NGFF 0.5 level arrays carry dimension_names equal to the axes' names."""
    names = getattr(arr.metadata, "dimension_names", None)
    want = [a.get("name") for a in image.axes]
    if names and any(n is not None for n in names) and list(names) != want:
        raise LucidIOError(f"{name}: dimension_names {list(names)} do not match the NGFF axes {want}")


class LevelArray:
    """One level array stored in NGFF axis order; boxes and data arrive in the source's order."""

    def __init__(self, arr, perm: tuple[int, ...], name: str, writer=None):
        self.arr, self.perm, self.name, self.writer = arr, perm, name, writer
        self.written = 0

    def write(self, index: tuple[slice, ...], data: np.ndarray) -> None:
        box = tuple(index[a] for a in self.perm)
        values = np.transpose(data, self.perm)
        try:
            if self.writer is None or not self.writer.write(box, values):
                values = np.ascontiguousarray(values)
                self.arr[box] = values
        except Exception as exc:
            if is_no_space(exc):
                raise no_space_error(self.name, exc) from None
            raise LucidIOError(f"{self.name}: cannot write: {one_line(exc)}") from None
        self.written += values.size


class OmeStore:
    """A temporary directory that becomes an NGFF image store on ``commit``."""

    def __init__(self, path, *, zarr_format: int | None, force: bool, protect=(), name: str | None = None):
        import zarr

        self.display = name or os.fspath(path)
        self.zarr_format = 3 if zarr_format is None else int(zarr_format)
        if self.zarr_format not in (2, 3):
            raise LucidIOError(f"{self.display}: zarr format must be 2 or 3, got {zarr_format!r}")
        self.version = "0.5" if self.zarr_format == 3 else "0.4"
        self.target = DirectoryTarget(path, force=force, protect=protect)
        try:
            self.store = zarr.storage.LocalStore(os.fspath(self.target.tmp))
            self.group = zarr.open_group(store=self.store, mode="w", zarr_format=self.zarr_format)
            self.levels: list[LevelArray] = []
        except BaseException:
            self.abort()
            raise

    def add_level(self, key: str, shape, dtype, chunks, perm, axes, *, compressors=None, shards=None,
                  attributes: dict | None = None) -> LevelArray:
        import zarr

        stored = tuple(int(shape[a]) for a in perm)
        kwargs = dict(shape=stored, dtype=np.dtype(dtype), chunks=tuple(int(c) for c in chunks),
                      zarr_format=self.zarr_format, compressors=compressors, fill_value=0,
                      attributes=dict(attributes or {}))
        names = [axes[a]["name"] for a in perm]
        if self.zarr_format == 3:
            kwargs["dimension_names"] = names
            if shards:
                kwargs["shards"] = tuple(int(s) for s in shards)
        else:
            kwargs["attributes"]["_ARRAY_DIMENSIONS"] = names
            kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
        try:
            arr = zarr.create_array(store=self.store, name=key, **kwargs)
        except Exception as exc:
            if is_no_space(exc):
                raise no_space_error(self.display, exc) from None
            raise LucidIOError(f"{self.display}: cannot create level {key}: {one_line(exc)}") from None
        from lucid.io.zarr_chunks import chunk_writer

        level = LevelArray(arr, tuple(perm), f"{self.display}:/{key}", chunk_writer(arr, self.store))
        self.levels.append(level)
        return level

    def link_level(self, key: str, source_dir: str, names, attributes: dict) -> None:
        """Level ``key`` as the input array itself: its chunk (or shard) files hard-linked (copied
        byte for byte across file systems), its metadata rewritten with NGFF ``names`` and
        ``attributes``.  No chunk is decoded or encoded.  zarr-python and TensorStore replace a
        chunk file when they rewrite it, so a later change to the input does not reach the link."""
        import json
        import shutil

        dest = os.path.join(self.target.tmp, key)
        meta_files = {"zarr.json", ".zarray", ".zattrs"}
        copied: set[str] = set()
        before = {os.path.join(dest, os.path.relpath(r, source_dir)) if r != source_dir else dest
                  for r, _d, _f in os.walk(source_dir)}
        try:
            for root, _dirs, files in os.walk(source_dir):
                rel = os.path.relpath(root, source_dir)
                os.makedirs(os.path.join(dest, rel), exist_ok=True)
                for f in files:
                    if rel == "." and f in meta_files:
                        continue
                    src, dst = os.path.join(root, f), os.path.join(dest, rel, f)
                    try:
                        os.link(src, dst)
                    except OSError:
                        shutil.copyfile(src, dst)
                        copied.add(os.path.join(dest, rel) if rel != "." else dest)
            linked = {os.path.normpath(d) for d in before - copied} - {os.path.normpath(dest)}
            self.target.linked = getattr(self.target, "linked", set()) | linked  # their files need no fsync
            if self.zarr_format == 3:
                with open(os.path.join(source_dir, "zarr.json")) as fh:
                    meta = json.load(fh)
                meta["dimension_names"], meta["attributes"] = list(names), dict(attributes)
                with open(os.path.join(dest, "zarr.json"), "w") as fh:
                    json.dump(meta, fh)
            else:
                shutil.copyfile(os.path.join(source_dir, ".zarray"), os.path.join(dest, ".zarray"))
                with open(os.path.join(dest, ".zattrs"), "w") as fh:
                    json.dump({**attributes, "_ARRAY_DIMENSIONS": list(names)}, fh)
        except OSError as exc:
            if is_no_space(exc):
                raise no_space_error(self.display, exc) from None
            raise LucidIOError(f"{self.display}: cannot link level {key} to {source_dir}: {exc}") from None

    def finish(self, attributes: dict) -> None:
        try:
            self.group.attrs.update(attributes)
        except Exception as exc:
            if is_no_space(exc):
                raise no_space_error(self.display, exc) from None
            raise LucidIOError(f"{self.display}: cannot write the NGFF metadata: {one_line(exc)}") from None

    def _close_writers(self) -> None:
        for level in getattr(self, "levels", []):
            if level.writer is not None:
                level.writer.close()

    def commit(self) -> None:
        self._close_writers()
        self.target.sync()
        self.target.commit()

    def abort(self) -> None:
        self._close_writers()
        target = getattr(self, "target", None)
        if target is not None:
            target.abort()


def json_attrs(attrs: dict) -> dict:
    """Attributes as JSON values (numpy arrays become lists; what JSON cannot hold, text)."""
    from lucid.io.zarr import jsonable

    out = {}
    for key, value in attrs.items():
        try:
            out[str(key)] = jsonable(value)
        except (TypeError, ValueError):
            out[str(key)] = str(value)
    return out


def lucid_metadata(provenance: dict, method: str = "max") -> dict:
    """The multiscale's ``metadata``: how the levels were made (``type`` says the method)."""
    return {"method": method, "software": "lucid",
            **json_attrs({k.removeprefix("lucid_"): v for k, v in provenance.items()})}


def group_carry(like: Source) -> dict:
    """Group metadata an output keeps: ``omero`` (channels do not change), ``image-label``."""
    info = like.meta.extra.get("ome") or {}
    out = dict(info.get("carry") or {})
    if info.get("image_label") is not None:
        out["image-label"] = info["image_label"]
    return out


class OmeZarrSink(FileSink):
    """``pool3d``'s ``.ome.zarr`` output: an NGFF image with one level, the pooled grid."""

    def __init__(self, path, shape, dtype, *, like: Source, pooling=None, kind: str = "output",
                 compression: str = "none", force: bool = False, slab_rows: int | None = None,
                 provenance: dict | None = None, protect=(), zarr_format: int | None = None, shards=None,
                 name: str | None = None):
        from lucid.io.hdf5 import choose_chunks, provenance_attrs
        from lucid.io.zarr import choose_shards, parse_codec

        shown = name or os.fspath(path)
        self.name = shown
        self._set_array(shape, dtype, like, kind)
        frame = ome.frame_of(like.meta, like.layout, like.name)
        if pooling is not None:
            frame = frame.pooled(like.layout.pooled, pooling)
        try:
            ome.check_ngff_axes([frame.axes[a] for a in ome.storage_order(frame.axes, like.order)])
        except ome.NGFFError as exc:
            raise LucidIOError(f"{shown}: {exc}") from None
        self.warnings = list(frame.warnings)
        perm = ome.storage_order(frame.axes, like.order)
        stored = tuple(self.shape[a] for a in perm)
        slab = perm.index(like.slab_axis)
        outer = [perm.index(a) for a in outer_axes(len(self.shape), like.layout.pooled, like.slab_axis, like.order)]
        chunks = choose_chunks(stored, self.dtype.itemsize, slab, slab_rows, outer)
        zf = 3 if zarr_format is None else int(zarr_format)
        compressor = parse_codec(compression, zf, shown)
        try:
            shard_shape = choose_shards(stored, chunks, slab, slab_rows, shards, tuple(outer))
        except ValueError as exc:
            raise LucidIOError(f"{shown}: {exc}") from None
        if shard_shape and zf == 2:
            raise LucidIOError(f"{shown}: sharding needs Zarr format 3")
        self.store = OmeStore(path, zarr_format=zarr_format, force=force, protect=[like.path, *protect], name=shown)
        self.target = self.store.target
        self.path = os.fspath(self.target.dest)
        self.written = 0
        try:
            attrs = provenance_attrs(like, pooling, kind, provenance)
            if frame.affine is not None:
                attrs["lucid_affine"] = ome.stored_affine(frame.affine, like.layout.pooled, perm)
            attrs = json_attrs(attrs)
            self.level = self.store.add_level("0", self.shape, self.dtype, chunks, perm, frame.axes,
                                              compressors=compressor, shards=shard_shape, attributes=attrs)
            datasets = [{"path": "0", "coordinateTransformations": frame.transforms(perm)}]
            self._group_attrs = ome.multiscales(self.store.version, [frame.axes[a] for a in perm], datasets,
                                                (like.meta.extra.get("ome") or {}).get("name"),
                                                lucid_metadata(provenance or {}), group_carry(like))
        except BaseException:
            self.abort()
            raise

    def write(self, index, data) -> None:
        index = self._box(index, data)
        if np.size(data) == 0:
            return
        try:
            self.level.write(index, np.asarray(data, dtype=self.dtype))
        except BaseException:
            self.abort()
            raise
        self.written += np.size(data)

    def _finish(self) -> None:
        self.store.finish(self._group_attrs)

    def abort(self) -> None:
        store = getattr(self, "store", None)
        if store is not None:
            store.abort()
