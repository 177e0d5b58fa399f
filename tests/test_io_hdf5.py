"""HDF5 sources and sinks: round trips, chunking, attributes, dataset selection, errors."""

import os

import h5py
import numpy as np
import pytest

from lucid.io import HDF5Sink, HDF5Source, LucidIOError, detect_format, open_sink, open_source
from lucid.io.hdf5 import choose_chunks
from lucid.kernels.windows import PoolSpec


def pool_ks(x, pooled, k):
    """Max pool with kernel = stride = k along the ``pooled`` axes (floor mode)."""
    for a in pooled:
        n = x.shape[a] // k * k
        x = np.take(x, np.arange(n), axis=a)
        shape = x.shape[:a] + (n // k, k) + x.shape[a + 1 :]
        x = x.reshape(shape).max(axis=a + 1)
    return x


def stream(src, sink, k, rows=2):
    """What the engine does for kernel = stride = k: slabs along src.slab_axis, carried
    axes slower in memory than the slab axis one index at a time (outer loop)."""
    sa = src.slab_axis
    pooled = src.layout.pooled
    if src.order == "F":
        outer = [a for a in src.layout.carried if a > sa][::-1]
    else:
        outer = [a for a in src.layout.carried if a < sa]
    out_shape = sink.shape
    for idx in np.ndindex(*[src.shape[a] for a in outer]):
        for o0 in range(0, out_shape[sa], rows):
            o1 = min(out_shape[sa], o0 + rows)
            box = [slice(0, n) for n in src.shape]
            obox = [slice(0, n) for n in out_shape]
            for a, i in zip(outer, idx):
                box[a] = slice(i, i + 1)
                obox[a] = slice(i, i + 1)
            box[sa] = slice(o0 * k, o1 * k)
            obox[sa] = slice(o0, o1)
            data = pool_ks(src.read(tuple(box)), pooled, k)
            sink.write(tuple(obox), data[tuple(slice(0, b.stop - b.start) for b in obox)])
    sink.commit()


def make_h5(path, data, name="data", chunks=None, compression=None, attrs=None, labels=None, **kw):
    with h5py.File(path, "w") as f:
        ds = f.create_dataset(name, data=data, chunks=chunks, compression=compression, **kw)
        for key, value in (attrs or {}).items():
            ds.attrs[key] = value
        for i, label in enumerate(labels or ""):
            ds.dims[i].label = label
    return path


RNG = np.random.default_rng(42)


@pytest.mark.parametrize(
    "shape, dtype, chunks, compression, axes",
    [
        ((12, 10, 8), np.float32, None, None, None),
        ((12, 10, 8), np.int16, (4, 10, 8), "gzip", None),
        ((3, 12, 10, 8), np.uint8, (1, 4, 5, 8), "lzf", None),
        ((2, 3, 12, 10, 8), np.float64, (1, 1, 4, 10, 8), "gzip", None),
        ((12, 10, 8, 3), np.uint16, (4, 10, 8, 3), "gzip", "thwc"),
        ((12, 10, 8), np.dtype(">f4"), (12, 10, 2), None, None),  # big-endian, thin along w
    ],
)
@pytest.mark.parametrize("out_compression", ["gzip", "lzf", "none"])
def test_round_trip(tmp_path, shape, dtype, chunks, compression, axes, out_compression):
    data = (RNG.standard_normal(shape) * 100).astype(dtype)
    path = make_h5(tmp_path / "in.h5", data, chunks=chunks, compression=compression)
    src = open_source(path, axes=axes)
    assert src.dtype == np.dtype(dtype).newbyteorder("=") and src.dtype.isnative
    full = src.read(tuple(slice(0, n) for n in shape))
    assert np.array_equal(full, data) and full.flags.writeable
    spec = PoolSpec.create(2, 2)
    expected = pool_ks(data, src.layout.pooled, 2)
    out = tmp_path / "out.h5"
    sink = open_sink(out, expected.shape, src.dtype, like=src, pooling=spec, slab_rows=2, compression=out_compression)
    stream(src, sink, 2)
    with h5py.File(out, "r") as f:
        ds = f["data"]
        assert ds.dtype == src.dtype
        assert np.array_equal(ds[...], expected)
        assert ds.chunks[src.slab_axis] in (1, 2)
        assert ds.compression == {"gzip": "gzip", "lzf": "lzf", "none": None}[out_compression]
        if out_compression != "none" and ds.dtype.itemsize > 1:
            assert ds.shuffle
    src.close()
    assert sorted(os.listdir(tmp_path)) == ["in.h5", "out.h5"]


def test_reads_any_box(tmp_path):
    data = RNG.integers(0, 1000, (9, 7, 5)).astype(np.int32)
    src = open_source(make_h5(tmp_path / "a.h5", data, chunks=(2, 3, 5), compression="gzip"))
    for box in [(slice(1, 4), slice(2, 7), slice(0, 5)), (slice(8, 9), slice(0, 1), slice(4, 5)), (slice(3, 3), slice(0, 7), slice(0, 5))]:
        assert np.array_equal(src.read(box), data[box])
    assert np.array_equal(src.read((slice(None), slice(None), slice(None))), data)
    with pytest.raises(ValueError, match="step 1"):
        src.read((slice(0, 9, 2), slice(0, 7), slice(0, 5)))
    src.set_cache(1 << 20)
    assert src.cache_nbytes >= 1 << 20
    assert np.array_equal(src.read((slice(1, 4), slice(2, 7), slice(0, 5))), data[1:4, 2:7])


@pytest.mark.parametrize(
    "shape, chunks, axes, slab_axis, rows",
    [
        ((64, 64, 64), None, None, 0, 1),  # contiguous: outermost pooled axis
        ((64, 64, 64), (8, 64, 64), None, 0, 8),
        ((64, 64, 64), (64, 64, 4), None, 2, 4),  # thin along w: read slabs along w
        ((64, 64, 64), (16, 16, 16), None, 0, 16),  # ties go to the outermost axis
        ((8, 512, 512), (8, 16, 512), None, 1, 16),  # thinnest relative to the axis length
        ((2, 3, 32, 32, 32), (1, 1, 4, 32, 32), None, 2, 4),
        ((32, 32, 32, 3), (2, 32, 32, 3), "zyxc", 0, 2),
    ],
)
def test_slab_axis_follows_the_chunks(tmp_path, shape, chunks, axes, slab_axis, rows):
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f.create_dataset("v", shape=shape, dtype="u1", chunks=chunks)
    src = open_source(tmp_path / "c.h5", axes=axes)
    assert (src.slab_axis, src.chunk_rows) == (slab_axis, rows)
    assert src.order == "C"


def test_choose_chunks_divides_slab_rows():
    chunks = choose_chunks((100, 512, 512), 4, 0, 6, ())
    assert 6 % chunks[0] == 0 and chunks[1:] == (512, 512)
    assert choose_chunks((2, 3, 40, 40, 40), 4, 2, 8, (0, 1))[:2] == (1, 1)
    big = choose_chunks((10, 4096, 4096), 4, 0, 4, ())
    assert big[0] == 1 and np.prod(big) * 4 <= 1 << 20
    assert choose_chunks((3, 5, 7), 1, 0, 8, ())[0] in (1, 2)  # <= size along the slab axis


def test_attributes_labels_spacing_and_provenance(tmp_path):
    data = RNG.standard_normal((2, 3, 8, 8, 8)).astype(np.float32)
    attrs = {"element_size_um": [2.0, 0.5, 0.25], "description": "blobs", "count": 7}
    path = make_h5(tmp_path / "in.h5", data, name="grp/vol", chunks=(1, 1, 2, 8, 8), attrs=attrs, labels="ncdhw")
    with h5py.File(path, "a") as f:  # a dimension scale: its REFERENCE/DIMENSION_LIST must not be copied
        f["scale_d"] = np.arange(8.0)
        f["scale_d"].make_scale("d")
        f["grp/vol"].dims[2].attach_scale(f["scale_d"])
    src = open_source(path)
    assert src.name.endswith("in.h5:/grp/vol")
    assert src.layout.axes == "ncdhw"
    assert src.meta.spacing == (2.0, 0.5, 0.25) and src.meta.spacing_unit == "um"
    assert src.meta.extra["dim_labels"] == list("ncdhw")
    assert "DIMENSION_LIST" not in src.meta.extra["attrs"]
    assert src.meta.extra["attrs"]["description"] == "blobs"
    spec = PoolSpec.create(kernel_size=(2, 2, 2), stride=(2, 2, 1), padding=(0, 1, 1))
    shape = list(data.shape)
    shape[2:] = spec.output_shape(data.shape[2:])
    out = tmp_path / "out.h5"
    sink = open_sink(out, shape, np.float32, like=src, pooling=spec, provenance={"command": "lucid pool", "lucid_extra": 1})
    assert isinstance(sink, HDF5Sink)
    sink.write(tuple(slice(0, n) for n in shape), np.zeros(shape, np.float32))
    sink.commit()
    with h5py.File(out, "r") as f:
        ds = f["grp/vol"]  # output dataset path = the input's
        a = dict(ds.attrs)
        assert np.allclose(a["element_size_um"], [4.0, 1.0, 0.25])
        assert a["description"] == "blobs" and a["count"] == 7
        assert [d.label for d in ds.dims] == list("ncdhw")
        assert "DIMENSION_LIST" not in a and "REFERENCE_LIST" not in a
        assert a["lucid_version"] and a["lucid_source"].endswith("in.h5:/grp/vol")
        assert list(a["lucid_kernel"]) == [2, 2, 2] and list(a["lucid_stride"]) == [2, 2, 1]
        assert list(a["lucid_padding"]) == [0, 1, 1] and list(a["lucid_dilation"]) == [1, 1, 1]
        assert a["lucid_padding_mode"] == "zeros" and not a["lucid_ceil_mode"]
        assert a["lucid_command"] == "lucid pool" and a["lucid_extra"] == 1


def test_element_size_per_axis_and_dataset_override(tmp_path):
    data = np.zeros((3, 8, 8, 8), np.uint8)
    path = make_h5(tmp_path / "in.h5", data, attrs={"element_size_um": [1.0, 3.0, 2.0, 2.0]})
    src = open_source(path)
    assert src.meta.spacing == (3.0, 2.0, 2.0)
    spec = PoolSpec.create(2, 2)
    out = tmp_path / "out.h5"
    sink = open_sink(f"{out}:/pooled/x", (3, 4, 4, 4), np.uint8, like=src, pooling=spec)
    sink.write((slice(0, 3), slice(0, 4), slice(0, 4), slice(0, 4)), np.ones((3, 4, 4, 4), np.uint8))
    sink.commit()
    with h5py.File(out, "r") as f:
        assert list(f) == ["pooled"]
        assert np.allclose(f["pooled/x"].attrs["element_size_um"], [1.0, 6.0, 4.0, 4.0])
        assert f["pooled/x"][...].min() == 1


def test_gradient_and_indices_sinks(tmp_path):
    data = RNG.standard_normal((8, 8, 8)).astype(np.float32)
    src = open_source(make_h5(tmp_path / "in.h5", data, attrs={"element_size_um": [1.0, 1.0, 1.0]}))
    grad = open_sink(tmp_path / "grad.h5", src.shape, np.float32, like=src, pooling=None, kind="gradient")
    grad.write((slice(0, 8),) * 3, data)
    grad.commit()
    idx = open_sink(tmp_path / "idx.h5", (4, 4, 4), np.int64, like=src, pooling=PoolSpec.create(2, 2), kind="indices")
    idx.write((slice(0, 4),) * 3, np.arange(64).reshape(4, 4, 4))
    idx.commit()
    with h5py.File(tmp_path / "grad.h5") as f:
        assert f["data"].dtype == np.float32 and np.array_equal(f["data"][...], data)
        assert np.allclose(f["data"].attrs["element_size_um"], 1.0)  # same grid
        assert f["data"].attrs["lucid_kind"] == "gradient"
    with h5py.File(tmp_path / "idx.h5") as f:
        assert f["data"].dtype == np.int64 and f["data"][3, 3, 3] == 63


def test_sink_shape_is_checked(tmp_path):
    src = open_source(np.zeros((8, 8, 8), np.float32))
    with pytest.raises(ValueError, match="does not match"):
        open_sink(tmp_path / "o.h5", (4, 4, 5), np.float32, like=src, pooling=PoolSpec.create(2, 2))
    with pytest.raises(ValueError, match="kind"):
        open_sink(tmp_path / "o.h5", (8, 8, 8), np.float32, like=src, kind="weights")
    with pytest.raises(LucidIOError, match="unknown compression"):
        open_sink(tmp_path / "o.h5", (8, 8, 8), np.float32, like=src, compression="zip")
    sink = open_sink(tmp_path / "o.h5", (8, 8, 8), np.float32, like=src, compression="gzip:4")
    with pytest.raises(ValueError, match="shape"):
        sink.write((slice(0, 8),) * 3, np.zeros((8, 8, 7), np.float32))
    sink.abort()
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------ dataset selection


def test_file_colon_dataset_addressing_and_override(tmp_path):
    path = tmp_path / "multi.h5"
    with h5py.File(path, "w") as f:
        f["a/vol"] = np.zeros((4, 4, 4), np.float32)
        f["b"] = np.ones((5, 5, 5), np.uint8)
        f["small"] = np.zeros((3, 3))
    assert detect_format(f"{path}:/a/vol") == ("hdf5", str(path), "/a/vol")
    assert open_source(f"{path}:/a/vol").shape == (4, 4, 4)
    assert open_source(f"{path}:a/vol").shape == (4, 4, 4)
    assert open_source(f"{path}:/a/vol", dataset="/b").shape == (5, 5, 5)
    assert open_source(path, dataset="b").name.endswith("multi.h5:/b")
    with pytest.raises(LucidIOError) as info:
        open_source(path)
    message = str(info.value)
    assert "2 datasets" in message and "/a/vol" in message and "/b" in message and "\n" not in message


def test_single_3d_dataset_is_picked(tmp_path):
    path = tmp_path / "one.h5"
    with h5py.File(path, "w") as f:
        f["meta/labels"] = np.arange(3)
        f["deep/x/vol"] = np.zeros((4, 5, 6), np.int8)
    src = open_source(path)
    assert src.name.endswith(":/deep/x/vol") and src.dtype == np.int8


@pytest.mark.parametrize(
    "setup, dataset, words",
    [
        (lambda f: f.create_dataset("v", data=np.zeros((4, 4))), None, ["no dataset with 3 or more", "/v"]),
        (lambda f: f.create_dataset("v", data=np.zeros((4, 4, 4))), "/w", ["no dataset /w", "/v"]),
        (lambda f: f.create_group("g").create_dataset("v", data=np.zeros((4, 4, 4))), "/g", ["is a group", "/g/v"]),
        (lambda f: f.create_dataset("v", data=np.zeros((4, 4))), "/v", ["2-D", "(4, 4)"]),
        (lambda f: f.create_dataset("v", data=np.zeros((4, 4, 4), bool)), None, ["boolean"]),
        (lambda f: f.create_dataset("v", data=np.zeros((4, 4, 4), np.complex64)), None, ["complex"]),
        (lambda f: f.create_dataset("v", data=np.zeros((4, 4, 4), "S3")), None, ["unsupported data type"]),
        (
            lambda f: f.create_dataset("v", data=np.zeros((4, 4, 4), [("a", "f4"), ("b", "i4")])),
            None,
            ["unsupported data type"],
        ),
        (lambda f: f.create_dataset("v", shape=(4, 0, 4), dtype="f4"), None, ["zero-sized"]),
    ],
)
def test_dataset_errors(tmp_path, setup, dataset, words):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        setup(f)
    with pytest.raises(LucidIOError) as info:
        open_source(path, dataset=dataset)
    message = str(info.value)
    assert "bad.h5" in message and "\n" not in message
    for word in words:
        assert word in message


def test_file_errors(tmp_path):
    good = make_h5(tmp_path / "good.h5", np.zeros((16, 16, 16), np.float32))
    cases = {
        "missing.h5": (None, "no such file"),
        "empty.h5": (b"", "file is empty"),
        "garbage.h5": (b"this is not hdf5 at all" * 50, "not an HDF5 file"),
        "trunc.h5": (good.read_bytes()[:3000], "truncated"),
    }
    for name, (content, words) in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(LucidIOError) as info:
            open_source(tmp_path / name)
        assert name in str(info.value) and words in str(info.value) and "\n" not in str(info.value)
    (tmp_path / "dir.h5").mkdir()
    with pytest.raises(LucidIOError, match="is a directory"):
        open_source(tmp_path / "dir.h5")
    with pytest.raises(LucidIOError, match=r"unsupported file type; supported: \.h5, \.hdf5, \.hdf, \.nii, \.nii\.gz"):
        open_source(tmp_path / "volume.tif")


def test_unavailable_compression_filter(tmp_path):
    """Run where hdf5plugin cannot be imported (it is in the test extra, and it provides blosc)."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['hdf5plugin'] = None\n"
            "from tests.test_io_hdf5 import check_unavailable_blosc; check_unavailable_blosc(sys.argv[1])")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", code, tmp_path], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def check_unavailable_blosc(directory) -> None:
    path = os.path.join(directory, "blosc.h5")
    with h5py.File(path, "w") as f:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((4, 4, 4))
        dcpl.set_filter(32001, h5py.h5z.FLAG_OPTIONAL, (0, 0, 0, 0, 4, 1, 1))
        space = h5py.h5s.create_simple((8, 8, 8))
        dsid = h5py.h5d.create(f.id, b"data", h5py.h5t.NATIVE_FLOAT, space, dcpl)
        # a chunk stored as if blosc had compressed it (filter mask 0 = all filters applied)
        dsid.write_direct_chunk((0, 0, 0), b"\0" * 64, filter_mask=0)
    assert not h5py.h5z.filter_avail(32001)
    with pytest.raises(LucidIOError) as info:
        open_source(path)
    message = str(info.value)
    assert "blosc.h5:/data" in message and "32001" in message and "blosc" in message and "not available" in message


def test_input_is_opened_read_only_and_shared(tmp_path):
    path = make_h5(tmp_path / "in.h5", np.zeros((4, 4, 4), np.float32))
    a = open_source(path)
    b = open_source(path)  # two readers at once
    assert a.file.mode == "r" and isinstance(a, HDF5Source)
    assert np.array_equal(a.read((slice(0, 4),) * 3), b.read((slice(0, 4),) * 3))
    a.close()
    a.close()  # idempotent
    b.close()


def test_nifti_to_hdf5_carries_affine_spacing_and_scale(tmp_path):
    nib = pytest.importorskip("nibabel")
    raw = RNG.integers(0, 2000, (8, 6, 4)).astype(np.int16)
    affine = np.array([[0.0, -0.5, 0, 10], [0.8, 0, 0, -5], [0, 0, 2.0, 3], [0, 0, 0, 1]])
    img = nib.Nifti1Image(raw, affine)
    img.header.set_slope_inter(1.0, -1024.0)
    img.header.set_xyzt_units("mm")
    nib.save(img, tmp_path / "ct.nii.gz")
    src = open_source(tmp_path / "ct.nii.gz")
    spec = PoolSpec.create(2, 2)
    out = tmp_path / "ct.h5"
    sink = open_sink(out, (4, 3, 2), np.int16, like=src, pooling=spec)
    stream(src, sink, 2, rows=1)
    with h5py.File(out) as f:
        ds = f["data"]
        assert np.array_equal(ds[...], pool_ks(raw, (0, 1, 2), 2))
        assert np.allclose(ds.attrs["element_size_um"], [1600.0, 1000.0, 4000.0])
        expected_affine = affine @ np.array([[2, 0, 0, 0.5], [0, 2, 0, 0.5], [0, 0, 2, 0.5], [0, 0, 0, 1]])
        assert np.allclose(ds.attrs["affine"], expected_affine)
        assert (ds.attrs["scl_slope"], ds.attrs["scl_inter"]) == (1.0, -1024.0)
        assert [d.label for d in ds.dims] == ["x", "y", "z"]
    # and back: HDF5 -> NIfTI keeps the world geometry through the 'affine' attribute
    h5src = open_source(out)
    assert h5src.meta.scale == (1.0, -1024.0)
    nsink = open_sink(tmp_path / "back.nii", (4, 3, 2), np.int16, like=h5src, pooling=None, kind="output")
    nsink.write((slice(0, 4), slice(0, 3), slice(0, 2)), h5src.read((slice(0, 4), slice(0, 3), slice(0, 2))))
    nsink.commit()
    back = nib.load(tmp_path / "back.nii")
    # HDF5 axes named x, y, z here, so NIfTI keeps them in that order
    assert np.array_equal(np.asarray(back.dataobj.get_unscaled()), pool_ks(raw, (0, 1, 2), 2))
    assert np.allclose(back.affine, expected_affine, atol=1e-5)
    assert (back.dataobj.slope, back.dataobj.inter) == (1.0, -1024.0)
