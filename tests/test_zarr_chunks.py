"""The direct whole-chunk reader and writer (lucid.io.zarr_chunks) against zarr-python (and TensorStore):
same values for every codec, dtype, byte order, edge and missing chunk; layouts it cannot read exactly go
through zarr-python."""

from __future__ import annotations

import os

import numcodecs
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from zarr import codecs

from lucid.io import LucidIOError
from lucid.io.zarr import ZarrSource
from lucid.io.zarr_chunks import chunk_reader, chunk_writer

V3_CODECS = {"none": None, "gzip": codecs.GzipCodec(level=1), "zstd": codecs.ZstdCodec(level=3, checksum=True),
             "blosc": codecs.BloscCodec(cname="lz4", clevel=5)}
V2_CODECS = {"none": None, "gzip": numcodecs.GZip(level=1), "zstd": numcodecs.Zstd(level=3),
             "blosc": numcodecs.Blosc(cname="zstd", clevel=3)}


def volume(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return (rng.standard_normal(shape) * 100).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=np.int64, endpoint=True).astype(dtype)


def store(path, data, *, fmt, codec, chunks=(4, 5, 6), fill=7, dtype=None, drop=()):
    """A Zarr array of ``data`` with some chunk files removed (``drop``: chunk coordinates)."""
    compressors = (V3_CODECS if fmt == 3 else V2_CODECS)[codec]
    arr = zarr.create_array(str(path), shape=data.shape, dtype=dtype or data.dtype, chunks=chunks, zarr_format=fmt,
                            compressors=compressors, fill_value=fill)
    arr[...] = data
    for coords in drop:
        os.remove(os.path.join(str(path), *arr.metadata.encode_chunk_key(coords).split("/")))
    return zarr.open_array(str(path), mode="r")


@pytest.mark.parametrize("fmt", [2, 3])
@pytest.mark.parametrize("codec", ["none", "gzip", "zstd", "blosc"])
@pytest.mark.parametrize("dtype", ["uint8", "<i2", ">i2", "float32", ">f8"])
def test_direct_reads_equal_zarr_python(tmp_path, fmt, codec, dtype):
    data = volume((11, 13, 14), np.dtype(dtype).newbyteorder("="), seed=len(dtype))
    arr = store(tmp_path / "a.zarr", data, fmt=fmt, codec=codec, dtype=dtype, drop=[(0, 1, 2), (2, 2, 2)])
    src = ZarrSource(str(tmp_path / "a.zarr"))
    try:
        assert src._chunk_reader is not None
        whole = src.read((slice(0, 11), slice(0, 13), slice(0, 14)))
        np.testing.assert_array_equal(whole, arr[...])
        assert whole.dtype == np.dtype(dtype).newbyteorder("=") and whole.flags.writeable
        assert (whole[0:4, 5:10, 12:14] == 7).all()  # a missing chunk is the fill value
        for box in [(slice(3, 9), slice(0, 13), slice(5, 6)), (slice(10, 11), slice(12, 13), slice(0, 14))]:
            np.testing.assert_array_equal(src.read(box), arr[box])
    finally:
        src.close()


@settings(max_examples=25, deadline=None)
@given(shape=st.tuples(*[st.integers(1, 12)] * 3), chunks=st.tuples(*[st.integers(1, 7)] * 3),
       box=st.tuples(*[st.tuples(st.integers(0, 11), st.integers(1, 12))] * 3), fmt=st.sampled_from([2, 3]))
def test_any_box_of_any_chunking(tmp_path_factory, shape, chunks, box, fmt):
    path = tmp_path_factory.mktemp("h") / "a.zarr"
    data = volume(shape, np.int16)
    arr = store(path, data, fmt=fmt, codec="zstd", chunks=chunks, fill=0)
    index = tuple(slice(min(a, n - 1), min(n, max(a + 1, b))) for (a, b), n in zip(box, shape))
    src = ZarrSource(str(path), axes="zyx")
    try:
        np.testing.assert_array_equal(src.read(index), arr[index])
    finally:
        src.close()


def test_layouts_it_cannot_read_exactly_go_through_zarr(tmp_path):
    data = volume((8, 8, 8), np.float32)
    sharded = zarr.create_array(str(tmp_path / "s.zarr"), shape=data.shape, dtype=data.dtype, chunks=(2, 4, 4),
                                shards=(4, 8, 8))
    sharded[...] = data
    transposed = zarr.create_array(str(tmp_path / "t.zarr"), shape=data.shape, dtype=data.dtype, chunks=(4, 4, 4),
                                   filters=[codecs.TransposeCodec(order=(2, 1, 0))])
    transposed[...] = data
    fortran = zarr.create_array(str(tmp_path / "f.zarr"), shape=data.shape, dtype=data.dtype, chunks=(4, 4, 4),
                                zarr_format=2, order="F")
    fortran[...] = data
    crc = zarr.create_array(str(tmp_path / "c.zarr"), shape=data.shape, dtype=data.dtype, chunks=(4, 4, 4),
                            compressors=[codecs.Crc32cCodec()])
    crc[...] = data
    for name in ("s", "t", "f", "c"):
        arr = zarr.open_array(str(tmp_path / f"{name}.zarr"), mode="r")
        assert chunk_reader(arr, arr.store) is None, name
        src = ZarrSource(str(tmp_path / f"{name}.zarr"))
        try:
            assert src._chunk_reader is None
            np.testing.assert_array_equal(src.read((slice(0, 8),) * 3), data)
        finally:
            src.close()


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_bad_chunk_is_one_error_naming_the_store(tmp_path, damage):
    data = volume((8, 8, 8), np.float32)
    arr = store(tmp_path / "a.zarr", data, fmt=3, codec="none" if damage == "truncate" else "zstd", chunks=(4, 4, 4))
    chunk = os.path.join(str(tmp_path / "a.zarr"), *arr.metadata.encode_chunk_key((1, 0, 1)).split("/"))
    with open(chunk, "r+b") as fh:
        if damage == "truncate":
            fh.truncate(100)
        else:
            fh.write(b"\x00junk" * 20)
    src = ZarrSource(str(tmp_path / "a.zarr"))
    try:
        with pytest.raises(LucidIOError, match=r"a\.zarr: cannot read box \[0:8, 0:8, 0:8\]") as err:
            src.read((slice(0, 8),) * 3)
        assert "\n" not in str(err.value)
    finally:
        src.close()


@pytest.mark.parametrize("fmt", [2, 3])
@pytest.mark.parametrize("codec", ["none", "gzip", "zstd"])
def test_direct_writes_read_back_with_zarr_and_tensorstore(tmp_path, fmt, codec):
    data = volume((10, 9, 13), np.int16, seed=3)
    compressors = (V3_CODECS if fmt == 3 else V2_CODECS)[codec]
    kwargs = {} if fmt == 3 else {"chunk_key_encoding": {"name": "v2", "separator": "/"}}
    arr = zarr.create_array(str(tmp_path / "w.zarr"), shape=data.shape, dtype=data.dtype, chunks=(4, 9, 5),
                            zarr_format=fmt, compressors=compressors, fill_value=0, **kwargs)
    writer = chunk_writer(arr, arr.store)
    assert writer is not None
    assert not writer.write((slice(0, 2), slice(0, 9), slice(0, 13)), data[:2])  # not whole chunks: refused
    assert writer.write((slice(0, 8), slice(0, 9), slice(0, 13)), data[:8])
    assert writer.write((slice(8, 10), slice(0, 9), slice(0, 13)), data[8:])  # the edge chunks, padded
    writer.close()
    back = zarr.open_array(str(tmp_path / "w.zarr"), mode="r")
    np.testing.assert_array_equal(back[...], data)
    ts = pytest.importorskip("tensorstore")
    spec = {"driver": "zarr3" if fmt == 3 else "zarr", "kvstore": {"driver": "file", "path": str(tmp_path / "w.zarr")}}
    np.testing.assert_array_equal(ts.open(spec, read=True).result().read().result(), data)


def test_writer_refuses_layouts_it_cannot_write_exactly(tmp_path):
    kw = dict(shape=(8, 8, 8), dtype="float32", chunks=(4, 4, 4))
    blosc = zarr.create_array(str(tmp_path / "b.zarr"), compressors=codecs.BloscCodec(), **kw)
    sharded = zarr.create_array(str(tmp_path / "s.zarr"), shards=(8, 8, 8), **kw)
    plain = zarr.create_array(str(tmp_path / "n.zarr"), **kw)
    assert chunk_writer(blosc, blosc.store) is None and chunk_writer(sharded, sharded.store) is None
    assert chunk_writer(plain, plain.store) is not None
