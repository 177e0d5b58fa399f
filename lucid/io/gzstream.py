"""A forward-streaming gzip reader that checks every member's CRC32 and length.

nibabel reads a ``.nii.gz`` through ``gzip.GzipFile`` and stops after the last
data byte, so the trailer (CRC32 and ISIZE) is never read and a flipped byte
or a missing trailer goes unnoticed.  :class:`GzipStream` decompresses with
bounded buffers (``BUFFER_BYTES`` in total, whatever the read size), reads
straight into the caller's array, and :meth:`GzipStream.finish` reads the rest
of the stream so every trailer is checked before an output is committed.

Members and trailing bytes follow Python's ``gzip`` module: concatenated
members are one stream, zero bytes after a member are padding, anything else
after a member is an error ("not a gzipped file").
"""

from __future__ import annotations

import struct
import zlib

IN_CHUNK = 256 << 10  # compressed bytes read from the file at a time
OUT_CHUNK = 1 << 20  # decompressed bytes produced at a time
BUFFER_BYTES = IN_CHUNK + 2 * OUT_CHUNK + (64 << 10)  # input + output + zlib window and state

_MAGIC = b"\x1f\x8b"
_FEXTRA, _FNAME, _FCOMMENT, _FHCRC = 4, 8, 16, 2


class GzipError(Exception):
    """A corrupt or truncated gzip stream; ``str()`` says what, in Python gzip's words."""


class GzipStream:
    """Decompressed bytes of a gzip file, read forward; seeking back restarts from the start."""

    def __init__(self, path: str):
        self.path = path
        self._file = open(path, "rb", buffering=0)
        self.restarts = 0
        self._start()

    # -- input side
    def _start(self) -> None:
        self._file.seek(0)
        self._in = b""
        self._in_pos = 0
        self._out = b""  # decompressed bytes not yet handed out
        self._out_pos = 0
        self.pos = 0  # decompressed bytes handed out (or skipped) so far
        self.at_end = False
        self._dec = None
        if not self._member_header(first=True):
            raise GzipError("empty file")

    def _more(self) -> bool:
        if self._in_pos < len(self._in):
            return True
        self._in = self._file.read(IN_CHUNK)
        self._in_pos = 0
        return bool(self._in)

    def _take(self, n: int) -> bytes:
        """Exactly ``n`` compressed-side bytes (gzip's _read_exact)."""
        parts, need = [], n
        while need:
            if not self._more():
                self._short = b"".join(parts)
                raise GzipError("Compressed file ended before the end-of-stream marker was reached")
            piece = self._in[self._in_pos:self._in_pos + need]
            self._in_pos += len(piece)
            need -= len(piece)
            parts.append(piece)
        return b"".join(parts)

    def _take_upto(self, n: int) -> bytes:
        """Up to ``n`` bytes, fewer only at the end of the file."""
        try:
            return self._take(n)
        except GzipError:
            return self._short

    def _member_header(self, first: bool = False) -> bool:
        """Parse the next member's header; False at the end of the stream."""
        if not first:  # zero bytes between members are padding
            while self._more():
                if self._in[self._in_pos] != 0:
                    break
                self._in_pos += 1
        if not self._more():
            return False
        magic = self._take_upto(2)
        if magic != _MAGIC:
            raise GzipError(f"Not a gzipped file ({magic!r})")
        method, flag = struct.unpack("<BB", self._take(2))
        if method != 8:
            raise GzipError("Unknown compression method")
        self._take(6)  # mtime, extra flags, OS
        if flag & _FEXTRA:
            self._take(struct.unpack("<H", self._take(2))[0])
        for bit in (_FNAME, _FCOMMENT):
            if flag & bit:
                while self._take(1) != b"\0":
                    pass
        if flag & _FHCRC:
            self._take(2)
        self._dec = zlib.decompressobj(-zlib.MAX_WBITS)
        self._crc = 0
        self._size = 0
        return True

    def _member_trailer(self) -> None:
        self._in = self._dec.unused_data + self._in[self._in_pos:]
        self._in_pos = 0
        crc, isize = struct.unpack("<II", self._take(8))
        if crc != self._crc:
            raise GzipError(f"CRC check failed {hex(crc)} != {hex(self._crc)}")
        if isize != (self._size & 0xFFFFFFFF):
            raise GzipError("Incorrect length of data produced")

    def _produce(self) -> bool:
        """Decompress the next piece into ``_out``; False at the end of the stream."""
        while True:
            if self.at_end:
                return False
            dec = self._dec
            if dec.unconsumed_tail:
                data = dec.unconsumed_tail
            else:
                if not self._more():
                    raise GzipError("Compressed file ended before the end-of-stream marker was reached")
                data = self._in[self._in_pos:]
                self._in, self._in_pos = b"", 0
            try:
                out = dec.decompress(data, OUT_CHUNK)
            except zlib.error as exc:
                raise GzipError(str(exc)) from None
            if out:
                self._crc = zlib.crc32(out, self._crc)
                self._size += len(out)
            if dec.eof:
                self._member_trailer()
                if not self._member_header():
                    self.at_end = True
            if out:
                self._out, self._out_pos = out, 0
                return True

    # -- output side
    def readinto(self, view: memoryview) -> int:
        """Fill ``view`` (a byte view) with the next bytes; returns how many (less only at the end)."""
        view = view.cast("B") if view.format != "B" else view
        done = 0
        while done < len(view):
            if self._out_pos >= len(self._out) and not self._produce():
                break
            piece = min(len(view) - done, len(self._out) - self._out_pos)
            view[done:done + piece] = self._out[self._out_pos:self._out_pos + piece]
            self._out_pos += piece
            done += piece
        self.pos += done
        return done

    def skip(self, n: int) -> int:
        """Decompress and discard ``n`` bytes; returns how many were skipped."""
        done = 0
        while done < n:
            if self._out_pos >= len(self._out) and not self._produce():
                break
            piece = min(n - done, len(self._out) - self._out_pos)
            self._out_pos += piece
            done += piece
        self.pos += done
        return done

    def seek(self, pos: int) -> None:
        if pos < self.pos:
            self.restarts += 1
            self._start()
        self.skip(pos - self.pos)

    def finish(self, limit: int) -> int:
        """Read to the end of the stream, checking every trailer; stop (returning -1) after ``limit`` more bytes."""
        done = 0
        while True:
            n = self.skip(min(OUT_CHUNK, limit - done + 1))
            done += n
            if done > limit:
                return -1
            if n == 0:
                return done

    def close(self) -> None:
        self._file.close()
        self._in = self._out = b""
