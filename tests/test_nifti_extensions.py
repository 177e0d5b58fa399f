"""#13.10: a large NIfTI header extension is streamed from the input to the outputs, never loaded.

Sections above ``INLINE_BYTES`` are left in the input file and copied 1 MiB
at a time; nibabel, the independent reader, must read the outputs'
extensions byte for byte as they were, for .nii and .nii.gz on either side
and for a big-endian input (whose esize/ecode pairs are swapped on the way).
"""

from __future__ import annotations

import gzip
import os
import struct

import nibabel as nib
import numpy as np
import pytest

from lucid.inspect import describe
from lucid.io.nifti import NiftiSource
from lucid.io.nifti_extensions import INLINE_BYTES
from lucid.stream.api import pool3d_file

DATA = np.arange(16**3, dtype=np.int16).reshape(16, 16, 16)
POOLED = DATA.reshape(8, 2, 8, 2, 8, 2).max(axis=(1, 3, 5))


def write_with_extension(path, nbytes: int, *, order: str = "<", code: int = 40, data=DATA) -> bytes:
    """A .nii/.nii.gz with one extension of ``nbytes`` content plus a small comment, written streaming.

    Returns the first and last 64 bytes of the content (what the test checks)."""
    path = os.fspath(path)
    esize = -(-(nbytes + 8) // 16) * 16
    comment = b"small comment".ljust(24, b"\0")
    hdr = nib.Nifti1Header(endianness=order)
    hdr.set_data_dtype(data.dtype)
    hdr.set_data_shape(data.shape)
    hdr.set_qform(np.diag([2.0, 3.0, 4.0, 1.0]), 1)
    hdr.set_sform(np.diag([2.0, 3.0, 4.0, 1.0]), 1)
    hdr["vox_offset"] = 352 + esize + 8 + len(comment)
    opener = gzip.open(path, "wb", compresslevel=1) if path.endswith(".gz") else open(path, "wb")
    block = bytes(range(256)) * 4096  # 1 MiB of a pattern
    with opener as f:
        f.write(hdr.binaryblock + b"\x01\0\0\0")
        f.write(struct.pack(order + "ii", esize, code))
        left = esize - 8
        while left:
            piece = block[: min(len(block), left)]
            f.write(piece)
            left -= len(piece)
        f.write(struct.pack(order + "ii", 8 + len(comment), 6) + comment)
        f.write(data.astype(data.dtype.newbyteorder(order)).tobytes(order="F"))
    return block[:64]


@pytest.mark.parametrize("src_suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("out_suffix", [".nii", ".nii.gz", ".hdr"])
@pytest.mark.parametrize("order", ["<", ">"])
def test_large_extension_is_copied_byte_for_byte(tmp_path, src_suffix, out_suffix, order):
    size = INLINE_BYTES + 12345
    src = tmp_path / f"in{src_suffix}"
    head = write_with_extension(src, size, order=order)
    source = NiftiSource(src)
    assert source.raw_extensions is not None and source.raw_extensions.length > INLINE_BYTES  # not loaded
    assert len(source.header.extensions) == 0
    source.close()
    out, grad = tmp_path / f"out{out_suffix}", tmp_path / f"grad{out_suffix}"
    report = pool3d_file(str(src), str(out), 2, grad_out=str(grad))
    assert not report.warnings
    for path in (out, grad):
        img = nib.load(path)
        exts = img.header.extensions
        assert [e.get_code() for e in exts] == [40, 6]
        raw = exts[0]._raw  # nibabel strips trailing NULs only
        assert raw[:64] == head and len(raw) == -(-(size + 8) // 16) * 16 - 8
        assert exts[1].get_content().rstrip(b"\0") == b"small comment"
    assert np.array_equal(np.asarray(nib.load(out).dataobj), POOLED)
    assert describe(str(src))["volume"]["extension_bytes"] > INLINE_BYTES


def test_small_extensions_are_still_loaded_by_nibabel(tmp_path):
    src = tmp_path / "in.nii"
    write_with_extension(src, 1000)
    source = NiftiSource(src)
    assert source.raw_extensions is None and len(source.header.extensions) == 2
    source.close()
    pool3d_file(str(src), str(tmp_path / "out.nii"), 2)
    assert [e.get_code() for e in nib.load(tmp_path / "out.nii").header.extensions] == [40, 6]


def test_a_truncated_large_extension_is_one_error(tmp_path):
    src = tmp_path / "in.nii.gz"
    write_with_extension(src, INLINE_BYTES * 2)
    raw = open(src, "rb").read()
    open(src, "wb").write(raw[: len(raw) // 3])  # the gzip stream ends inside the extension
    with pytest.raises(Exception) as info:
        pool3d_file(str(src), str(tmp_path / "out.nii"), 2)
    assert str(src) in str(info.value) and "\n" not in str(info.value)
    assert not os.path.exists(tmp_path / "out.nii")
