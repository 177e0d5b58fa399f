"""lucid.inspect.describe: what `lucid info` shows, gathered by the library."""

import json
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from lucid.inspect import describe, jsonable
from lucid.io import LucidIOError

SAMPLES = Path(__file__).resolve().parent.parent / "sample_data"
SAMPLE_FILES = ["ct_phantom.nii.gz", "mri_4d.nii.gz", "video_clip.h5", "volume_5d.h5", "volume_5d_grad.h5"]


@pytest.mark.parametrize("name", SAMPLE_FILES)
def test_every_sample_is_described_and_json_ready(name):
    info = describe(SAMPLES / name)
    assert json.loads(json.dumps(info, allow_nan=False)) == info
    v = info["volume"]
    assert v is not None and info["note"] is None
    assert len(v["axes"]) == len(v["shape"]) and len(v["pooled_axes"]) == 3
    assert info["file_bytes"] == (SAMPLES / name).stat().st_size


def test_nifti_header_fields_of_the_ct():
    info = describe(SAMPLES / "ct_phantom.nii.gz")
    img = nib.load(SAMPLES / "ct_phantom.nii.gz")
    v = info["volume"]
    assert info["format"] == "nifti" and info["datasets"] is None
    assert v["shape"] == [64, 64, 48] and v["dtype"] == "int16" and v["axes"] == "xyz"
    assert (v["scl_slope"], v["scl_inter"]) == (1.0, -1024.0)
    assert (v["qform_code"], v["sform_code"]) == (1, 1)
    np.testing.assert_allclose(v["affine"], img.header.get_sform())
    np.testing.assert_allclose(v["spacing"], [0.8, 0.8, 1.5], rtol=1e-6)
    assert v["spacing_unit"] == "mm" and v["xyzt_units"] == ["mm", "sec"]
    assert v["descrip"].startswith("lucid sample CT phantom")
    assert (v["cal_min"], v["cal_max"]) == (-1000.0, 1000.0)


def test_nifti_4d_keeps_time_as_a_carried_axis_and_slice_timing():
    v = describe(SAMPLES / "mri_4d.nii.gz")["volume"]
    assert v["axes"] == "xyzt" and v["pooled_axes"] == "xyz" and v["carried_axes"] == "t"
    assert v["zooms"] == [3.0, 3.0, 4.0, 2.0]
    assert v["sform_code_name"] == "mni" and v["dim_info"] == {"freq": 0, "phase": 1, "slice": 2}
    assert v["slice_code"] == 1


def test_hdf5_storage_labels_and_attributes():
    info = describe(SAMPLES / "video_clip.h5")
    assert info["datasets"] == [{"path": "/frames", "shape": [32, 64, 64, 3], "dtype": "uint8",
                                 "chunks": [4, 64, 64, 3], "compression": "gzip"}]
    v = info["volume"]
    assert v["name"].endswith("video_clip.h5:/frames") and v["dataset"] == "/frames"
    assert v["axes"] == "thwc" and v["dim_labels"] == ["t", "h", "w", "c"]
    assert (v["compression"], v["compression_opts"], v["shuffle"]) == ("gzip", 4, True)
    assert v["attrs"]["fps"] == 25.0 and "DIMENSION_LABELS" not in v["attrs"]
    assert v["spacing"] is None and v["affine"] is None


def test_hdf5_element_size_is_the_spacing():
    v = describe(SAMPLES / "volume_5d.h5")["volume"]
    assert v["spacing"] == [2.0, 0.5, 0.5] and v["spacing_unit"] == "um"
    assert v["element_size_um"] == [2.0, 0.5, 0.5]


def test_dataset_from_the_path_or_the_argument_and_axes_override(tmp_path):
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as f:
        f["a/vol"] = np.zeros((4, 5, 6), np.float32)
        f["b"] = np.ones((2, 4, 5, 6), np.uint16)
        f["scalar"] = 3.0
    info = describe(path)
    assert info["volume"] is None and "2 datasets" in info["note"]
    assert [d["path"] for d in info["datasets"]] == ["/a/vol", "/b", "/scalar"]
    assert describe(f"{path}:/a/vol")["volume"]["shape"] == [4, 5, 6]
    v = describe(path, dataset="b", axes="zyxc")["volume"]
    assert v["axes"] == "zyxc" and v["carried_axes"] == "c" and v["dtype"] == "uint16"


def test_errors_are_one_line_lucid_io_errors(tmp_path):
    with pytest.raises(LucidIOError, match="no such file"):
        describe(tmp_path / "missing.nii.gz")
    with pytest.raises(LucidIOError, match="unsupported file type"):
        describe(tmp_path / "image.png")
    with pytest.raises(LucidIOError, match="no dataset /nope"):
        describe(SAMPLES / "volume_5d.h5", dataset="/nope")
    with pytest.raises(LucidIOError, match="3 letters but the volume has 4"):
        describe(SAMPLES / "mri_4d.nii.gz", axes="zyx")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all" * 10)
    with pytest.raises(LucidIOError, match="not an HDF5 file"):
        describe(bad)


def test_jsonable_converts_numpy_bytes_and_non_finite():
    value = {"a": np.float32(1.5), "b": np.arange(3), "c": b"x", "d": (1, float("nan")), 4: np.bool_(True)}
    assert jsonable(value) == {"a": 1.5, "b": [0, 1, 2], "c": "x", "d": [1, None], "4": True}


def test_the_library_never_imports_click_or_tqdm():
    code = ("import sys, lucid, lucid.stream.api, lucid.inspect, lucid.io; "
            "lucid.inspect.describe('sample_data/ct_phantom.nii.gz'); "
            "print(sorted(m for m in ('click', 'tqdm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=SAMPLES.parent, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
