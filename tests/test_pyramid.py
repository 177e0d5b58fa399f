"""``lucid pyramid``: levels equal repeated pool3d runs and whole-array pooling bit for bit, for any
slab height; NGFF metadata per level; atomic writes; bad stores as one Error: line."""

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

from lucid.io import LucidIOError
from lucid.kernels import tiled
from lucid.kernels.maxpool import MAX, MIN
from lucid.pyramid import level_spec, plan_factors, pyramid_file
from lucid.stream.api import pool3d_file
from lucid_cli.main import main
from tests.ome_helpers import ZYX_UM, ngff, rng_volume, transforms, write_image
from tests.reference import naive_max_pool3d


def in_memory(a, pooled, steps, order=MAX):
    """Every level by whole-array pooling (no streaming)."""
    out = [a]
    for step in steps:
        x = out[-1]
        out.append(tiled.pool(x, pooled, level_spec(step).windows([x.shape[p] for p in pooled]), None, order, 1))
    return out


def levels_of(path):
    g = zarr.open_group(str(path), mode="r")
    _, entry = ngff(path)
    return [g[d["path"]][...] for d in entry["datasets"]]


def no_leftovers(directory) -> bool:
    return not [p for p in os.listdir(directory) if "lucid-tmp" in p or "lucid-old" in p]


# ------------------------------------------------------------------ planning


def test_plan_factors_isotropic_and_stop_rules():
    # 0.2 x 0.2 x 1.0 um stored z, y, x = 1.0, 0.2, 0.2: 1x2x2 twice, then 2x2x2
    steps = plan_factors((400, 4096, 4096), (1.0, 0.2, 0.2), (2, 2, 2), (64, 64, 64), levels=5)
    assert steps == [(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)]
    assert plan_factors((400, 4096, 4096), (1.0, 0.2, 0.2), (2, 2, 2), (64, 64, 64), levels=3,
                        isotropic=False) == [(2, 2, 2)] * 2
    assert plan_factors((8, 8, 8), (0.5, 0.5, 1.0), (2, 2, 2), (4, 4, 4), levels=3) == [(2, 2, 1), (2, 2, 2)]
    # automatic: stop before a pooled axis falls below its chunk; axes within one chunk are not pooled
    assert plan_factors((512, 512, 30), None, (2, 2, 2), (64, 64, 30)) == [(2, 2, 1)] * 3
    assert plan_factors((100, 100, 100), None, (2, 2, 2), (64, 64, 64)) == []
    assert plan_factors((1, 1, 9), None, (2, 2, 2), (1, 1, 1), levels=10) == [(1, 1, 2)] * 4  # 9 5 3 2 1
    assert plan_factors((64, 64, 64), None, (2, 2, 1), (8, 8, 8)) == [(2, 2, 1)] * 3


# ------------------------------------------------------------------ the levels


@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8])
def test_levels_equal_repeated_pool3d_runs(tmp_path, dtype):
    a = rng_volume((23, 30, 17), dtype, seed=3)
    if a.dtype.kind == "f":
        a[3, 4, 5] = np.nan
        a[10, 0, 16] = -np.inf
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f.create_dataset("data", data=a, chunks=(3, 30, 17))
    report = pyramid_file(str(tmp_path / "in.h5"), str(tmp_path / "p.ome.zarr"), factors=(2, 3, 2), levels=4,
                          memory_limit="1M")
    got = levels_of(tmp_path / "p.ome.zarr")
    assert len(got) == 4 and [lv["factors"] for lv in report.levels[1:]] == [[2, 3, 2]] * 3
    np.testing.assert_array_equal(got[0], a)
    prev = str(tmp_path / "in.h5")
    for i in range(1, 4):
        out = str(tmp_path / f"ref{i}.h5")
        pool3d_file(prev, out, kernel_size=(2, 3, 2), ceil_mode=True, padding_mode="ignore")
        with h5py.File(out) as f:
            want = f[list(f)[0]][()]
        assert got[i].dtype == want.dtype
        np.testing.assert_array_equal(got[i], want)  # NaN where NaN: bit for bit
        prev = out
    assert no_leftovers(tmp_path)


def test_first_level_matches_the_naive_reference(tmp_path):
    a = rng_volume((7, 9, 5), np.int16, seed=4)
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f.create_dataset("data", data=a)
    pyramid_file(str(tmp_path / "in.h5"), str(tmp_path / "p.ome.zarr"), levels=2)
    want, _, _ = naive_max_pool3d(a[None, None], (2, 2, 2), (2, 2, 2), (0, 0, 0), ceil_mode=True)
    np.testing.assert_array_equal(levels_of(tmp_path / "p.ome.zarr")[1], want[0, 0])


@pytest.mark.parametrize("limit", ["1M", "2M", "8M", "512M"])
def test_streaming_equals_in_memory_for_every_slab_height(tmp_path, limit):
    # planes of 96x88 uint16 (16.5 KiB): 1M gives slabs of a few rows, 512M one slab
    a = rng_volume((61, 96, 88), np.uint16, seed=5)
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f.create_dataset("data", data=a, chunks=(7, 96, 88))  # 7: no multiple of the factor 2
    report = pyramid_file(str(tmp_path / "in.h5"), str(tmp_path / "p.ome.zarr"), levels=5, isotropic=False,
                          memory_limit=limit)
    want = in_memory(a, (0, 1, 2), [(2, 2, 2)] * 4)
    for got, ref in zip(levels_of(tmp_path / "p.ome.zarr"), want, strict=True):
        np.testing.assert_array_equal(got, ref)
    assert report.slabs == -(-61 // report.rows_per_slab)


@pytest.mark.parametrize("rows", [1, 3, 5, 8, 13])
def test_cascade_any_slab_height_and_min(tmp_path, rows, monkeypatch):
    a = rng_volume((29, 12, 10), np.float32, seed=6)
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f.create_dataset("data", data=a, chunks=(29, 12, 10))
    import lucid.pyramid as pyr

    create = pyr._Job.create

    def fixed(*args, **kw):
        job = create(*args, **kw)
        job.rows = rows
        return job

    monkeypatch.setattr(pyr._Job, "create", fixed)
    pyramid_file(str(tmp_path / "in.h5"), str(tmp_path / "p.ome.zarr"), levels=4, method="min", factors=(3, 2, 2),
                 isotropic=False)
    for got, ref in zip(levels_of(tmp_path / "p.ome.zarr"), in_memory(a, (0, 1, 2), [(3, 2, 2)] * 3, MIN),
                        strict=True):
        np.testing.assert_array_equal(got, ref)


def test_carried_axes_and_metadata_per_level(tmp_path):
    axes = [{"name": "t", "type": "time", "unit": "second"}, {"name": "c", "type": "channel"}, *ZYX_UM]
    a = rng_volume((2, 2, 9, 20, 18), np.uint16, seed=7)
    write_image(tmp_path / "in.ome.zarr", [a], axes=axes, scales=[[30, 1, 1.0, 0.25, 0.25]],
                translations=[[5, 0, 10, 20, 30]], chunks=(1, 1, 4, 20, 18))
    r = pyramid_file(str(tmp_path / "in.ome.zarr"), str(tmp_path / "p.ome.zarr"), levels=4, memory_limit="1M")
    version, entry = ngff(tmp_path / "p.ome.zarr")
    assert version == "0.5" and [x["name"] for x in entry["axes"]] == list("tczyx")
    assert [d["path"] for d in entry["datasets"]] == ["0", "1", "2", "3"]
    assert [lv["factors"] for lv in r.levels] == [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2]]
    scale, shift = transforms(entry, 3)
    assert scale == [30, 1, 2.0, 2.0, 2.0]  # time and channel keep their scale
    # voxel centres: each 2x step moves the origin by half the old voxel
    assert shift == [5, 0, 10.5, 20 + .125 + .25 + .5, 30 + .125 + .25 + .5]
    assert r.levels[3]["scale"] == scale and r.levels[3]["translation"] == shift
    got = levels_of(tmp_path / "p.ome.zarr")
    want = in_memory(a, (2, 3, 4), [(1, 2, 2), (1, 2, 2), (2, 2, 2)])
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_nifti_4d_input_is_stored_t_z_y_x(tmp_path):
    a = rng_volume((11, 10, 9, 3), np.int16, seed=8)  # x, y, z, t
    aff = np.diag([0.5, 0.5, 2.0, 1.0])
    img = nib.Nifti1Image(a, aff)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(tmp_path / "v.nii.gz"))
    pyramid_file(str(tmp_path / "v.nii.gz"), str(tmp_path / "p.ome.zarr"), levels=3, memory_limit="4M")
    _, entry = ngff(tmp_path / "p.ome.zarr")
    assert [x["name"] for x in entry["axes"]] == list("tzyx") and entry["axes"][1]["unit"] == "millimeter"
    got = levels_of(tmp_path / "p.ome.zarr")
    want = in_memory(a, (0, 1, 2), [(2, 2, 1), (2, 2, 1)])  # z (2 mm) waits for x, y (0.5 mm)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w.transpose(3, 2, 1, 0))


def test_labels_need_force_method(tmp_path):
    a = rng_volume((8, 8, 8), np.uint8)
    write_image(tmp_path / "lab.ome.zarr", [a], scales=[[1, 1, 1]], label=True)
    with pytest.raises(LucidIOError, match=r"lab\.ome\.zarr:/0: is an NGFF label image .* --force-method"):
        pyramid_file(str(tmp_path / "lab.ome.zarr"), str(tmp_path / "p.ome.zarr"))
    assert not os.path.exists(tmp_path / "p.ome.zarr") and no_leftovers(tmp_path)
    pyramid_file(str(tmp_path / "lab.ome.zarr"), str(tmp_path / "p.ome.zarr"), levels=2, force_method=True)
    assert "image-label" in zarr.open_group(str(tmp_path / "p.ome.zarr"), mode="r").attrs["ome"]


# ------------------------------------------------------------------ atomic, errors, CLI


def test_interrupted_write_leaves_nothing(tmp_path):
    a = rng_volume((40, 64, 64), np.uint16)
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f.create_dataset("data", data=a, chunks=(2, 64, 64))

    def stop(done, total, nbytes):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pyramid_file(str(tmp_path / "in.h5"), str(tmp_path / "p.ome.zarr"), levels=3, memory_limit="1M",
                     progress=stop)
    assert sorted(os.listdir(tmp_path)) == ["in.h5"]
    # an existing output stays as it was when the replacing run fails
    pyramid_file(str(tmp_path / "in.h5"), str(tmp_path / "p.ome.zarr"), levels=2)
    before = levels_of(tmp_path / "p.ome.zarr")
    with pytest.raises(KeyboardInterrupt):
        pyramid_file(str(tmp_path / "in.h5"), str(tmp_path / "p.ome.zarr"), levels=3, memory_limit="1M",
                     progress=stop, force=True)
    after = levels_of(tmp_path / "p.ome.zarr")
    assert len(after) == 2 and all(np.array_equal(x, y) for x, y in zip(before, after))
    assert no_leftovers(tmp_path)
    with pytest.raises(LucidIOError, match="output exists"):
        pyramid_file(str(tmp_path / "in.h5"), str(tmp_path / "p.ome.zarr"))


def _cli(*args):
    res = CliRunner().invoke(main, list(args))
    return res.exit_code, res.stdout, res.stderr


def _one_error(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    return lines[0]


def test_bad_stores_are_one_error_line_naming_store_and_array(tmp_path):
    a = rng_volume((8, 8, 8), np.int16)
    write_image(tmp_path / "m.ome.zarr", [a, a[::2, ::2, ::2].copy()], scales=[[1, 1, 1], [2, 2, 2]])
    os.remove(tmp_path / "m.ome.zarr" / "1" / "zarr.json")
    code, _, err = _cli("pyramid", str(tmp_path / "m.ome.zarr"), str(tmp_path / "o.ome.zarr"), "--level", "1")
    assert code == 1 and "m.ome.zarr: level 1 array '1' is missing" in _one_error(err)
    # unknown codec
    write_image(tmp_path / "c.ome.zarr", [a], scales=[[1, 1, 1]])
    meta_path = tmp_path / "c.ome.zarr" / "0" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["codecs"].append({"name": "no-such-codec", "configuration": {}})
    meta_path.write_text(json.dumps(meta))
    code, _, err = _cli("pyramid", str(tmp_path / "c.ome.zarr"), str(tmp_path / "o.ome.zarr"))
    line = _one_error(err)
    assert code == 1 and "c.ome.zarr" in line and "'0'" in line and "no-such-codec" in line
    # corrupt chunk
    write_image(tmp_path / "k.ome.zarr", [a], scales=[[1, 1, 1]], chunks=(4, 8, 8))
    chunk = next(os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "k.ome.zarr" / "0") for f in fs
                 if f != "zarr.json")
    with open(chunk, "wb") as fh:
        fh.write(b"garbage")
    code, _, err = _cli("pyramid", str(tmp_path / "k.ome.zarr"), str(tmp_path / "o.ome.zarr"), "--levels", "2")
    assert code == 1 and "k.ome.zarr:/0: cannot read box" in _one_error(err)
    # mismatched dimension_names
    write_image(tmp_path / "d.ome.zarr", [a], scales=[[1, 1, 1]], names=["x", "y", "z"])
    code, _, err = _cli("pyramid", str(tmp_path / "d.ome.zarr"), str(tmp_path / "o.ome.zarr"))
    assert code == 1 and "d.ome.zarr:/0: dimension_names ['x', 'y', 'z'] do not match" in _one_error(err)
    assert not os.path.exists(tmp_path / "o.ome.zarr") and no_leftovers(tmp_path)


def test_cli_json_report_and_v2(tmp_path):
    a = rng_volume((16, 40, 40), np.float32)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f.create_dataset("data", data=a).attrs["element_size_um"] = [0.5, 0.25, 0.25]
    code, out, err = _cli("pyramid", str(tmp_path / "s.h5"), str(tmp_path / "p.ome.zarr"), "--levels", "3",
                          "--zarr-format", "2", "-k", "2,2,1", "--no-isotropic", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["ngff_version"] == "0.4" and r["axes"] == ["z", "y", "x"]
    assert [lv["shape"] for lv in r["levels"]] == [[16, 40, 40], [8, 20, 40], [4, 10, 40]]
    assert [lv["factors"] for lv in r["levels"]] == [[1, 1, 1], [2, 2, 1], [2, 2, 1]]
    assert r["levels"][2]["scale"] == [2.0, 1.0, 0.25]
    assert r["levels"][2]["translation"] == [0.75, 0.375, 0.0]
    # isotropic (the default): z (0.5 um) waits until y (0.25 um) has caught up; x has factor 1
    code, out, err = _cli("pyramid", str(tmp_path / "s.h5"), str(tmp_path / "i.ome.zarr"), "-k", "2,2,1",
                          "--levels", "3", "--json")
    assert [lv["factors"] for lv in json.loads(out)["levels"]] == [[1, 1, 1], [1, 2, 1]]
    version, entry = ngff(tmp_path / "p.ome.zarr")
    assert version == "0.4" and entry["axes"][0]["unit"] == "micrometer"
    code, _, err = _cli("pyramid", str(tmp_path / "s.h5"), str(tmp_path / "p.ome.zarr"), "-q")
    assert code == 1 and "output exists" in _one_error(err)
    code, _, err = _cli("pyramid", str(tmp_path / "s.h5"), str(tmp_path / "p.h5"))
    assert code == 1 and "OME-Zarr directory" in _one_error(err)


@pytest.mark.parametrize("fmt", [2, 3])
def test_ome_zarr_py_reads_every_level(tmp_path, fmt):
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    a = rng_volume((2, 12, 33, 31), np.uint16)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f.create_dataset("data", data=a).attrs["element_size_um"] = [1.0, 0.2, 0.2]
    r = pyramid_file(str(tmp_path / "s.h5"), str(tmp_path / "p.ome.zarr"), levels=4, zarr_format=fmt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        node = list(Reader(parse_url(str(tmp_path / "p.ome.zarr")))())[0]
        data = [np.asarray(d) for d in node.data]
    assert [x["name"] for x in node.metadata["axes"]] == list("czyx")
    for lv, ct, d in zip(r.levels, node.metadata["coordinateTransformations"], data, strict=True):
        assert ct[0]["scale"] == lv["scale"] and ct[1]["translation"] == lv["translation"]
        assert list(d.shape) == lv["shape"]
    want = in_memory(a, (1, 2, 3), [tuple(lv["factors"]) for lv in r.levels[1:]])
    for d, w in zip(data, want):
        np.testing.assert_array_equal(d, w)


def test_no_copy_links_level_0(tmp_path):
    a = rng_volume((20, 24, 22), np.int16)
    src = zarr.create_array(str(tmp_path / "in.zarr"), shape=a.shape, dtype=a.dtype, chunks=(8, 8, 8),
                            dimension_names=list("zyx"))
    src[...] = a
    r = pyramid_file(str(tmp_path / "in.zarr"), str(tmp_path / "p.ome.zarr"), levels=3, no_copy=True)
    assert r.levels[0]["linked"] and r.levels[0]["chunks"] == [8, 8, 8]
    level0 = zarr.open_array(str(tmp_path / "p.ome.zarr" / "0"), mode="r")
    assert list(level0.metadata.dimension_names) == list("zyx") and level0.attrs["lucid_level"] == 0
    chunk = next(os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "p.ome.zarr" / "0") for f in fs
                 if f != "zarr.json")
    assert os.stat(chunk).st_nlink == 2  # shared with the input, not copied
    got = levels_of(tmp_path / "p.ome.zarr")
    for g, w in zip(got, in_memory(a, (0, 1, 2), [(2, 2, 2)] * 2), strict=True):
        np.testing.assert_array_equal(g, w)
    src[...] = 0  # zarr-python replaces chunk files: the pyramid keeps its level 0
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "p.ome.zarr" / "0"), mode="r")[...], a)
    with pytest.raises(LucidIOError, match="--no-copy needs a Zarr v2 input"):
        pyramid_file(str(tmp_path / "in.zarr"), str(tmp_path / "q.ome.zarr"), zarr_format=2, no_copy=True)
    assert not os.path.exists(tmp_path / "q.ome.zarr") and no_leftovers(tmp_path)
