"""Pictures of volumes: three orthogonal planes or maximum-intensity projections.

``render(path)`` draws one volume; ``render_run(input, output, grad)`` draws
a pooling run's input, output and gradient map side by side, the same planes
at the same world position.  Both return a matplotlib ``Figure`` and never
save it (``save(fig, path)`` does, atomically).  Planes are read through the
``Source`` interface one plane at a time, and a projection streams slab by
slab, so memory stays bounded whatever the volume.

Geometry.  Each pooled axis is drawn in physical units (mm, um, or voxels
when the file gives no size) with the centre of voxel 0 of the first volume
at 0, so the aspect ratio follows the voxel size.  A pooled output's voxel
``o`` sits at the centre of its window, ``(s*o + dilation*(k-1)/2 - p)``
input voxels, as in lucid's NIfTI affine and NGFF translation.  NIfTI planes
follow the radiological viewers' habit (nilearn, MRtrix): the earlier axis
horizontal, the later one pointing up; HDF5 planes follow images and video:
rows go down the earlier axis, columns along the later one.

matplotlib is an optional extra (``lucid-pool[preview]``), imported only here
and only with the Agg backend: no display is needed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from lucid.io import LucidIOError, open_source
from lucid.io.atomic import AtomicTarget
from lucid.io.base import Source

__all__ = ["AxisGrid", "render", "render_run", "save", "parse_assignments"]

MIP_SLAB_BYTES = 32 << 20  # one slab of a projection; the picture itself is a few planes
DISCRETE_MAX = 16  # gradient maps with counts up to this get one colour per count


@dataclass(frozen=True)
class AxisGrid:
    """Voxel centres along one pooled axis: ``origin + i * step`` (physical units)."""

    letter: str
    size: int
    origin: float
    step: float

    def index_at(self, position: float) -> int:
        return int(min(self.size - 1, max(0, math.floor((position - self.origin) / self.step + 0.5))))

    def position(self, index: int) -> float:
        return self.origin + index * self.step

    def edges(self) -> tuple[float, float]:
        return self.origin - self.step / 2, self.origin + (self.size - 0.5) * self.step

    def pooled(self, kernel: int, stride: int, padding: int, dilation: int, size: int) -> "AxisGrid":
        centre = dilation * (kernel - 1) / 2 - padding
        return AxisGrid(self.letter, size, self.origin + centre * self.step, stride * self.step)


@dataclass
class _Volume:
    """One row of the picture: a source, its grids, how to colour it."""

    source: Source
    label: str
    grids: tuple[AxisGrid, AxisGrid, AxisGrid]
    kind: str  # "image" or "gradient"
    colour: int | None = None  # the carried axis shown as RGB(A), images only


def _matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise LucidIOError("pictures need matplotlib: pip install 'lucid-pool[preview]'") from None
    matplotlib.use("Agg", force=False)
    from matplotlib import colors
    from matplotlib.figure import Figure

    return Figure, colors


def matplotlib_colormap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]


def parse_assignments(text: str | None, what: str) -> dict[str, int]:
    """``"x=40,y=12"`` -> ``{"x": 40, "y": 12}``; ValueError naming ``what`` otherwise."""
    out: dict[str, int] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        letter, sep, value = part.partition("=")
        letter = letter.strip().lower()
        try:
            if not sep or len(letter) != 1:
                raise ValueError
            out[letter] = int(value)
        except ValueError:
            raise ValueError(f"{what} must look like 'x=40,y=12', got {text!r}") from None
    return out


def _spacing(source: Source) -> tuple[tuple[float, float, float], str]:
    meta = source.meta
    if meta.spacing is not None and all(math.isfinite(s) and s > 0 for s in meta.spacing):
        return tuple(float(s) for s in meta.spacing), meta.spacing_unit or "unit unknown"
    return (1.0, 1.0, 1.0), "voxels"


def _grids(source: Source) -> tuple[AxisGrid, AxisGrid, AxisGrid]:
    spacing, _ = _spacing(source)
    letters = source.layout.pooled_letters
    return tuple(AxisGrid(letters[r], source.shape[a], 0.0, spacing[r])  # type: ignore[return-value]
                 for r, a in enumerate(source.layout.pooled))


def _kind(source: Source) -> str:
    extra = source.meta.extra
    kind = (extra.get("attrs") or {}).get("lucid_kind", "")
    if (kind.decode(errors="replace") if isinstance(kind, bytes) else str(kind)) == "gradient":
        return "gradient"
    header = extra.get("header")
    if header is not None:
        descrip = bytes(np.asarray(header["descrip"]).tobytes()).split(b"\0")[0]
        if descrip.startswith(b"lucid ") and b" gradient" in descrip:
            return "gradient"
    return "image"


def _value_label(source: Source, kind: str) -> str:
    if kind == "gradient":
        return "gradient (sum routed to each voxel)"
    slope, inter = source.meta.scale
    if source.meta.format == "nifti" and slope == 1.0 and -1100 <= inter <= -1000:
        return "HU"  # the CT convention: stored as HU + 1024 (or + 1000)
    return "value" if (slope, inter) == (1.0, 0.0) else "value (scl_slope, scl_inter applied)"


def _colour_axis(source: Source, index: Mapping[str, int]) -> int | None:
    """The carried axis drawn as RGB(A): a 'c' axis of 3 or 4 not fixed by ``index``."""
    for a in source.layout.carried:
        letter = source.layout.axes[a]
        if letter == "c" and source.shape[a] in (3, 4) and "c" not in index:
            return a
    return None


def _carried_box(source: Source, index: Mapping[str, int], colour: int | None) -> dict[int, slice]:
    box = {}
    for a in source.layout.carried:
        letter = source.layout.axes[a]
        if a == colour:
            box[a] = slice(0, source.shape[a])
            continue
        i = index.get(letter, 0)
        if not 0 <= i < source.shape[a]:
            raise ValueError(f"{source.name}: index {letter}={i} is outside 0..{source.shape[a] - 1}")
        box[a] = slice(i, i + 1)
    return box


def _physical(raw: np.ndarray, source: Source) -> np.ndarray:
    slope, inter = source.meta.scale
    out = raw.astype(np.float64)
    if (slope, inter) != (1.0, 0.0):
        out *= slope
        out += inter
    return out


def _to_display(block: np.ndarray, source: Source, normal: int, colour: int | None) -> np.ndarray:
    """A box reduced along ``normal`` (size 1 or a MIP) -> (rows, cols[, rgb]) in file order."""
    keep = [a for a in source.layout.pooled if a != normal]
    order = keep + ([colour] if colour is not None else [])
    rest = [a for a in range(block.ndim) if a not in order]
    arr = np.transpose(block, order + rest).reshape([block.shape[a] for a in order])
    return arr


def _plane(source: Source, r: int, i: int, index: Mapping[str, int], colour: int | None) -> np.ndarray:
    normal = source.layout.pooled[r]
    box = [slice(0, n) for n in source.shape]
    for a, s in _carried_box(source, index, colour).items():
        box[a] = s
    box[normal] = slice(i, i + 1)
    return _to_display(_physical(source.read(tuple(box)), source), source, normal, colour)


def _projection(source: Source, r: int, index: Mapping[str, int], colour: int | None,
                slab_bytes: int | None = None) -> np.ndarray:
    """Maximum-intensity projection along pooled axis ``r``, read slab by slab along the
    source's cheapest axis (NaN ignored, as a viewer would)."""
    normal = source.layout.pooled[r]
    box = [slice(0, n) for n in source.shape]
    for a, s in _carried_box(source, index, colour).items():
        box[a] = s
    along = source.slab_axis
    row_bytes = (source.dtype.itemsize + 8) * math.prod(b.stop - b.start for a, b in enumerate(box) if a != along)
    rows = max(1, (slab_bytes or MIP_SLAB_BYTES) // max(1, row_bytes))  # + 8: each slab's float64 copy
    result = None
    for start in range(0, source.shape[along], rows):
        box[along] = slice(start, min(source.shape[along], start + rows))
        block = _physical(source.read(tuple(box)), source)
        part = np.fmax.reduce(block, axis=normal, keepdims=True)
        if along == normal:
            result = part if result is None else np.fmax(result, part)
        else:
            if result is None:
                shape = list(part.shape)
                shape[along] = source.shape[along]
                result = np.full(shape, np.nan)
            dst = [slice(None)] * part.ndim
            dst[along] = box[along]
            result[tuple(dst)] = part
    return _to_display(result, source, normal, colour)


def _planes(vol: _Volume, centre: Sequence[float], mip: bool, index: Mapping[str, int]) -> list[np.ndarray]:
    if mip:
        return [_projection(vol.source, r, index, vol.colour) for r in range(3)]
    return [_plane(vol.source, r, vol.grids[r].index_at(centre[r]), index, vol.colour) for r in range(3)]


def _norm(kind: str, planes: list[np.ndarray], colors):
    finite = [p[np.isfinite(p)] for p in planes if p.size]
    finite = [f for f in finite if f.size]
    if not finite:
        return colors.Normalize(0, 1), "gray"
    lo = float(min(f.min() for f in finite))
    hi = float(max(f.max() for f in finite))
    if kind == "gradient":
        whole = all(np.array_equal(f, np.round(f)) for f in finite)
        if whole and lo >= 0 and hi <= DISCRETE_MAX:
            top = max(1, int(hi))
            return colors.BoundaryNorm(np.arange(-0.5, top + 1.5), 256), "viridis"
        positive = [f[f > 0] for f in finite]
        positive = [p for p in positive if p.size]
        if lo >= 0 and positive:
            return colors.LogNorm(float(min(p.min() for p in positive)), max(hi, 1e-300)), "viridis"
    if hi <= lo:
        hi = lo + 1
    return colors.Normalize(lo, hi), "gray"


def _rgb(plane: np.ndarray) -> np.ndarray:
    if plane.shape[-1] == 4:
        plane = plane[..., :3]
    finite = plane[np.isfinite(plane)]
    lo, hi = (0.0, 255.0) if finite.size and finite.min() >= 0 and finite.max() <= 255 else (
        float(finite.min()) if finite.size else 0.0, float(finite.max()) if finite.size else 1.0)
    return np.clip((plane - lo) / max(hi - lo, 1e-12), 0, 1)


def _draw(volumes: list[_Volume], centre: Sequence[float], mip: bool, index: Mapping[str, int]):
    Figure, colors = _matplotlib()
    reference = volumes[0]
    _, unit = _spacing(reference.source)
    extent = [g.edges() for g in reference.grids]
    lengths = [hi - lo for lo, hi in extent]
    nifti = reference.source.meta.format == "nifti"
    # per plane r: (horizontal axis, vertical axis) among the other two pooled axes
    shown = [tuple(q for q in range(3) if q != r) for r in range(3)]
    if not nifti:
        shown = [(b, a) for a, b in shown]  # HDF5: columns along the later axis, rows down the earlier
    widths = [lengths[h] for h, _ in shown]
    height = max(lengths[v] for _, v in shown)
    panel_in = 3.0
    fig = Figure(figsize=(panel_in * sum(widths) / height + 1.2, panel_in * len(volumes) + 0.3 * len(volumes)), dpi=100)
    grid = fig.add_gridspec(len(volumes), 4, width_ratios=[*widths, 0.05 * sum(widths)])
    codes = _orientation(reference.source) if nifti else None
    for vol in volumes:
        vol.colour = _colour_axis(vol.source, index) if vol.kind == "image" else None
    planes_of = [_planes(vol, centre, mip, index) for vol in volumes]
    colour_of = [vol.colour is not None for vol in volumes]
    norms = {}  # one colour scale per kind, so input and output compare by eye
    for kind in {vol.kind for vol in volumes}:
        shown_planes = [p for vol, planes, c in zip(volumes, planes_of, colour_of) if vol.kind == kind and not c
                        for p in planes]
        norm, cmap = _norm(kind, shown_planes, colors)
        norms[kind] = norm, matplotlib_colormap(cmap).with_extremes(bad="black", under="black")
    for row, vol in enumerate(volumes):
        planes, colour = planes_of[row], colour_of[row]
        norm, cmap = norms[vol.kind]
        image = None
        for r in range(3):
            ax = fig.add_subplot(grid[row, r])
            h, v = shown[r]
            data = planes[r]  # rows: the earlier of the other two axes (file order)
            lo_r, hi_r = sorted((q for q in range(3) if q != r))
            if (h, v) == (lo_r, hi_r):  # NIfTI: horizontal = earlier axis, vertical = later
                data = np.swapaxes(data, 0, 1)
            gh, gv = vol.grids[h], vol.grids[v]
            (x0, x1), (y0, y1) = gh.edges(), gv.edges()
            if nifti:
                kw = dict(origin="lower", extent=(x0, x1, y0, y1))
            else:
                kw = dict(origin="upper", extent=(x0, x1, y1, y0))
            if colour:
                image = ax.imshow(_rgb(data), interpolation="nearest", aspect="equal", **kw)
            else:
                image = ax.imshow(data, cmap=cmap, norm=norm, interpolation="nearest", aspect="equal", **kw)
            ax.set_xlim(*(extent[h]))
            ax.set_ylim(*((extent[v]) if nifti else extent[v][::-1]))
            letters = vol.source.layout.pooled_letters
            where = "MIP" if mip else f"{letters[r]}={vol.grids[r].index_at(centre[r])}"
            ax.set_title(f"{vol.label}  {where}", fontsize=8)
            ax.set_gid(f"{row}:{r}")
            ax.set_xlabel(_axis_label(letters[h], unit, codes, h), fontsize=7)
            ax.set_ylabel(_axis_label(letters[v], unit, codes, v), fontsize=7)
            ax.tick_params(labelsize=6)
        if image is not None and not colour:
            bar = fig.colorbar(image, cax=fig.add_subplot(grid[row, 3]))
            if isinstance(norm, colors.BoundaryNorm):  # one tick per count
                bar.set_ticks(np.arange(0, len(norm.boundaries) - 1))
            bar.set_label(_value_label(vol.source, vol.kind), fontsize=7)
            bar.ax.tick_params(labelsize=6)
    fig.subplots_adjust(left=0.06, right=0.9, bottom=0.08, top=0.93, wspace=0.35, hspace=0.45)
    return fig


def _orientation(source: Source) -> tuple[str, str, str] | None:
    affine = source.meta.affine
    if affine is None:
        return None
    try:
        import nibabel as nib

        return tuple(nib.aff2axcodes(affine))  # type: ignore[return-value]
    except Exception:  # a degenerate affine: no orientation to show
        return None


def _axis_label(letter: str, unit: str, codes, r: int) -> str:
    toward = f", toward {codes[r]}" if codes is not None else ""
    if letter == "t" and unit == "voxels":
        unit = "frames"
    return f"{letter} ({unit}{toward})"


def _open(what, dataset: str | None, axes: str | None) -> tuple[Source, bool]:
    if isinstance(what, Source):
        return what, False
    return open_source(what, dataset=dataset, axes=axes), True


def _centre(grids: Sequence[AxisGrid], slices: Mapping[str, int] | None) -> list[float]:
    slices = dict(slices or {})
    centre = []
    for g in grids:
        i = slices.pop(g.letter, g.size // 2)
        if not 0 <= i < g.size:
            raise ValueError(f"slice {g.letter}={i} is outside 0..{g.size - 1}")
        centre.append(g.position(i))
    if slices:
        raise ValueError(f"slice names {', '.join(slices)}, not a pooled axis ({''.join(g.letter for g in grids)})")
    return centre


def render(path_or_source, *, slices: Mapping[str, int] | None = None, mip: bool = False,
           index: Mapping[str, int] | None = None, dataset: str | None = None, axes: str | None = None):
    """Draw the three orthogonal mid-planes (or ``slices`` such as ``{"x": 40}``, or the
    maximum-intensity projections with ``mip``) of any volume lucid reads.

    Carried axes (time, channel) show index 0 unless ``index`` says otherwise
    (``{"t": 3}``); a 3- or 4-long channel axis is shown in colour.
    """
    source, owned = _open(path_or_source, dataset, axes)
    try:
        grids = _grids(source)
        vol = _Volume(source, os.path.basename(source.name), grids, _kind(source))
        return _draw([vol], _centre(grids, slices), mip, dict(index or {}))
    finally:
        if owned:
            source.close()


class _InSourceOrder(Source):
    """A NIfTI file that lucid wrote from another format, seen in that format's axis order
    (NIfTI axis j holds source axis ``perm[j]``, as ``NiftiSink`` wrote it)."""

    def __init__(self, inner: Source, like: Source):
        from lucid.io.layout import nifti_axis_order

        self.inner = inner
        self.perm = nifti_axis_order(like.layout, like.order)
        self.back = tuple(int(a) for a in np.argsort(self.perm))
        self.name, self.path, self.meta, self.dtype = inner.name, inner.path, inner.meta, inner.dtype
        self.shape = tuple(inner.shape[self.back[a]] for a in range(inner.ndim))
        self.layout = like.layout

    @property
    def slab_axis(self) -> int:
        return self.perm[self.inner.slab_axis]

    def read(self, index):
        return self.inner.read(tuple(index[a] for a in self.perm)).transpose(self.back)

    def close(self) -> None:
        self.inner.close()


def _open_like(what, like: Source, dataset: str | None) -> tuple[Source, bool]:
    """Open an output of a run on ``like`` in ``like``'s axis order."""
    if isinstance(what, Source):
        return what, False
    from lucid.io import detect_format

    if detect_format(what)[0] == "nifti" and like.meta.format != "nifti":
        return _InSourceOrder(open_source(what), like), True
    return open_source(what, dataset=dataset, axes=like.layout.axes), True


def render_run(input, output=None, grad=None, *, spec, slices: Mapping[str, int] | None = None,
               index: Mapping[str, int] | None = None, mip: bool = False, dataset: str | None = None,
               axes: str | None = None, out_dataset: str | None = None):
    """A pooling run side by side: input, pooled output (its coarser grid placed at the
    window centres given by ``spec``, a ``PoolSpec``) and the gradient map, one row each,
    the same planes at the same world position."""
    opened: list[Source] = []
    try:
        src, owned = _open(input, dataset, axes)
        if owned:
            opened.append(src)
        grids = _grids(src)
        volumes = [_Volume(src, "input", grids, "image")]
        if output is not None:
            out, owned = _open_like(output, src, out_dataset)
            if owned:
                opened.append(out)
            sizes = [out.shape[a] for a in out.layout.pooled]
            pooled = tuple(g.pooled(spec.kernel[r], spec.stride[r], spec.padding[r], spec.dilation[r], sizes[r])
                           for r, g in enumerate(grids))
            volumes.append(_Volume(out, "output", pooled, "image"))
        if grad is not None:
            g, owned = _open_like(grad, src, None)
            if owned:
                opened.append(g)
            volumes.append(_Volume(g, "gradient", grids, "gradient"))
        return _draw(volumes, _centre(grids, slices), mip, dict(index or {}))
    finally:
        for s in opened:
            s.close()


def save(fig, path: str | os.PathLike, *, force: bool = False, protect: Sequence[str | os.PathLike] = ()) -> str:
    """Write ``fig`` as a PNG at ``path``: a temporary file renamed into place on success."""
    target = AtomicTarget(path, force=force, protect=protect)
    try:
        fig.savefig(target.tmp, format="png")
        target.commit()
    except BaseException:
        target.abort()
        raise
    return target.display
