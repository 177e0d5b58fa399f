"""NGFF (OME-Zarr 0.4 and 0.5) image metadata: read it, carry it through pooling, write it.

Pure functions on plain dicts and numbers; no store is opened here (that is
``lucid.io.ome_zarr``'s job).  Conventions:

* ``Frame`` holds one NGFF axis dict, scale and translation per *source* axis
  (the order the engine reads), plus the 4x4 ``affine`` when a rotation or a
  flip cannot be said in NGFF 0.4/0.5 (it is then written as the attribute
  ``lucid_affine``).
* The voxel centre is the origin (NGFF 0.6's stated convention, the same rule
  as lucid's NIfTI affine): pooling with kernel k, stride s, padding p and
  dilation d gives ``scale_out = scale_in*s`` and
  ``translation_out = translation_in + scale_in*(d*(k-1)/2 - p)`` per pooled
  axis; carried axes keep theirs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from lucid.io.base import UNIT_TO_UM

# NGFF (UDUNITS-2) space unit -> (lucid's short unit, factor to it)
UNITS_IN = {
    "angstrom": ("um", 1e-4), "nanometer": ("um", 1e-3), "micrometer": ("um", 1.0), "micron": ("um", 1.0),
    "millimeter": ("mm", 1.0), "centimeter": ("mm", 10.0), "meter": ("m", 1.0),
}
UNITS_OUT = {"um": "micrometer", "mm": "millimeter", "m": "meter"}
TYPE_ORDER = {"time": 0, "channel": 1, "custom": 1, "space": 2}
_SPACE_NAME = {"x": "x", "w": "x", "y": "y", "h": "y", "z": "z", "d": "z"}
_WORLD_ROW = {"x": 0, "y": 1, "z": 2}


class NGFFError(ValueError):
    """Metadata that is not a usable NGFF image (the caller adds the store's name)."""


@dataclass(frozen=True)
class Image:
    """One ``multiscales`` entry: axes, and per level its path, scale and translation."""

    version: str
    axes: tuple[dict, ...]
    paths: tuple[str, ...]
    scales: tuple[tuple[float, ...], ...]
    translations: tuple[tuple[float, ...], ...]
    name: str | None = None
    label: dict | None = None  # the "image-label" metadata of a label image
    extra: dict = field(default_factory=dict)  # other group metadata worth carrying ("omero")


def ngff_root(attrs: dict) -> tuple[str | None, dict | None]:
    """``(version, the dict holding "multiscales")``: 0.5 keeps it under ``ome``; (None, None) if absent."""
    ome = attrs.get("ome")
    if isinstance(ome, dict) and "multiscales" in ome:
        return str(ome.get("version", "0.5")), ome
    if "multiscales" in attrs:
        ms = attrs["multiscales"]
        version = ms[0].get("version", "0.4") if isinstance(ms, list) and ms and isinstance(ms[0], dict) else "0.4"
        return str(version), attrs
    return None, None


def _vector(t: dict, key: str, ndim: int, where: str) -> tuple[float, ...]:
    values = t.get(key)
    if "path" in t and values is None:
        raise NGFFError(f"{where}: coordinateTransformations given by path are not supported")
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise NGFFError(f"{where}: {key} {values!r} is not a list of numbers") from None
    if len(out) != ndim:
        raise NGFFError(f"{where}: {key} has {len(out)} entries for {ndim} axes")
    if not all(np.isfinite(out)):
        raise NGFFError(f"{where}: {key} {list(out)} is not finite")
    return out


def compose(transforms, ndim: int, where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(scale, translation)`` from a list of scale/translation/identity transforms, applied in order."""
    scale, shift = np.ones(ndim), np.zeros(ndim)
    for t in transforms or []:
        kind = t.get("type") if isinstance(t, dict) else None
        if kind == "scale":
            s = np.asarray(_vector(t, "scale", ndim, where))
            scale, shift = scale * s, shift * s
        elif kind == "translation":
            shift = shift + np.asarray(_vector(t, "translation", ndim, where))
        elif kind != "identity":
            raise NGFFError(f"{where}: unsupported coordinate transformation {kind!r}")
    return tuple(float(v) for v in scale), tuple(float(v) for v in shift)


def parse_image(attrs: dict) -> Image | None:
    """The first multiscale image in a group's attributes (None when it has no ``multiscales``)."""
    version, root = ngff_root(attrs)
    if root is None:
        return None
    ms = root["multiscales"]
    if not isinstance(ms, list) or not ms or not isinstance(ms[0], dict):
        raise NGFFError("multiscales is not a list of images")
    ms = ms[0]
    axes = ms.get("axes")
    if not isinstance(axes, list) or not axes:
        raise NGFFError("multiscales has no axes")
    axes = tuple({"name": a} if isinstance(a, str) else dict(a) for a in axes)  # 0.3 wrote bare names
    ndim = len(axes)
    datasets = ms.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise NGFFError("multiscales has no datasets")
    paths, scales, shifts = [], [], []
    whole = ms.get("coordinateTransformations")
    for i, ds in enumerate(datasets):
        if not isinstance(ds, dict) or not isinstance(ds.get("path"), str):
            raise NGFFError(f"datasets[{i}] has no path")
        scale, shift = compose(ds.get("coordinateTransformations"), ndim, f"datasets[{i}]")
        if whole:
            scale, shift = compose([{"type": "scale", "scale": scale}, {"type": "translation", "translation": shift},
                                    *whole], ndim, "multiscales coordinateTransformations")
        paths.append(ds["path"])
        scales.append(scale)
        shifts.append(shift)
    label = root.get("image-label")
    extra = {k: root[k] for k in ("omero",) if k in root}
    return Image(version, axes, tuple(paths), tuple(scales), tuple(shifts), ms.get("name"),
                 label if isinstance(label, dict) else None, extra)


def layout_letters(axes) -> str:
    """lucid axis letters for NGFF axes: space axes pooled (their own x/y/z names when they have
    them), time ``t``, channel ``c``, custom axes ``n``/``u``/``v``."""
    space = [a for a in axes if a.get("type", "space" if str(a.get("name", "")).lower() in "zyx" else "") == "space"]
    names = [str(a.get("name", "")).lower() for a in space]
    use_names = len(set(names)) == len(names) and all(n in ("x", "y", "z") for n in names)
    free = iter(n for n in "zyx"[-len(space):] if not use_names)
    custom = iter("nuv")
    out = []
    for a in axes:
        kind = a.get("type")
        name = str(a.get("name", "")).lower()
        if a in space:
            out.append(name if use_names else next(free, "d"))
        elif kind == "time" or (kind is None and name == "t"):
            out.append("t")
        elif kind == "channel" or (kind is None and name == "c"):
            out.append("c")
        else:
            out.append(next(custom, "w"))
    return "".join(out)


def check_ngff_axes(axes) -> None:
    """Refuse axes NGFF 0.4/0.5 cannot hold: 2-5 axes, 2-3 space, at most one time and one
    channel-or-custom, ordered time, channel/custom, space."""
    kinds = [a.get("type", "custom") for a in axes]
    space = kinds.count("space")
    problems = []
    if not 2 <= len(axes) <= 5:
        problems.append(f"{len(axes)} axes (NGFF allows 2 to 5)")
    if not 2 <= space <= 3:
        problems.append(f"{space} space axes (NGFF allows 2 or 3)")
    if kinds.count("time") > 1 or sum(k in ("channel", "custom") for k in kinds) > 1:
        problems.append("more than one time or channel/custom axis")
    ranks = [TYPE_ORDER.get(k, 1) for k in kinds]
    if ranks != sorted(ranks):
        problems.append("axes not ordered time, channel, space")
    if problems:
        names = ",".join(a["name"] for a in axes)
        raise NGFFError(f"axes {names} cannot be an NGFF image: {'; '.join(problems)}; write a plain .zarr instead")


def storage_order(axes, order: str) -> tuple[int, ...]:
    """Source axes in the order an NGFF array stores them: time, channel/custom, then space axes;
    an F-order source (NIfTI x,y,z,t) is reversed first (t,z,y,x), which keeps its bytes in order."""
    seq = list(range(len(axes)))
    if order == "F":
        seq.reverse()
    return tuple(sorted(seq, key=lambda a: TYPE_ORDER.get(axes[a].get("type", "custom"), 1)))


@dataclass(frozen=True)
class Frame:
    """Per source axis: NGFF axis, scale and translation; ``affine`` kept when NGFF cannot say it."""

    axes: tuple[dict, ...]
    scale: tuple[float, ...]
    translation: tuple[float, ...]
    affine: np.ndarray | None = None  # voxel (pooled axes, source order) -> world, in the space unit
    warnings: tuple[str, ...] = ()

    def pooled(self, pooled_axes, spec) -> "Frame":
        """The frame of the pooled grid (the module docstring's rule)."""
        scale, shift = list(self.scale), list(self.translation)
        for j, a in enumerate(pooled_axes):
            k, s, p, d = spec.kernel[j], spec.stride[j], spec.padding[j], spec.dilation[j]
            shift[a] = self.translation[a] + self.scale[a] * (d * (k - 1) / 2.0 - p)
            scale[a] = self.scale[a] * s
        affine = None
        if self.affine is not None:
            from lucid.io.base import pooling_matrix

            affine = np.asarray(self.affine, float) @ pooling_matrix(spec)
        return replace(self, scale=tuple(scale), translation=tuple(shift), affine=affine)

    def transforms(self, perm) -> list[dict]:
        """NGFF ``coordinateTransformations`` in the stored order ``perm`` (12 significant digits:
        0.3, not 0.30000000000000004)."""
        return [{"type": "scale", "scale": [tidy(self.scale[a]) for a in perm]},
                {"type": "translation", "translation": [tidy(self.translation[a]) for a in perm]}]


def tidy(value: float) -> float:
    return float(f"{value:.12g}")


def _letter_axis(letter: str, pooled: bool, unit: str | None) -> dict:
    if pooled and letter != "t":
        axis = {"name": _SPACE_NAME.get(letter, letter), "type": "space"}
        if unit in UNITS_OUT:
            axis["unit"] = UNITS_OUT[unit]
        return axis
    if letter == "t":
        return {"name": "t", "type": "time"}
    if letter == "c":
        return {"name": "c", "type": "channel"}
    return {"name": letter, "type": "custom"}


def frame_of(meta, layout, name: str) -> Frame:
    """The NGFF frame of a source: its own for OME-Zarr, else from its affine or voxel size.

    An affine with rotation, shear or a flip cannot be said in NGFF 0.4/0.5: the scales are
    then the true voxel sizes, the translations are in the image's own frame (origin at voxel
    0), the affine is kept (``Frame.affine``) and one warning line says so."""
    ome = meta.extra.get("ome")
    if ome:
        return Frame(tuple(dict(a) for a in ome["axes"]), tuple(ome["scale"]), tuple(ome["translation"]),
                     _affine_or_none(meta.extra.get("lucid_affine")))
    pooled = layout.pooled
    n = layout.ndim
    affine_unit = "mm" if meta.format == "hdf5" else meta.spacing_unit  # HDF5 'affine' attributes are in mm
    unit = meta.spacing_unit or (affine_unit if meta.affine is not None else None)
    axes = tuple(_letter_axis(ch, i in pooled, unit) for i, ch in enumerate(layout.axes))
    scale, shift = [1.0] * n, [0.0] * n
    if meta.affine is None:
        if meta.spacing is not None:
            for j, a in enumerate(pooled):
                scale[a] = float(meta.spacing[j])
        return Frame(axes, tuple(scale), tuple(shift))
    aff = np.array(meta.affine, float)
    if affine_unit in UNIT_TO_UM and unit in UNIT_TO_UM:  # the affine in the unit of the voxel size
        aff[:3, :] *= UNIT_TO_UM[affine_unit] / UNIT_TO_UM[unit]
    sizes = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
    rows = [_WORLD_ROW.get(axes[a]["name"]) for a in pooled]
    target = np.zeros((3, 3))
    for j, r in enumerate(rows):
        if r is not None:
            target[r, j] = sizes[j]
    plain = None not in rows and np.allclose(aff[:3, :3], target, rtol=1e-6, atol=1e-9 * max(sizes.max(), 1e-30))
    for j, a in enumerate(pooled):
        scale[a] = float(sizes[j]) if sizes[j] > 0 else 1.0
        shift[a] = float(aff[rows[j], 3]) if plain else 0.0
    if plain:
        return Frame(axes, tuple(scale), tuple(shift))
    warning = (f"{name}: the affine's rotation or flip cannot be expressed in NGFF 0.4/0.5: scales are the voxel "
               "sizes, translations are in the image's own frame, the full affine is kept as lucid_affine")
    return Frame(axes, tuple(scale), tuple(shift), aff, (warning,))


def stored_affine(affine, pooled, perm) -> list[list[float]]:
    """``affine`` (columns: pooled axes in source order) with its columns in the stored order ``perm``."""
    cols = [list(pooled).index(a) for a in perm if a in pooled]
    return np.asarray(affine, float)[:, [*cols, 3]].tolist()


def _affine_or_none(value) -> np.ndarray | None:
    try:
        aff = np.asarray(value, float)
    except (TypeError, ValueError):
        return None
    return aff if aff.shape == (4, 4) and np.all(np.isfinite(aff)) else None


def source_meta(image: Image, level: int, layout, array_attrs: dict) -> dict:
    """What a Source needs from a level: ``spacing``, ``spacing_unit``, ``affine`` and the ``ome`` extra."""
    scale, shift = image.scales[level], image.translations[level]
    pooled = layout.pooled
    units = [image.axes[a].get("unit") for a in pooled]
    known = [UNITS_IN.get(str(u).lower()) if u else None for u in units]
    spacing = [scale[a] for a in pooled]
    origin = [shift[a] for a in pooled]
    unit = None
    if all(known):
        shorts = {k[0] for k in known}
        unit = shorts.pop() if len(shorts) == 1 else "um"
        factors = [k[1] * UNIT_TO_UM[k[0]] / UNIT_TO_UM[unit] for k in known]
        spacing = [v * f for v, f in zip(spacing, factors)]
        origin = [v * f for v, f in zip(origin, factors)]
    affine = _affine_or_none(array_attrs.get("lucid_affine"))
    if affine is None:  # world rows x, y, z by the axes' names, else the reversed storage order (x fastest)
        affine = np.zeros((4, 4))
        affine[3, 3] = 1.0
        names = [str(image.axes[a].get("name", "")).lower() for a in pooled]
        rows = [_WORLD_ROW[nm] for nm in names] if sorted(names) == ["x", "y", "z"] else [2, 1, 0]
        for j, r in enumerate(rows):
            affine[r, j] = spacing[j]
            affine[r, 3] = origin[j]
    extra = {"version": image.version, "axes": [dict(a) for a in image.axes], "scale": list(scale),
             "translation": list(shift), "level": level, "levels": len(image.paths), "paths": list(image.paths),
             "name": image.name, "image_label": image.label, "carry": dict(image.extra)}
    return {"spacing": tuple(spacing), "spacing_unit": unit, "affine": affine, "ome": extra}


def multiscales(version: str, axes, datasets: list[dict], name: str | None, metadata: dict,
                carry: dict | None = None) -> dict:
    """The group attributes of an NGFF image: ``datasets`` are ``{"path", "coordinateTransformations"}``."""
    entry = {"axes": list(axes), "datasets": datasets, "type": metadata.get("method", "max"), "metadata": metadata}
    if name:
        entry["name"] = name
    if version == "0.4":
        return {"multiscales": [{"version": "0.4", **entry}], **(carry or {})}
    return {"ome": {"version": "0.5", "multiscales": [entry], **(carry or {})}}
