"""HDF5 output codecs (issue 12.10): parsing, every codec read back by h5py, hdf5plugin optional."""

from __future__ import annotations

import importlib.util
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


def needs_hdf5plugin() -> None:
    """Skip without hdf5plugin, but never import it here (see test_hdf5plugin_codecs_read_back_exactly)."""
    if importlib.util.find_spec("hdf5plugin") is None:
        pytest.skip("hdf5plugin is not installed")


def _filters(ds) -> dict:
    plist = ds.id.get_create_plist()
    return {plist.get_filter(i)[0] for i in range(plist.get_nfilters())}


SHUFFLE, DEFLATE, LZF, BLOSC, ZSTD = 2, 1, 32000, 32001, 32015


BUILT_IN = [("none", set()), ("gzip:1", {DEFLATE, SHUFFLE}), ("gzip:6", {DEFLATE, SHUFFLE}), ("lzf", {LZF, SHUFFLE})]
PLUGIN = [("blosc:lz4", {BLOSC}), ("blosc:zstd:3", {BLOSC}), ("zstd", {ZSTD, SHUFFLE})]
DTYPES = [np.uint8, np.int16, np.float32]


def check_codec(directory, codec: str, filters: set, dtype) -> None:
    """Write with lucid, read back with h5py: the same values, exactly the expected filters."""
    rng = np.random.default_rng(0)
    data = (rng.integers(0, 50, (16, 12, 10)) * (rng.random((16, 12, 10)) < 0.2)).astype(dtype)
    out = os.path.join(directory, f"{codec.replace(':', '_')}_{np.dtype(dtype).name}.h5")
    sink = open_sink(out, data.shape, data.dtype, like=open_source(data), compression=codec)
    sink.write(tuple(slice(0, n) for n in data.shape), data)
    sink.commit()
    with h5py.File(out, "r") as f:
        ds = f["data"]
        if np.dtype(dtype).itemsize == 1:
            filters = filters - {SHUFFLE}
        assert _filters(ds) == filters, (codec, dtype, _filters(ds))
        np.testing.assert_array_equal(ds[()], data)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("codec, filters", BUILT_IN)
def test_built_in_codecs_read_back_exactly(tmp_path, codec, filters, dtype):
    check_codec(tmp_path, codec, filters, dtype)


def test_hdf5plugin_codecs_read_back_exactly(tmp_path):
    """In a child process: importing hdf5plugin registers blosc in this one, and other
    tests need blosc to be missing (files whose filter is not available)."""
    needs_hdf5plugin()
    code = ("import sys, numpy as np; from tests.test_compression import PLUGIN, DTYPES, check_codec\n"
            "for codec, filters in PLUGIN:\n    for dtype in DTYPES:\n        check_codec(sys.argv[1], codec, filters, dtype)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", code, tmp_path], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(os.listdir(tmp_path)) == len(PLUGIN) * len(DTYPES)


def test_without_hdf5plugin_a_plugin_codec_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "hdf5plugin", None)  # import hdf5plugin raises ImportError
    data = np.zeros((4, 4, 4), np.float32)
    with pytest.raises(LucidIOError, match="need the hdf5plugin package: pip install hdf5plugin") as info:
        pool3d_file(data, tmp_path / "o.h5", 2, compression="blosc:lz4")
    assert "o.h5" in str(info.value) and "\n" not in str(info.value)
    assert os.listdir(tmp_path) == []


def test_the_default_is_uncompressed_and_readable_by_plain_h5py(tmp_path):
    """The default must open in any HDF5 reader and must not dominate the run: no filter
    (gzip:1 made a 512^3 run 2.5-7x slower, see benchmarks/bench_compression.py)."""
    data = np.random.default_rng(0).standard_normal((1, 1, 16, 16, 16)).astype(np.float32)
    pool3d_file(data, tmp_path / "o.h5", 2, grad_out=tmp_path / "g.h5")
    src = write_h5(tmp_path / "in.h5", data[0, 0])
    assert run_cli("pool3d", src, tmp_path / "c.h5", "-q").returncode == 0
    code = ("import h5py, sys; d = h5py.File(sys.argv[1])['data']; d[()]; "
            "assert 'hdf5plugin' not in sys.modules; print(d.compression, d.shuffle, d.id.get_create_plist().get_nfilters())")
    for name in ("o.h5", "g.h5", "c.h5"):
        out = subprocess.run([sys.executable, "-c", code, tmp_path / name], capture_output=True, text=True, check=True)
        assert out.stdout.split() == ["None", "False", "0"]
    assert DEFAULT == "none"


def test_cli_compression_option(tmp_path):
    needs_hdf5plugin()
    src = write_h5(tmp_path / "in.h5", np.arange(8 * 8 * 8, dtype=np.float32).reshape(8, 8, 8))
    for codec in ("blosc:zstd", "zstd:5", "gzip:2", "lzf"):
        result = run_cli("pool3d", src, tmp_path / "o.h5", "-k", "2", "--compression", codec, "-f", "-q")
        assert result.returncode == 0, result.stderr
    assert_one_error_line(run_cli("pool3d", src, tmp_path / "p.h5", "--compression", "gzip:12"), 2,
                          "--compression", "gzip level must be 0-9")
    assert not (tmp_path / "p.h5").exists()
