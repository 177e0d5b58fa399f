"""Randomly damaged NIfTI and HDF5 files: lucid reads them right or says so in one line.

A hypothesis test flips and overwrites bytes of the 352-byte NIfTI header (of a
.nii, or of a .nii.gz before compressing it), truncates files at random
offsets, and damages random bytes of a small chunked HDF5 file.  Then
``pool3d_file`` (and ``lucid.inspect.describe``) must either

* succeed with exactly what nibabel's / h5py's own reading followed by
  ``lucid.nn.functional.max_pool3d`` gives, or
* raise LucidIOError or ValueError with a one-line message -- never IndexError,
  KeyError, struct.error, OverflowError, ZeroDivisionError, MemoryError, ...

and leave the input untouched and no temporary file behind.

``LUCID_FUZZ_EXAMPLES`` sets the number of examples (default 60, for CI);
e.g. ``LUCID_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz_inputs.py`` for a long run.

Separate tests pin down what the fuzzing found: headers claiming gigantic or
negative shapes are refused before anything is allocated or planned, and an
HDF5 float type numpy cannot represent is a LucidIOError.
"""

from __future__ import annotations

import gzip
import os
import resource
import signal
import struct
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lucid.io import LucidIOError
from lucid.nn.functional import max_pool3d
from lucid.stream.api import pool3d_file
from tests.faults_helpers import Snapshot, file_hash, nifti_bytes

try:
    from lucid.inspect import describe
except ImportError:  # pragma: no cover - lucid info not there yet
    describe = None

EXAMPLES = int(os.environ.get("LUCID_FUZZ_EXAMPLES", "60"))
HEADER = 352  # NIfTI-1 header + the 4 extension bytes
POOL = dict(kernel_size=2, stride=2, ceil_mode=True, padding_mode="ignore")  # every shape has an output
ACCEPTED = (LucidIOError, ValueError)


def _base_volume() -> np.ndarray:
    return np.random.default_rng(11).integers(-300, 300, (6, 5, 4)).astype(np.int16)


NII = nifti_bytes(_base_volume())


def _base_h5() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "base.h5")
        with h5py.File(path, "w") as f:
            f.create_dataset("data", data=_base_volume().astype(np.float32) / 7, chunks=(2, 5, 4),
                             compression="gzip", shuffle=True)
        return Path(path).read_bytes()


H5 = _base_h5()


# ---------------------------------------------------------------- damage


@st.composite
def damaged_files(draw):
    kind = draw(st.sampled_from(["nii", "nii", "nii.gz", "h5"]))
    data = bytearray(H5 if kind == "h5" else NII)
    region = len(data) if kind == "h5" else HEADER
    how = draw(st.sampled_from(["flip", "overwrite", "truncate", "flip+truncate"]))
    if "flip" in how:
        for _ in range(draw(st.integers(1, 6))):
            i = draw(st.integers(0, region - 1))
            data[i] = draw(st.integers(0, 255))
    if how == "overwrite":
        i = draw(st.integers(0, region - 8))
        data[i:i + 8] = draw(st.sampled_from([b"\xff" * 8, b"\x00" * 8, b"\x7f\xff\xff\xff" * 2,
                                               b"\x80\x00\x00\x00" * 2])) if draw(st.booleans()) \
            else draw(st.binary(min_size=8, max_size=8))
    if kind == "nii.gz":
        data = bytearray(gzip.compress(bytes(data), mtime=0))
        if draw(st.booleans()):  # damage the compressed stream itself
            i = draw(st.integers(10, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
    if "truncate" in how:
        data = data[: draw(st.integers(0, len(data) - 1))]
    return kind, bytes(data)


# ---------------------------------------------------------------- references


def _order_flip(x: np.ndarray) -> np.ndarray:
    """An exact order-reversing map: ~x for integers, -x for floats (its own inverse)."""
    return ~x if x.dtype.kind in "iu" else -x


def _pool_last3(x: np.ndarray, reverse: bool) -> np.ndarray:
    """max_pool3d (or min, if ``reverse``) over the first three axes, carrying the others."""
    lead = x.shape[3:]
    moved = np.moveaxis(x.reshape(x.shape[:3] + (-1,)), 3, 0)  # (C, X, Y, Z)
    if reverse:
        moved = _order_flip(moved)
    pooled = max_pool3d(np.ascontiguousarray(moved), **POOL).data
    if reverse:
        pooled = _order_flip(pooled)
    return np.moveaxis(pooled, 0, 3).reshape(pooled.shape[1:] + lead)


def _nifti_reference(path: str):
    img = nib.load(path)
    raw = np.asarray(img.dataobj.get_unscaled())
    return _pool_last3(raw, reverse=float(img.dataobj.slope) < 0)


def _pool_first3_c(x: np.ndarray, reverse: bool) -> np.ndarray:
    """HDF5 3-D 'dhw': pooled axes are the first three."""
    return _pool_last3(x, reverse)


def _hdf5_undefined(path: str, dataset: str) -> bool:
    """Whether HDF5 itself reads undefined bytes: a chunk whose damaged filter mask says
    "stored unfiltered" but which holds fewer bytes than a chunk (HDF5 reads past it)."""
    with h5py.File(path, "r") as f:
        ds = f[dataset]
        if ds.chunks is None:
            return False
        nbytes = int(np.prod(ds.chunks)) * ds.dtype.itemsize
        for i in range(ds.id.get_num_chunks()):
            info = ds.id.get_chunk_info(i)
            if info.filter_mask and info.size < nbytes:
                return True
    return False


def _hdf5_reference(path: str, dataset: str):
    with h5py.File(path, "r") as f:
        ds = f[dataset]
        x = ds[()]
        slope = float(np.asarray(ds.attrs.get("scl_slope", 1.0)).ravel()[0])
    x = x.astype(x.dtype.newbyteorder("="))
    return _pool_first3_c(x, reverse=slope < 0)


# ---------------------------------------------------------------- the property


@contextmanager
def _time_limit(seconds: int):
    """A damaged header must never send lucid into a long loop: fail instead of hanging."""

    def on_alarm(signum, frame):
        raise TimeoutError(f"lucid did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def check_damaged_file(kind: str, content: bytes) -> str:
    with tempfile.TemporaryDirectory(prefix="lucid-fuzz-") as d:
        src = os.path.join(d, "in." + kind)
        Path(src).write_bytes(content)
        out_dir = os.path.join(d, "out")
        os.mkdir(out_dir)
        out = os.path.join(out_dir, "o.h5")
        before = Snapshot.take(d)
        digest = file_hash(src)
        outcome = "error"
        try:
            with _time_limit(60):
                report = pool3d_file(src, out, **POOL, out_dataset="/pooled", memory_limit="64M")
        except ACCEPTED as exc:
            text = str(exc)
            assert text and "\n" not in text, f"not one line: {text!r}"
            Snapshot.take(d).assert_unchanged(before)
        else:
            outcome = "ok"
            with h5py.File(out, "r") as f:
                got = f["/pooled"][()]
            if kind == "h5":
                dataset = report.input.rsplit(":", 1)[1]
                if _hdf5_undefined(src, dataset):
                    outcome = "undefined"  # HDF5 reads garbage: nothing to compare against
                else:
                    want = _hdf5_reference(src, dataset)
            else:
                want = _nifti_reference(src)
            if outcome == "ok":
                assert got.shape == want.shape
                assert got.dtype == want.dtype.newbyteorder("=")
                np.testing.assert_array_equal(got, want)
            Snapshot.take(d).assert_unchanged(before, allow_new=["out/o.h5"])
        assert file_hash(src) == digest
        if describe is not None:
            try:
                with _time_limit(60):
                    describe(src)
            except ACCEPTED as exc:
                assert "\n" not in str(exc)
        return outcome


@settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 60,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(damaged_files())
def test_damaged_files_are_read_right_or_refused_in_one_line(sample):
    check_damaged_file(*sample)


def test_undamaged_bases_pool_like_the_references():
    for kind, content in [("nii", NII), ("nii.gz", gzip.compress(NII, mtime=0)), ("h5", H5)]:
        assert check_damaged_file(kind, content) == "ok"


# ---------------------------------------------------------------- what the fuzzing found


def _nifti_with_dims(dims, version=1, gz=False) -> bytes:
    """A tiny valid image whose header's dim field is replaced (the data stays 4x4x4)."""
    data = np.zeros((4, 4, 4), np.int16)
    img = (nib.Nifti1Image if version == 1 else nib.Nifti2Image)(data, np.eye(4))
    raw = bytearray(img.to_bytes())
    if version == 1:
        struct.pack_into("<8h", raw, 40, *dims)
    else:
        struct.pack_into("<8q", raw, 16, *dims)
    return gzip.compress(bytes(raw), mtime=0) if gz else bytes(raw)


GIANT = [
    ("nifti1-32767-cubed", (3, 32767, 32767, 32767, 1, 1, 1, 1), 1),
    ("nifti1-7d", (7, 32767, 32767, 32767, 32767, 32767, 32767, 32767), 1),
    ("nifti2-2^40-cubed", (3, 1 << 40, 1 << 40, 1 << 40, 1, 1, 1, 1), 2),
    ("nifti2-2^62-cubed", (3, 1 << 62, 1 << 62, 1 << 62, 1, 1, 1, 1), 2),
    ("nifti2-tall", (3, 4, 4, 1 << 30, 1, 1, 1, 1), 2),
]


@pytest.mark.parametrize("gz", [False, True], ids=["nii", "nii.gz"])
@pytest.mark.parametrize("dims,version", [g[1:] for g in GIANT], ids=[g[0] for g in GIANT])
def test_gigantic_header_shape_is_refused_before_allocating(tmp_path, dims, version, gz):
    path = tmp_path / ("big.nii.gz" if gz else "big.nii")
    path.write_bytes(_nifti_with_dims(dims, version, gz))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with _time_limit(30), pytest.raises(LucidIOError) as info:
        pool3d_file(path, tmp_path / "o.h5", 2, memory_limit="64G")  # a generous limit: the reader must refuse
    assert time.perf_counter() - start < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200 * 1024  # KiB: nothing allocated
    text = str(info.value)
    assert "\n" not in text and str(path) in text
    assert any(w in text for w in ("truncated", "corrupt")), text
    assert os.listdir(tmp_path) == [path.name]


@pytest.mark.parametrize("dims", [(3, -4, 4, 4, 1, 1, 1, 1), (3, 4, 4, -1, 1, 1, 1, 1)])
def test_negative_header_dimension_is_an_io_error(tmp_path, dims):
    path = tmp_path / "neg.nii"
    path.write_bytes(_nifti_with_dims(dims, version=2))
    with pytest.raises(LucidIOError, match="negative dimension"):
        pool3d_file(path, tmp_path / "o.h5", 2)


def test_hdf5_float_type_numpy_cannot_represent_is_an_io_error(tmp_path):
    path = tmp_path / "odd.h5"
    ftype = h5py.h5t.IEEE_F32LE.copy()
    ftype.set_ebias(4294967167)  # what a damaged type message looked like
    with h5py.File(path, "w") as f:
        h5py.h5d.create(f.id, b"data", ftype, h5py.h5s.create_simple((4, 4, 4)))
    with pytest.raises(LucidIOError, match="unsupported data type"):
        pool3d_file(path, tmp_path / "o.h5", 2)
    assert sorted(os.listdir(tmp_path)) == ["odd.h5"]


def test_nibabel_header_fixes_are_not_printed(tmp_path, capfd):
    """nibabel logs "sizeof_hdr should be 348; set sizeof_hdr to 348" and similar to stderr."""
    raw = bytearray(NII)
    struct.pack_into("<i", raw, 0, 0)  # sizeof_hdr
    struct.pack_into("<h", raw, 40 + 2 * 4, 0)  # dim[4] of a 3-D image
    path = tmp_path / "odd.nii"
    path.write_bytes(bytes(raw))
    try:
        pool3d_file(path, tmp_path / "o.h5", 2)
    except ACCEPTED:
        pass
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_describe_survives_invalid_units_code(tmp_path):
    raw = bytearray(NII)
    raw[123] = 7  # xyzt_units: 7 is no NIfTI space unit
    path = tmp_path / "units.nii"
    path.write_bytes(bytes(raw))
    pool3d_file(path, tmp_path / "o.h5", 2)  # the pooling itself copes
    info = describe(path)  # nibabel's get_xyzt_units() raises KeyError here
    assert info["volume"]["shape"] == [6, 5, 4]
