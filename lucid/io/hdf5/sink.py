"""``HDF5Sink``: one chunked dataset written into a temporary file (a new file, or
a copy of an existing one when a dataset is added), with attributes,
dimension labels and provenance, renamed into place on success."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np

from lucid.io.atomic import (
    AtomicTarget,
    FileSink,
    check_destination,
    is_no_space,
    no_space_error,
    same_file,
)
from lucid.io.base import (
    UNIT_TO_UM,
    LucidIOError,
    Source,
    one_line,
    pooling_matrix,
)
from lucid.io.compression import DEFAULT as DEFAULT_COMPRESSION
from lucid.io.compression import Codec, CompressionError, parse_codec
from lucid.io.hdf5.files import SKIP_ATTRS
from lucid.io.hdf5.source import format_box
from lucid.io.layout import outer_axes

# rewritten by the sink rather than copied
COPY_SKIP = {"DIMENSION_LABELS", "element_size_um", "affine", "scl_slope", "scl_inter"}


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
        self._set_array(shape, dtype, like, kind)
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
            raise LucidIOError(f"{self.name}: cannot write box {format_box(index)}: {one_line(exc)}") from None
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
