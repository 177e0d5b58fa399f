"""#12.12: NIfTI's relatives through nibabel: Analyze and NIfTI .hdr/.img pairs, NIfTI-2, MGH/MGZ.

Read with nibabel's shipped test headers (plus a generated .img) and test.mgz,
and with generated files; streamed in slabs (nibabel's proxy never reads the
whole volume); scaled integers kept; the affine moves with the window centres
exactly as for NIfTI; nibabel reads every output back.  Both files of a pair
are inputs: neither may be an output.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from nibabel.arrayproxy import ArrayProxy
from nibabel.testing import data_path

from lucid.inspect import describe
from lucid.io import LucidIOError, open_source
from lucid.io.base import pooling_matrix
from lucid.io.tempfiles import clean_stale
from lucid.kernels.windows import PoolSpec
from lucid.stream.api import pool3d_file
from lucid_cli.main import main

SPEC2 = PoolSpec.create(2, 2, 0, 1, False, "zeros")


def pooled_ref(x: np.ndarray, k: int = 2) -> np.ndarray:
    """Max over k x k x k blocks of the first three axes (floor mode), carried axes kept."""
    n = [s // k for s in x.shape[:3]]
    x = x[: n[0] * k, : n[1] * k, : n[2] * k]
    return x.reshape(n[0], k, n[1], k, n[2], k, *x.shape[3:]).max(axis=(1, 3, 5))


def shipped_pair(tmp_path, name: str) -> str:
    """nibabel's shipped ``NAME.hdr`` (header only) with a generated ``NAME.img`` of its shape and dtype."""
    hdr = tmp_path / f"{name}.hdr"
    shutil.copy(os.path.join(data_path, f"{name}.hdr"), hdr)
    img = nib.load(hdr)
    data = np.random.default_rng(0).integers(0, 200, int(np.prod(img.shape)))
    data = data.astype(img.header.get_data_dtype())
    with open(tmp_path / f"{name}.img", "wb") as f:
        f.write(b"\0" * int(img.dataobj.offset) + data.tobytes())
    return str(hdr)


@pytest.fixture
def no_whole_reads(monkeypatch):
    """nibabel's proxy must never be asked for the whole volume."""

    def whole(self, *args, **kwargs):
        raise AssertionError("the whole volume was read through nibabel")

    monkeypatch.setattr(ArrayProxy, "__array__", whole)
    monkeypatch.setattr(ArrayProxy, "get_unscaled", whole)


def _unscaled(path) -> np.ndarray:
    img = nib.load(path)
    return np.asarray(img.dataobj.get_unscaled() if hasattr(img.dataobj, "get_unscaled") else img.dataobj)


@pytest.mark.parametrize("name, kind", [("analyze", "Spm2AnalyzeImage"), ("nifti1", "Nifti1Pair"),
                                        ("nifti2", "Nifti2Pair")])
@pytest.mark.parametrize("out_suffix", [".nii", ".hdr", ".img", ".nii.gz"])
def test_shipped_pairs_pool_with_geometry_and_scaling(tmp_path, name, kind, out_suffix):
    src = shipped_pair(tmp_path, name)
    ref_img = nib.load(src)
    assert type(ref_img).__name__ == kind
    expected = pooled_ref(_unscaled(src))
    out = tmp_path / f"out{out_suffix}"
    report = pool3d_file(src, str(out), 2, memory_limit="1M")
    assert report.slabs > 1 and not report.warnings
    got = nib.load(out)
    assert np.array_equal(_unscaled(out), expected)
    assert got.get_data_dtype() == ref_img.get_data_dtype()  # int16 stays int16, uint8 stays uint8
    assert got.dataobj.slope == pytest.approx(ref_img.dataobj.slope)  # Analyze's SPM scale factor kept
    assert np.allclose(got.affine, ref_img.affine @ pooling_matrix(SPEC2), atol=1e-4)
    if out_suffix in (".hdr", ".img"):
        assert isinstance(got, nib.Nifti1Pair) and not isinstance(got, nib.Nifti1Image)
        assert os.path.exists(tmp_path / "out.hdr") and os.path.exists(tmp_path / "out.img")
        assert [p.name for p in tmp_path.iterdir() if "lucid" in p.name] == []
    if name == "nifti2":
        assert isinstance(got.header, nib.Nifti2Header)


def test_pairs_are_streamed_not_loaded(tmp_path, no_whole_reads):
    src = shipped_pair(tmp_path, "nifti1")
    report = pool3d_file(src, str(tmp_path / "o.hdr"), 2, memory_limit="1M", grad_out=str(tmp_path / "g.img"))
    assert report.slabs > 1


def test_mgz_is_streamed_not_loaded(tmp_path, no_whole_reads):
    src = os.path.join(data_path, "test.mgz")
    for out in ("o.mgz", "o.mgh", "o.nii"):
        assert pool3d_file(src, str(tmp_path / out), (1, 2, 1)).slabs > 1  # one job per frame at least


def test_shipped_mgz_values_and_affine(tmp_path):
    src = os.path.join(data_path, "test.mgz")
    ref = nib.load(src)
    x = np.asarray(ref.dataobj)
    spec = PoolSpec.create((1, 2, 1), (1, 2, 1), 0, 1, False, "zeros")
    expected = x.reshape(3, 2, 2, 5, 2).max(axis=2)
    for out in ("o.mgz", "o.mgh", "o.nii"):
        pool3d_file(src, str(tmp_path / out), (1, 2, 1))
        got = nib.load(tmp_path / out)
        assert np.array_equal(np.asarray(got.dataobj), expected)
        assert np.allclose(got.affine, ref.affine @ pooling_matrix(spec), atol=1e-5)
        if out != "o.nii":
            assert isinstance(got, nib.MGHImage) and got.get_data_dtype() == np.dtype(">f4")
            for field in ("tr", "te", "ti", "flip_angle"):
                assert got.header[field] == ref.header[field]


@pytest.mark.parametrize("suffix", [".mgh", ".mgz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32])
def test_generated_mgh_round_trip(tmp_path, suffix, dtype):
    rng = np.random.default_rng(1)
    x = rng.integers(-100 if dtype != np.uint8 else 0, 100, (10, 12, 14, 3)).astype(dtype)
    affine = np.array([[-1.0, 0, 0, 5], [0, 0, 1.5, -3], [0, -1.2, 0, 7], [0, 0, 0, 1]])
    src = tmp_path / f"in{suffix}"
    nib.save(nib.MGHImage(x, affine), src)
    report = pool3d_file(str(src), str(tmp_path / f"out{suffix}"), 2, memory_limit="3M",
                         grad_out=str(tmp_path / f"grad{suffix}"))
    assert report.axes == "xyzt" and report.slabs > 1
    got = nib.load(tmp_path / f"out{suffix}")
    assert np.array_equal(np.asarray(got.dataobj), pooled_ref(x)) and got.get_data_dtype() == np.dtype(dtype).newbyteorder(">")
    assert np.allclose(got.affine, affine @ pooling_matrix(SPEC2), atol=1e-5)
    grad = np.asarray(nib.load(tmp_path / f"grad{suffix}").dataobj)
    assert grad.shape == x.shape and grad.sum() == pooled_ref(x).size  # one winner per window


def test_example_nifti2_single_file(tmp_path):
    src = os.path.join(data_path, "example_nifti2.nii.gz")
    ref = nib.load(src)
    pool3d_file(src, str(tmp_path / "o.nii"), 2)
    got = nib.load(tmp_path / "o.nii")
    assert isinstance(got.header, nib.Nifti2Header)
    assert np.array_equal(np.asarray(got.dataobj.get_unscaled()), pooled_ref(np.asarray(ref.dataobj.get_unscaled())))
    assert np.allclose(got.affine, ref.affine @ pooling_matrix(SPEC2), atol=1e-4)


# ---------------------------------------------------------------- both files of a pair


@pytest.mark.parametrize("given, output", [("hdr", "img"), ("img", "hdr"), ("hdr", "hdr"), ("img", "img")])
def test_neither_file_of_the_input_pair_may_be_an_output(tmp_path, given, output):
    shipped_pair(tmp_path, "nifti1")
    src, out = str(tmp_path / f"nifti1.{given}"), str(tmp_path / f"nifti1.{output}")
    before = {p: open(tmp_path / f"nifti1.{p}", "rb").read() for p in ("hdr", "img")}
    with pytest.raises(LucidIOError, match="output is the input file"):
        pool3d_file(src, out, 2, force=True)
    with pytest.raises(LucidIOError, match="output is the input file"):
        pool3d_file(src, str(tmp_path / "o.nii"), 2, grad_out=out, force=True)
    result = CliRunner().invoke(main, ["pool3d", src, out, "--force"])
    assert result.exit_code == 2 and "is the INPUT file" in result.output
    assert {p: open(tmp_path / f"nifti1.{p}", "rb").read() for p in ("hdr", "img")} == before


def test_a_pair_output_is_refused_when_either_file_exists(tmp_path):
    src = shipped_pair(tmp_path, "nifti1")
    (tmp_path / "o.img").write_bytes(b"keep")
    with pytest.raises(LucidIOError, match=r"o\.img: output exists"):
        pool3d_file(src, str(tmp_path / "o.hdr"), 2)
    assert not (tmp_path / "o.hdr").exists() and (tmp_path / "o.img").read_bytes() == b"keep"
    with pytest.raises(ValueError, match="must be different files"):
        pool3d_file(src, str(tmp_path / "p.hdr"), 2, grad_out=str(tmp_path / "p.img"))
    pool3d_file(src, str(tmp_path / "o.hdr"), 2, force=True)
    assert nib.load(tmp_path / "o.hdr").shape == (45, 54, 45)


def test_a_failed_run_leaves_neither_file_of_a_pair(tmp_path):
    src = tmp_path / "in.nii"
    nib.save(nib.Nifti1Image(np.full((8, 8, 8), 1000, np.int16), np.eye(4)), src)
    with pytest.raises(LucidIOError, match="do not fit the output dtype uint8"):
        pool3d_file(str(src), str(tmp_path / "o.img"), 2, out_dtype="uint8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii"]


def test_a_missing_or_short_image_file_is_one_error_naming_it(tmp_path):
    src = shipped_pair(tmp_path, "nifti1")
    img = tmp_path / "nifti1.img"
    img.write_bytes(img.read_bytes()[:1000])
    with pytest.raises(LucidIOError, match=r"nifti1\.img: truncated NIfTI file"):
        open_source(src)
    img.unlink()
    with pytest.raises(LucidIOError, match=r"nifti1\.img: no such file"):
        open_source(src)
    lonely = tmp_path / "lonely.img"
    lonely.write_bytes(b"\0" * 64)
    with pytest.raises(LucidIOError, match=r"lonely\.img: the header .*lonely\.hdr of this .hdr/.img pair is missing"):
        open_source(str(lonely))


def test_mgh_refusals_are_one_line(tmp_path):
    src = os.path.join(data_path, "test.mgz")
    with pytest.raises(LucidIOError, match="MGH stores uint8, int16, int32, float32, not int64"):
        pool3d_file(src, str(tmp_path / "o.nii"), 1, indices_out=str(tmp_path / "i.mgz"))
    scaled = shipped_pair(tmp_path, "analyze")  # SPM scale factor 1715
    with pytest.raises(LucidIOError, match="MGH has no scl_slope/scl_inter"):
        pool3d_file(scaled, str(tmp_path / "o.mgz"), 2)
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".mgz", ".nii")]


def test_info_describes_the_relatives(tmp_path):
    src = shipped_pair(tmp_path, "analyze")
    found = describe(src)
    assert found["format"] == "analyze" and found["volume"]["shape"] == [91, 109, 91, 1]
    mgz = describe(os.path.join(data_path, "test.mgz"))
    assert mgz["format"] == "mgh" and mgz["volume"]["tr"] == 2.0
    result = CliRunner().invoke(main, ["info", src, os.path.join(data_path, "test.mgz"), str(tmp_path / "analyze.img")])
    assert result.exit_code == 0, result.output
    assert "Analyze" in result.output and "MGH" in result.output
    one = CliRunner().invoke(main, ["info", os.path.join(data_path, "test.mgz")])
    assert one.exit_code == 0 and "MGH" in one.output and "affine" in one.output


def test_unreadable_suffixes_stay_a_one_line_refusal(tmp_path):
    result = CliRunner().invoke(main, ["pool3d", str(tmp_path / "a.mnc"), str(tmp_path / "o.nii")])
    assert result.exit_code == 2 and "unsupported file type" in result.output and ".mgz" in result.output


def test_dry_run_of_a_pair_output_speaks_nifti_not_hdf5(tmp_path):
    src = shipped_pair(tmp_path, "analyze")
    result = CliRunner().invoke(main, ["pool3d", src, str(tmp_path / "o.hdr"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "scl_slope 1715.04" in result.output and "element_size_um" not in result.output
    assert not (tmp_path / "o.hdr").exists() and not (tmp_path / "o.img").exists()


KILL_BETWEEN_RENAMES = """
import os, signal, sys
from lucid.stream.api import pool3d_file
real = os.replace
def replace(src, dst, *a, **k):
    real(src, dst, *a, **k)
    if os.fspath(dst).endswith(".img"):  # the image is in place, its header not yet
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
pool3d_file(sys.argv[1], sys.argv[2], 2, force=True)
"""


def test_a_pair_replaced_with_force_is_never_the_new_image_under_the_old_header(tmp_path):
    src = tmp_path / "in.nii"
    nib.save(nib.Nifti1Image(np.arange(512, dtype=np.int16).reshape(8, 8, 8), np.eye(4)), src)
    out = tmp_path / "o.img"
    pool3d_file(str(src), str(out), 1)  # an older 8^3 output the run replaces with a 4^3 one
    old_header = (tmp_path / "o.hdr").read_bytes()
    done = subprocess.run([sys.executable, "-c", KILL_BETWEEN_RENAMES, str(src), str(out)], capture_output=True)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    # killed between the two renames: the new image is in place, and no header pairs it with
    # the old one's shape (a reader would see a wrong 8^3 volume in 4^3 bytes)
    assert out.stat().st_size == 4 ** 3 * 2
    assert not (tmp_path / "o.hdr").exists()
    temps = [p for p in tmp_path.iterdir() if p.name.startswith(".o.hdr")]  # the new header's, the old one aside
    assert old_header in [p.read_bytes() for p in temps]
    clean_stale(tmp_path)  # what `lucid clean` does: the killed run's files go
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii", "o.img"]
    pool3d_file(str(src), str(out), 2, force=True)  # a rerun makes the pair whole
    assert nib.load(str(out)).shape == (4, 4, 4)


def test_a_pair_replaced_with_force_leaves_no_temporary_file(tmp_path):
    src = tmp_path / "in.nii"
    nib.save(nib.Nifti1Image(np.arange(512, dtype=np.int16).reshape(8, 8, 8), np.eye(4)), src)
    pool3d_file(str(src), str(tmp_path / "o.img"), 1)
    pool3d_file(str(src), str(tmp_path / "o.hdr"), 2, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii", "o.hdr", "o.img"]
    assert nib.load(str(tmp_path / "o.hdr")).shape == (4, 4, 4)
