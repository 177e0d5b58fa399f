"""#13.7: NaN/inf in pixdim, the quaternion or the srow: the sane geometry is kept, with a warning.

Never an internal error, in pool3d (NIfTI and HDF5 outputs) or in ``describe``;
float128 data is described (it used to recurse for ever).
"""

import h5py
import nibabel as nib
import numpy as np
import pytest

from lucid.inspect import describe
from lucid.stream.api import pool3d_file
from tests.hostile_nifti import patched_nifti

NAN, INF = np.nan, np.inf
CASES = {
    "pixdim": ({"pixdim[1]": NAN}, ["pixdim[1] is nan"], (1, 1)),  # (qform, sform) codes kept in the output
    "quaternion": ({"quatern_b": NAN}, ["quatern_b is nan: the qform is ignored"], (0, 1)),
    "qoffset": ({"qoffset_y": -INF}, ["qoffset_y is -inf: the qform is ignored"], (0, 1)),
    "srow": ({"srow_x[0]": INF}, ["srow_x[0] is inf: the sform is ignored"], (1, 0)),
    "both": ({"srow_z[3]": NAN, "quatern_c": INF}, ["the qform is ignored", "the sform is ignored"], (0, 0)),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".h5"])
def test_hostile_geometry_keeps_the_sane_part(tmp_path, recwarn, case, suffix):
    fields, says, codes = CASES[case]
    src = patched_nifti(tmp_path / "in.nii", **fields)
    out = tmp_path / f"out{suffix}"
    report = pool3d_file(src, str(out), 2)
    for fragment in says:
        assert any(fragment in w and w.startswith(src) for w in report.warnings), report.warnings
    assert not [w for w in recwarn if "lucid" in str(w.filename) or "nibabel" in str(w.filename)]
    if suffix == ".h5":
        with h5py.File(out) as f:
            assert f[next(iter(f))].shape == (4, 3, 2)
        return
    hdr = nib.load(out).header
    expect_q = codes[0] if case != "pixdim" else 0  # a NaN voxel size makes the qform unusable too
    assert (int(hdr["qform_code"]), int(hdr["sform_code"])) == (expect_q, codes[1])
    assert np.all(np.isfinite(nib.load(out).affine))
    if codes[1]:  # the sform kept, pooled: diag(2, 3, 4) times the stride
        np.testing.assert_allclose(np.diag(hdr.get_sform())[:3], [4, 6, 8])
    info = describe(src)
    assert any(says[0] in w for w in info["volume"]["warnings"])


def test_float128_is_described(tmp_path):
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.ones((2, 2, 2), np.longdouble)
    info = describe(str(path))
    assert info["volume"]["dtype"] == str(np.dtype(np.longdouble))
