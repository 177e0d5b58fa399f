"""NIfTI-1/-2 volumes (``.nii``, ``.nii.gz``): ``NiftiSource`` and ``NiftiSink``.

Reading
    Values are pooled RAW (the stored integers): ``meta.scale`` holds
    ``img.dataobj.slope/inter``; data starts at ``img.dataobj.offset``
    (``header.get_data_offset()`` is not used: nibabel resets it to 0 after
    loading).  A ``.nii`` box that is one run of the file is read with one
    ``preadv`` straight into the array, any other box through a
    ``nibabel.arrayproxy.ArrayProxy`` (slope 1, intercept 0).  A ``.nii.gz`` is
    read by ``lucid.io.gzstream.GzipStream``: one stream kept open and read
    forward straight into the array with bounded buffers, checking each gzip
    member's CRC32 and length; ``check_complete`` reads the rest of the stream
    (the trailer) before any output is committed.  Opening the file anew for
    every slab (nibabel's default) restarts decompression each time
    (quadratic: 25 s versus 0.73 s for 64 slabs of a 64 MiB int16 volume).
    Overlapping (halo) reads are served from the rows kept from the previous
    read, so the stream never seeks back (see ``NiftiSource.read``).
    Data on disk is Fortran order, so the slab axis is the last pooled axis (z).

Writing
    ``NiftiSink`` writes the header (+ extensions, up to ``vox_offset``) first and
    then Fortran-order bytes as the slabs arrive, through ``gzip.GzipFile`` for
    ``.nii.gz`` (level 1 unless ``compression="gzip:N"``).  Pooled axes become x,
    y, z and carried axes dims 4+ (see ``lucid.io.layout.nifti_axis_order``); a
    write that does not continue the byte stream (e.g. slabs along x, or a video's
    channels stored as dim 4) goes to ``os.pwrite`` at its offset in a ``.nii``,
    or, for ``.nii.gz``, into an uncompressed spool file beside the output that is
    compressed on ``commit``.  The whole volume is never held in memory.

Geometry: ``new = old @ [[diag(s), c], [0, 1]]`` with ``c = dilation*(k-1)/2 - p``
(window centres) for both qform and sform (codes kept), zooms times the stride.
"""

from __future__ import annotations

import gzip
import io
import logging
import math
import os
import re
import sys

import nibabel as nib
import numpy as np
from nibabel.arrayproxy import ArrayProxy
from nibabel.fileholders import FileHolder

from lucid.io.array import check_dtype, check_shape
from lucid.io.atomic import AtomicTarget, FileSink, human_bytes, is_no_space, make_temp_path, no_space_error, remove_quietly
from lucid.io.base import (
    check_input_file,
    one_line,
    UNIT_TO_UM,
    LucidIOError,
    Source,
    VolumeMeta,
    box_shape,
    normalize_index,
    pooling_matrix,
)
from lucid.io.gzstream import BUFFER_BYTES, GzipError, GzipStream
from lucid.io.layout import nifti_axis_order, parse_layout
from lucid.io.nifti_extensions import peek
from lucid.io.nifti_geometry import sane_header
from lucid.io.pywarnings import collect

NIFTI1_MAX_DIM = 32767
DEFAULT_GZIP_LEVEL = 1
UNITS = {"mm": "mm", "micron": "um", "meter": "m"}
NATIVE = "<" if sys.byteorder == "little" else ">"
SPOOL_MARK = ".lucid-spool-"


def load_nifti(path: str, name: str, image_types=None, what: str = "NIfTI"):
    """``(nibabel image, RawExtensions or None)``: an extension section larger than
    ``nifti_extensions.INLINE_BYTES`` is left in the file (see ``lucid.io.nifti_extensions``).

    ``image_types``: the nibabel classes accepted (default: NIfTI-1/-2, single files and pairs)."""
    check_input_file(path, name, f"a {what}")
    raw = None
    try:
        with _quiet_nibabel():
            img = None
            single = path.lower().endswith((".nii", ".nii.gz"))
            peeked = peek(path, path.lower().endswith(".gz")) if single else None
            if peeked is not None:
                img, raw = _header_only_image(*peeked)
            if img is None:
                img = nib.load(path)
    except PermissionError:
        raise LucidIOError(f"{name}: permission denied") from None
    except (EOFError, gzip.BadGzipFile) as exc:
        raise LucidIOError(f"{name}: truncated or corrupt {what} file ({one_line(exc)})") from None
    except Exception as exc:  # nibabel raises many types for garbage
        gzip_problem = _gzip_head_error(path)
        if gzip_problem:
            raise LucidIOError(f"{name}: not a readable {what} file: corrupt or truncated gzip stream ({gzip_problem})") from None
        raise LucidIOError(f"{name}: not a readable {what} file ({one_line(exc)})") from None
    if not isinstance(img, image_types or nib.Nifti1Pair):  # Nifti1Image, Nifti2Image and the pairs
        raise LucidIOError(f"{name}: not a {what} image ({type(img).__name__})")
    return img, raw


def _header_only_image(block: bytes, raw):
    """A nibabel image from the header bytes only (its data is read by lucid, never through it)."""
    klass = nib.Nifti2Image if len(block) == 540 else nib.Nifti1Image
    try:  # the extension flag zeroed: nibabel reads no extension
        image = klass.from_file_map({"image": FileHolder(fileobj=io.BytesIO(block + b"\0" * 4))})
    except Exception:  # let nibabel's own loader decide (and word the error)
        return None, None
    return image, raw


def _gzip_head_error(path: str) -> str | None:
    """Why the start of a ``.gz`` file is not a readable gzip stream (None if it is, or no .gz)."""
    if not path.lower().endswith(".gz"):
        return None
    try:
        stream = GzipStream(path)
        try:
            stream.readinto(memoryview(bytearray(1 << 16)))
        finally:
            stream.close()
    except GzipError as exc:
        return str(exc)
    except OSError:
        return None
    return None


class _quiet_nibabel:
    """Silence nibabel's header-check log lines ("sizeof_hdr should be 348; set ...") while
    loading: the file either loads or fails with one LucidIOError line, nothing else on stderr."""

    def __enter__(self):
        self.logger = logging.getLogger("nibabel.global")
        self.disabled, self.logger.disabled = self.logger.disabled, True

    def __exit__(self, *exc):
        self.logger.disabled = self.disabled
        return False


# Deflate cannot compress more than 1032:1, so a .nii.gz of S bytes holds at most
# ~1032*S bytes: a header promising more is corrupt (checked before planning, so
# a crazy shape is refused instead of streamed until the data runs out).
GZIP_MAX_RATIO = 1032
# A gzip stream that goes on past the image data is decompressed to check its CRC
# only this far: beyond, it is refused rather than decompressed for ever.
TRAILING_LIMIT = 64 << 20


class NiftiSource(Source):
    """A NIfTI image read in slabs of raw stored values (native byte order)."""

    order = "F"
    chunk_rows = 1
    image_types: tuple | None = None  # the nibabel classes read (None: NIfTI-1/-2 files and pairs)
    what = "NIfTI"  # the format in messages

    def __init__(self, path: str | os.PathLike, *, axes: str | None = None, name: str | None = None):
        shown = name or os.fspath(path)
        self.name = shown
        self.path = os.path.abspath(os.fspath(path))
        with collect() as seen:
            img, self.raw_extensions = load_nifti(self.path, shown, self.image_types, self.what)
        try:
            with collect() as seen_init:
                self._init(img, shown, axes)
            self.warnings += seen.lines(shown) + seen_init.lines(shown)
        except LucidIOError:
            self.close()
            raise
        except Exception as exc:  # nibabel on a damaged header (KeyError, ValueError, OverflowError, ...)
            self.close()
            raise LucidIOError(f"{shown}: not a readable {self.what} file ({one_line(exc)})") from exc

    def _sane(self, header, shown: str):
        """``(header with only usable geometry, warnings, voxel sizes known)``."""
        return sane_header(header, shown)

    def files(self) -> tuple[str, ...]:
        """The file named, and for a ``.hdr``/``.img`` pair the other one too."""
        return tuple(dict.fromkeys((self.path, self.header_path, self.data_path)))

    def _init(self, img, shown: str, axes: str | None) -> None:
        files = {key: holder.filename for key, holder in img.file_map.items()}  # None: the header-only image
        self.data_path = os.path.abspath(files.get("image") or self.path)
        self.header_path = os.path.abspath(files.get("header") or self.data_path)
        self.data_name = shown  # the data file as the user would name it
        if self.data_path != self.path:  # a pair: the data file must be readable too
            self.data_name = os.path.join(os.path.dirname(shown), os.path.basename(self.data_path))
            check_input_file(self.data_path, self.data_name, f"an {self.what} image")
        self.raw_header = img.header  # as in the file (``lucid info`` shows its fields)
        hdr, self.warnings, self.sizes_known = self._sane(img.header, shown)
        self.header = hdr
        self.gzipped = self.data_path.lower().endswith((".gz", ".mgz"))
        try:
            stored = np.dtype(hdr.get_data_dtype())
        except Exception as exc:
            raise LucidIOError(f"{shown}: unsupported {self.what} data type ({one_line(exc)})") from None
        self.stored_dtype = stored
        self.dtype = check_dtype(stored, shown)
        self.shape = tuple(int(n) for n in img.shape)
        check_shape(self.shape, shown, stored.itemsize)
        try:
            self.layout = parse_layout(axes, len(self.shape), "nifti")
        except LucidIOError as exc:
            raise type(exc)(f"{shown}: {exc}") from None
        proxy = img.dataobj
        self.offset = int(proxy.offset)
        slope, inter = float(proxy.slope), float(proxy.inter)
        nbytes = math.prod(self.shape) * stored.itemsize  # Python ints: a crazy header cannot overflow
        size = os.path.getsize(self.data_path)
        if not self.gzipped and size < self.offset + nbytes:
            raise LucidIOError(
                f"{self.data_name}: truncated {self.what} file: {size} bytes, the header promises {self.offset + nbytes} bytes"
            )
        if self.gzipped and self.offset + nbytes > GZIP_MAX_RATIO * size + 1024:
            raise LucidIOError(
                f"{shown}: truncated or corrupt NIfTI file: the header's shape {self.shape} needs "
                f"{human_bytes(self.offset + nbytes)}, more than a {human_bytes(size)} .gz file can hold"
            )
        self.data_end = self.offset + nbytes
        if not self.gzipped:
            self._proxy = ArrayProxy(
                self.data_path, (self.shape, stored, self.offset, 1.0, 0.0), mmap=False, keep_file_open=True
            )
        self.meta = self._make_meta(hdr, (slope, inter))

    def _make_meta(self, hdr, scale) -> VolumeMeta:
        zooms = [float(z) for z in hdr.get_zooms()]
        pooled = self.layout.pooled
        spacing = tuple(zooms[a] for a in pooled) if len(zooms) >= max(pooled) + 1 else None
        if not self.sizes_known:
            spacing = None
        try:
            space_unit = hdr.get_xyzt_units()[0]
        except Exception:  # pragma: no cover
            space_unit = "unknown"
        affine = None
        if pooled == (0, 1, 2):
            affine, s_code = hdr.get_sform(coded=True)
            if s_code == 0:
                try:
                    affine, _ = hdr.get_qform(coded=True)  # None when qform_code is 0
                except Exception:  # invalid qform fields (negative pixdim, bad qfac)
                    affine = None
        return VolumeMeta(
            format="nifti",
            spacing=spacing,
            spacing_unit=UNITS.get(space_unit),
            affine=None if affine is None else np.array(affine, dtype=float),
            scale=scale,
            extra={"header": hdr.copy(), "nifti_version": 2 if isinstance(hdr, nib.Nifti2Header) else 1,
                   "gzip": self.gzipped, "raw_extensions": self.raw_extensions},
        )

    @property
    def slab_axis(self) -> int:
        return self.layout.pooled[-1]

    def set_cache(self, nbytes: int) -> None:
        """At most ``nbytes`` of already-read rows are kept for overlapping (halo) reads of a ``.nii.gz``."""
        self.tail_nbytes = max(0, int(nbytes))

    # A gzip stream can only be read forward: seeking back (re-reading the halo rows
    # shared by two slabs) restarts decompression at the start of the file.  So for
    # .nii.gz the last rows of each read along the slab axis are kept (as many as the
    # largest overlap seen, within tail_nbytes), and a read that starts inside them is
    # served from them plus a forward read of the new rows.  The first overlap is
    # learnt on the second slab, when seeking back is still cheap.
    tail_nbytes = 64 << 20
    _tail = None  # (key, start, stop, array)
    _overlap = 0  # largest overlap seen between consecutive reads

    def read(self, index):
        index = normalize_index(index, self.shape, self.name)
        shape = box_shape(index)
        if 0 in shape:
            return np.empty(shape, self.dtype)
        if not self.gzipped:
            return self._read_file(index)
        sa = self.slab_axis
        key = tuple(s for a, s in enumerate(index) if a != sa)
        start, stop = index[sa].start, index[sa].stop
        tail = self._tail
        if tail is not None and tail[0] == key and start < tail[2]:
            self._overlap = max(self._overlap, min(stop, tail[2]) - start)
        if tail is not None and tail[0] == key and tail[1] <= start < tail[2]:
            _, t0, t1, arr = tail
            cached = min(stop, t1) - start
            out = np.empty(shape, self.dtype, order="F")
            out[_rows(sa, 0, cached)] = arr[_rows(sa, start - t0, start - t0 + cached)]
            if stop > t1:
                rest = list(index)
                rest[sa] = slice(t1, stop)
                out[_rows(sa, cached, stop - start)] = self._read_file(tuple(rest))
        else:
            out = self._read_file(index)
        # keep a copy of the last rows just read: as many as the largest overlap seen
        # so far (8 until one is seen), within tail_nbytes, at least one row
        row_bytes = max(1, out.nbytes // (stop - start))
        keep = max(1, min(stop - start, max(self._overlap, 8), self.tail_nbytes // row_bytes))
        self._tail = (key, stop - keep, stop, out[_rows(sa, stop - start - keep, stop - start)].copy(order="K"))
        return out

    def reader_overhead(self) -> int:
        """The gzip stream's buffers and the rows kept for halo reads (at most 8 rows of a slab)."""
        if not self.gzipped:
            return 0
        row = self.nbytes // max(1, self.shape[self.slab_axis])
        return BUFFER_BYTES + min(self.tail_nbytes, 8 * row)

    def check_complete(self) -> None:
        """Read a ``.nii.gz`` to the end of its gzip stream: every member's CRC32 and length must match."""
        if not self.gzipped:
            return
        gz = self._stream()
        try:
            gz.seek(max(gz.pos, self.data_end))
            extra = gz.finish(TRAILING_LIMIT)
        except GzipError as exc:
            raise LucidIOError(f"{self.name}: corrupt or truncated gzip stream ({exc})") from None
        if extra < 0:
            raise LucidIOError(
                f"{self.name}: the gzip stream goes on for more than {human_bytes(TRAILING_LIMIT)} past the "
                f"{human_bytes(self.data_end)} the header declares; refusing it unverified (a gzip bomb?)"
            )

    _gz = None

    def _stream(self) -> GzipStream:
        if self._gz is None:
            try:
                self._gz = GzipStream(self.data_path)
            except GzipError as exc:
                raise LucidIOError(f"{self.name}: corrupt or truncated gzip stream ({exc})") from None
        return self._gz

    def _read_gz(self, index) -> np.ndarray:
        """A box read forward from the gzip stream straight into the array, run by run."""
        gz = self._stream()
        item = self.stored_dtype.itemsize
        out = np.empty(box_shape(index), self.stored_dtype, order="F")
        flat = memoryview(out.reshape(-1, order="F")).cast("B")  # a view: ``out`` is F-contiguous
        done = 0
        try:
            for first, count in f_order_runs(index, self.shape):
                gz.seek(self.offset + first * item)
                got = gz.readinto(flat[done:done + count * item])
                if got != count * item:
                    raise GzipError(f"the data ends {self.data_end - gz.pos} bytes early")
                done += got
        except GzipError as exc:
            raise LucidIOError(
                f"{self.name}: corrupt or truncated gzip stream while reading box "
                f"[{', '.join(f'{s.start}:{s.stop}' for s in index)}] ({exc})"
            ) from None
        return _native(out)

    def _read_file(self, index):
        if self.gzipped:
            return self._read_gz(index)
        run = _contiguous_run(index, self.shape)
        if run is not None:
            return self._read_run(index, *run)
        try:
            out = np.asarray(self._proxy[index])
        except Exception as exc:
            raise LucidIOError(
                f"{self.name}: truncated or corrupt data while reading box "
                f"[{', '.join(f'{s.start}:{s.stop}' for s in index)}] ({one_line(exc)})"
            ) from None
        if out.dtype != self.dtype or not out.flags.writeable:
            out = out.astype(self.dtype)
        return out

    _fd = None

    def _read_run(self, index, first: int, count: int) -> np.ndarray:
        """A box that is one run of the file: read straight into the array (one copy, not two)."""
        if self._fd is None:
            self._fd = os.open(self.data_path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        out = np.empty(box_shape(index), self.stored_dtype, order="F")
        flat = out.reshape(-1, order="F")  # a view: ``out`` is F-contiguous
        want = count * self.stored_dtype.itemsize
        got = os.preadv(self._fd, [memoryview(flat).cast("B")], self.offset + first * self.stored_dtype.itemsize)
        if got != want:
            raise LucidIOError(f"{self.data_name}: truncated {self.what} data: read {got} of {want} bytes at box "
                               f"[{', '.join(f'{s.start}:{s.stop}' for s in index)}]")
        return _native(out)

    def close(self) -> None:
        if self._gz is not None:
            self._gz.close()
            self._gz = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        proxy = getattr(self, "_proxy", None)
        if proxy is not None:
            opener = getattr(proxy, "_opener", None)
            if opener is not None:
                try:
                    opener.close_if_mine()
                except Exception:  # pragma: no cover
                    pass
            self._proxy = None
        self._tail = None


# ---------------------------------------------------------------- writing


def _native(arr: np.ndarray) -> np.ndarray:
    """The array in native byte order, swapped in place (no second copy)."""
    if arr.dtype.isnative:
        return arr
    return arr.byteswap(inplace=True).view(arr.dtype.newbyteorder("="))


def f_order_runs(index, shape):
    """``(first element, count)`` of each contiguous run of a box in a Fortran-order array, in file order."""
    starts = [s.start for s in index]
    ext = [s.stop - s.start for s in index]
    strides = [math.prod(shape[:j]) for j in range(len(shape))]
    k = next((j for j in range(len(shape)) if ext[j] != shape[j]), len(shape))
    run = math.prod(ext[: k + 1])  # axes up to and including the first partial one are contiguous
    base = sum(starts[j] * strides[j] for j in range(min(k + 1, len(shape))))
    outer = ext[k + 1:]
    if all(e == 1 for e in outer):
        yield base + sum(starts[j] * strides[j] for j in range(k + 1, len(shape))), math.prod(ext)
        return
    for idx in np.ndindex(*outer[::-1]):
        idx = idx[::-1]  # F order: axis k+1 fastest
        yield base + sum((starts[k + 1 + j] + i) * strides[k + 1 + j] for j, i in enumerate(idx)), run


def _rows(axis: int, start: int, stop: int) -> tuple[slice, ...]:
    return (slice(None),) * axis + (slice(start, stop),)


def _contiguous_run(index, shape) -> tuple[int, int] | None:
    """``(first element, count)`` when a box is one contiguous run of a Fortran-order array."""
    if not hasattr(os, "preadv"):
        return None
    first, step, count, partial = 0, 1, 1, False
    for sl, n in zip(index, shape):
        extent = sl.stop - sl.start
        if partial and extent != 1:
            return None
        if extent != n:
            partial = True
        first += sl.start * step
        count *= extent
        step *= n
    return first, count


def _gzip_level(compression: str | None, name: str) -> int:
    text = (compression or "").strip().lower()
    if text.startswith("gzip") and text[4:].lstrip(":=-"):
        try:
            level = int(text[4:].lstrip(":=-"))
        except ValueError:
            level = -1
        if not 0 <= level <= 9:
            raise LucidIOError(f"{name}: gzip level must be 0-9, got {compression!r}")
        return level
    return DEFAULT_GZIP_LEVEL


PAIR_SUFFIXES = (".hdr", ".img")


def pair_paths(path) -> tuple[str, str] | None:
    """``(x.hdr, x.img)`` for a path naming either file of an Analyze/NIfTI pair, else None."""
    text = os.fspath(path)
    if not text.lower().endswith(PAIR_SUFFIXES):
        return None
    stem, suffix = text[:-4], text[-4:]
    upper = suffix.isupper()
    return stem + (".HDR" if upper else ".hdr"), stem + (".IMG" if upper else ".img")


def _grid_changed(pooling, axis: int, n_in: int, n_out: int) -> bool:
    if pooling is None:
        return n_in != n_out
    m = pooling_matrix(pooling)
    return m[axis, axis] != 1 or m[axis, 3] != 0 or n_in != n_out


class NiftiSink(FileSink):
    """A NIfTI file streamed to a temporary file, header first, then Fortran-order slabs."""

    def __init__(self, path, shape, dtype, *, like: Source, pooling=None, kind: str = "output",
                 compression: str = "gzip", force: bool = False, slab_rows: int | None = None,
                 provenance: dict | None = None, scale: tuple[float, float] | None = None, protect=(),
                 name: str | None = None):
        shown = name or os.fspath(path)
        self.name = shown
        self._set_array(shape, dtype, like, kind)
        if self.dtype.kind == "f" and self.dtype.itemsize == 2:
            raise LucidIOError(f"{shown}: NIfTI cannot store float16; write float32 or an .h5 file")
        if len(self.shape) > 7:
            raise LucidIOError(f"{shown}: NIfTI stores at most 7 dimensions, the output has {len(self.shape)}")
        self.gz = os.fspath(path).lower().endswith((".gz", ".mgz"))
        self.level = _gzip_level(compression, shown)
        self.perm = nifti_axis_order(like.layout, like.order)
        self.nshape = tuple(self.shape[a] for a in self.perm)
        self.provenance = provenance
        self.raw_extensions = None  # set by _copy_header: a large extension section copied from the input
        self.pair = pair_paths(path)  # (header, image) of a .hdr/.img pair, else None
        header = self._build_header(like, pooling, kind, scale)
        head, tail = self._head_bytes(header)
        self.header = header
        self.total = int(np.prod(self.nshape, dtype=np.int64)) * self.dtype.itemsize
        self._fstrides = np.cumprod((1,) + self.nshape[:-1]).tolist()  # element strides, F order
        self.written = 0
        self._pos = 0  # bytes of data streamed so far (contiguous prefix)
        self._spool_path = None
        self._spool_fd = None
        self._spool_base = 0
        self._fd = None
        self._raw = None
        self._gzf = None
        expected = None if self.gz else self.vox_offset + self.total + len(self.footer)
        self.header_target = None
        if self.pair is not None:  # the header file first: it is small, and refused the same way
            self.header_target = AtomicTarget(self.pair[0], force=force, protect=[like.path, *protect])
            path = self.pair[1]
        try:
            self.target = AtomicTarget(path, force=force, protect=[like.path, *protect], expected_bytes=expected)
        except BaseException:
            self.header_target is not None and self.header_target.abort()
            raise
        self.path = os.fspath(self.target.dest)
        try:
            if self.pair is not None:
                self._write_pair_header(head)
                head = tail = b""
            if self.gz:
                self._raw = open(self.target.tmp, "wb")
                base = os.path.basename(self.path)
                self._gzf = gzip.GzipFile(filename=base[:-3] if base.lower().endswith(".gz") else base, mode="wb", fileobj=self._raw,
                                          compresslevel=self.level, mtime=0)
                write = self._gzf.write
            else:
                self._fd = os.open(self.target.tmp, os.O_RDWR | getattr(os, "O_BINARY", 0))
                write = self._appender()
            write(head)
            if self.raw_extensions is not None:
                self.raw_extensions.copy(write, swap=self.raw_extensions.byteorder != NATIVE)
            write(tail)
        except GzipError as exc:
            self._fail(LucidIOError(f"{like.name}: corrupt or truncated gzip stream in the header extensions "
                                    f"({exc})"), "cannot copy the header extensions")
        except BaseException as exc:
            self._fail(exc, "cannot create the output")

    # -- header
    footer = b""  # bytes after the data (MGH's scan parameters)
    file_dtype = None  # the data's dtype in the file (None: self.dtype, native order)

    def _head_bytes(self, header) -> tuple[bytes, bytes]:
        """What precedes the data: ``(head, tail)``, with a large extension section streamed between them."""
        if self.pair is not None:  # the header file holds header and extensions; the data starts the .img
            header["magic"] = header.pair_magic
            header["vox_offset"] = 0
            head = header.binaryblock
            self.vox_offset = 0
            if self.raw_extensions is not None:
                return head + b"\x01\0\0\0", b""
            if len(header.extensions):
                buf = io.BytesIO()
                header.extensions.write_to(buf, byteswap=False)
                head += b"\x01\0\0\0" + buf.getvalue()
            return head, b""
        buf = io.BytesIO()
        header.write_to(buf)
        head = buf.getvalue()
        self.vox_offset = int(header["vox_offset"])
        raw = 0
        if self.raw_extensions is not None:  # the flag, then the section streamed from the input, then padding
            head = head[:header.sizeof_hdr] + b"\x01\0\0\0"
            raw = self.raw_extensions.length
        return head, b"\0" * (self.vox_offset - len(head) - raw)

    def _write_pair_header(self, head: bytes) -> None:
        fd = os.open(self.header_target.tmp, os.O_WRONLY | getattr(os, "O_BINARY", 0))
        try:
            def write(data) -> None:
                view = memoryview(data).cast("B")
                while len(view):
                    view = view[os.write(fd, view):]

            write(head)
            if self.raw_extensions is not None:
                self.raw_extensions.copy(write, swap=self.raw_extensions.byteorder != NATIVE)
        finally:
            os.close(fd)

    def _build_header(self, like: Source, pooling, kind: str, scale):
        meta = like.meta
        nshape = self.nshape
        needs2 = max(nshape) > NIFTI1_MAX_DIM
        src = meta.extra.get("header") if meta.format == "nifti" else None
        identity = self.perm == tuple(range(len(self.shape)))
        if src is not None and identity and like.layout.pooled == (0, 1, 2):
            hdr = self._copy_header(src, needs2, pooling, like)
        else:
            hdr = self._fresh_header(like, needs2, pooling)
        self._tag_job(hdr)
        try:
            hdr.set_data_dtype(self.dtype)
        except Exception as exc:
            raise LucidIOError(f"{self.name}: NIfTI cannot store {self.dtype} ({one_line(exc)})") from None
        if scale is None:
            scale = meta.scale if kind == "output" else None
        if kind != "output":
            hdr.set_slope_inter(None, None)  # unset: values are stored as they are
            hdr["cal_min"] = hdr["cal_max"] = 0
            hdr["intent_code"] = 0
            hdr["intent_p1"] = hdr["intent_p2"] = hdr["intent_p3"] = 0
            hdr["intent_name"] = b""
        elif tuple(scale) == (1.0, 0.0):
            hdr.set_slope_inter(None, None)
        else:
            hdr.set_slope_inter(float(scale[0]), float(scale[1]))
        raw = self.raw_extensions.length if self.raw_extensions is not None else 0
        hdr["vox_offset"] = 0
        hdr["vox_offset"] = hdr.single_vox_offset + hdr.extensions.get_sizeondisk() + -(-raw // 16) * 16
        return hdr

    def _tag_job(self, hdr) -> None:
        """End ``descrip`` with ``job=<fingerprint>`` (read back by ``lucid.batch.provenance``)."""
        job = (self.provenance or {}).get("job")
        if not job:
            return
        tail = f" job={job}".encode()
        text = re.sub(rb"\s*job=[0-9a-f]{16}", b"", bytes(hdr["descrip"].tobytes()).rstrip(b"\0")).rstrip()
        hdr["descrip"] = text[: 79 - len(tail)] + tail

    def _copy_header(self, src, needs2: bool, pooling, like: Source):
        self.raw_extensions = like.meta.extra.get("raw_extensions")
        if isinstance(src, nib.Nifti2Header) or not needs2:
            hdr = src.copy()
        else:
            hdr = nib.Nifti2Header.from_header(src, check=False)
            hdr["sizeof_hdr"] = 540
            hdr["magic"] = hdr.single_magic
        hdr["magic"] = hdr.single_magic
        if hdr.endianness != NATIVE:
            extensions = list(hdr.extensions)
            hdr = hdr.as_byteswapped(NATIVE)  # drops the extensions: put them back
            hdr.extensions[:] = extensions
        old_zooms = list(src.get_zooms())
        s_aff, s_code = src.get_sform(coded=True)
        try:
            q_aff, q_code = src.get_qform(coded=True)
        except Exception:
            q_aff, q_code = None, 0
        hdr.set_data_shape(self.nshape)
        if pooling is not None:
            m = pooling_matrix(pooling)
            if s_code > 0:
                hdr.set_sform(s_aff @ m, code=int(s_code))
            if q_code > 0:
                hdr.set_qform(q_aff @ m, code=int(q_code))
        zooms = old_zooms[: len(self.nshape)] + [1.0] * (len(self.nshape) - len(old_zooms))
        if pooling is not None:
            for a in range(3):
                zooms[a] = old_zooms[a] * pooling.stride[a]
        hdr.set_zooms(zooms)
        freq, phase, slc = src.get_dim_info()
        if slc is not None and slc < 3 and _grid_changed(pooling, slc, like.shape[slc], self.nshape[slc]):
            hdr["slice_code"] = 0
            hdr["slice_start"] = 0
            hdr["slice_end"] = 0
            hdr["slice_duration"] = 0
        return hdr

    def _fresh_header(self, like: Source, needs2: bool, pooling):
        meta = like.meta
        hdr = (nib.Nifti2Header if needs2 else nib.Nifti1Header)()
        hdr.set_data_shape(self.nshape)
        m = pooling_matrix(pooling) if pooling is not None else np.eye(4)
        src_col = [like.layout.pooled.index(a) for a in self.perm[:3]]
        out = self._world_affine(like, pooling)
        return self._fresh_geometry(hdr, like, pooling, out, m, src_col)

    def _world_affine(self, like: Source, pooling):
        """The output's voxel (NIfTI x, y, z) to world (mm) affine, or None when the input gives no geometry."""
        meta = like.meta
        m = pooling_matrix(pooling) if pooling is not None else np.eye(4)
        # column of the pooled-axes affine feeding NIfTI axis j
        src_col = [like.layout.pooled.index(a) for a in self.perm[:3]]
        out = None
        factor = UNIT_TO_UM.get(meta.spacing_unit or "mm", 1e3) / 1e3  # -> mm
        if meta.affine is not None:
            # a given voxel->world map: keep its world axes, reorder its voxel columns
            aff = np.array(meta.affine, dtype=float)
            if meta.format != "hdf5":  # HDF5 'affine' attributes are in mm already
                aff[:3, :] *= factor
            aff = aff @ m
            out = np.eye(4)
            out[:, 3] = aff[:, 3]
            for j in range(3):
                out[:, j] = aff[:, src_col[j]]
        elif meta.spacing is not None and meta.spacing_unit is not None:
            # spacing only: NIfTI x, y, z are world x, y, z
            out = np.eye(4)
            for j, a in enumerate(src_col):
                out[j, j] = meta.spacing[a] * factor * m[a, a]
                out[j, 3] = meta.spacing[a] * factor * m[a, 3]
        return out

    def _fresh_geometry(self, hdr, like: Source, pooling, out, m, src_col):
        meta = like.meta
        zooms = [1.0] * len(self.nshape)
        if out is not None:
            hdr.set_sform(out, code=2)
            hdr.set_qform(out, code=2)
            zooms[:3] = np.sqrt((out[:3, :3] ** 2).sum(axis=0)).tolist()
            hdr.set_xyzt_units("mm", "unknown")
        elif meta.spacing is not None:
            zooms[:3] = [meta.spacing[src_col[j]] * m[src_col[j], src_col[j]] for j in range(3)]
        hdr.set_zooms(zooms)
        import lucid

        desc = f"lucid {lucid.__version__} {self.kind}"
        if pooling is not None:
            desc += f" k={','.join(map(str, pooling.kernel))} s={','.join(map(str, pooling.stride))}"
        hdr["descrip"] = desc[:79].encode()
        return hdr

    def _appender(self):
        """``write(bytes)`` at increasing offsets of the uncompressed output, from 0."""
        pos = [0]

        def write(data) -> None:
            self._pwrite(data, pos[0])
            pos[0] += len(data)

        return write

    # -- data
    def _pwrite(self, data, offset: int) -> None:
        view = memoryview(data).cast("B")
        while len(view):
            n = os.pwrite(self._fd, view, offset)
            view = view[n:]
            offset += n

    def _fail(self, exc: BaseException, what: str):
        self.abort()
        if isinstance(exc, LucidIOError):
            raise exc
        if is_no_space(exc):
            raise no_space_error(self.name, exc) from None
        if isinstance(exc, OSError):
            raise LucidIOError(f"{self.name}: {what}: {one_line(exc)}") from None
        raise exc

    def _runs(self, index, arr):
        """Yield (byte offset in the data, bytes) for each contiguous run of the box."""
        starts = [s.start for s in index]
        ext = [s.stop - s.start for s in index]
        dims = self.nshape
        item = self.dtype.itemsize
        strides = self._fstrides
        k = next((j for j in range(len(dims)) if ext[j] != dims[j]), len(dims))
        flat = arr.reshape(-1, order="F")
        if k >= len(dims) - 1 or all(e == 1 for e in ext[k + 1:]):
            off = sum(s * st for s, st in zip(starts, strides))
            yield off * item, flat
            return
        run = int(np.prod(ext[: k + 1]))
        base = sum(starts[j] * strides[j] for j in range(k + 1))
        outer = ext[k + 1:]
        for r, idx in enumerate(np.ndindex(*outer[::-1])):
            idx = idx[::-1]  # F order: axis k+1 fastest
            off = base + sum((starts[k + 1 + j] + i) * strides[k + 1 + j] for j, i in enumerate(idx))
            yield off * item, flat[r * run:(r + 1) * run]

    def write(self, index, data) -> None:
        index = self._box(index, data)
        data = np.asarray(data)
        if data.size == 0:
            return
        nindex = tuple(index[a] for a in self.perm)
        arr = np.asfortranarray(data.transpose(self.perm), dtype=self.file_dtype or self.dtype)
        try:
            for off, chunk in self._runs(nindex, arr):
                self._put(off, chunk)
        except BaseException as exc:
            self._fail(exc, "cannot write")
        self.written += arr.nbytes
        if not self.gz:  # .nii.gz bytes go through a compressor first: flushed at commit
            self.target.wrote(arr.nbytes)

    def _put(self, off: int, chunk: np.ndarray) -> None:
        if not self.gz:
            self._pwrite(chunk, self.vox_offset + off)
            return
        if self._spool_fd is None and off == self._pos:
            self._gzf.write(memoryview(chunk).cast("B"))
            self._pos += chunk.nbytes
            return
        if self._spool_fd is None:
            self._spool_path, self._spool_fd = make_temp_path(self.target.dest.parent, self.target.dest.name,
                                                              SPOOL_MARK)
            self._spool_base = self._pos
        if off < self._spool_base:
            raise LucidIOError(
                f"{self.name}: internal error: write at byte {off} behind the compressed stream ({self._spool_base})"
            )
        view = memoryview(chunk).cast("B")
        pos = off - self._spool_base
        while len(view):
            n = os.pwrite(self._spool_fd, view, pos)
            view = view[n:]
            pos += n

    written_unit = "data bytes"

    @property
    def expected_written(self) -> int:
        return self.total

    def _finish(self) -> None:
        """Finish the stream (spool, gzip trailer) and close it (then FileSink.prepare fsyncs it)."""
        try:
            if self.gz:
                if self._spool_fd is not None:
                    rest = self.total - self._spool_base
                    os.ftruncate(self._spool_fd, rest)
                    pos, block = 0, 16 << 20
                    while pos < rest:
                        chunk = os.pread(self._spool_fd, min(block, rest - pos), pos)
                        if not chunk:  # pragma: no cover
                            raise OSError("short read from the spool file")
                        self._gzf.write(chunk)
                        pos += len(chunk)
                    self._close_spool()
                self._gzf.write(self.footer)
                self._gzf.close()
                self._gzf = None
                self._raw.close()
                self._raw = None
            else:
                os.ftruncate(self._fd, self.vox_offset + self.total)
                if self.footer:
                    self._pwrite(self.footer, self.vox_offset + self.total)
                os.close(self._fd)
                self._fd = None
        except BaseException as exc:
            self._fail(exc, "cannot finish the output")

    def _close_spool(self) -> None:
        if self._spool_fd is not None:
            try:
                os.close(self._spool_fd)
            except OSError:
                pass
            self._spool_fd = None
        remove_quietly(self._spool_path)
        self._spool_path = None

    def abort(self) -> None:
        for closer in (
            lambda: self._gzf is not None and self._gzf.close(),
            lambda: self._raw is not None and self._raw.close(),
            lambda: self._fd is not None and os.close(self._fd),
        ):
            try:
                closer()
            except Exception:
                pass
        self._gzf = self._raw = self._fd = None
        self._close_spool()
        if hasattr(self, "target"):
            self.target.abort()
        if getattr(self, "header_target", None) is not None:
            self.header_target.abort()

    def prepare(self) -> None:
        super().prepare()
        if self.header_target is not None:
            self.header_target.sync()

    def commit(self) -> None:
        """The image file, then the header (which makes the pair visible to readers).

        Two renames cannot be one atomic step.  Replacing a pair (``--force``),
        the old header is moved aside first: a run killed between the renames
        leaves a new ``.img`` with no header (which no reader opens), never the
        new image under the old header, which every reader would open as a
        wrong volume."""
        if self.header_target is None or self.header_target.committed:
            return super().commit()
        aside = self._header_aside() if self.target.force else None
        try:
            super().commit()
        except BaseException:
            aside is not None and os.replace(aside, self.header_target.dest)  # the old pair, whole again
            raise
        try:
            self.header_target.commit()
        except BaseException:
            if not self.target.force:  # the .img was new (renamed without replacing): take it back
                remove_quietly(self.target.dest)
            raise
        finally:
            remove_quietly(aside)

    def _header_aside(self) -> str | None:
        """Move an existing header out of the pair, under a temporary name ``lucid clean`` knows."""
        dest = self.header_target.dest
        if not os.path.lexists(dest):
            return None
        aside, fd = make_temp_path(dest.parent, dest.name)
        os.close(fd)
        os.replace(dest, aside)
        return os.fspath(aside)
