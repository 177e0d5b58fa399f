"""HDF5 volumes via h5py: ``HDF5Source`` (read-only, slab reads) and ``HDF5Sink``.

Reading
    Files are opened with mode "r" (many processes may read at once).  The slab
    axis is the outermost pooled axis unless the dataset's chunks are thinner
    (relative to the axis length) along another pooled axis: a slab one chunk
    thick then decompresses each chunk once.  ``chunk_rows`` is the chunk extent
    along that axis so the planner can align slabs to chunk boundaries.

Chunk cache
    ``set_cache(nbytes)`` re-opens the dataset through the low-level API with a
    dataset-access property list whose chunk cache (``rdcc_nbytes``) holds
    ``nbytes`` (one input slab, which the planner counts) plus one chunk,
    with ``rdcc_nslots`` a prime ~100x the number of chunks that fit and
    w0 = 1 (fully read chunks are evicted first).  One slab, so a chunk
    shared by two reads (halo rows, or carried indices read one at a time) is
    decompressed once.  Only filtered chunks are cached: unfiltered ones are
    read in place.  The file stays open.

Writing
    ``HDF5Sink`` writes one chunked dataset into a temporary file (see
    ``lucid.io.atomic``); chunks are one slab-divisor thick along the slab
    axis, compressed as ``lucid.io.compression`` parses ``compression``
    (default gzip level 1 + shuffle).  Source attributes and dimension labels are
    copied; ``element_size_um`` is multiplied by the stride and an ``affine``
    attribute (4x4, mm) is updated to the output grid; provenance attributes
    are prefixed ``lucid_``.
"""

from __future__ import annotations

import json
import math
import os

import h5py
import numpy as np

from lucid.io.atomic import AtomicTarget, FileSink, check_destination, is_no_space, no_space_error, same_file
from lucid.io.array import check_dtype, check_shape
from lucid.io.compression import DEFAULT as DEFAULT_COMPRESSION, Codec, CompressionError, parse_codec
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
from lucid.io.layout import outer_axes, parse_layout

SKIP_ATTRS = {"DIMENSION_LIST", "REFERENCE_LIST", "CLASS", "NAME"}
# rewritten by the sink rather than copied
COPY_SKIP = {"DIMENSION_LABELS", "element_size_um", "affine", "scl_slope", "scl_inter"}
KNOWN_FILTERS = {
    307: "bzip2",
    32000: "lzf",
    32001: "blosc",
    32004: "lz4",
    32008: "bitshuffle",
    32015: "zstd",
    32017: "SZ",
    32026: "blosc2",
}


def open_h5_file(path: str, name: str) -> h5py.File:
    """Open an HDF5 file read-only, turning every failure into a one-line LucidIOError."""
    check_input_file(path, name, "an HDF5")
    try:
        return h5py.File(path, "r")
    except PermissionError:
        raise LucidIOError(f"{name}: permission denied") from None
    except (OSError, ValueError, RuntimeError) as exc:
        text = one_line(exc)
        low = text.lower()
        if "truncated" in low:
            raise LucidIOError(f"{name}: truncated HDF5 file ({os.path.getsize(path)} bytes); was it copied completely?") from None
        if "signature" in low or "not an hdf5" in low:
            raise LucidIOError(f"{name}: not an HDF5 file (no HDF5 signature found)") from None
        if "lock" in low:
            raise LucidIOError(
                f"{name}: cannot open, the file is locked by a writer "
                "(set HDF5_USE_FILE_LOCKING=FALSE only if no one is writing it)"
            ) from None
        raise LucidIOError(f"{name}: cannot open as HDF5: {text}") from None


def list_datasets(f: h5py.File) -> list[tuple[str, tuple[int, ...]]]:
    found: list[tuple[str, tuple[int, ...]]] = []

    def visit(path, obj):
        if isinstance(obj, h5py.Dataset):
            found.append(("/" + path, tuple(obj.shape) if obj.shape is not None else ()))

    try:
        f.visititems(visit)
    except Exception:  # pragma: no cover - broken links etc.
        pass
    return found


def _describe(items) -> str:
    if not items:
        return "none"
    text = ", ".join(f"{p} {'x'.join(map(str, s)) or 'scalar'}" for p, s in items[:20])
    return text + (f", ... ({len(items)} in all)" if len(items) > 20 else "")


def select_dataset(f: h5py.File, dataset: str | None, fname: str) -> h5py.Dataset:
    if dataset is not None:
        key = dataset if dataset.startswith("/") else "/" + dataset
        try:
            obj = f.get(key)
        except Exception as exc:
            raise LucidIOError(f"{fname}:{key}: cannot open dataset: {one_line(exc)}") from None
        if obj is None:
            raise LucidIOError(f"{fname}: no dataset {key} (datasets: {_describe(list_datasets(f))})")
        if isinstance(obj, h5py.Group):
            inside = [(p, s) for p, s in list_datasets(f) if p.startswith(key.rstrip("/") + "/")]
            raise LucidIOError(f"{fname}:{key} is a group, not a dataset (datasets in it: {_describe(inside)})")
        if not isinstance(obj, h5py.Dataset):  # pragma: no cover
            raise LucidIOError(f"{fname}:{key} is not a dataset")
        return obj
    found = list_datasets(f)
    candidates = [(p, s) for p, s in found if len(s) >= 3]
    if len(candidates) == 1:
        try:
            return f[candidates[0][0]]
        except Exception as exc:  # listed but cannot be opened: a damaged object header
            raise LucidIOError(f"{fname}:{candidates[0][0]}: cannot open dataset: {one_line(exc)}") from None
    if not candidates:
        raise LucidIOError(f"{fname}: no dataset with 3 or more dimensions (datasets: {_describe(found)})")
    raise LucidIOError(
        f"{fname}: holds {len(candidates)} datasets with 3+ dimensions, name one as "
        f"{fname}:/path or with --dataset: {_describe(candidates)}"
    )


def _filter_problem(ds: h5py.Dataset) -> str | None:
    """Name an unavailable filter that stored chunks actually need, else None."""
    try:
        dcpl = ds.id.get_create_plist()
        filters = [dcpl.get_filter(i) for i in range(dcpl.get_nfilters())]
    except Exception:  # pragma: no cover
        return None
    missing = [(i, f) for i, f in enumerate(filters) if not h5py.h5z.filter_avail(f[0])]
    if missing:
        try:  # hdf5plugin registers blosc, zstd, lz4, ... when imported
            import hdf5plugin  # noqa: F401

            missing = [(i, f) for i, f in missing if not h5py.h5z.filter_avail(f[0])]
        except ImportError:
            pass
    if not missing:
        return None
    try:
        nchunks = ds.id.get_num_chunks()
        mask = ds.id.get_chunk_info(0).filter_mask if nchunks else None
    except Exception:
        nchunks, mask = 1, 0
    if not nchunks:
        return None  # nothing stored: reads give the fill value
    for i, (code, _flags, _opts, fname) in missing:
        if not (mask >> i) & 1:  # bit set = filter was skipped for that chunk
            label = fname.decode(errors="replace") if isinstance(fname, bytes) and fname else KNOWN_FILTERS.get(code, "")
            label = label or KNOWN_FILTERS.get(code, "unknown")
            return f"compression filter {code} ({label}) is not available; `pip install hdf5plugin` may provide it"
    return None


def dimension_labels(ds: h5py.Dataset) -> list[str]:
    """The dataset's dimension labels ("" where unset), read from the attribute itself.

    Never through ``ds.dims[i].label``: HDF5's dimension-scale API frees memory it
    does not own, and aborts the interpreter, on a hand-written ``DIMENSION_LABELS``
    of another type or length.  A malformed attribute counts as no labels.
    """
    blank = [""] * ds.ndim
    try:
        if "DIMENSION_LABELS" not in ds.attrs:
            return blank
        attr = ds.attrs.get_id("DIMENSION_LABELS")
        if attr.shape != (ds.ndim,) or attr.get_type().get_class() != h5py.h5t.STRING:
            return blank
        values = ds.attrs["DIMENSION_LABELS"]
    except Exception:  # unreadable: no labels
        return blank
    labels = []
    for value in np.asarray(values, dtype=object).ravel():
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        labels.append(value.strip("\0") if isinstance(value, str) else "")
    return labels


def _axes_from_labels(ds: h5py.Dataset) -> str | None:
    """Single-letter dimension labels that form a valid layout (e.g. "thwc"), else None."""
    labels = dimension_labels(ds)
    if not all(isinstance(lab, str) and len(lab) == 1 for lab in labels):
        return None
    text = "".join(labels).lower()
    try:
        parse_layout(text, ds.ndim, "hdf5")
    except (LucidIOError, ValueError):
        return None
    return text


def _resolve(name: str, beside: str) -> str:
    """A file named by an external link, a VDS mapping or external storage: HDF5 looks
    for a relative name beside the file that names it first, then in the working directory."""
    if os.path.isabs(name):
        return name
    near = os.path.join(os.path.dirname(beside), name)
    return os.path.abspath(near if os.path.exists(near) or not os.path.exists(name) else name)


def _linked_files(f: h5py.File, path: str, depth: int = 0) -> list[str]:
    """The file and every file the external links on the way to ``path`` lead through."""
    files = [os.path.abspath(f.filename)]
    parts = path.strip("/").split("/")
    group = f
    for i, part in enumerate(parts):
        link = group.get(part, getlink=True)
        if isinstance(link, h5py.ExternalLink) and depth < 32:
            target = _resolve(link.filename, group.file.filename)
            rest = "/".join([link.path.strip("/"), *parts[i + 1:]])
            with h5py.File(target, "r") as hop:
                return files + _linked_files(hop, rest, depth + 1)
        group = group[part]
    return files


def _virtual_sources(ds: h5py.Dataset, name: str) -> list[str]:
    """The source files of a virtual dataset; refuses missing ones and sources too small
    for their mapping (HDF5 would read the fill value there, silently)."""
    files = []
    here = ds.file.filename
    for vmap in ds.virtual_sources():
        if vmap.file_name == ".":
            src_file = os.path.abspath(here)
        else:
            src_file = _resolve(vmap.file_name, here)
        if not os.path.isfile(src_file):
            raise LucidIOError(f"{name}: virtual dataset source {vmap.file_name} is missing ({src_file})")
        try:
            with h5py.File(src_file, "r") as src:
                target = src.get(vmap.dset_name)
                if not isinstance(target, h5py.Dataset):
                    raise LucidIOError(f"{name}: virtual dataset source {src_file} has no dataset {vmap.dset_name}")
                shape = target.shape
        except OSError as exc:
            raise LucidIOError(f"{name}: cannot open virtual dataset source {src_file}: {one_line(exc)}") from None
        try:
            lo, hi = vmap.src_space.get_select_bounds()
        except Exception:  # an unlimited or empty selection: nothing to check
            lo = hi = None
        if hi is not None and any(h >= n for h, n in zip(hi, shape)):
            need = "x".join(str(h + 1) for h in hi)
            raise LucidIOError(
                f"{name}: virtual dataset source {src_file}:{vmap.dset_name} has shape "
                f"{'x'.join(map(str, shape))}, smaller than its mapping needs ({need})"
            )
        files.append(src_file)
    return files


def files_read(f: h5py.File, path: str, ds: h5py.Dataset, name: str) -> tuple[str, ...]:
    """Every file reading ``ds`` (at ``path`` in ``f``) touches: the file, external-link
    targets on the way, virtual dataset sources and external raw storage."""
    files = [*_linked_files(f, path), os.path.abspath(ds.file.filename)]  # the last: where HDF5 found it
    if ds.is_virtual:
        files += _virtual_sources(ds, name)
    for entry in ds.external or ():
        files.append(_resolve(entry[0], ds.file.filename))
    return tuple(dict.fromkeys(files))


def _next_prime(n: int) -> int:
    n = max(n, 2)
    while True:
        if all(n % p for p in range(2, int(math.isqrt(n)) + 1)):
            return n
        n += 1


class HDF5Source(Source):
    """One dataset of an HDF5 file, read in slabs of raw values.

    Axes: ``axes`` if given, else the dataset's dimension labels when they are
    single letters forming a valid layout (``"thwc"``), else the default for
    its rank (3-D "dhw", 4-D "cdhw", 5-D "ncdhw").
    """

    order = "C"

    def __init__(self, path: str | os.PathLike, dataset: str | None = None, *, axes: str | None = None,
                 name: str | None = None):
        shown = name or os.fspath(path)
        self.path = os.path.abspath(os.fspath(path))
        self.file = open_h5_file(self.path, shown)
        try:
            self._init(shown, dataset, axes)
        except LucidIOError:
            self.file.close()
            raise
        except Exception as exc:  # h5py errors from a damaged file (KeyError, ValueError, OSError, ...)
            self.file.close()
            raise LucidIOError(f"{getattr(self, 'name', shown)}: cannot read the dataset (damaged file?): {one_line(exc)}") from exc
        except BaseException:
            self.file.close()
            raise

    def _init(self, shown: str, dataset: str | None, axes: str | None) -> None:
        ds = select_dataset(self.file, dataset, shown)
        self.dataset_path = ds.name
        self.name = f"{shown}:{ds.name}"
        self._ds = ds
        if ds.shape is None or ds.ndim < 3:
            shape = () if ds.shape is None else ds.shape
            raise LucidIOError(f"{self.name}: a {len(shape)}-D dataset (shape {shape}) cannot be pooled in 3-D")
        key = ds.name if dataset is None else "/" + dataset.lstrip("/")  # ds.name is its name in its own file
        self._files = files_read(self.file, key, ds, self.name)
        self.shape = tuple(int(n) for n in ds.shape)
        try:
            stored = ds.dtype
        except ValueError as exc:  # e.g. a float type numpy has no equivalent for
            raise LucidIOError(f"{self.name}: unsupported data type ({one_line(exc)})") from None
        self.dtype = check_dtype(stored, self.name)
        check_shape(self.shape, self.name, self.dtype.itemsize)
        problem = _filter_problem(ds)
        if problem:
            raise LucidIOError(f"{self.name}: {problem}")
        guessed = axes is None and (axes := _axes_from_labels(ds)) is None
        try:
            self.layout = parse_layout(axes, ds.ndim, "hdf5")
        except LucidIOError as exc:
            raise type(exc)(f"{self.name}: {exc}") from None
        if guessed and ds.ndim == 4 and self.shape[3] in (3, 4) and self.shape[0] not in (3, 4):
            self.warnings = (
                f"{self.name}: no dimension labels, so {'x'.join(map(str, self.shape))} is read as "
                f"c,d,h,w; its last axis of {self.shape[3]} looks like colour: for a video give "
                f"axes 'thwc' (--axes thwc)",
            )
        self.chunks = tuple(ds.chunks) if ds.chunks else None
        filtered = bool(self.chunks) and ds.id.get_create_plist().get_nfilters() > 0
        self._chunk_bytes_filtered = math.prod(self.chunks) * self.dtype.itemsize if filtered else 0
        self._slab_axis = self._pick_slab_axis()
        self.chunk_rows = int(self.chunks[self._slab_axis]) if self.chunks else 1
        self.meta = self._read_meta(ds)

    def _pick_slab_axis(self) -> int:
        pooled = self.layout.pooled
        if not self.chunks:
            return pooled[0]
        # thinnest chunk relative to the axis length; ties go to the outermost axis
        return min(pooled, key=lambda a: (min(self.chunks[a], self.shape[a]) / self.shape[a], a))

    @property
    def slab_axis(self) -> int:
        return self._slab_axis

    def _read_meta(self, ds: h5py.Dataset) -> VolumeMeta:
        attrs: dict = {}
        for key in ds.attrs:
            if key in SKIP_ATTRS:
                continue
            try:
                attrs[key] = ds.attrs[key]
            except Exception:  # unreadable attribute types: skip
                continue
        labels = dimension_labels(ds)
        spacing = unit = None
        esu = attrs.get("element_size_um")
        if esu is not None:
            try:
                esu = np.asarray(esu, dtype=float).ravel()
            except (TypeError, ValueError):
                esu = None
        if esu is not None and len(esu) in (3, ds.ndim):
            sel = esu if len(esu) == 3 else esu[list(self.layout.pooled)]
            if np.all(np.isfinite(sel)) and np.all(sel > 0):
                spacing, unit = tuple(float(v) for v in sel), "um"
        affine = None
        aff = attrs.get("affine")
        if aff is not None:
            try:
                aff = np.asarray(aff, dtype=float)
                if aff.shape == (4, 4) and np.all(np.isfinite(aff)):
                    affine = aff
            except (TypeError, ValueError):
                pass
        slope = attrs.get("scl_slope")
        inter = attrs.get("scl_inter")
        scale = (1.0, 0.0)
        try:
            if slope is not None or inter is not None:
                s = 1.0 if slope is None else float(np.asarray(slope).ravel()[0])
                i = 0.0 if inter is None else float(np.asarray(inter).ravel()[0])
                if math.isfinite(s) and math.isfinite(i) and s != 0:
                    scale = (s, i)
        except (TypeError, ValueError, IndexError):
            pass
        return VolumeMeta(
            format="hdf5",
            spacing=spacing,
            spacing_unit=unit,
            affine=affine,
            scale=scale,
            extra={"attrs": attrs, "dim_labels": labels, "dataset": ds.name, "chunks": self.chunks,
                   "compression": ds.compression},
        )

    def files(self) -> tuple[str, ...]:
        return self._files

    @property
    def caches_slab(self) -> bool:  # only filtered chunks are worth keeping: unfiltered ones are read in place
        return self._chunk_bytes_filtered > 0

    def reader_overhead(self) -> int:
        """A filtered chunk is decompressed whole: its compressed bytes and the decompressed
        chunk (when the cache cannot take it) are the reader's own."""
        return 2 * self._chunk_bytes_filtered

    def set_cache(self, nbytes: int) -> None:
        """Re-open the dataset with a chunk cache of ``nbytes`` (+ one chunk); see module doc."""
        if not self.caches_slab:
            return
        chunk_bytes = int(np.prod(self.chunks)) * self._ds.dtype.itemsize
        total = int(max(nbytes, 0)) + chunk_bytes
        nslots = _next_prime(max(521, 100 * (total // chunk_bytes + 1)))
        dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
        dapl.set_chunk_cache(nslots, total, 1.0)
        dsid = h5py.h5d.open(self.file.id, self.dataset_path.encode(), dapl)
        self._ds = h5py.Dataset(dsid)
        self.cache_nbytes = total

    def read(self, index):
        index = normalize_index(index, self.shape, self.name)
        out = np.empty(box_shape(index), dtype=self.dtype)
        if out.size == 0:
            return out
        try:
            self._ds.read_direct(out, source_sel=index)
        except Exception as exc:
            raise LucidIOError(f"{self.name}: cannot read box {_fmt_box(index)}: {one_line(exc)}") from None
        return out

    def close(self) -> None:
        f = getattr(self, "file", None)
        if f is not None:
            try:
                f.close()
            except Exception:  # pragma: no cover
                pass
            self.file = None


def _fmt_box(index) -> str:
    return "[" + ", ".join(f"{s.start}:{s.stop}" for s in index) + "]"


# ---------------------------------------------------------------- writing


def parse_compression(compression: str | None, name: str) -> Codec:
    """The codec for ``compression`` (see ``lucid.io.compression``); LucidIOError naming the output."""
    try:
        return parse_codec(compression)
    except CompressionError as exc:
        raise LucidIOError(f"{name}: {exc}") from None


def choose_chunks(shape, itemsize: int, slab_axis: int, slab_rows: int | None, outer_axes=(),
                  target: int = 1 << 20) -> tuple[int, ...]:
    """Chunk shape: thickness along ``slab_axis`` divides ``slab_rows``; about ``target`` bytes.

    ``outer_axes`` (carried axes the engine iterates one index at a time) get extent 1.
    """
    chunks = [int(n) for n in shape]
    for a in outer_axes:
        chunks[a] = 1
    n_slab = shape[slab_axis]
    if slab_rows:
        rows_options = [d for d in range(min(slab_rows, n_slab), 0, -1) if slab_rows % d == 0]
    else:
        rows_options = list(range(n_slab, 0, -1))
    chunks[slab_axis] = 1
    rest = lambda: int(np.prod(chunks)) * itemsize  # noqa: E731
    # shrink the other axes (largest first, halving) until one row fits the target
    while rest() > target:
        others = [a for a in range(len(shape)) if a != slab_axis and chunks[a] > 1]
        if not others:
            break
        a = max(others, key=lambda i: chunks[i])
        chunks[a] = -(-chunks[a] // 2)
    per_row = rest()
    for rows in rows_options:
        if rows * per_row <= target or rows == 1:
            chunks[slab_axis] = rows
            break
    return tuple(chunks)


FRAME_RATES = {"fps", "frame_rate", "framerate", "frames_per_second"}  # divided by the time stride
FRAME_TIMES = {"frame_interval", "frame_time", "frame_duration", "dt", "time_step"}  # multiplied by it


def _time_scaled(key: str, value, like: Source, stride):
    """A video attribute on the output grid: the frame rate over the stride along a pooled t axis."""
    name = key.lower()
    if (name not in FRAME_RATES and name not in FRAME_TIMES) or "t" not in like.layout.pooled_letters:
        return value
    step = stride[like.layout.pooled_letters.index("t")]
    try:
        number = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        return value
    if number.ndim or step == 1:
        return value
    return float(number / step if name in FRAME_RATES else number * step)


def _storable(value):
    """Make a provenance value storable as an HDF5 attribute."""
    if value is None:
        return "None"
    if isinstance(value, (bool, np.bool_)):
        return np.bool_(value)
    if isinstance(value, (str, bytes, int, float, np.generic, np.ndarray)):
        return value
    if isinstance(value, (tuple, list)):
        try:
            arr = np.asarray(value)
            if arr.dtype.kind in "iufb":
                return arr
        except Exception:
            pass
    try:
        return json.dumps(value, default=str)
    except Exception:
        return str(value)


def provenance_attrs(like: Source, pooling, kind: str, provenance: dict | None) -> dict:
    import lucid

    out = {"lucid_version": lucid.__version__, "lucid_kind": kind, "lucid_source": like.name}
    if pooling is not None:
        out.update(
            lucid_kernel=np.asarray(pooling.kernel, dtype=np.int64),
            lucid_stride=np.asarray(pooling.stride, dtype=np.int64),
            lucid_padding=np.asarray(pooling.padding, dtype=np.int64),
            lucid_dilation=np.asarray(pooling.dilation, dtype=np.int64),
            lucid_padding_mode=pooling.padding_mode,
            lucid_ceil_mode=np.bool_(pooling.ceil_mode),
        )
    for key, value in (provenance or {}).items():
        key = str(key)
        out[key if key.startswith("lucid_") else "lucid_" + key] = _storable(value)
    return out


class GuardedFile:
    """Binary file for h5py's "fileobj" driver that never lets HDF5 see a failed write.

    When a write fails (e.g. ENOSPC) the error is recorded in ``.error`` and later
    writes are dropped while reporting success, so HDF5 can still close the file
    cleanly (an HDF5 file whose flush failed cannot be closed and crashes the
    interpreter at exit).  The sink checks ``.error`` after every write and on
    commit, and then discards the file.
    """

    def __init__(self, path):
        self._f = open(path, "r+b", buffering=0)
        self.error: OSError | None = None
        # Ctrl-C (or another signal handler's exception) raised inside this callback:
        # h5py would turn it into an HDF5 error, so the write is finished and the
        # sink re-raises it once HDF5 has returned.
        self.interrupt: BaseException | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        while self.error is None:
            try:
                while len(view):
                    view = view[self._f.write(view):]
                return n
            except OSError as exc:
                self.error = exc
            except BaseException as exc:  # KeyboardInterrupt, SystemExit from a signal handler
                self.interrupt = self.interrupt or exc
        self._f.seek(len(view), os.SEEK_CUR)
        return n

    def readinto(self, buf) -> int:
        return self._f.readinto(buf)

    def read(self, size: int = -1) -> bytes:
        return self._f.read(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                return self._f.truncate(size)
            except OSError as exc:
                self.error = exc
        return self._f.tell() if size is None else size

    def flush(self) -> None:
        pass  # unbuffered

    def close(self) -> None:
        self._f.close()


def dataset_for(dataset: str | None, like: Source) -> str:
    """The dataset an output gets: the one asked for, else the input's, else ``/data``."""
    if dataset is None:
        dataset = getattr(like, "dataset_path", None) or "/data"
    return dataset if dataset.startswith("/") else "/" + dataset


def _same_dataset(a: str | None, b: str | None) -> bool:
    return a is None or b is None or "/" + a.strip("/") == "/" + b.strip("/")


def _existing_dataset(path: str, dataset: str, shown: str) -> bool:
    """Whether ``dataset`` exists in the HDF5 file ``path`` (a link of any kind counts); refuses a group."""
    try:
        with h5py.File(path, "r") as f:
            parent = dataset.rsplit("/", 1)[0] or "/"
            if parent != "/" and parent in f and not isinstance(f[parent], h5py.Group):
                raise LucidIOError(f"{shown}:{dataset}: {parent} is a dataset, not a group")
            link = f.get(dataset, getlink=True)
            if link is None:
                return False
            if isinstance(link, h5py.HardLink) and isinstance(f[dataset], h5py.Group):
                raise LucidIOError(f"{shown}:{dataset}: is a group; name a dataset to write")
            return True
    except LucidIOError:
        raise
    except Exception as exc:
        raise LucidIOError(f"{shown}: cannot open the existing file to add a dataset: {one_line(exc)}") from None


def check_hdf5_output(path, dataset: str, *, force: bool, protect=(), shown: str | None = None) -> tuple[bool, bool, list]:
    """Refuse what writing dataset ``dataset`` into ``path`` must not do; ``(update, exists, file_protect)``.

    ``update``: ``path`` is an existing HDF5 file, which keeps its other groups,
    datasets and attributes.  ``exists``: the run needs ``force`` (the dataset,
    or a file that is not HDF5, is there).  ``protect`` entries ``(file,
    dataset)`` refuse only that dataset of that file; plain paths refuse the
    whole file (``file_protect`` is what is left for the file-level checks)."""
    shown = shown or os.fspath(path)
    file = os.path.abspath(os.fspath(path))
    rest = []
    for entry in protect:
        if isinstance(entry, tuple) and entry[0] is not None and same_file(entry[0], file):
            if _same_dataset(entry[1], dataset):
                raise LucidIOError(f"{shown}:{dataset}: output is the input file {entry[0]} and its dataset "
                                   f"{entry[1] or dataset}; choose another dataset or file")
            continue  # another dataset of the input file: the input is only read, from the original
        rest.append(entry)
    update = os.path.isfile(file) and h5py.is_hdf5(file)
    check_destination(file, force=True, protect=rest, update=update)
    exists = _existing_dataset(file, dataset, shown) if update else os.path.lexists(file)
    if exists and not force:
        what = "output dataset exists" if update else "output exists"
        raise LucidIOError(f"{shown}:{dataset}: {what}, use --force to replace it")
    return update, exists, rest


def hdf5_output_target(path, dataset: str, *, force: bool, protect=(), expected_bytes: int | None = None,
                       shown: str | None = None) -> AtomicTarget:
    """The AtomicTarget for dataset ``dataset`` of the HDF5 file ``path`` (see ``check_hdf5_output``).

    Into an existing HDF5 file the target is an updated copy of it (``update=True``)."""
    file = os.path.abspath(os.fspath(path))
    update, _exists, rest = check_hdf5_output(path, dataset, force=force, protect=protect, shown=shown)
    if update:
        file = os.path.realpath(file)  # through a symlink, the linked file gets the dataset; the link stays
    # The copy of an updated file is not counted in expected_bytes: a reflink needs no space, and a
    # full disk during the copy (before any work) is reported as such and leaves the file alone.
    # A file that appears during the run may hold other datasets: it is never replaced, even with force.
    replace = force and os.path.lexists(file)
    return AtomicTarget(file, force=replace, protect=rest, expected_bytes=expected_bytes, update=update)


class HDF5Sink(FileSink):
    """A chunked, compressed HDF5 dataset written box by box into a temporary file.

    Into an existing HDF5 file the dataset is added (or, with ``force``,
    replaced) in a copy of that file, which replaces it at commit: the other
    objects stay, and a failure leaves the file as it was."""

    def __init__(self, path, shape, dtype, *, like: Source, pooling=None, kind: str = "output",
                 dataset: str | None = None, compression: str = DEFAULT_COMPRESSION, force: bool = False,
                 slab_rows: int | None = None, provenance: dict | None = None,
                 scale: tuple[float, float] | None = None, protect=(), name: str | None = None):
        shown = name or os.fspath(path)
        self.scale = scale
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype).newbyteorder("=")
        self.kind = kind
        self.layout = like.layout
        codec = parse_compression(compression, shown)
        dataset = dataset_for(dataset, like)
        self.dataset_path = dataset
        self.name = f"{shown}:{dataset}"
        try:
            codec_options = codec.dataset_options(self.dtype.itemsize)  # loads hdf5plugin if needed
        except CompressionError as exc:
            raise LucidIOError(f"{self.name}: {exc}") from None
        expected = None if codec.family != "none" else int(np.prod(self.shape)) * self.dtype.itemsize
        inputs = [(like.path, getattr(like, "dataset_path", None)) if like.path else None, *protect]
        self.target = hdf5_output_target(path, dataset, force=force, protect=inputs, expected_bytes=expected,
                                         shown=shown)
        self.path = os.fspath(self.target.dest)
        self.written = 0
        self.file = None
        self._guard = None
        try:
            self._guard = GuardedFile(self.target.tmp)
            if self.target.base is not None:  # an updated copy of an existing file
                self.file = h5py.File(self._guard, "r+")
                if self.file.get(dataset, getlink=True) is not None:
                    del self.file[dataset]
            else:
                self.file = h5py.File(self._guard, "w")
            slab_axis = like.slab_axis
            outer = outer_axes(len(self.shape), like.layout.pooled, slab_axis, like.order)  # one index per write
            chunks = choose_chunks(self.shape, self.dtype.itemsize, slab_axis, slab_rows, outer)
            self.ds = self.file.create_dataset(dataset, shape=self.shape, dtype=self.dtype, chunks=chunks,
                                               **codec_options)
            self._write_metadata(like, pooling, kind, provenance)
            self.file.flush()
            self._check_guard()
        except LucidIOError:
            self.abort()
            raise
        except Exception as exc:
            self.abort()
            if is_no_space(exc):
                raise no_space_error(self.name, exc) from None
            raise LucidIOError(f"{self.name}: cannot create the output: {one_line(exc)}") from None
        except BaseException:  # Ctrl-C: no temporary file stays behind
            self.abort()
            raise

    # -- metadata
    def _write_metadata(self, like: Source, pooling, kind: str, provenance) -> None:
        meta = like.meta
        attrs = self.ds.attrs
        stride = pooling.stride if pooling is not None else (1, 1, 1)
        pooled = like.layout.pooled
        src_attrs = dict(meta.extra.get("attrs", {})) if meta.format == "hdf5" else {}
        for key, value in src_attrs.items():
            if key in SKIP_ATTRS or key in COPY_SKIP or key.startswith("lucid_"):
                continue
            try:
                attrs[key] = _time_scaled(key, value, like, stride)
            except Exception:  # attributes h5py cannot write back (references, ...)
                pass
        # spacing
        esu = src_attrs.get("element_size_um")
        written = False
        if esu is not None:
            try:
                arr = np.asarray(esu, dtype=float).ravel().copy()
                if len(arr) == 3:
                    arr = arr * np.asarray(stride, dtype=float)
                    written = True
                elif len(arr) == len(self.shape):
                    for j, a in enumerate(pooled):
                        arr[a] *= stride[j]
                    written = True
                if written:
                    attrs["element_size_um"] = arr
            except (TypeError, ValueError):
                pass
        if not written and esu is not None:
            attrs["element_size_um"] = esu
        if not written and meta.spacing is not None and meta.spacing_unit in UNIT_TO_UM:
            um = np.asarray(meta.spacing, dtype=float) * UNIT_TO_UM[meta.spacing_unit] * np.asarray(stride, dtype=float)
            attrs["element_size_um"] = um
        # affine (always in mm)
        if meta.affine is not None:
            aff = np.array(meta.affine, dtype=float)
            factor = UNIT_TO_UM.get(meta.spacing_unit or "mm", 1e3) / 1e3
            aff[:3, :] *= factor
            aff[3] = (0, 0, 0, 1)
            if pooling is not None:
                aff = aff @ pooling_matrix(pooling)
            attrs["affine"] = aff
        elif "affine" in src_attrs:  # kept as it was if it was not a usable 4x4
            try:
                attrs["affine"] = src_attrs["affine"]
            except Exception:  # pragma: no cover
                pass
        scale = self.scale if self.scale is not None else (meta.scale if kind == "output" else (1.0, 0.0))
        if tuple(scale) != (1.0, 0.0):
            attrs["scl_slope"], attrs["scl_inter"] = float(scale[0]), float(scale[1])
        else:
            for key in ("scl_slope", "scl_inter"):
                if key in attrs:
                    del attrs[key]
        # dimension labels
        labels = list(meta.extra.get("dim_labels") or [])
        if len(labels) != len(self.shape) or not any(labels):
            labels = list(like.layout.axes) if meta.format != "hdf5" else []
        for i, label in enumerate(labels):
            if label:
                self.ds.dims[i].label = label
        for key, value in provenance_attrs(like, pooling, kind, provenance).items():
            attrs[key] = value

    # -- data
    def write(self, index, data) -> None:
        index = self._box(index, data)
        data = np.ascontiguousarray(data, dtype=self.dtype)
        if data.size == 0:
            return
        try:
            self.ds.write_direct(data, dest_sel=index)
        except Exception as exc:
            self.abort()
            if is_no_space(exc):
                raise no_space_error(self.name, exc) from None
            raise LucidIOError(f"{self.name}: cannot write box {_fmt_box(index)}: {one_line(exc)}") from None
        self.written += data.size
        self._check_guard()
        self.target.wrote(data.nbytes)

    def _check_guard(self) -> None:
        if self._guard is not None and self._guard.interrupt is not None:
            interrupt, self._guard.interrupt = self._guard.interrupt, None
            raise interrupt
        exc = self._guard.error if self._guard is not None else None
        if exc is None:
            return
        self.abort()
        if is_no_space(exc):
            raise no_space_error(self.name, exc)
        raise LucidIOError(f"{self.name}: cannot write the output: {one_line(exc)}")

    def _finish(self) -> None:
        """Close the HDF5 file (then FileSink.prepare fsyncs it)."""
        try:
            self.file.close()
            self.file = None
        except Exception as exc:
            self.abort()
            if is_no_space(exc):
                raise no_space_error(self.name, exc) from None
            raise LucidIOError(f"{self.name}: cannot finish the output: {one_line(exc)}") from None
        self._check_guard()
        self._guard.close()
        self._guard = None

    def abort(self) -> None:
        if self.file is not None:
            try:
                self.file.close()  # cannot fail on I/O: the GuardedFile swallows write errors
            except Exception:  # pragma: no cover
                pass
            self.file = None
        if self._guard is not None:
            try:
                self._guard.close()
            except OSError:  # pragma: no cover
                pass
            self._guard = None
        self.target.abort()
