"""Hostile NIfTI files made in the test: a good file with header fields patched in place.

nibabel recomputes qform/sform from the image affine when it saves, so NaN or
inf fields are written by patching the 348-byte header of a saved file.
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np


def patched_nifti(path, data=None, *, extension: bytes | None = None, **fields) -> str:
    """Save ``data`` (qform and sform code 1, identity) at ``path``, then set header ``fields`` raw.

    A field name with an index, ``"pixdim[1]"``, sets one entry.  ``extension``
    adds a NIfTI extension with that content (any size, even odd).
    """
    data = np.arange(8 * 6 * 4, dtype=np.float32).reshape(8, 6, 4) if data is None else data
    img = nib.Nifti1Image(data, np.diag([2.0, 3.0, 4.0, 1.0]))
    img.header.set_qform(img.affine, code=1)
    img.header.set_sform(img.affine, code=1)
    if extension is not None:
        img.header.extensions.append(nib.nifti1.Nifti1Extension(6, extension))
    path = os.fspath(path)
    plain = path[:-3] if path.endswith(".gz") else path
    nib.save(img, plain)
    raw = bytearray(open(plain, "rb").read())
    hdr = nib.Nifti1Header.from_fileobj(__import__("io").BytesIO(bytes(raw)), check=False)
    for key, value in fields.items():
        if "[" in key:
            name, index = key[:-1].split("[")
            hdr[name][int(index)] = value
        else:
            hdr[key] = value
    raw[:348] = hdr.binaryblock
    if path != plain:
        import gzip

        os.unlink(plain)
        raw = gzip.compress(bytes(raw), mtime=0)
    with open(path, "wb") as f:
        f.write(raw)
    return path
