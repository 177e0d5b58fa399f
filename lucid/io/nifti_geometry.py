"""Which parts of a NIfTI header's geometry are usable, and a header with only those.

NaN or inf in ``pixdim``, the quaternion (``quatern_b/c/d``, ``qoffset_*``) or
the ``srow_*`` rows make nibabel fail ("Could not decompose affine") or warn
when the geometry is used.  lucid keeps the sane part, as a viewer would:

* a non-finite ``pixdim[i]`` (a voxel size) is taken as 1, the size unknown;
* a qform with a non-finite quaternion, offset, ``pixdim[0..3]`` or a ``qfac``
  other than +-1 is dropped (``qform_code`` 0);
* an sform with a non-finite ``srow`` entry is dropped (``sform_code`` 0);

each with one warning naming the field.  The input file itself is never changed.
"""

from __future__ import annotations

import numpy as np

QUATERNION = ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z")
SROWS = ("srow_x", "srow_y", "srow_z")


def _first_bad(hdr, fields) -> str | None:
    for field in fields:
        values = np.atleast_1d(np.asarray(hdr[field], dtype=np.float64))
        for i, v in enumerate(values):
            if not np.isfinite(v):
                where = field if values.size == 1 else f"{field}[{i}]"
                return f"{where} is {v}"
    return None


def sane_header(hdr, name: str) -> tuple[object, list[str], bool]:
    """``(header copy with only usable geometry, warnings, voxel sizes known)``."""
    out = hdr.copy()
    warnings: list[str] = []
    ndim = int(hdr["dim"][0])
    pixdim = np.asarray(hdr["pixdim"], dtype=np.float64)
    sizes_known = True
    if int(hdr["qform_code"]) > 0:
        why = _first_bad(hdr, QUATERNION)
        if why is None and not all(np.isfinite(pixdim[1:4])):
            bad = next(i for i in range(1, 4) if not np.isfinite(pixdim[i]))
            why = f"pixdim[{bad}] is {pixdim[bad]}"
        if why is None and pixdim[0] not in (-1.0, 1.0, 0.0):
            why = f"qfac (pixdim[0]) is {pixdim[0]}"
        if why is not None:
            warnings.append(f"{name}: {why}: the qform is ignored (qform_code 0 in outputs)")
            out["qform_code"] = 0
            for field in QUATERNION:
                out[field] = 0
    if int(hdr["sform_code"]) > 0:
        why = _first_bad(hdr, SROWS)
        if why is not None:
            warnings.append(f"{name}: {why}: the sform is ignored (sform_code 0 in outputs)")
            out["sform_code"] = 0
            for field in SROWS:
                out[field] = 0
    if not np.isfinite(pixdim[0]):
        out["pixdim"][0] = 1.0
    bad = [i for i in range(1, min(ndim, 7) + 1) if not np.isfinite(pixdim[i])]
    if bad:
        fixed = np.array(out["pixdim"], dtype=np.float64)
        fixed[bad] = 1.0
        out["pixdim"] = fixed
        sizes_known = not any(i <= 3 for i in bad)
        fields = ", ".join(f"pixdim[{i}] is {pixdim[i]}" for i in bad)
        warnings.append(f"{name}: {fields}: voxel size unknown, taken as 1")
    return out, warnings, sizes_known
