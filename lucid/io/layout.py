"""Axis layouts: which file axes are pooled and which are carried through.

``parse_layout(axes, ndim, format)`` turns a user string such as ``"zyx"``,
``"nczyx"``, ``"thwc"`` or ``"xyzt"`` (or None for the format's default) into a
:class:`Layout`.

Rules for an axes string (one letter per file axis, case-insensitive):

* letters ``d h z y x`` always name pooled axes; ``n c u v`` are always carried;
* ``w`` (width, or NIfTI's 7th dimension) is pooled unless three of
  ``d h z y x`` are already present (so ``"dhw"`` pools w, ``"xyztuvw"`` carries it);
* ``t`` is pooled if the string has fewer than 3 other pooled letters
  (so ``"thwc"`` pools t, h, w while ``"xyzt"`` carries t);
* exactly three axes must end up pooled, and no letter may repeat.

Defaults: HDF5 and in-memory arrays (C order) 3-D ``"dhw"``, 4-D ``"cdhw"``,
5-D ``"ncdhw"``; NIfTI ``"xyz"`` followed by ``"tuvw"`` for dimensions 4-7.
"""

from __future__ import annotations

from typing import Sequence

from lucid.io.base import Layout, LayoutError

STRONG_POOLED = "dhzyx"
ALWAYS_CARRIED = "ncuv"
KNOWN = STRONG_POOLED + ALWAYS_CARRIED + "wt"

C_DEFAULTS = {3: "dhw", 4: "cdhw", 5: "ncdhw"}
NIFTI_EXTRA = "tuvw"
FORMATS = ("hdf5", "nifti", "array")


def default_axes(ndim: int, format: str) -> str:
    """The axes string used when the user gives none."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {FORMATS}")
    if ndim < 3:
        raise LayoutError(f"a {ndim}-D volume cannot be pooled in 3-D: need at least 3 dimensions")
    if format == "nifti":
        if ndim > 3 + len(NIFTI_EXTRA):
            raise LayoutError(f"a NIfTI image has at most 7 dimensions, got {ndim}")
        return "xyz" + NIFTI_EXTRA[: ndim - 3]
    try:
        return C_DEFAULTS[ndim]
    except KeyError:
        raise LayoutError(
            f"no default axes for a {ndim}-D volume; name them, e.g. axes='{'n' * (ndim - 4)}cdhw'"
        ) from None


def parse_layout(axes: str | None, ndim: int, format: str) -> Layout:
    """Parse an axes string (or the default for ``format`` if None) for an ``ndim``-D volume."""
    if axes is None:
        axes = default_axes(ndim, format)
    elif format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {FORMATS}")
    if not isinstance(axes, str):
        raise LayoutError(f"axes must be a string such as 'zyx' or 'nczyx', got {axes!r}")
    given = axes
    axes = axes.strip().lower()
    unknown = sorted({ch for ch in axes if ch not in KNOWN})
    if unknown:
        raise LayoutError(
            f"axes {given!r}: unknown letter {', '.join(repr(u) for u in unknown)} "
            f"(always pooled: d h z y x; always carried: n c u v; t and w: pooled when needed "
            f"to make three pooled axes, else carried)"
        )
    if len(axes) != ndim:
        raise LayoutError(f"axes {given!r} has {len(axes)} letters but the volume has {ndim} dimensions")
    repeated = sorted({ch for ch in axes if axes.count(ch) > 1})
    if repeated:
        raise LayoutError(f"axes {given!r} repeats {', '.join(repr(r) for r in repeated)}")
    strong = [i for i, ch in enumerate(axes) if ch in STRONG_POOLED]
    pooled = set(strong)
    if "w" in axes and len(strong) < 3:
        pooled.add(axes.index("w"))
    if "t" in axes and len(pooled) < 3:
        pooled.add(axes.index("t"))
    if len(pooled) != 3:
        names = "".join(axes[i] for i in sorted(pooled)) or "none"
        raise LayoutError(
            f"axes {given!r} must name exactly three pooled axes (d h w, z y x or t), found {len(pooled)}: {names}"
        )
    return Layout(axes, tuple(sorted(pooled)))  # type: ignore[arg-type]


# Physical rank of a pooled letter: 0 = x (fastest), 1 = y, 2 = z.
_RANK = {"x": 0, "w": 0, "y": 1, "h": 1, "z": 2, "d": 2, "t": 2}


def nifti_axis_order(layout: Layout, order: str) -> tuple[int, ...]:
    """Source axes in NIfTI order: pooled axes become x, y, z, carried axes dims 4+.

    For F-order sources (NIfTI) the file's own order is kept.  For C-order
    sources the pooled letters decide when they name x/w, y/h and z/d/t once each
    (so HDF5 "dhw" maps w->x, h->y, d->z: the bytes stay in the same order);
    otherwise the memory order decides (fastest pooled axis -> x).  Carried
    axes follow, fastest first (HDF5 "ncdhw" -> x=w, y=h, z=d, t=c, u=n).
    """
    n = layout.ndim
    speed = list(range(n)) if order == "F" else list(range(n - 1, -1, -1))  # fastest first
    pooled = [a for a in speed if a in layout.pooled]
    if order != "F":
        ranks = [_RANK[layout.axes[a]] for a in layout.pooled]
        if sorted(ranks) == [0, 1, 2]:
            pooled = [a for _, a in sorted(zip(ranks, layout.pooled))]
    carried = [a for a in speed if a not in layout.pooled]
    return tuple(pooled + carried)


def outer_axes(ndim: int, pooled: Sequence[int], slab_axis: int, order: str) -> tuple[int, ...]:
    """Carried axes slower in memory than the slab axis (C: before it; F: after it).

    The streaming engine walks these one index at a time, so sinks can lay out
    their chunks for that order."""
    carried = [a for a in range(ndim) if a not in pooled]
    slower = [a for a in carried if (a < slab_axis if order == "C" else a > slab_axis)]
    return tuple(sorted(slower, reverse=(order == "F")))
