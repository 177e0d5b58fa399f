"""``describe(path)``: what a volume file holds, as a JSON-ready dict (``lucid info``).

Everything comes from headers and attributes; no voxel data is read.

>>> info = describe("sample_data/video_clip.h5")      # doctest: +SKIP
>>> info["volume"]["shape"], info["volume"]["axes"]   # doctest: +SKIP
([32, 64, 64, 3], 'thwc')
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from lucid.io import LucidIOError, detect_format, open_source
from lucid.io.base import Source

__all__ = ["describe", "jsonable"]


def describe(path: str | os.PathLike, dataset: str | None = None, axes: str | None = None,
             level: int | None = None) -> dict[str, Any]:
    """Describe a NIfTI or HDF5 file (``file.h5:/ds`` or ``dataset`` picks an HDF5 dataset).

    Returns ``{"path", "format", "file_bytes", "datasets", "volume", "note"}``:
    ``datasets`` lists every HDF5 dataset (None for NIfTI); ``volume`` describes
    the array ``pool3d_file`` would read (shape, dtype, axes, spacing, affine,
    scale, plus HDF5 storage or NIfTI header fields), or is None when an HDF5
    file holds no single 3+-D dataset to pick, which ``note`` then explains.
    Raises :class:`LucidIOError` for unreadable files or a bad dataset/axes.
    """
    fmt, file, ds_from_path = detect_format(path)
    if dataset is None:
        dataset = ds_from_path
    if not os.path.isfile(file) or level is not None:
        open_source(path, dataset=dataset, axes=axes, level=level).close()  # raises the library's one-line error
    info: dict[str, Any] = {
        "path": file,
        "format": fmt,
        "file_bytes": _tree_bytes(file),
        "datasets": None,
        "volume": None,
        "note": None,
    }
    if fmt == "hdf5":
        info["datasets"] = _hdf5_datasets(file)
        candidates = [d for d in info["datasets"] if len(d["shape"]) >= 3]
        if dataset is None and len(candidates) != 1:
            info["note"] = (
                f"no dataset with 3 or more dimensions to pool in {file}" if not candidates else
                f"{len(candidates)} datasets with 3+ dimensions: name one as {file}:/path or with --dataset"
            )
            return jsonable(info)
    with open_source(path if fmt == "zarr" else file, dataset=dataset, axes=axes, level=level) as source:
        volume = _volume(source)
        if fmt == "hdf5":
            volume.update(_hdf5_storage(file, source.dataset_path))
        elif fmt == "zarr":
            volume.update(_zarr_storage(source))
        elif source.meta.format == "nifti":
            volume.update(_nifti_header(source))
        else:  # Analyze, MGH
            info["format"] = source.meta.format
            volume.update(_relative_header(source))
    info["volume"] = volume
    return jsonable(info)


def _volume(source: Source) -> dict[str, Any]:
    layout, meta = source.layout, source.meta
    slope, inter = meta.scale
    return {
        "name": source.name,
        "shape": list(source.shape),
        "dtype": str(source.dtype),
        "nbytes": source.nbytes,
        "axes": layout.axes,
        "pooled_axes": layout.pooled_letters,
        "carried_axes": "".join(layout.axes[a] for a in layout.carried),
        "slab_axis": layout.axes[source.slab_axis],
        "spacing": None if meta.spacing is None else [float(v) for v in meta.spacing],
        "spacing_unit": meta.spacing_unit,
        "affine": None if meta.affine is None else np.asarray(meta.affine, float).tolist(),
        "scl_slope": float(slope),
        "scl_inter": float(inter),
    }


def _tree_bytes(path: str) -> int:
    """A file's size, or the total size of the files under a directory (a Zarr store)."""
    if not os.path.isdir(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _zarr_storage(source: Source) -> dict[str, Any]:
    """Chunks, shards, codecs and attributes of a Zarr array; an OME-Zarr image's axes and transforms."""
    extra = source.meta.extra
    arr = source._arr
    out: dict[str, Any] = {
        "array": source.array_path,
        "zarr_format": extra.get("zarr_format"),
        "chunks": list(extra.get("chunks") or []),
        "shards": None if not extra.get("shards") else list(extra["shards"]),
        "codecs": [type(c).__name__ for c in (*arr.filters, *arr.compressors)],
        "dim_labels": list(extra.get("dim_labels") or []),
        "attrs": {k: v for k, v in extra.get("attrs", {}).items() if k not in ("_ARRAY_DIMENSIONS",)},
        "ome": None,
    }
    info = extra.get("ome")
    if info:
        out["ome"] = {
            "version": info["version"], "level": info["level"], "levels": info["levels"], "paths": info["paths"],
            "name": info["name"], "axes": info["axes"], "scale": info["scale"], "translation": info["translation"],
            "label": info["image_label"] is not None,
        }
    return out


def _hdf5_datasets(file: str) -> list[dict[str, Any]]:
    import h5py

    from lucid.io.hdf5 import open_h5_file

    found: list[dict[str, Any]] = []

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset):
            found.append({
                "path": "/" + name,
                "shape": list(obj.shape) if obj.shape is not None else [],
                "dtype": str(obj.dtype),
                "chunks": None if obj.chunks is None else list(obj.chunks),
                "compression": obj.compression,
            })

    with open_h5_file(file, file) as f:
        try:
            f.visititems(visit)
        except Exception as exc:  # broken links, unreadable objects
            raise LucidIOError(f"{file}: cannot list datasets: {' '.join(str(exc).split())}") from None
    return found


def _hdf5_storage(file: str, dataset: str) -> dict[str, Any]:
    from lucid.io.hdf5 import SKIP_ATTRS, dimension_labels, open_h5_file

    with open_h5_file(file, file) as f:
        ds = f[dataset]
        attrs = {}
        for key in ds.attrs:
            if key in SKIP_ATTRS or key == "DIMENSION_LABELS":  # labels are in dim_labels
                continue
            try:
                attrs[key] = ds.attrs[key]
            except Exception:  # attribute types h5py cannot read
                attrs[key] = "<unreadable>"
        labels = dimension_labels(ds)
        return {
            "dataset": ds.name,
            "chunks": None if ds.chunks is None else list(ds.chunks),
            "compression": ds.compression,
            "compression_opts": ds.compression_opts,
            "shuffle": bool(ds.shuffle),
            "fillvalue": ds.fillvalue,
            "dim_labels": labels,
            "element_size_um": attrs.get("element_size_um"),
            "attrs": attrs,
        }


def _nifti_header(source: Source) -> dict[str, Any]:
    hdr = source.header  # NiftiSource keeps its header
    sform, scode = hdr.get_sform(coded=True)
    try:
        qform, qcode = hdr.get_qform(coded=True)
    except Exception:  # invalid quaternion fields
        qform, qcode = None, int(hdr["qform_code"])
    freq, phase, slc = hdr.get_dim_info()
    try:
        space, time = hdr.get_xyzt_units()
    except KeyError:  # a units byte that is no NIfTI code: show the raw number
        space = time = f"unknown code {int(hdr['xyzt_units'])}"
    intent = hdr.get_intent()
    return {
        "nifti_version": source.meta.extra.get("nifti_version", 1),
        "datatype": str(hdr.get_value_label("datatype")),
        "zooms": [float(z) for z in source.raw_header.get_zooms()],  # as in the file, NaN included
        "xyzt_units": [space, time],
        "qform_code": int(qcode),
        "qform_code_name": str(hdr.get_value_label("qform_code")),
        "qform": None if qform is None or qcode == 0 else np.asarray(qform, float).tolist(),
        "sform_code": int(scode),
        "sform_code_name": str(hdr.get_value_label("sform_code")),
        "sform": None if scode == 0 else np.asarray(sform, float).tolist(),
        "dim_info": {"freq": freq, "phase": phase, "slice": slc},
        "slice_code": int(hdr["slice_code"]),
        "slice_duration": float(hdr["slice_duration"]),
        "toffset": float(hdr["toffset"]),
        "intent": {"code": intent[0], "params": list(intent[1]), "name": intent[2]},
        "cal_min": float(hdr["cal_min"]),
        "cal_max": float(hdr["cal_max"]),
        "descrip": _text(hdr["descrip"]),
        "vox_offset": int(source.offset),
        "extensions": len(hdr.extensions),  # those nibabel loaded; a large section is streamed, not loaded
        "extension_bytes": (source.raw_extensions.length if source.raw_extensions is not None
                            else int(hdr.extensions.get_sizeondisk())),
        "warnings": list(source.warnings),
    }


def _relative_header(source: Source) -> dict[str, Any]:
    """What ``lucid info`` shows of an Analyze or MGH header: data type, zooms, data offset, MGH's scan parameters."""
    hdr = source.header
    out: dict[str, Any] = {
        "datatype": str(source.stored_dtype),
        "zooms": [float(z) for z in hdr.get_zooms()],
        "vox_offset": int(source.offset),
        "data_file": source.data_path,
    }
    if source.meta.format == "mgh":
        out.update({key: float(hdr[key]) for key in ("tr", "te", "ti", "flip_angle")})
    return out


def _text(value) -> str:
    raw = value.item() if isinstance(value, np.ndarray) else value
    return raw.decode("latin-1").rstrip("\0") if isinstance(raw, bytes) else str(raw)


def jsonable(value: Any) -> Any:
    """Plain JSON types from numpy scalars/arrays, bytes and tuples; non-finite floats become None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.generic,)):
        item = value.item()
        if isinstance(item, np.generic):  # float128 / longdouble: item() gives it back unchanged
            item = float(item) if isinstance(item, np.floating) else str(item)
        return jsonable(item)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)
