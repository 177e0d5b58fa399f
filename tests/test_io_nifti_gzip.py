"""#13.5: a .nii.gz input's gzip trailers (CRC32, ISIZE) are checked, as Python's gzip does.

Each hostile file is built here from a good one; lucid must refuse it exactly
when ``gzip.decompress`` does, in one line naming the file, with no output,
and must read multi-member and zero-padded streams as gzip does.
"""

import gzip
import struct
import zlib

import numpy as np
import pytest

from lucid.io import LucidIOError
from lucid.io import nifti as nifti_module
from lucid.stream.api import pool3d_file
from tests.faults_helpers import Snapshot, assert_one_error_line, nifti_bytes, run_cli, volume

DATA = volume((12, 12, 9), np.int16, seed=3)  # z = 9: with k = 2 the last plane is never pooled
SMALL = volume((4, 4, 4), np.int16, seed=4)  # so small that nibabel's own header read meets the trailer


def member(payload: bytes, crc: int | None = None, isize: int | None = None) -> bytes:
    """One gzip member of ``payload``, with a chosen CRC32 / ISIZE trailer."""
    comp = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = comp.compress(payload) + comp.flush()
    crc = zlib.crc32(payload) if crc is None else crc
    isize = len(payload) if isize is None else isize
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + body + struct.pack("<II", crc & 0xFFFFFFFF, isize & 0xFFFFFFFF)


RAW = nifti_bytes(DATA)
GOOD = member(RAW)
LAST = len(RAW) - 3  # a byte of the last z plane, which k = 2 never reads


def flipped(pos: int) -> bytes:
    bad = bytearray(RAW)
    bad[pos] ^= 0x40
    return member(bytes(bad), crc=zlib.crc32(RAW))  # the trailer still describes RAW


CASES = {
    "good": GOOD,
    "flipped-data-byte": flipped(400),
    "flipped-unread-byte": flipped(LAST),
    "bad-crc": member(RAW, crc=zlib.crc32(RAW) ^ 1),
    "bad-isize": member(RAW, isize=len(RAW) + 1),
    "no-trailer": GOOD[:-8],
    "half-trailer": GOOD[:-3],
    "two-members": member(RAW[:1000]) + member(RAW[1000:]),
    "zero-padding": GOOD + b"\0" * 100,
    "trailing-garbage": GOOD + b"garbage",
    "trailing-bad-member": GOOD + member(b"x", crc=5),
    "small-bad-crc": member(nifti_bytes(SMALL), crc=1),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_refuses_exactly_what_python_gzip_refuses(tmp_path, case):
    blob = CASES[case]
    try:
        want = gzip.decompress(blob)
    except (OSError, EOFError):  # BadGzipFile is an OSError
        want = None
    path = tmp_path / "in.nii.gz"
    path.write_bytes(blob)
    out = tmp_path / "out.nii"
    before = Snapshot.take(tmp_path)
    if want is None:
        with pytest.raises(LucidIOError) as info:
            pool3d_file(str(path), str(out), 2)
        text = str(info.value)
        assert text.startswith(f"{path}:") and "\n" not in text and "gzip" in text, text
        Snapshot.take(tmp_path).assert_unchanged(before)
    else:
        assert want[:len(RAW)] == RAW
        pool3d_file(str(path), str(out), 2)
        import nibabel as nib

        got = np.asarray(nib.load(out).dataobj)
        np.testing.assert_array_equal(got, DATA[:, :, :8].reshape(6, 2, 6, 2, 4, 2).max(axis=(1, 3, 5)))


def test_cli_names_the_file_in_one_line(tmp_path):
    path = tmp_path / "crc.nii.gz"
    path.write_bytes(CASES["bad-crc"])
    before = Snapshot.take(tmp_path)
    result = run_cli("pool3d", path, tmp_path / "o.nii.gz", "-k", "2")
    assert_one_error_line(result, 1, "crc.nii.gz", "CRC check failed")
    Snapshot.take(tmp_path).assert_unchanged(before)


def test_gradient_trailer_is_checked_too(tmp_path):
    src = tmp_path / "in.nii"
    src.write_bytes(RAW)
    grad_raw = nifti_bytes(np.ones((6, 6, 4), np.float32))
    grad = tmp_path / "g.nii.gz"
    grad.write_bytes(member(grad_raw, crc=zlib.crc32(grad_raw) ^ 1))
    with pytest.raises(LucidIOError, match="g.nii.gz.*CRC"):
        pool3d_file(str(src), None, 2, grad_in=str(grad), grad_out=str(tmp_path / "gx.nii"))
    assert not (tmp_path / "gx.nii").exists()


def test_a_stream_far_longer_than_the_header_says_is_refused_not_decompressed(tmp_path, monkeypatch):
    """A bomb: a small image followed by a long run of zeros inside the gzip stream."""
    monkeypatch.setattr(nifti_module, "TRAILING_LIMIT", 1 << 20)
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(member(RAW + b"\0" * (8 << 20)))
    with pytest.raises(LucidIOError, match="bomb.nii.gz: the gzip stream goes on"):
        pool3d_file(str(path), str(tmp_path / "o.nii"), 2)
    path.write_bytes(member(RAW + b"\0" * (1 << 19)))  # within the limit: read and checked
    pool3d_file(str(path), str(tmp_path / "o.nii"), 2)


from hypothesis import given, settings, strategies as st  # noqa: E402

from lucid.io.gzstream import GzipStream  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(payload=st.binary(min_size=1, max_size=5000), cuts=st.lists(st.integers(0, 5000), max_size=3),
       reads=st.lists(st.integers(1, 3000), min_size=1, max_size=8), skip=st.integers(0, 200))
def test_stream_reads_what_gzip_decompress_gives(tmp_path_factory, payload, cuts, reads, skip):
    bounds = sorted({0, len(payload), *(c % (len(payload) + 1) for c in cuts)})
    blob = b"".join(member(payload[a:b]) for a, b in zip(bounds, bounds[1:]))
    path = tmp_path_factory.mktemp("gz") / "p.gz"
    path.write_bytes(blob)
    want = gzip.decompress(blob)
    stream = GzipStream(str(path))
    got = bytearray()
    stream.seek(min(skip, len(want)))
    for n in reads:
        buf = bytearray(n)
        got += buf[:stream.readinto(memoryview(buf))]
    start = min(skip, len(want))
    assert bytes(got) == want[start:start + sum(reads)]
    assert stream.finish(1 << 20) >= 0
    stream.close()
