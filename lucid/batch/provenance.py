"""Read back the job fingerprint that lucid writes into its outputs (``PoolJob.fingerprint``).

HDF5 and Zarr outputs carry it as the ``lucid_job`` attribute, NIfTI outputs
as ``job=...`` at the end of ``descrip``.  Formats with neither (MGH) carry
none, so their outputs are never taken for this run's.
"""

from __future__ import annotations

import os
import re

from lucid.io import detect_format

_DESCRIP_JOB = re.compile(rb"job=([0-9a-f]{16})")


def output_fingerprints(path: str) -> set[str]:
    """Every fingerprint found in the output ``path`` (empty when it is missing or carries none)."""
    fmt, file, inner = detect_format(path)
    if not os.path.exists(file):
        return set()
    try:
        if fmt == "hdf5":
            return _hdf5(file, inner)
        if fmt == "zarr":
            return _zarr(file, inner)
        if fmt == "nifti":
            return _nifti(file)
    except Exception:  # a damaged or foreign file is simply not this run's output  # noqa: BLE001
        return set()
    return set()


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _hdf5(file: str, inner: str | None) -> set[str]:
    import h5py

    found: set[str] = set()
    with h5py.File(file, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and "lucid_job" in obj.attrs:
                found.add(_text(obj.attrs["lucid_job"]))

        target = f[inner] if inner else f
        if isinstance(target, h5py.Dataset):
            visit(inner, target)
        else:
            target.visititems(visit)
    return found


def _zarr(file: str, inner: str | None) -> set[str]:
    import zarr

    node = zarr.open(file, mode="r", path=inner.lstrip("/") if inner else None)
    nodes = [node] if isinstance(node, zarr.Array) else [
        m for _, m in node.members(max_depth=None) if isinstance(m, zarr.Array)]
    return {_text(a.attrs["lucid_job"]) for a in nodes if "lucid_job" in a.attrs}


def _nifti(file: str) -> set[str]:
    import nibabel as nib

    descrip = bytes(nib.load(file).header["descrip"].tobytes())
    return set(m.decode() for m in _DESCRIP_JOB.findall(descrip))
