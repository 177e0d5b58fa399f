"""Hand-written OME-Zarr (NGFF 0.4 / 0.5) images for tests: zarr-python only, no lucid code."""

from __future__ import annotations

import numpy as np
import zarr

ZYX_UM = [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]


def write_image(path, levels, *, axes=ZYX_UM, scales, translations=None, version="0.5", chunks=None,
                label: bool = False, whole=None, names=None):
    """An NGFF image at ``path`` with one array per entry of ``levels`` (paths "0", "1", ...)."""
    fmt = 3 if version == "0.5" else 2
    root = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    datasets = []
    for i, data in enumerate(levels):
        kwargs = {"dimension_names": names or [a["name"] for a in axes]} if fmt == 3 else {}
        arr = root.create_array(str(i), shape=data.shape, dtype=data.dtype, chunks=chunks or data.shape, **kwargs)
        arr[...] = data
        ct = [{"type": "scale", "scale": list(scales[i])}]
        if translations is not None:
            ct.append({"type": "translation", "translation": list(translations[i])})
        datasets.append({"path": str(i), "coordinateTransformations": ct})
    ms = {"axes": axes, "datasets": datasets, "name": "img"}
    if whole:
        ms["coordinateTransformations"] = whole
    if fmt == 2:
        attrs = {"multiscales": [{"version": "0.4", **ms}]}
        if label:
            attrs["image-label"] = {"version": "0.4", "colors": []}
    else:
        attrs = {"ome": {"version": "0.5", "multiscales": [ms]}}
        if label:
            attrs["ome"]["image-label"] = {"colors": []}
    root.attrs.update(attrs)
    return root


def ngff(path) -> tuple[str, dict]:
    """(version, first multiscales entry) of an image, read with zarr-python alone."""
    attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    if "ome" in attrs:
        return attrs["ome"]["version"], attrs["ome"]["multiscales"][0]
    return attrs["multiscales"][0]["version"], attrs["multiscales"][0]


def transforms(entry: dict, i: int) -> tuple[list[float], list[float]]:
    ct = entry["datasets"][i]["coordinateTransformations"]
    scale = next(t["scale"] for t in ct if t["type"] == "scale")
    shift = next((t["translation"] for t in ct if t["type"] == "translation"), [0.0] * len(scale))
    return scale, shift


def rng_volume(shape, dtype=np.uint16, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -1000), min(info.max, 1000), shape).astype(dtype)
