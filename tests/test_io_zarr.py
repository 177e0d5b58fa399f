"""Zarr Source/Sink: round trips through the streaming engine, checked with zarr-python as the independent reader."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest
import zarr

from lucid.io import LucidIOError, detect_format, open_source
from lucid.stream.api import pool3d_file


def ref_max_pool(a: np.ndarray, k: int) -> np.ndarray:
    """Max pooling kernel = stride = k with ceil mode (overhang ignored), numpy only."""
    out_shape = [-(-n // k) for n in a.shape]
    out = np.empty(out_shape, a.dtype)
    for i in range(out_shape[0]):
        for j in range(out_shape[1]):
            for l in range(out_shape[2]):
                out[i, j, l] = a[i * k:(i + 1) * k, j * k:(j + 1) * k, l * k:(l + 1) * k].max()
    return out


@pytest.fixture
def volume():
    return np.random.default_rng(1).integers(-500, 500, (19, 14, 11)).astype(np.int16)


def make_store(path, a, fmt=3, name=None, **kw):
    z = zarr.create_array(str(path), name=name, shape=a.shape, dtype=a.dtype, zarr_format=fmt, **kw)
    z[:] = a
    return z


@pytest.mark.parametrize("fmt", [2, 3])
def test_round_trip_matches_reference(tmp_path, volume, fmt):
    make_store(tmp_path / "in.zarr", volume, fmt, chunks=(4, 7, 11), attributes={"element_size_um": [1.0, 0.5, 0.5], "note": "x"})
    pool3d_file(str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), kernel_size=2, ceil_mode=True, memory_limit="16KiB")
    out = zarr.open(str(tmp_path / "out.zarr"), mode="r")
    assert out.metadata.zarr_format == 3
    np.testing.assert_array_equal(out[:], ref_max_pool(volume, 2))
    assert out.attrs["element_size_um"] == [2.0, 1.0, 1.0]
    assert out.attrs["note"] == "x"
    assert out.attrs["lucid_kernel"] == [2, 2, 2]
    assert list(out.metadata.dimension_names) == list("dhw")
    assert [p for p in os.listdir(tmp_path) if "lucid-tmp" in p] == []


def test_write_v2_and_sharded(tmp_path, volume):
    make_store(tmp_path / "in.zarr", volume, chunks=(2, 7, 11), shards=(4, 14, 11))
    src = open_source(str(tmp_path / "in.zarr"))
    assert src.chunk_rows == 2 and src.shards == (4, 14, 11)
    src.close()
    pool3d_file(str(tmp_path / "in.zarr"), str(tmp_path / "v2.zarr"), kernel_size=2, ceil_mode=True, zarr_format=2)
    v2 = zarr.open(str(tmp_path / "v2.zarr"), mode="r")
    assert v2.metadata.zarr_format == 2
    np.testing.assert_array_equal(v2[:], ref_max_pool(volume, 2))
    pool3d_file(str(tmp_path / "in.zarr"), str(tmp_path / "sh.zarr"), kernel_size=2, ceil_mode=True, shards=True,
                memory_limit="16KiB")
    sh = zarr.open(str(tmp_path / "sh.zarr"), mode="r")
    assert sh.shards is not None
    np.testing.assert_array_equal(sh[:], ref_max_pool(volume, 2))


def test_group_path_zip_and_axes(tmp_path, volume):
    root = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    root.create_group("a")
    make_store(tmp_path / "g.zarr", volume, name="a/img", chunks=(5, 14, 11), dimension_names=list("zyx"))
    make_store(tmp_path / "g.zarr", volume[:, :, :3], name="b", chunks=(5, 14, 3))
    with pytest.raises(LucidIOError, match=r"2 arrays in the store.*/a/img"):
        open_source(str(tmp_path / "g.zarr"))
    src = open_source(str(tmp_path / "g.zarr") + ":/a/img")
    assert src.layout.axes == "zyx" and src.name.endswith(":/a/img")
    np.testing.assert_array_equal(src.read((slice(2, 9), slice(None), slice(1, 4))), volume[2:9, :, 1:4])
    src.close()
    with zipfile.ZipFile(tmp_path / "g.zarr.zip", "w") as zf:
        for dirpath, _, files in os.walk(tmp_path / "g.zarr"):
            for f in files:
                full = os.path.join(dirpath, f)
                zf.write(full, os.path.relpath(full, tmp_path / "g.zarr"))
    pool3d_file(str(tmp_path / "g.zarr.zip") + ":/a/img", str(tmp_path / "o.zarr"), kernel_size=3, ceil_mode=True)
    np.testing.assert_array_equal(zarr.open(str(tmp_path / "o.zarr"), mode="r")[:], ref_max_pool(volume, 3))
    assert detect_format("x.zarr:/a/b") == ("zarr", "x.zarr", "/a/b")


def test_bad_stores_are_one_line_errors(tmp_path, volume):
    os.mkdir(tmp_path / "empty.zarr")
    with pytest.raises(LucidIOError, match=r"empty\.zarr: not a Zarr store"):
        open_source(str(tmp_path / "empty.zarr"))
    with pytest.raises(LucidIOError, match="no such file"):
        open_source(str(tmp_path / "missing.zarr"))
    make_store(tmp_path / "c.zarr", volume, chunks=(4, 14, 11))
    chunk = next(os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "c.zarr") for f in fs if f != "zarr.json")
    with open(chunk, "wb") as fh:
        fh.write(b"garbage")
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(LucidIOError, match=r"c\.zarr: cannot read box"):
        pool3d_file(str(tmp_path / "c.zarr"), str(tmp_path / "o.zarr"), kernel_size=2)
    assert sorted(os.listdir(tmp_path)) == before  # nothing partial left
    make_store(tmp_path / "n.zarr", volume, chunks=(4, 14, 11), dimension_names=list("zyx"))
    with pytest.raises(LucidIOError, match=r"n\.zarr: --axes 'xyz' contradicts the array's dimension_names"):
        open_source(str(tmp_path / "n.zarr"), axes="xyz")


def test_force_replaces_store_only_on_success(tmp_path, volume):
    make_store(tmp_path / "in.zarr", volume, chunks=(4, 14, 11))
    out = str(tmp_path / "out.zarr")
    pool3d_file(str(tmp_path / "in.zarr"), out, kernel_size=2, ceil_mode=True)
    with pytest.raises(LucidIOError, match="output exists"):
        pool3d_file(str(tmp_path / "in.zarr"), out, kernel_size=3)
    pool3d_file(str(tmp_path / "in.zarr"), out, kernel_size=3, ceil_mode=True, force=True)
    np.testing.assert_array_equal(zarr.open(out, mode="r")[:], ref_max_pool(volume, 3))
    with pytest.raises(LucidIOError, match="input"):
        pool3d_file(str(tmp_path / "in.zarr"), str(tmp_path / "in.zarr"), kernel_size=2, force=True)
    np.testing.assert_array_equal(zarr.open(str(tmp_path / "in.zarr"), mode="r")[:], volume)
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


def test_cli_zarr_format_and_shards(tmp_path, volume):
    from click.testing import CliRunner

    from lucid_cli.main import main

    make_store(tmp_path / "in.zarr", volume, chunks=(4, 14, 11))
    runner = CliRunner()
    res = runner.invoke(main, ["pool3d", str(tmp_path / "in.zarr"), str(tmp_path / "v2.zarr"), "-k", "2", "--ceil-mode",
                               "--zarr-format", "2", "-q"])
    assert res.exit_code == 0, res.output
    assert zarr.open(str(tmp_path / "v2.zarr"), mode="r").metadata.zarr_format == 2
    res = runner.invoke(main, ["pool3d", str(tmp_path / "in.zarr"), str(tmp_path / "s.zarr"), "-k", "2", "--ceil-mode",
                               "--shards", "auto", "--compression", "zstd", "-q"])
    assert res.exit_code == 0, res.output
    s = zarr.open(str(tmp_path / "s.zarr"), mode="r")
    assert s.shards is not None
    np.testing.assert_array_equal(s[:], ref_max_pool(volume, 2))
    res = runner.invoke(main, ["pool3d", str(tmp_path / "none.zarr"), str(tmp_path / "x.zarr"), "-k", "2"])
    assert res.exit_code == 1 and "none.zarr: no such file" in res.output


@pytest.mark.parametrize("fmt", [2, 3])
@pytest.mark.parametrize("compression", ["gzip:4", "zstd:5", "blosc:lz4"])
def test_compression_names_are_shared_with_hdf5(tmp_path, volume, fmt, compression):
    make_store(tmp_path / "in.zarr", volume, chunks=(4, 7, 11))
    out = tmp_path / "out.zarr"
    pool3d_file(str(tmp_path / "in.zarr"), str(out), kernel_size=2, ceil_mode=True, zarr_format=fmt,
                compression=compression)
    z = zarr.open(str(out), mode="r")
    np.testing.assert_array_equal(z[:], ref_max_pool(volume, 2))
    family, _, option = compression.partition(":")
    text = repr(z.compressors).lower()
    assert family in text and option in text


def test_lzf_is_refused_for_zarr_naming_the_output(tmp_path, volume):
    make_store(tmp_path / "in.zarr", volume, chunks=(4, 7, 11))
    with pytest.raises(LucidIOError, match="out.zarr: lzf is an HDF5 filter"):
        pool3d_file(str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), kernel_size=2, compression="lzf")
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.parametrize("suffix", [".zarr", ".ome.zarr"])
def test_auto_shards_are_one_index_thick_along_a_carried_axis_written_index_by_index(tmp_path, suffix, monkeypatch):
    """The engine writes a czyx volume one channel at a time: a shard spanning channels would be
    written partially, once per channel (zarr-python then has to merge partial shard writes)."""
    from lucid.nn.functional import max_pool3d
    from lucid.tensor import Tensor

    a = np.random.default_rng(3).random((3, 40, 48, 56)).astype(np.float32)
    src = zarr.create_array(str(tmp_path / "czyx.zarr"), shape=a.shape, chunks=(1, 16, 16, 16), dtype="float32",
                            dimension_names=["c", "z", "y", "x"])
    src[:] = a
    out = str(tmp_path / f"out{suffix}")
    writes = []
    real = zarr.Array.__setitem__

    def record(self, key, value):
        writes.append((self.shards, key))
        return real(self, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", record)
    pool3d_file(str(tmp_path / "czyx.zarr"), out, 2, shards=True, memory_limit="16M")
    got = zarr.open_group(out, mode="r")["0"] if suffix == ".ome.zarr" else zarr.open_array(out, mode="r")
    assert got.shards[0] == 1
    expected = np.asarray(max_pool3d(Tensor(a[None]), 2, 2).data)[0]
    assert np.array_equal(got[:], expected)
    assert writes
    for shards, key in writes:  # every write through zarr-python covers whole shards
        for k, n, size in zip(key, shards, got.shape):
            assert k.start % n == 0 and (k.stop % n == 0 or k.stop == size), (key, shards)
    with pytest.raises(LucidIOError, match="written one index at a time, so its extent must be 1"):
        pool3d_file(str(tmp_path / "czyx.zarr"), str(tmp_path / f"bad{suffix}"), 2, shards=(3, 20, 24, 24))
