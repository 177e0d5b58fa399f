"""#13.4: an upstream gradient is read with its file's axes mapped as lucid maps an output's.

lucid writes a NIfTI output of an HDF5 "dhw" input with x = w, y = h, z = d, so
a NIfTI gradient on that grid is read back the same way, for every pair of
input and gradient formats; the reference is torch's backward on the input.
"""

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

from lucid.io import LucidIOError
from lucid.stream.api import pool3d_file

RNG = np.random.default_rng(13)
SHAPE_DHW = (6, 8, 10)  # a non-cube: a wrong mapping is a wrong shape


def _write_input(path, x_dhw):
    if path.suffix == ".h5":
        with h5py.File(path, "w") as f:
            f["data"] = x_dhw
    else:  # NIfTI x, y, z = w, h, d
        nib.save(nib.Nifti1Image(x_dhw.transpose(2, 1, 0).copy(), np.eye(4)), path)


def _read_any(path):
    if path.suffix == ".h5":
        with h5py.File(path) as f:
            return f[next(iter(f))][()]
    return np.asarray(nib.load(path).dataobj)


def _gradient_like_output(output, path, g_out_order):
    """Write ``g_out_order`` (in the output file's axis order) as a gradient file at ``path``."""
    if path.suffixes[-1] == ".h5":
        with h5py.File(path, "w") as f:
            f["data"] = g_out_order
    else:
        nib.save(nib.Nifti1Image(g_out_order, nib.load(output).affine if output.suffix != ".h5" else np.eye(4)), path)


@pytest.mark.parametrize("in_suffix", [".h5", ".nii"])
@pytest.mark.parametrize("grad_suffix", [".h5", ".nii", ".nii.gz"])
def test_gradient_axes_follow_the_output_mapping(tmp_path, in_suffix, grad_suffix):
    x = RNG.standard_normal(SHAPE_DHW).astype(np.float32)  # (d, h, w)
    src = tmp_path / f"in{in_suffix}"
    _write_input(src, x)
    # the output lucid writes in the gradient's format tells its axis order
    probe = tmp_path / f"probe{grad_suffix}"
    pool3d_file(str(src), str(probe), 2)
    probe_shape = _read_any(probe).shape
    g_file = RNG.standard_normal(probe_shape).astype(np.float32)
    grad = tmp_path / f"g{grad_suffix}"
    _gradient_like_output(probe, grad, g_file)
    gx = tmp_path / "gx.h5"
    pool3d_file(str(src), None, 2, grad_in=str(grad), grad_out=str(gx))
    got = _read_any(gx)

    # reference: only an HDF5 gradient of an HDF5 input is in (d, h, w) order; every
    # other file lucid writes has x, y, z = w, h, d
    both_h5 = in_suffix == ".h5" and grad_suffix == ".h5"
    g_dhw = g_file if both_h5 else g_file.transpose(2, 1, 0)
    t = torch.tensor(x, requires_grad=True)
    torch.nn.functional.max_pool3d(t[None, None], 2)[0, 0].backward(torch.tensor(np.ascontiguousarray(g_dhw)))
    want = t.grad.numpy()
    if in_suffix != ".h5":
        want = want.transpose(2, 1, 0)  # the gradient map is in the input's (x, y, z) order
    np.testing.assert_array_equal(got, want)


def test_cdhw_input_with_nifti_gradient(tmp_path):
    x = RNG.standard_normal((2, 4, 6, 8)).astype(np.float32)
    src = tmp_path / "v.h5"
    with h5py.File(src, "w") as f:
        f["data"] = x
    g_cdhw = RNG.standard_normal((2, 2, 3, 4)).astype(np.float32)
    grad = tmp_path / "g.nii.gz"
    nib.save(nib.Nifti1Image(g_cdhw.transpose(3, 2, 1, 0).copy(), np.eye(4)), grad)  # x=w y=h z=d t=c
    gx = tmp_path / "gx.h5"
    pool3d_file(str(src), None, 2, grad_in=str(grad), grad_out=str(gx))
    t = torch.tensor(x, requires_grad=True)
    torch.nn.functional.max_pool3d(t[None], 2)[0].backward(torch.tensor(g_cdhw))
    np.testing.assert_array_equal(_read_any(gx), t.grad.numpy())


def test_wrong_gradient_shape_names_both_in_axis_letters(tmp_path):
    x = RNG.standard_normal(SHAPE_DHW).astype(np.float32)
    src = tmp_path / "in.h5"
    _write_input(src, x)
    grad = tmp_path / "g.nii"
    nib.save(nib.Nifti1Image(np.zeros((3, 4, 5), np.float32), np.eye(4)), grad)  # d-h-w order: wrong for NIfTI
    with pytest.raises(LucidIOError) as info:
        pool3d_file(str(src), None, 2, grad_in=str(grad), grad_out=str(tmp_path / "gx.h5"))
    msg = str(info.value)
    assert msg.startswith(f"{grad}:") and "w=3 h=4 d=5" in msg and "w=5 h=4 d=3" in msg, msg
    assert not (tmp_path / "gx.h5").exists()
