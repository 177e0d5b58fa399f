"""Generate the small sample volumes in this directory (deterministic: fixed seed).

    python sample_data/make_sample_data.py [--out DIR]

Files (each well under 2 MiB):

* ``ct_phantom.nii.gz``  int16 CT-like phantom, 64x64x48, oblique affine, 0.8x0.8x1.5 mm.
  Stored raw values with scl_slope=1, scl_inter=-1024 (HU = raw - 1024): air -1000 HU,
  soft tissue ~40 HU, bone ~1000 HU, some noise.
* ``mri_4d.nii.gz``      float32 4-D fMRI-like series 32x32x24x5, TR 2 s, slice timing
  along z (dim_info slice=2, sequential increasing, 80 ms per slice).
* ``video_clip.h5``      ``/frames`` (T,H,W,C) = (32,64,64,3) uint8, a moving disc; attrs fps, description.
* ``volume_5d.h5``       ``/data`` (N,C,D,H,W) = (2,3,32,32,32) float32, element_size_um = (2, 0.5, 0.5).
* ``volume_5d_grad.h5``  ``/grad`` (2,3,16,16,16) float32: an upstream gradient for MaxPool3d(2, 2)
  of ``volume_5d.h5``.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np

SEED = 20240611


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _save_nifti_gz(img: nib.Nifti1Image, path: Path) -> None:
    """Save with a fixed gzip header (mtime 0) so the bytes are reproducible."""
    raw = io.BytesIO()
    fmap = nib.Nifti1Image.make_file_map({"image": raw, "header": raw})
    img.to_file_map(fmap)
    with open(path, "wb") as fh, gzip.GzipFile(filename=path.name[:-3], mode="wb", fileobj=fh,
                                                 compresslevel=9, mtime=0) as gz:
        gz.write(raw.getvalue())


def make_ct(rng: np.random.Generator, path: Path) -> None:
    shape = (64, 64, 48)
    zooms = np.array([0.8, 0.8, 1.5])
    i, j, k = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    x, y, z = (i - 31.5) * zooms[0], (j - 31.5) * zooms[1], (k - 23.5) * zooms[2]
    hu = np.full(shape, -1000.0)
    body = (x / 22.0) ** 2 + (y / 17.0) ** 2 + (z / 34.0) ** 2 <= 1.0
    hu[body] = 40.0
    lung = ((np.abs(x) - 9.0) / 6.0) ** 2 + (y / 8.0) ** 2 + (z / 22.0) ** 2 <= 1.0
    hu[lung & body] = -850.0
    spine = ((x / 3.5) ** 2 + ((y + 11.0) / 3.5) ** 2 <= 1.0) & (np.abs(z) < 32)
    hu[spine] = 1000.0
    ribs = body & ~((x / 20.0) ** 2 + (y / 15.0) ** 2 + (z / 34.0) ** 2 <= 1.0) & (np.mod(z, 9.0) < 3.0)
    hu[ribs] = 700.0
    hu += rng.normal(0.0, 12.0, shape) * body
    raw = np.clip(np.round(hu + 1024.0), 0, 4095).astype(np.int16)

    affine = np.eye(4)
    affine[:3, :3] = _rotation(np.deg2rad(8.0), np.deg2rad(-5.0), np.deg2rad(17.0)) @ np.diag(zooms)
    affine[:3, 3] = -affine[:3, :3] @ (np.array(shape) - 1) / 2.0 + np.array([1.5, -20.0, 35.0])
    img = nib.Nifti1Image(raw, affine)
    hdr = img.header
    hdr.set_data_dtype(np.int16)
    hdr.set_xyzt_units("mm", "sec")
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    hdr.set_slope_inter(1.0, -1024.0)
    hdr["descrip"] = b"lucid sample CT phantom (HU = raw - 1024)"
    hdr["cal_min"], hdr["cal_max"] = -1000.0, 1000.0
    _save_nifti_gz(img, path)
    check = nib.load(path)
    assert check.header.get_data_dtype() == np.int16
    assert np.array_equal(np.asarray(check.dataobj.get_unscaled()), raw)
    assert (check.dataobj.slope, check.dataobj.inter) == (1.0, -1024.0)


def make_mri(rng: np.random.Generator, path: Path) -> None:
    shape = (32, 32, 24, 5)
    zooms = (3.0, 3.0, 4.0)
    i, j, k = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape[:3]), indexing="ij")
    head = ((i - 15.5) / 13) ** 2 + ((j - 15.5) / 15) ** 2 + ((k - 11.5) / 11) ** 2 <= 1
    base = np.where(head, 600.0, 5.0).astype(np.float32)
    data = np.empty(shape, np.float32)
    for t in range(shape[3]):
        blob = 80.0 * np.exp(-(((i - 10 - 2 * t) ** 2 + (j - 18) ** 2 + (k - 12) ** 2) / 18.0))
        data[..., t] = base + blob * head + rng.normal(0, 8, shape[:3]).astype(np.float32)
    affine = np.diag([*zooms, 1.0])
    affine[:3, :3] = _rotation(np.deg2rad(-6.0), 0.0, np.deg2rad(4.0)) @ np.diag(zooms)
    affine[:3, 3] = [-46.0, -52.0, -40.0]
    img = nib.Nifti1Image(data, affine)
    hdr = img.header
    hdr.set_xyzt_units("mm", "sec")
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=4)
    hdr["pixdim"][4] = 2.0  # TR
    hdr.set_dim_info(freq=0, phase=1, slice=2)
    hdr["slice_code"] = 1  # sequential increasing
    hdr["slice_start"], hdr["slice_end"] = 0, shape[2] - 1
    hdr["slice_duration"] = 0.08
    hdr["descrip"] = b"lucid sample 4-D MRI series"
    _save_nifti_gz(img, path)


def make_video(rng: np.random.Generator, path: Path) -> None:
    t_n, h_n, w_n = 32, 64, 64
    frames = np.empty((t_n, h_n, w_n, 3), np.uint8)
    yy, xx = np.mgrid[0:h_n, 0:w_n]
    for t in range(t_n):
        cy, cx = 20 + 0.6 * t, 8 + 1.5 * t
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 36
        img = np.stack([40 + 2 * xx, 60 + yy, np.full_like(xx, 90)], axis=-1).astype(np.float64)
        img[disc] = (250, 220, 30)
        img += rng.normal(0, 4, img.shape)
        frames[t] = np.clip(np.round(img), 0, 255).astype(np.uint8)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("frames", data=frames, chunks=(4, 64, 64, 3), compression="gzip",
                              compression_opts=4, shuffle=True)
        ds.attrs["fps"] = 25.0
        ds.attrs["description"] = "lucid sample clip: a yellow disc moving across a gradient"
        for axis, label in enumerate("thwc"):
            ds.dims[axis].label = label


def make_volume(rng: np.random.Generator, path: Path, grad_path: Path) -> None:
    shape = (2, 3, 32, 32, 32)
    d, h, w = np.meshgrid(*(np.arange(32, dtype=np.float32) for _ in range(3)), indexing="ij")
    data = np.empty(shape, np.float32)
    for n in range(shape[0]):
        for c in range(shape[1]):
            centre = rng.uniform(8, 24, 3)
            blob = np.exp(-((d - centre[0]) ** 2 + (h - centre[1]) ** 2 + (w - centre[2]) ** 2) / 40.0)
            data[n, c] = (blob + 0.05 * rng.standard_normal((32, 32, 32))).astype(np.float32)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("data", data=data, chunks=(1, 1, 8, 32, 32), compression="gzip",
                              compression_opts=4, shuffle=True)
        ds.attrs["element_size_um"] = np.array([2.0, 0.5, 0.5])
        ds.attrs["description"] = "lucid sample 5-D batch: Gaussian blobs plus noise"
        for axis, label in enumerate("ncdhw"):
            ds.dims[axis].label = label
    grad = rng.standard_normal((2, 3, 16, 16, 16)).astype(np.float32)
    with h5py.File(grad_path, "w") as f:
        ds = f.create_dataset("grad", data=grad, chunks=(1, 1, 4, 16, 16))
        ds.attrs["description"] = "upstream gradient for MaxPool3d(kernel_size=2, stride=2) of volume_5d.h5:/data"
        for axis, label in enumerate("ncdhw"):
            ds.dims[axis].label = label


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)), help="output directory")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    make_ct(rng, out / "ct_phantom.nii.gz")
    make_mri(rng, out / "mri_4d.nii.gz")
    make_video(rng, out / "video_clip.h5")
    make_volume(rng, out / "volume_5d.h5", out / "volume_5d_grad.h5")
    for name in sorted(os.listdir(out)):
        if name.endswith((".nii.gz", ".h5")):
            print(f"{name:22s} {os.path.getsize(out / name) / 1024:8.1f} KiB")


if __name__ == "__main__":
    main()
