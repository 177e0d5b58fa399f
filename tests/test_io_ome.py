"""OME-Zarr (NGFF 0.4 / 0.5): the metadata rules as pure functions, reading levels, writing images,
and the outputs read back by ome-zarr-py (skipped when it is not installed)."""

from __future__ import annotations

import json
import os
import warnings

import h5py
import nibabel as nib
import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from lucid.io import LucidIOError, open_source, ome
from lucid.io.base import Layout, VolumeMeta
from lucid.kernels.windows import PoolSpec
from lucid.stream.api import pool3d_file
from lucid_cli.main import main
from tests.ome_helpers import ZYX_UM, ngff, rng_volume, transforms, write_image
from tests.reference import naive_max_pool3d

TCZYX = [{"name": "t", "type": "time", "unit": "second"}, {"name": "c", "type": "channel"}, *ZYX_UM]


def reference(a, k, s=None, p=0, ceil_mode=False, padding_mode="zeros"):
    """naive max pool over the last three axes of ``a``."""
    s = k if s is None else s
    lead = a.shape[:-3]
    x = a.reshape((1, -1, *a.shape[-3:]))
    v, _, _ = naive_max_pool3d(x, (k,) * 3, (s,) * 3, (p,) * 3, ceil_mode=ceil_mode, padding_mode=padding_mode)
    return v.reshape((*lead, *v.shape[-3:]))


# ------------------------------------------------------------------ pure functions


def test_compose_and_parse_both_versions():
    assert ome.compose([{"type": "scale", "scale": [2, 3]}, {"type": "translation", "translation": [1, 1]},
                        {"type": "scale", "scale": [10, 1]}], 2, "x") == ((20.0, 3.0), (10.0, 1.0))
    with pytest.raises(ome.NGFFError, match="2 entries for 3 axes"):
        ome.compose([{"type": "scale", "scale": [1, 2]}], 3, "d")
    with pytest.raises(ome.NGFFError, match="unsupported"):
        ome.compose([{"type": "affine", "affine": []}], 3, "d")
    ms = {"axes": ZYX_UM, "datasets": [{"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [1, .5, .5]}]}],
          "coordinateTransformations": [{"type": "translation", "translation": [10, 0, 0]}]}
    img4 = ome.parse_image({"multiscales": [{"version": "0.4", **ms}]})
    img5 = ome.parse_image({"ome": {"version": "0.5", "multiscales": [ms]}})
    for img, version in ((img4, "0.4"), (img5, "0.5")):
        assert img.version == version and img.paths == ("s0",)
        assert img.scales[0] == (1.0, 0.5, 0.5) and img.translations[0] == (10.0, 0.0, 0.0)
    assert ome.parse_image({"other": 1}) is None


def test_layout_letters_and_ngff_axes():
    assert ome.layout_letters(TCZYX) == "tczyx"
    assert ome.layout_letters([{"name": "a", "type": "space"}, {"name": "b", "type": "space"},
                               {"name": "q", "type": "space"}]) == "zyx"
    assert ome.layout_letters([{"name": "t", "type": "time"}, {"name": "y", "type": "space"},
                               {"name": "x", "type": "space"}]) == "tyx"
    ome.check_ngff_axes(TCZYX)
    with pytest.raises(ome.NGFFError, match="not ordered"):
        ome.check_ngff_axes([*ZYX_UM, {"name": "c", "type": "channel"}])
    axes = [{"name": "x", "type": "space"}, {"name": "y", "type": "space"}, {"name": "z", "type": "space"},
            {"name": "t", "type": "time"}]
    assert ome.storage_order(axes, "F") == (3, 2, 1, 0)  # NIfTI x,y,z,t is stored t,z,y,x
    assert ome.storage_order([*ZYX_UM, {"name": "c", "type": "channel"}], "C") == (3, 0, 1, 2)


def test_pooled_frame_follows_the_voxel_centre_rule():
    frame = ome.Frame(tuple(TCZYX), (60.0, 1.0, 2.0, 0.5, 0.25), (7.0, 0.0, 10.0, 20.0, 30.0))
    spec = PoolSpec.create((3, 2, 4), (2, 2, 3), (1, 0, 1), (2, 1, 1))
    out = frame.pooled((2, 3, 4), spec)
    assert out.scale == (60.0, 1.0, 4.0, 1.0, 0.75)  # time and channel keep theirs
    # translation + scale * (dilation*(k-1)/2 - p)
    assert out.translation == (7.0, 0.0, 10 + 2 * (2 * 2 / 2 - 1), 20 + 0.5 * 0.5, 30 + 0.25 * (1.5 - 1))


def test_frame_of_affine_plain_and_rotated():
    layout = Layout("xyz", (0, 1, 2))
    plain = VolumeMeta("nifti", (2.0, 3.0, 4.0), "mm", np.array([[2, 0, 0, 5], [0, 3, 0, 6], [0, 0, 4, 7], [0, 0, 0, 1.0]]))
    f = ome.frame_of(plain, layout, "a.nii")
    assert f.scale == (2.0, 3.0, 4.0) and f.translation == (5.0, 6.0, 7.0) and f.affine is None and not f.warnings
    assert [a["unit"] for a in f.axes] == ["millimeter"] * 3
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[2 * c, -3 * s, 0, 5], [2 * s, 3 * c, 0, 6], [0, 0, 4, 7], [0, 0, 0, 1.0]])
    f = ome.frame_of(VolumeMeta("nifti", (2.0, 3.0, 4.0), "mm", rot), layout, "r.nii")
    assert np.allclose(f.scale, (2, 3, 4)) and f.translation == (0, 0, 0)  # never a wrong scale
    assert len(f.warnings) == 1 and "r.nii" in f.warnings[0] and "lucid_affine" in f.warnings[0]
    np.testing.assert_array_equal(f.affine, rot)
    hdf = VolumeMeta("hdf5", (0.2, 0.1, 0.1), "um")
    f = ome.frame_of(hdf, Layout("dhw", (0, 1, 2)), "s.h5")
    assert [a["name"] for a in f.axes] == list("zyx") and f.scale == (0.2, 0.1, 0.1)
    assert f.axes[0]["unit"] == "micrometer"


# ------------------------------------------------------------------ reading


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_read_levels_axes_and_transforms(tmp_path, version):
    a = rng_volume((2, 3, 9, 10, 11))
    levels = [a, a[..., ::2, ::2, ::2].copy()]
    write_image(tmp_path / "img.ome.zarr", levels, axes=TCZYX, version=version, chunks=(1, 1, 4, 10, 11),
                scales=[[5, 1, 2, .5, .5], [5, 1, 4, 1, 1]], translations=[[0, 0, 1, 2, 3], [0, 0, 2, 2.25, 3.25]])
    src = open_source(str(tmp_path / "img.ome.zarr"))
    assert src.layout.axes == "tczyx" and src.layout.pooled == (2, 3, 4) and src.shape == a.shape
    assert src.meta.spacing == (2.0, 0.5, 0.5) and src.meta.spacing_unit == "um"
    assert src.meta.extra["ome"]["translation"] == [0, 0, 1, 2, 3]
    np.testing.assert_array_equal(src.read((slice(None),) * 5), a)
    src.close()
    src = open_source(str(tmp_path / "img.ome.zarr"), level=1)
    assert src.shape == levels[1].shape and src.meta.spacing == (4.0, 1.0, 1.0)
    src.close()
    with open_source(str(tmp_path / "img.ome.zarr") + ":/1") as src:
        assert src.meta.extra["ome"]["level"] == 1
    with pytest.raises(LucidIOError, match="no level 2; the image has levels 0 to 1"):
        open_source(str(tmp_path / "img.ome.zarr"), level=2)
    res = CliRunner().invoke(main, ["info", str(tmp_path / "img.ome.zarr"), "--level", "1", "--json"])
    assert res.exit_code == 0, res.output
    v = json.loads(res.output)["volume"]
    assert v["ome"]["level"] == 1 and v["ome"]["scale"] == [5, 1, 4, 1, 1] and v["ome"]["version"] == version
    res = CliRunner().invoke(main, ["info", str(tmp_path / "img.ome.zarr")])
    assert "OME-Zarr " + version in res.output and "translation 1 micrometer" in res.output


def test_pool_ome_carries_time_and_channel(tmp_path):
    a = rng_volume((2, 3, 9, 10, 11), np.int16)
    write_image(tmp_path / "img.ome.zarr", [a], axes=TCZYX, scales=[[5, 1, 2, .5, .5]],
                translations=[[7, 0, 1, 2, 3]], chunks=(1, 1, 3, 10, 11))
    pool3d_file(str(tmp_path / "img.ome.zarr"), str(tmp_path / "out.ome.zarr"), kernel_size=3, stride=2, padding=1,
                memory_limit="64K")
    version, entry = ngff(tmp_path / "out.ome.zarr")
    assert version == "0.5" and [a["name"] for a in entry["axes"]] == list("tczyx")
    scale, shift = transforms(entry, 0)
    assert scale == [5, 1, 4, 1, 1] and shift == [7, 0, 1, 2, 3]  # k=3, p=1: the centre stays
    out = zarr.open_array(str(tmp_path / "out.ome.zarr") + "/0", mode="r")
    np.testing.assert_array_equal(out[:], reference(a, 3, 2, 1))
    assert list(out.metadata.dimension_names) == list("tczyx")


def test_bad_ome_stores_are_one_line_errors(tmp_path):
    a = rng_volume((6, 5, 4))
    write_image(tmp_path / "n.ome.zarr", [a], scales=[[1, 1, 1]], names=["a", "b", "c"])
    with pytest.raises(LucidIOError, match=r"n\.ome\.zarr:/0: dimension_names \['a', 'b', 'c'\] do not match"):
        open_source(str(tmp_path / "n.ome.zarr"))
    write_image(tmp_path / "m.ome.zarr", [a, a], scales=[[1, 1, 1], [2, 2, 2]])
    os.remove(tmp_path / "m.ome.zarr" / "1" / "zarr.json")
    with pytest.raises(LucidIOError, match=r"m\.ome\.zarr: level 1 array '1' is missing"):
        open_source(str(tmp_path / "m.ome.zarr"), level=1)
    root = write_image(tmp_path / "s.ome.zarr", [a], scales=[[1, 1]])
    del root
    with pytest.raises(LucidIOError, match=r"s\.ome\.zarr: bad OME-Zarr metadata: datasets\[0\]: scale has 2 entries"):
        open_source(str(tmp_path / "s.ome.zarr"))
    with pytest.raises(LucidIOError, match="--level needs an OME-Zarr image"):
        open_source(str(tmp_path / "x.nii"), level=1)


# ------------------------------------------------------------------ writing from other formats


def _rotated_nifti(path, a):
    c, s = np.cos(0.4), np.sin(0.4)
    aff = np.array([[1.5 * c, -1.5 * s, 0, -20], [1.5 * s, 1.5 * c, 0, 10], [0, 0, 3.0, 5], [0, 0, 0, 1]])
    img = nib.Nifti1Image(a, aff)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return aff


def test_nifti_to_ome_and_back(tmp_path):
    a = rng_volume((10, 9, 6), np.int16)
    plain = np.diag([1.5, 1.5, 3.0, 1.0])
    plain[:3, 3] = (-20, 10, 5)
    img = nib.Nifti1Image(a, plain)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(tmp_path / "p.nii.gz"))
    report = pool3d_file(str(tmp_path / "p.nii.gz"), str(tmp_path / "p.ome.zarr"), kernel_size=2, ceil_mode=True)
    assert not report.warnings
    _, entry = ngff(tmp_path / "p.ome.zarr")
    assert [x["name"] for x in entry["axes"]] == list("zyx")  # NIfTI x,y,z stored z,y,x
    assert entry["axes"][0]["unit"] == "millimeter"
    scale, shift = transforms(entry, 0)
    assert scale == [6.0, 3.0, 3.0] and shift == pytest.approx([6.5, 10.75, -19.25])
    out = zarr.open_array(str(tmp_path / "p.ome.zarr") + "/0", mode="r")
    np.testing.assert_array_equal(out[:], reference(a, 2, ceil_mode=True).transpose(2, 1, 0))
    # and back: OME-Zarr -> NIfTI keeps the data and the pooled affine
    pool3d_file(str(tmp_path / "p.ome.zarr"), str(tmp_path / "back.nii"), kernel_size=1)
    back = nib.load(str(tmp_path / "back.nii"))
    np.testing.assert_array_equal(np.asarray(back.dataobj), reference(a, 2, ceil_mode=True))
    want = plain @ np.array([[2, 0, 0, .5], [0, 2, 0, .5], [0, 0, 2, .5], [0, 0, 0, 1]])
    np.testing.assert_allclose(back.affine, want, atol=1e-5)


def test_rotated_nifti_warns_once_and_keeps_the_affine(tmp_path):
    a = rng_volume((8, 7, 6), np.int16)
    aff = _rotated_nifti(tmp_path / "r.nii", a)
    report = pool3d_file(str(tmp_path / "r.nii"), str(tmp_path / "r.ome.zarr"), kernel_size=2)
    lines = [w for w in report.warnings if "NGFF" in w]
    assert len(lines) == 1 and "r.nii" in lines[0]
    _, entry = ngff(tmp_path / "r.ome.zarr")
    scale, shift = transforms(entry, 0)
    assert scale == pytest.approx([6.0, 3.0, 3.0])  # true voxel sizes, z y x
    assert shift == pytest.approx([1.5, 0.75, 0.75])  # the image's own frame
    arr = zarr.open_array(str(tmp_path / "r.ome.zarr") + "/0", mode="r")
    pooled = aff @ np.array([[2, 0, 0, .5], [0, 2, 0, .5], [0, 0, 2, .5], [0, 0, 0, 1]])
    np.testing.assert_allclose(arr.attrs["lucid_affine"], pooled[:, [2, 1, 0, 3]])  # columns z, y, x as stored
    pool3d_file(str(tmp_path / "r.ome.zarr"), str(tmp_path / "back.nii.gz"), kernel_size=1)
    np.testing.assert_allclose(nib.load(str(tmp_path / "back.nii.gz")).affine, pooled, atol=1e-5)


def test_hdf5_element_size_to_ome_v2_and_back(tmp_path):
    a = rng_volume((2, 9, 8, 7), np.float32)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f.create_dataset("data", data=a).attrs["element_size_um"] = [1.0, 0.2, 0.2]
    pool3d_file(str(tmp_path / "s.h5"), str(tmp_path / "s.ome.zarr"), kernel_size=2, zarr_format=2)
    version, entry = ngff(tmp_path / "s.ome.zarr")
    assert version == "0.4" and [x["name"] for x in entry["axes"]] == list("czyx")
    assert entry["axes"][1] == {"name": "z", "type": "space", "unit": "micrometer"}
    scale, shift = transforms(entry, 0)
    assert scale == pytest.approx([1, 2, .4, .4]) and shift == pytest.approx([0, .5, .1, .1])
    assert zarr.open_group(str(tmp_path / "s.ome.zarr"), mode="r")["0"].metadata.zarr_format == 2
    pool3d_file(str(tmp_path / "s.ome.zarr"), str(tmp_path / "back.h5"), kernel_size=2)
    with h5py.File(tmp_path / "back.h5") as f:
        ds = f[list(f)[0]]
        np.testing.assert_allclose(ds.attrs["element_size_um"], [4, .8, .8])
        np.testing.assert_array_equal(ds[()], reference(reference(a, 2), 2))


def test_ngff_cannot_hold_the_layout(tmp_path):
    a = rng_volume((2, 3, 6, 5, 4))
    with h5py.File(tmp_path / "five.h5", "w") as f:
        f.create_dataset("data", data=a)
    with pytest.raises(LucidIOError, match=r"out\.ome\.zarr: axes n,c,z,y,x cannot be an NGFF image"):
        pool3d_file(str(tmp_path / "five.h5"), str(tmp_path / "out.ome.zarr"), kernel_size=2)
    assert not os.path.exists(tmp_path / "out.ome.zarr")


# ------------------------------------------------------------------ the independent reader


def _ome_zarr_read(path):
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        node = list(Reader(parse_url(str(path)))())[0]
        return node.metadata, [np.asarray(d) for d in node.data]


@pytest.mark.parametrize("fmt", [2, 3])
def test_ome_zarr_py_reads_our_output(tmp_path, fmt):
    a = rng_volume((3, 11, 10, 9), np.uint8)
    write_image(tmp_path / "in.ome.zarr", [a], axes=[{"name": "c", "type": "channel"}, *ZYX_UM],
                scales=[[1, 1.0, .25, .25]], translations=[[0, 3, 2, 1]], chunks=(1, 4, 10, 9))
    pool3d_file(str(tmp_path / "in.ome.zarr"), str(tmp_path / "o.ome.zarr"), kernel_size=2, ceil_mode=True,
                zarr_format=fmt)
    meta, data = _ome_zarr_read(tmp_path / "o.ome.zarr")
    assert [x["name"] for x in meta["axes"]] == list("czyx")
    assert [x.get("unit") for x in meta["axes"]] == [None] + ["micrometer"] * 3
    ct = meta["coordinateTransformations"][0]
    assert ct[0]["scale"] == [1, 2, .5, .5]
    assert ct[1]["translation"] == [0, 3.5, 2.125, 1.125]
    np.testing.assert_array_equal(data[0], reference(a, 2, ceil_mode=True))
