"""HDF5 output codecs (issue 12.10): parsing, every codec read back by h5py, hdf5plugin optional."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from lucid.io import LucidIOError, open_sink, open_source
from lucid.io.compression import DEFAULT, Codec, CompressionError, parse_codec
from lucid.stream.api import pool3d_file
from tests.faults_helpers import assert_one_error_line, run_cli, write_h5


@pytest.mark.parametrize("text, codec", [
    ("none", Codec("none")), (None, Codec("none")), ("gzip", Codec("gzip")), ("GZIP:4", Codec("gzip", 4)),
    ("gzip=9", Codec("gzip", 9)), ("lzf", Codec("lzf")), ("blosc", Codec("blosc", None, "lz4")),
    ("blosc:zstd", Codec("blosc", None, "zstd")), ("blosc:lz4:9", Codec("blosc", 9, "lz4")),
    ("zstd", Codec("zstd")), ("zstd:19", Codec("zstd", 19)),
])
def test_parse(text, codec):
    assert parse_codec(text) == codec
    assert parse_codec(str(codec)) == codec  # the CLI passes the normalised text on


@pytest.mark.parametrize("text, fragment", [
    ("zip", "unknown compression 'zip'"), ("gzip:10", "gzip level must be 0-9"), ("gzip:x", "0-9"),
    ("gzip:1:2", "0-9"), ("lzf:3", "lzf takes no level"), ("blosc:snappy", "lz4, lz4hc"),
    ("zstd:0", "zstd level must be 1-22"), ("none:1", "takes no level"),
])
def test_parse_errors_name_the_value(text, fragment):
    with pytest.raises(CompressionError, match=fragment) as info:
        parse_codec(text)
    assert "\n" not in str(info.value)


def _filters(ds) -> dict:
    plist = ds.id.get_create_plist()
    return {plist.get_filter(i)[0] for i in range(plist.get_nfilters())}


SHUFFLE, DEFLATE, LZF, BLOSC, ZSTD = 2, 1, 32000, 32001, 32015


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
@pytest.mark.parametrize("codec, filters", [
    ("none", set()), ("gzip:1", {DEFLATE, SHUFFLE}), ("gzip:6", {DEFLATE, SHUFFLE}), ("lzf", {LZF, SHUFFLE}),
    ("blosc:lz4", {BLOSC}), ("blosc:zstd:3", {BLOSC}), ("zstd", {ZSTD, SHUFFLE}),
])
def test_every_codec_reads_back_exactly(tmp_path, codec, filters, dtype):
    pytest.importorskip("hdf5plugin")
    rng = np.random.default_rng(0)
    data = (rng.integers(0, 50, (16, 12, 10)) * (rng.random((16, 12, 10)) < 0.2)).astype(dtype)
    sink = open_sink(tmp_path / "o.h5", data.shape, data.dtype, like=open_source(data), compression=codec)
    sink.write(tuple(slice(0, n) for n in data.shape), data)
    sink.commit()
    with h5py.File(tmp_path / "o.h5", "r") as f:
        ds = f["data"]
        if np.dtype(dtype).itemsize == 1:
            filters = filters - {SHUFFLE}
        assert _filters(ds) == filters
        np.testing.assert_array_equal(ds[()], data)


def test_without_hdf5plugin_a_plugin_codec_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "hdf5plugin", None)  # import hdf5plugin raises ImportError
    data = np.zeros((4, 4, 4), np.float32)
    with pytest.raises(LucidIOError, match="need the hdf5plugin package: pip install hdf5plugin") as info:
        pool3d_file(data, tmp_path / "o.h5", 2, compression="blosc:lz4")
    assert "o.h5" in str(info.value) and "\n" not in str(info.value)
    assert os.listdir(tmp_path) == []


def test_the_default_is_readable_by_plain_h5py_without_plugins(tmp_path):
    """The default output must open in any HDF5 reader: only HDF5's built-in filters."""
    data = np.random.default_rng(0).standard_normal((1, 1, 16, 16, 16)).astype(np.float32)
    pool3d_file(data, tmp_path / "o.h5", 2, grad_out=tmp_path / "g.h5")
    code = ("import h5py, sys; f = h5py.File(sys.argv[1]); d = f['data']; d[()]; "
            "assert 'hdf5plugin' not in sys.modules; print(d.compression, d.compression_opts, d.shuffle)")
    for name in ("o.h5", "g.h5"):
        out = subprocess.run([sys.executable, "-c", code, tmp_path / name], capture_output=True, text=True, check=True)
        assert out.stdout.split() == [parse_codec(DEFAULT).family, str(parse_codec(DEFAULT).level or 1), "True"]


def test_cli_compression_option(tmp_path):
    pytest.importorskip("hdf5plugin")
    src = write_h5(tmp_path / "in.h5", np.arange(8 * 8 * 8, dtype=np.float32).reshape(8, 8, 8))
    for codec in ("blosc:zstd", "zstd:5", "gzip:2", "lzf"):
        result = run_cli("pool3d", src, tmp_path / "o.h5", "-k", "2", "--compression", codec, "-f", "-q")
        assert result.returncode == 0, result.stderr
    assert_one_error_line(run_cli("pool3d", src, tmp_path / "p.h5", "--compression", "gzip:12"), 2,
                          "--compression", "gzip level must be 0-9")
    assert not (tmp_path / "p.h5").exists()
