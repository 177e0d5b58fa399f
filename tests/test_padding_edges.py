"""Where padding ends: a ceil_mode window's overhang never takes part, and a
scaled integer file needs a stored zero only when padding can take part."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from lucid import Tensor
from lucid.nn.functional import max_pool3d
from lucid.stream.api import PaddingValueError, pool3d_file
from lucid_cli.main import main
from tests.reference import naive_max_pool3d

ROW = np.array([-1, -2, -3, -4], np.float32).reshape(1, 1, 1, 1, 4)


@pytest.mark.parametrize("mode", ["zeros", "ignore"])
def test_the_overhang_of_a_ceil_mode_window_is_not_padding(mode):
    # The window of output 1 is positions 3..5: 3 is real, 4 and 5 lie past the input
    # with no padding asked for. PyTorch gives [-1, -4]; the overhang is not zero padding.
    y = max_pool3d(Tensor(ROW), (1, 1, 3), (1, 1, 3), ceil_mode=True, padding_mode=mode, return_indices=True)
    values, indices = y[0].numpy().ravel(), y[1].numpy().ravel()
    np.testing.assert_array_equal(values, [-1, -4])
    np.testing.assert_array_equal(indices, [0, 3])


def test_real_padding_still_takes_part_beside_an_overhang():
    # k=3 s=2 p=1: output 2 reads positions 3 (real), 4 (right padding) and 5 (overhang).
    got = max_pool3d(Tensor(ROW), (1, 1, 3), (1, 1, 2), (0, 0, 1), ceil_mode=True).numpy().ravel()
    np.testing.assert_array_equal(got, [0, -2, 0])
    ignore = max_pool3d(Tensor(ROW), (1, 1, 3), (1, 1, 2), (0, 0, 1), ceil_mode=True, padding_mode="ignore")
    np.testing.assert_array_equal(ignore.numpy().ravel(), [-1, -2, -4])


def test_the_overhang_gets_no_gradient_and_the_reference_agrees():
    rng = np.random.default_rng(3)
    x = -rng.integers(1, 50, size=(1, 2, 5, 7, 8)).astype(np.float64)
    t = Tensor(x, requires_grad=True)
    y = max_pool3d(t, 2, 3, ceil_mode=True)
    y.backward(Tensor(np.ones(y.shape)))
    want, _, grad = naive_max_pool3d(x, (2, 2, 2), (3, 3, 3), (0, 0, 0), ceil_mode=True, grad=np.ones(y.shape))
    np.testing.assert_array_equal(y.numpy(), want)
    assert (y.numpy() < 0).all()  # every window holds only negative real values
    np.testing.assert_array_equal(t.grad.numpy(), grad)
    assert t.grad.numpy().sum() == y.numpy().size  # every output's gradient lands on a real voxel


def test_streaming_keeps_the_overhang_out(tmp_path):
    import h5py

    rng = np.random.default_rng(4)
    x = -rng.integers(1, 99, size=(60, 50, 50)).astype(np.float32)  # 60 = 19*3 + 3: the last window overhangs
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f["data"] = x
    report = pool3d_file(tmp_path / "in.h5", tmp_path / "out.h5", 4, 3, ceil_mode=True, memory_limit="1M",
                         compression="none")
    assert report.slabs > 1
    with h5py.File(tmp_path / "out.h5") as f:
        got = f["data"][...]
    want = naive_max_pool3d(x[None, None], (4, 4, 4), (3, 3, 3), (0, 0, 0), ceil_mode=True)[0][0, 0]
    np.testing.assert_array_equal(got, want)
    assert not report.padding_won


def _scanner_file(path, shape=(8, 8, 6)):
    """int16 with the scaling of a real scanner file: physical 0 is stored as -41124.1, out of range."""
    raw = np.random.default_rng(5).integers(-2000, 2000, size=shape).astype(np.int16)
    img = nib.Nifti1Image(raw, np.diag([0.9, 0.9, 2.0, 1.0]))
    img.header.set_data_dtype(np.int16)
    img.header.set_slope_inter(0.0754, 3100.76)
    nib.save(img, path)
    return raw


@pytest.mark.parametrize("args", [dict(kernel_size=2), dict(kernel_size=1), dict(kernel_size=3, ceil_mode=True)])
def test_scaled_integer_file_without_padding_pools(tmp_path, args):
    raw = _scanner_file(tmp_path / "scan.nii")
    assert pool3d_file(tmp_path / "scan.nii", dry_run=True, **args).dry_run
    pool3d_file(tmp_path / "scan.nii", tmp_path / "out.nii", **args)
    img = nib.load(tmp_path / "out.nii")
    k = args["kernel_size"]
    want = naive_max_pool3d(raw[None, None], (k,) * 3, (k,) * 3, (0, 0, 0), ceil_mode=args.get("ceil_mode", False))[0]
    np.testing.assert_array_equal(np.asarray(img.dataobj.get_unscaled()), want[0, 0])
    assert img.get_data_dtype() == np.int16 and (img.dataobj.slope, img.dataobj.inter) == (np.float32(0.0754), np.float32(3100.76))


def test_scaled_integer_file_with_padding_is_refused_in_each_callers_terms(tmp_path):
    _scanner_file(tmp_path / "scan.nii")
    with pytest.raises(PaddingValueError, match="padding_mode='ignore'"):
        pool3d_file(tmp_path / "scan.nii", tmp_path / "out.nii", 3, 2, 1)
    result = CliRunner().invoke(main, ["pool3d", str(tmp_path / "scan.nii"), str(tmp_path / "out.nii"), "-k", "3",
                                       "-p", "1"])
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert line.startswith("Error: ") and "\n" not in line
    assert "--padding-mode ignore" in line and "padding_mode" not in line
    assert not (tmp_path / "out.nii").exists()
    ok = CliRunner().invoke(main, ["pool3d", str(tmp_path / "scan.nii"), str(tmp_path / "out.nii"), "-k", "3",
                                   "-p", "1", "--padding-mode", "ignore"])
    assert ok.exit_code == 0, ok.stderr


def test_ct_sample_keeps_its_last_plane_with_ceil_mode(tmp_path):
    # 64 = 21*3 + 1: the last window along x and y reads one real plane and two of overhang.
    ct = "sample_data/ct_phantom.nii.gz"
    result = CliRunner().invoke(main, ["pool3d", ct, str(tmp_path / "o.nii.gz"), "-k", "3", "--ceil-mode"])
    assert result.exit_code == 0 and "Warning" not in result.stderr, result.stderr
    raw = np.asarray(nib.load(ct).dataobj.get_unscaled())
    got = np.asarray(nib.load(tmp_path / "o.nii.gz").dataobj.get_unscaled())
    want = naive_max_pool3d(raw[None, None], (3, 3, 3), (3, 3, 3), (0, 0, 0), ceil_mode=True)[0][0, 0]
    np.testing.assert_array_equal(got, want)
    hu = got.astype(np.float64) - 1024  # the sample's scl_inter
    assert hu[-1].max() < 0 and hu[:, -1].max() < 0  # air at the border stays air (-1000 HU), not 0 HU
