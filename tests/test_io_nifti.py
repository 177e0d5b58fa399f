"""NIfTI sources and sinks: raw values, scaling, geometry, header fields, streaming writes, errors."""

import gzip
import os

import h5py
import nibabel as nib
import numpy as np
import pytest

from lucid.io import LucidIOError, NiftiSink, NiftiSource, open_sink, open_source
from lucid.io.base import pooling_matrix
from lucid.kernels.windows import PoolSpec

RNG = np.random.default_rng(7)


def pool_ks(x, pooled, k):
    for a in pooled:
        n = x.shape[a] // k * k
        x = np.take(x, np.arange(n), axis=a)
        x = x.reshape(x.shape[:a] + (n // k, k) + x.shape[a + 1 :]).max(axis=a + 1)
    return x


def stream(src, sink, k, rows=2, slab_axis=None):
    """Engine-like streaming for kernel = stride = k (see test_io_hdf5.stream)."""
    sa = src.slab_axis if slab_axis is None else slab_axis
    if src.order == "F":
        outer = [a for a in src.layout.carried if a > sa][::-1]
    else:
        outer = [a for a in src.layout.carried if a < sa]
    for idx in np.ndindex(*[src.shape[a] for a in outer]):
        for o0 in range(0, sink.shape[sa], rows):
            o1 = min(sink.shape[sa], o0 + rows)
            box = [slice(0, n) for n in src.shape]
            obox = [slice(0, n) for n in sink.shape]
            for a, i in zip(outer, idx):
                box[a] = obox[a] = slice(i, i + 1)
            box[sa], obox[sa] = slice(o0 * k, o1 * k), slice(o0, o1)
            data = pool_ks(src.read(tuple(box)), src.layout.pooled, k)
            sink.write(tuple(obox), data[tuple(slice(0, b.stop - b.start) for b in obox)])
    sink.commit()


def rotation(ax, ay, az):
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    return (
        np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    )


def oblique(zooms=(0.8, 0.9, 1.5), left_handed=False, offset=(10.0, -20.0, 30.0)):
    a = np.eye(4)
    a[:3, :3] = rotation(0.3, -0.2, 0.5) @ np.diag(zooms)
    if left_handed:
        a[:3, 0] *= -1
    a[:3, 3] = offset
    return a


def save(path, data, affine=None, header=None, slope_inter=None, klass=nib.Nifti1Image, codes=(1, 1)):
    affine = np.eye(4) if affine is None else affine
    img = klass(data, affine, header)
    img.header.set_qform(affine, code=codes[0])
    img.header.set_sform(affine, code=codes[1])
    if slope_inter is not None:
        img.header.set_slope_inter(*slope_inter)
    nib.save(img, path)
    return path


def raw_of(path):
    return np.asarray(nib.load(path).dataobj.get_unscaled())


# ------------------------------------------------------------ reading


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_int16_with_slope_and_intercept_round_trip(tmp_path, suffix):
    raw = RNG.integers(0, 3000, (16, 12, 10)).astype(np.int16)
    path = save(tmp_path / ("ct" + suffix), raw, oblique(), slope_inter=(1.0, -1024.0))
    src = open_source(path)
    assert isinstance(src, NiftiSource) and src.order == "F"
    assert src.dtype == np.int16 and src.meta.scale == (1.0, -1024.0)
    assert src.slab_axis == 2 and src.chunk_rows == 1
    assert np.array_equal(src.read((slice(0, 16), slice(0, 12), slice(0, 10))), raw)  # raw, not HU
    out = tmp_path / ("out" + suffix)
    sink = open_sink(out, (8, 6, 5), np.int16, like=src, pooling=PoolSpec.create(2, 2), slab_rows=2)
    assert isinstance(sink, NiftiSink)
    stream(src, sink, 2)
    img = nib.load(out)
    assert img.header.get_data_dtype() == np.int16  # not re-quantised
    assert (img.dataobj.slope, img.dataobj.inter) == (1.0, -1024.0)
    assert np.array_equal(raw_of(out), pool_ks(raw, (0, 1, 2), 2))
    assert np.array_equal(img.get_fdata(), pool_ks(raw, (0, 1, 2), 2) - 1024.0)
    src.close()
    assert sorted(os.listdir(tmp_path)) == sorted(["ct" + suffix, "out" + suffix])


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_4d_and_5d_round_trip_with_carried_axes(tmp_path, suffix):
    for shape in [(10, 8, 6, 3), (10, 8, 6, 2, 3)]:
        data = RNG.standard_normal(shape).astype(np.float32)
        path = save(tmp_path / ("in" + suffix), data, oblique())
        src = open_source(path)
        assert src.layout.axes == "xyztu"[: len(shape)] and src.layout.pooled == (0, 1, 2)
        expected = pool_ks(data, (0, 1, 2), 2)
        out = tmp_path / ("out" + suffix)
        sink = open_sink(out, expected.shape, np.float32, like=src, pooling=PoolSpec.create(2, 2), force=True)
        stream(src, sink, 2, rows=1)
        img = nib.load(out)
        assert img.shape == expected.shape
        assert np.array_equal(img.get_fdata(dtype=np.float32), expected)
        assert img.header.get_zooms()[3:] == nib.load(path).header.get_zooms()[3:]
        src.close()


def test_big_endian_input(tmp_path):
    data = RNG.integers(-500, 500, (9, 8, 7)).astype(np.int16)
    hdr = nib.Nifti1Header(endianness=">")
    hdr.set_data_dtype(np.int16)
    hdr.extensions.append(nib.nifti1.Nifti1Extension("comment", b"big-endian extension"))
    path = save(tmp_path / "be.nii", data, oblique(), header=hdr, slope_inter=(2.0, 5.0))
    assert nib.load(path).header.endianness == ">"
    src = open_source(path)
    assert src.dtype == np.dtype("int16") and src.dtype.isnative
    assert np.array_equal(src.read((slice(0, 9), slice(0, 8), slice(0, 7))), data)
    assert src.meta.scale == (2.0, 5.0)
    sink = open_sink(tmp_path / "out.nii.gz", (4, 4, 3), np.int16, like=src, pooling=PoolSpec.create(2, 2))
    stream(src, sink, 2)
    out = nib.load(tmp_path / "out.nii.gz")
    assert np.array_equal(raw_of(tmp_path / "out.nii.gz"), pool_ks(data, (0, 1, 2), 2))
    assert (out.dataobj.slope, out.dataobj.inter) == (2.0, 5.0)
    assert np.allclose(out.affine, oblique() @ pooling_matrix(PoolSpec.create(2, 2)), atol=1e-5)
    assert [e.get_content() for e in out.header.extensions] == [b"big-endian extension"]


def test_nifti2_input_gives_nifti2_output(tmp_path):
    data = RNG.standard_normal((8, 8, 8)).astype(np.float32)
    path = save(tmp_path / "n2.nii.gz", data, oblique(), klass=nib.Nifti2Image)
    src = open_source(path)
    assert src.meta.extra["nifti_version"] == 2
    sink = open_sink(tmp_path / "out.nii.gz", (4, 4, 4), np.float32, like=src, pooling=PoolSpec.create(2, 2))
    stream(src, sink, 2)
    out = nib.load(tmp_path / "out.nii.gz")
    assert isinstance(out, nib.Nifti2Image)
    assert np.array_equal(out.get_fdata(dtype=np.float32), pool_ks(data, (0, 1, 2), 2))


def test_dimension_over_32767_writes_nifti2(tmp_path):
    # a NIfTI-1 input whose pooled output grows past the NIfTI-1 limit (padding)
    data = RNG.integers(0, 100, (32767, 2, 2)).astype(np.uint8)
    src = open_source(save(tmp_path / "long.nii", data, oblique()))
    assert src.meta.extra["nifti_version"] == 1
    spec = PoolSpec.create(kernel_size=(2, 1, 1), stride=1, padding=(1, 0, 0))
    shape = spec.output_shape(src.shape)
    assert shape == (32768, 2, 2)
    out = np.zeros(shape, np.uint8)
    out[:-1] = data
    out[1:] = np.maximum(out[1:], data)
    sink = open_sink(tmp_path / "out.nii", shape, np.uint8, like=src, pooling=spec)
    sink.write(tuple(slice(0, n) for n in shape), out)
    sink.commit()
    img = nib.load(tmp_path / "out.nii")
    assert isinstance(img, nib.Nifti2Image)
    assert np.array_equal(np.asarray(img.dataobj), out)
    assert np.allclose(img.affine, oblique() @ pooling_matrix(spec), atol=1e-6)
    # from an in-memory array too
    sink = open_sink(tmp_path / "arr.nii", shape, np.uint8, like=open_source(out, axes="xyz"), kind="gradient")
    sink.write(tuple(slice(0, n) for n in shape), out)
    sink.commit()
    assert isinstance(nib.load(tmp_path / "arr.nii"), nib.Nifti2Image)


def test_nii_gz_slabs_keep_the_file_open(tmp_path):
    """Reading forward slab by slab must not restart decompression for every slab."""
    data = RNG.integers(0, 60000, (64, 64, 96)).astype(np.uint16)
    path = save(tmp_path / "big.nii.gz", data)
    src = open_source(path)
    slabs = [src.read((slice(0, 64), slice(0, 64), slice(z, z + 4))) for z in range(0, 96, 4)]
    assert np.array_equal(np.concatenate(slabs, axis=2), data)
    stream = src._gz
    assert stream.restarts == 0 and not stream._file.closed
    src.close()
    assert stream._file.closed


def test_nii_gz_overlapping_halo_reads_never_rewind(tmp_path, monkeypatch):
    """Slabs that share rows (kernel > stride) are served from the kept rows, not by seeking back."""
    data = RNG.integers(0, 60000, (32, 16, 40, 2)).astype(np.uint16)
    path = save(tmp_path / "halo.nii.gz", data)
    src = open_source(path)
    for t in range(2):
        for z in range(0, 40, 4):  # rows [z-2, z+4): a halo of 2
            lo, hi = max(0, z - 2), min(40, z + 4)
            box = (slice(0, 32), slice(0, 16), slice(lo, hi), slice(t, t + 1))
            got = src.read(box)
            assert np.array_equal(got, data[box])
            got[...] = 0  # the caller owns the array: the kept rows are a copy
    assert src._gz.restarts == 0
    src.set_cache(0)  # keeps at least one row
    box = (slice(0, 32), slice(0, 16), slice(39, 40), slice(1, 2))
    assert np.array_equal(src.read(box), data[box]) and src._gz.restarts == 0
    # a box outside the kept rows is still read correctly (by seeking back)
    box = (slice(0, 32), slice(0, 16), slice(0, 3), slice(0, 1))
    assert np.array_equal(src.read(box), data[box]) and src._gz.restarts == 1
    # so is a box that is not one run of the file
    box = (slice(3, 20), slice(2, 9), slice(5, 11), slice(0, 2))
    assert np.array_equal(src.read(box), data[box])
    src.close()


# ------------------------------------------------------------ geometry


@pytest.mark.parametrize("left_handed", [False, True])
@pytest.mark.parametrize("kernel", [(2, 2, 2), (3, 2, 4)])
def test_window_centre_of_output_voxel_zero(tmp_path, left_handed, kernel):
    """k = s, p = 0: world position of output voxel 0 = mean of its window's input voxels."""
    affine = oblique(left_handed=left_handed)
    src = open_source(save(tmp_path / "in.nii", np.zeros((12, 12, 12), np.float32), affine))
    spec = PoolSpec.create(kernel, kernel)
    shape = spec.output_shape(src.shape)
    sink = open_sink(tmp_path / "out.nii", shape, np.float32, like=src, pooling=spec)
    sink.write(tuple(slice(0, n) for n in shape), np.zeros(shape, np.float32))
    sink.commit()
    out = nib.load(tmp_path / "out.nii").header
    window = np.stack(np.meshgrid(*[np.arange(k) for k in kernel], indexing="ij"), -1).reshape(-1, 3)
    centre = (affine[:3, :3] @ window.T).T.mean(axis=0) + affine[:3, 3]
    for new, tol in ((out.get_sform(), 1e-6), (out.get_qform(), 1e-4)):
        assert np.allclose(new[:3, 3], centre, atol=tol)
        assert np.allclose(new[:3, :3], affine[:3, :3] @ np.diag(kernel), atol=tol)
    assert np.sign(np.linalg.det(out.get_qform()[:3, :3])) == np.sign(np.linalg.det(affine[:3, :3]))
    assert np.allclose(out.get_zooms(), np.array([0.8, 0.9, 1.5]) * kernel)


def test_general_formula_with_padding_and_dilation(tmp_path):
    affine = oblique(left_handed=True)
    src = open_source(save(tmp_path / "in.nii.gz", np.zeros((20, 20, 20), np.int16), affine, codes=(1, 4)))
    spec = PoolSpec.create(kernel_size=(3, 2, 3), stride=(2, 1, 3), padding=(1, 0, 1), dilation=(2, 1, 1))
    shape = spec.output_shape(src.shape)
    sink = open_sink(tmp_path / "out.nii.gz", shape, np.int16, like=src, pooling=spec)
    sink.write(tuple(slice(0, n) for n in shape), np.zeros(shape, np.int16))
    sink.commit()
    hdr = nib.load(tmp_path / "out.nii.gz").header
    m = np.eye(4)
    m[:3, :3] = np.diag([2, 1, 3])
    m[:3, 3] = [2 * (3 - 1) / 2 - 1, (2 - 1) / 2 - 0, (3 - 1) / 2 - 1]
    assert np.allclose(m, pooling_matrix(spec))
    assert np.allclose(hdr.get_sform(), affine @ m, atol=1e-6)
    assert np.allclose(hdr.get_qform(), affine @ m, atol=1e-4)
    assert (int(hdr["qform_code"]), int(hdr["sform_code"])) == (1, 4)


def test_header_fields_are_kept_and_slice_timing_reset(tmp_path):
    data = RNG.standard_normal((8, 8, 6, 4)).astype(np.float32)
    img = nib.Nifti1Image(data, oblique())
    hdr = img.header
    hdr.set_qform(oblique(), code=1)
    hdr.set_sform(oblique(), code=2)
    hdr.set_xyzt_units("mm", "msec")
    hdr["pixdim"][4] = 2000.0
    hdr.set_intent("t test", (12.0,), name="stat")
    hdr["descrip"] = b"my scan"
    hdr["cal_min"], hdr["cal_max"] = -3.0, 3.0
    hdr["toffset"] = 1.5
    hdr.set_dim_info(freq=0, phase=1, slice=2)
    hdr["slice_code"], hdr["slice_start"], hdr["slice_end"], hdr["slice_duration"] = 1, 0, 5, 0.1
    hdr.extensions.append(nib.nifti1.Nifti1Extension("comment", b"keep me, please"))
    nib.save(img, tmp_path / "in.nii.gz")
    src = open_source(tmp_path / "in.nii.gz")

    def pooled(spec, name):
        shape = spec.output_shape(src.shape[:3]) + src.shape[3:]
        sink = open_sink(tmp_path / name, shape, np.float32, like=src, pooling=spec)
        for t in range(4):
            box = tuple(slice(0, n) for n in shape[:3]) + (slice(t, t + 1),)
            sink.write(box, np.zeros(shape[:3] + (1,), np.float32))
        sink.commit()
        return nib.load(tmp_path / name).header

    out = pooled(PoolSpec.create(2, 2), "a.nii.gz")
    assert out.get_xyzt_units() == ("mm", "msec")
    assert out.get_zooms()[3] == 2000.0 and out.get_data_shape()[3] == 4
    assert out.get_intent() == ("t test", (12.0,), "stat")
    assert out["descrip"] == b"my scan" and (out["cal_min"], out["cal_max"]) == (-3.0, 3.0)
    assert out["toffset"] == 1.5
    assert [(e.get_code(), e.get_content()) for e in out.extensions] == [(6, b"keep me, please")]
    assert out.get_dim_info() == (0, 1, 2)
    assert (out["slice_code"], out["slice_end"], out["slice_duration"]) == (0, 0, 0)  # reset: z pooled
    assert (int(out["qform_code"]), int(out["sform_code"])) == (1, 2)
    # slice axis untouched (k = s = 1 along z): slice timing stays
    out = pooled(PoolSpec.create((2, 2, 1), (2, 2, 1)), "b.nii.gz")
    assert (out["slice_code"], out["slice_end"]) == (1, 5) and np.isclose(out["slice_duration"], 0.1)


def test_gradient_and_indices_maps(tmp_path):
    raw = RNG.integers(0, 3000, (8, 8, 8)).astype(np.int16)
    src = open_source(save(tmp_path / "ct.nii.gz", raw, oblique(), slope_inter=(1.0, -1024.0)))
    g = RNG.standard_normal((8, 8, 8)).astype(np.float32)
    sink = open_sink(tmp_path / "grad.nii.gz", (8, 8, 8), np.float32, like=src, pooling=None, kind="gradient")
    sink.write((slice(0, 8),) * 3, g)
    sink.commit()
    img = nib.load(tmp_path / "grad.nii.gz")
    assert img.header.get_data_dtype() == np.float32
    assert (img.dataobj.slope, img.dataobj.inter) == (1.0, 0.0)  # unscaled
    assert np.array_equal(img.get_fdata(dtype=np.float32), g)
    assert np.allclose(img.affine, oblique(), atol=1e-6)  # same grid
    idx = np.arange(64, dtype=np.int64).reshape(4, 4, 4)
    sink = open_sink(tmp_path / "idx.nii", (4, 4, 4), np.int64, like=src, pooling=PoolSpec.create(2, 2), kind="indices")
    sink.write((slice(0, 4),) * 3, idx)
    sink.commit()
    img = nib.load(tmp_path / "idx.nii")
    assert img.header.get_data_dtype() == np.int64
    assert np.array_equal(np.asarray(img.dataobj), idx)
    with pytest.raises(LucidIOError, match="float16"):
        open_sink(tmp_path / "h.nii", (8, 8, 8), np.float16, like=src, kind="gradient")


# ------------------------------------------------------------ from HDF5 and odd write orders


def test_hdf5_5d_to_nifti_maps_axes_and_spacing(tmp_path):
    data = RNG.standard_normal((2, 3, 8, 6, 4)).astype(np.float32)
    with h5py.File(tmp_path / "v.h5", "w") as f:
        ds = f.create_dataset("data", data=data, chunks=(1, 1, 2, 6, 4))
        ds.attrs["element_size_um"] = [2000.0, 500.0, 250.0]  # d, h, w in micrometres
    src = open_source(tmp_path / "v.h5")
    expected = pool_ks(data, (2, 3, 4), 2)
    for name in ("v.nii", "v.nii.gz"):
        sink = open_sink(tmp_path / name, expected.shape, np.float32, like=src, pooling=PoolSpec.create(2, 2))
        stream(src, sink, 2, rows=1)
        img = nib.load(tmp_path / name)
        # x = w, y = h, z = d, dim 4 = c, dim 5 = n: the same bytes as the HDF5 file
        assert img.shape == (2, 3, 4, 3, 2)
        assert np.array_equal(img.get_fdata(dtype=np.float32), expected.transpose(4, 3, 2, 1, 0))
        assert np.allclose(img.header.get_zooms()[:3], [0.5, 1.0, 4.0])
        assert np.allclose(img.affine, [[0.5, 0, 0, 0.125], [0, 1.0, 0, 0.25], [0, 0, 4.0, 1.0], [0, 0, 0, 1]])
        assert img.header.get_xyzt_units()[0] == "mm"


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_video_and_x_slabs_take_the_non_sequential_path(tmp_path, suffix):
    """thwc video: channels become dim 4, so a t-slab is 3 separate runs in the file."""
    video = RNG.integers(0, 255, (8, 6, 10, 3)).astype(np.uint8)
    src = open_source(video, axes="thwc")
    expected = pool_ks(video, (0, 1, 2), 2)
    sink = open_sink(tmp_path / ("v" + suffix), expected.shape, np.uint8, like=src, pooling=PoolSpec.create(2, 2))
    stream(src, sink, 2, rows=1)
    img = nib.load(tmp_path / ("v" + suffix))
    assert img.shape == (5, 3, 4, 3)  # x = w, y = h, z = t, dim 4 = c
    assert np.array_equal(np.asarray(img.dataobj), expected.transpose(2, 1, 0, 3))
    # a NIfTI input written in slabs along x (not the file order)
    data = RNG.standard_normal((8, 6, 4)).astype(np.float32)
    src = open_source(save(tmp_path / ("in" + suffix), data))
    sink = open_sink(tmp_path / ("x" + suffix), data.shape, np.float32, like=src, kind="gradient")
    stream(src, sink, 1, rows=3, slab_axis=0)
    assert np.array_equal(nib.load(tmp_path / ("x" + suffix)).get_fdata(dtype=np.float32), data)
    assert [n for n in os.listdir(tmp_path) if ".lucid-" in n] == []


def test_writes_are_streamed_not_buffered(tmp_path):
    data = RNG.standard_normal((16, 16, 16)).astype(np.float32)
    src = open_source(save(tmp_path / "in.nii", data))
    sink = open_sink(tmp_path / "out.nii", data.shape, np.float32, like=src, kind="gradient")
    head = sink.vox_offset
    sink.write((slice(0, 16), slice(0, 16), slice(0, 4)), data[:, :, :4])
    assert os.path.getsize(sink.target.tmp) == head + 16 * 16 * 4 * 4
    sink.abort()
    gz = open_sink(tmp_path / "out.nii.gz", data.shape, np.float32, like=src, kind="gradient")
    gz.write((slice(0, 16), slice(0, 16), slice(0, 4)), data[:, :, :4])
    assert gz._spool_fd is None and gz._pos == 16 * 16 * 4 * 4
    gz.abort()


# ------------------------------------------------------------ errors


def test_file_errors(tmp_path):
    good = save(tmp_path / "good.nii", np.zeros((16, 16, 16), np.float32))
    save(tmp_path / "good.nii.gz", RNG.standard_normal((16, 16, 16)).astype(np.float32))
    cases = {
        "missing.nii": (None, "no such file"),
        "empty.nii": (b"", "file is empty"),
        "garbage.nii": (b"definitely not nifti" * 40, "not a readable NIfTI"),
        "garbage.nii.gz": (b"definitely not gzip" * 40, "NIfTI"),
        "trunc.nii": (good.read_bytes()[:5000], "truncated"),
        "header_only.nii.gz": (gzip.compress(good.read_bytes()[:100]), "NIfTI"),
    }
    for name, (content, words) in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(LucidIOError) as info:
            open_source(tmp_path / name)
        assert name in str(info.value) and words in str(info.value) and "\n" not in str(info.value), str(info.value)
    (tmp_path / "dir.nii").mkdir()
    with pytest.raises(LucidIOError, match="is a directory"):
        open_source(tmp_path / "dir.nii")
    # a .nii.gz cut in its data: found when the slab is read
    (tmp_path / "cut.nii.gz").write_bytes((tmp_path / "good.nii.gz").read_bytes()[:3000])
    src = open_source(tmp_path / "cut.nii.gz")
    with pytest.raises(LucidIOError) as info:
        try:
            for z in range(16):
                src.read((slice(0, 16), slice(0, 16), slice(z, z + 1)))
        finally:
            src.close()  # left open, its file's ResourceWarning surfaced later, in another test's run report
    assert "cut.nii.gz" in str(info.value) and "truncated" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(LucidIOError, match="no datasets"):
        open_source(good, dataset="/x")


@pytest.mark.parametrize(
    "data, words",
    [
        (np.zeros((4, 4, 4), np.complex64), "complex"),
        (np.zeros((4, 4), np.float32), "2-D"),
        (np.zeros((4, 4, 4, 4, 4, 4, 4), np.uint8)[..., :0], "zero-sized"),
    ],
)
def test_unpoolable_images(tmp_path, data, words):
    path = tmp_path / "bad.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    with pytest.raises(LucidIOError, match=words):
        open_source(path)


def test_rgb_image_is_refused(tmp_path):
    rgb = np.zeros((4, 4, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    path = tmp_path / "rgb.nii"
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), path)
    with pytest.raises(LucidIOError, match="unsupported data type"):
        open_source(path)


