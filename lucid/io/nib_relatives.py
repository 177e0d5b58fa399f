"""NIfTI's relatives through nibabel: Analyze 7.5 ``.hdr/.img`` pairs and FreeSurfer MGH/MGZ.

Both store raw Fortran-order values at a fixed offset of a file (the ``.img``
of a pair from byte 0 or ``vox_offset``; an MGH file from byte 284,
big-endian, gzip-compressed for ``.mgz``), so they are read exactly as a NIfTI
file is (:class:`lucid.io.nifti.NiftiSource`: slabs by ``preadv`` or the
CRC-checked gzip stream, never the whole volume); only header and geometry
differ.  nibabel reads the headers: the affine is nibabel's ``img.affine``
(for Analyze the voxel sizes, with SPM's origin and x flipped as nibabel and
SPM do; for MGH the vox2ras of ``delta``, ``Mdc`` and ``Pxyz_c``).

Writing: ``.hdr``/``.img`` outputs are NIfTI-1 pairs (what ``nibabel.save``
writes there; Analyze readers read them, and the affine survives);
``.mgh``/``.mgz`` outputs are MGH, whose header stores the pooled affine
(voxel sizes times the stride, the centre moved with the window centres).
"""

from __future__ import annotations

import io
import os
import struct

import nibabel as nib
import numpy as np
from nibabel.freesurfer.mghformat import MGHHeader

from lucid.io.base import LucidIOError, Source, VolumeMeta, pooling_matrix
from lucid.io.nifti import NiftiSink, NiftiSource, pair_paths

MGH_SUFFIXES = (".mgh", ".mgz")
MGH_DTYPES = ("uint8", "int16", "int32", "float32")
MGH_DATA_OFFSET = 284


def _geometry(source: NiftiSource, header, affine, unit: str | None, format: str, extra: dict, scale) -> VolumeMeta:
    zooms = [float(z) for z in header.get_zooms()]
    pooled = source.layout.pooled
    spacing = tuple(zooms[a] for a in pooled) if len(zooms) >= 3 and all(np.isfinite(zooms[:3])) else None
    if pooled != (0, 1, 2) or affine is None or not np.all(np.isfinite(affine)):
        affine = None
    return VolumeMeta(format=format, spacing=spacing, spacing_unit=unit if spacing is not None else None,
                      affine=None if affine is None else np.array(affine, dtype=float), scale=scale, extra=extra)


class _RelativeSource(NiftiSource):
    """A format read like NIfTI whose header has no qform/sform to repair: taken as it is."""

    def _sane(self, header, shown: str):
        return header.copy(), [], True


class AnalyzeSource(_RelativeSource):
    """An Analyze 7.5 (or SPM99/SPM2) ``.hdr/.img`` pair; voxel sizes in mm, as SPM assumes."""

    image_types = (nib.AnalyzeImage,)
    what = "Analyze"

    def _make_meta(self, hdr, scale) -> VolumeMeta:
        return _geometry(self, hdr, hdr.get_best_affine(), "mm", "analyze", {"analyze_header": hdr.copy()}, scale)


class MGHSource(_RelativeSource):
    """A FreeSurfer MGH (``.mgh``) or gzip-compressed MGZ (``.mgz``) volume, up to 4-D (frames carried)."""

    image_types = (nib.MGHImage,)
    what = "MGH"

    def _make_meta(self, hdr, scale) -> VolumeMeta:
        return _geometry(self, hdr, hdr.get_affine(), "mm", "mgh", {"mgh_header": hdr.copy()}, scale)


def is_nifti_pair(path: str) -> bool:
    """Whether a ``.hdr``/``.img`` pair's header is NIfTI (magic ``ni1``/``ni2``) rather than Analyze."""
    header = pair_paths(path)[0]
    try:
        with open(header, "rb") as f:
            head = f.read(348)
    except OSError:
        return True  # NiftiSource words the error
    if len(head) < 348:
        return True
    for order in "<>":
        size = struct.unpack(order + "i", head[:4])[0]
        if size == 540:
            return True
        if size == 348:
            return head[344:347] in (b"ni1", b"n+1")
    return True


def open_source(file: str, axes: str | None) -> Source:
    """The Source of a nibabel-family file: ``.nii``/``.nii.gz``, ``.hdr``/``.img``, ``.mgh``/``.mgz``."""
    lower = file.lower()
    if lower.endswith(MGH_SUFFIXES):
        return MGHSource(file, axes=axes)
    pair = pair_paths(file)
    if pair is not None and os.path.exists(file) and not os.path.exists(pair[0]):
        shown = os.path.join(os.path.dirname(file), os.path.basename(pair[0]))
        raise LucidIOError(f"{file}: the header {shown} of this .hdr/.img pair is missing")
    if pair is not None and not is_nifti_pair(file):
        return AnalyzeSource(file, axes=axes)
    return NiftiSource(file, axes=axes)


class MGHSink(NiftiSink):
    """An MGH/MGZ file: the 284-byte header, big-endian Fortran-order data, then the scan-parameter footer."""

    def _build_header(self, like: Source, pooling, kind: str, scale):
        if self.dtype.name not in MGH_DTYPES:
            raise LucidIOError(f"{self.name}: MGH stores {', '.join(MGH_DTYPES)}, not {self.dtype}; "
                               f"write .nii or .h5 (or choose --out-dtype)")
        if len(self.nshape) > 4:
            raise LucidIOError(f"{self.name}: MGH stores at most 4 dimensions, the output has {len(self.nshape)}")
        if scale is None:
            scale = like.meta.scale if kind == "output" else (1.0, 0.0)
        if tuple(scale) != (1.0, 0.0):
            raise LucidIOError(f"{self.name}: MGH has no scl_slope/scl_inter for the input's scaling "
                               f"(slope {scale[0]:g}, inter {scale[1]:g}); write .nii or .h5")
        hdr = MGHHeader()
        hdr.set_data_shape(self.nshape)
        hdr.set_data_dtype(self.dtype)
        src = like.meta.extra.get("mgh_header")
        if src is not None:  # scan parameters: TR, flip angle, TE, TI, field of view
            for field in ("tr", "flip_angle", "te", "ti", "fov"):
                hdr[field] = src[field]
        affine = self._world_affine(like, pooling)
        if affine is not None:
            _set_affine(hdr, affine, self.nshape)
        self.file_dtype = self.dtype.newbyteorder(">")
        buf = io.BytesIO()
        hdr.writeftr_to(_At(buf, hdr.get_footer_offset()))
        self.footer = buf.getvalue()
        return hdr

    def _head_bytes(self, header) -> tuple[bytes, bytes]:
        buf = io.BytesIO()
        header.writehdr_to(buf)
        head = buf.getvalue()
        self.vox_offset = MGH_DATA_OFFSET
        return head, b"\0" * (MGH_DATA_OFFSET - len(head))


class _At:
    """A file object whose ``seek`` to ``base`` means the start (nibabel seeks to the footer offset)."""

    def __init__(self, buf: io.BytesIO, base: int):
        self.buf, self.base = buf, base

    def seek(self, pos: int) -> None:
        self.buf.seek(pos - self.base)

    def write(self, data: bytes) -> None:
        self.buf.write(data)


def _set_affine(hdr, affine: np.ndarray, shape) -> None:
    """MGH's delta, Mdc and Pxyz_c from a voxel-to-RAS affine (as nibabel's ``MGHImage._affine2header``)."""
    sizes = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    hdr["delta"] = sizes
    hdr["Mdc"] = (affine[:3, :3] / sizes).T
    hdr["Pxyz_c"] = affine.dot(np.hstack((np.array(shape[:3]) / 2.0, [1])))[:3]
    hdr["goodRASFlag"] = 1


def open_sink(file: str, shape, dtype, **common):
    if file.lower().endswith(MGH_SUFFIXES):
        return MGHSink(file, shape, dtype, **common)
    return NiftiSink(file, shape, dtype, **common)


__all__ = ["AnalyzeSource", "MGHSource", "MGHSink", "open_source", "open_sink", "pooling_matrix"]
