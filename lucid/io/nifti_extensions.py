"""Large NIfTI header extensions, kept in the input file and copied to outputs streaming.

nibabel reads every extension whole into memory when it loads a header (a
200 MiB extension costs 200 MiB and more).  When the extension section of a
file is larger than ``INLINE_BYTES``, lucid loads the header without it
(:func:`peek`) and :class:`RawExtensions` copies the
section's bytes from the input into each NIfTI output that copies the header,
``CHUNK`` bytes at a time (through a fresh gzip stream for ``.nii.gz``).
Smaller sections are loaded by nibabel and written by it, as before.

Byte order: the section is copied as it is, unless the output header is
byte-swapped (a big-endian input written native), when each extension's
``esize``/``ecode`` pair is swapped on the way; the content is opaque bytes.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Callable

from lucid.io.gzstream import GzipError, GzipStream

INLINE_BYTES = 1 << 20  # extension sections up to this size are read by nibabel
CHUNK = 1 << 20  # bytes copied at a time
_SIZES = {348: (1, 108, "f"), 540: (2, 168, "q")}  # sizeof_hdr: (version, vox_offset offset, its format)


@dataclass(frozen=True)
class RawExtensions:
    """The extension section ``[start, start + length)`` of ``path`` (decompressed bytes for ``.gz``)."""

    path: str
    gzipped: bool
    start: int
    length: int
    byteorder: str  # "<" or ">": the input header's

    def copy(self, write: Callable[[bytes], None], swap: bool) -> None:
        """Write the section through ``write``; ``swap``: swap each extension's esize/ecode."""
        reader = _Reader(self.path, self.gzipped, self.start)
        try:
            left = self.length
            while swap and left >= 16:
                frame = reader.read(8)
                esize, ecode = struct.unpack(self.byteorder + "ii", frame)
                if esize < 16 or esize > left:  # not a valid extension: the rest goes as it is
                    write(frame)
                    left -= 8
                    break
                write(struct.pack(("<" if self.byteorder == ">" else ">") + "ii", esize, ecode))
                _copy(reader, esize - 8, write)
                left -= esize
            _copy(reader, left, write)
        finally:
            reader.close()


def _copy(reader: "_Reader", n: int, write) -> None:
    while n > 0:
        piece = reader.read(min(CHUNK, n))
        write(piece)
        n -= len(piece)


class _Reader:
    """Bytes of a file (or of its gzip stream) read forward from ``start``."""

    def __init__(self, path: str, gzipped: bool, start: int):
        self.pos = start
        if gzipped:
            self.stream = GzipStream(path)
            self.stream.skip(start)
            self.fd = None
        else:
            self.stream = None
            self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))

    def read(self, n: int) -> bytes:
        if self.stream is not None:
            buf = bytearray(n)
            got = self.stream.readinto(memoryview(buf))
        else:
            buf = os.pread(self.fd, n, self.pos)
            got = len(buf)
        if got != n:
            raise GzipError(f"the header extensions end {n - got} bytes early")
        self.pos += n
        return bytes(buf)

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
        if self.fd is not None:
            os.close(self.fd)


def read_head(path: str, gzipped: bool, nbytes: int = 544) -> bytes:
    """Up to ``nbytes`` first (decompressed) bytes of a file."""
    if not gzipped:
        with open(path, "rb") as f:
            return f.read(nbytes)
    stream = GzipStream(path)
    try:
        buf = bytearray(nbytes)
        got = stream.readinto(memoryview(buf))
        return bytes(buf[:got])
    finally:
        stream.close()


def peek(path: str, gzipped: bool, single: bool = True, header_path: str | None = None):
    """``(header bytes, RawExtensions)`` when the file's extension section exceeds ``INLINE_BYTES``, else None.

    ``single``: a ``.nii`` (the section ends at vox_offset); otherwise the
    section runs to the end of the header file ``header_path`` (a pair).
    Anything unusual (not NIfTI, no extension flag) is None: nibabel decides."""
    source = header_path or path
    try:
        head = read_head(source, gzipped and header_path is None)
    except (OSError, GzipError):
        return None
    for order in "<>":
        if len(head) < 4:
            return None
        size = struct.unpack(order + "i", head[:4])[0]
        if size in _SIZES and len(head) >= size + 4:
            break
    else:
        return None
    _version, at, fmt = _SIZES[size]
    if head[size:size + 1] == b"\0":
        return None
    start = size + 4
    if single:
        end = int(struct.unpack(order + fmt, head[at:at + struct.calcsize(fmt)])[0])
    else:
        end = os.path.getsize(source)
    if end - start <= INLINE_BYTES:
        return None
    return head[:size], RawExtensions(source, gzipped and header_path is None, start, end - start, order)

