"""Output safety: write beside the destination, rename into place on commit.

:class:`AtomicTarget` does every check a sink needs *before* any work starts
(destination exists without force, destination is an input, missing or
read-only directory, a directory in the way) and creates the temporary file
(or, with ``is_dir=True``, directory) ``.<name>.lucid-tmp-<pid>-<host>-<random>``
in the destination directory (see ``lucid.io.tempfiles``), so the final rename
is atomic (same file system).  ``commit()`` fsyncs the file, renames it into
place and fsyncs the directory; ``abort()`` deletes it.

The rename at commit decides again, atomically, what the check at the start
decided: without ``force`` it never replaces a destination that appeared
during the run (``renameat2(RENAME_NOREPLACE)``, see ``lucid.io.rename``); with
``force`` it replaces it, so of two concurrent forced runs the last rename
wins and each leaves a whole output, never a mix.  With ``update=True`` the
temporary file starts as a copy of the existing destination (an HDF5 file
that gets one more dataset) and commit replaces the destination only if it
is still the very file that was copied, ``force`` or not.

Temporary files that are neither committed nor aborted when the interpreter
exits are removed by an ``atexit`` hook; those of a process killed with
SIGKILL are removed by the next ``AtomicTarget`` in that directory, or by
``lucid.io.tempfiles.clean_stale`` (``lucid clean DIR``).
"""

from __future__ import annotations

import atexit
import math
import errno
import os
import shutil
from pathlib import Path
from typing import Iterable

import numpy as np

from lucid.io.base import LucidIOError, Sink, box_shape, normalize_index
from lucid.io.copy import clone_file
from lucid.io.rename import rename_exchange, rename_noreplace
from lucid.io.tempfiles import TMP_MARK, clean_stale, make_temp, temp_name

_LIVE: set[str] = set()


@atexit.register
def _remove_leftovers() -> None:  # pragma: no cover - runs at interpreter exit
    for path in list(_LIVE):
        _remove_path(path)
    _LIVE.clear()


def _remove_path(path: str | os.PathLike) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except OSError:
        pass


def is_no_space(exc: BaseException) -> bool:
    """Whether an exception (OSError or an h5py/HDF5 error) means the disk is full."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc).lower()
    return "no space left" in text or "errno = 28" in text or "disk quota" in text


def no_space_error(name: str, exc: BaseException | None = None) -> LucidIOError:
    return LucidIOError(f"{name}: no space left on device while writing the output; the partial output was removed")


def human_bytes(n: float) -> str:
    """``1 byte``, ``1000 bytes``, ``1.0 KiB`` ... ``1.0 EiB``."""
    if abs(n) < 1024:
        return "1 byte" if n == 1 else f"{n:.0f} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        n /= 1024
        if abs(n) < 1024 or unit == "EiB":
            break
    return f"{n:.1f} {unit}"


def file_identity(path: str | os.PathLike):
    """What two names of one file share: (device, inode) when it exists, so
    hard and symbolic links count as the file; otherwise its real path."""
    real = os.path.realpath(path)
    try:
        stat = os.stat(real)
    except OSError:
        return real
    return (stat.st_dev, stat.st_ino)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def make_temp_path(directory: Path, name: str, mark: str = TMP_MARK) -> tuple[Path, int]:
    """Create (O_EXCL) a hidden temporary file in ``directory``; returns (path, fd).

    The name fits in NAME_MAX whatever ``name`` is, and names this process
    (``lucid.io.tempfiles``); it is removed at exit unless committed."""
    path, fd = make_temp(directory, name, mark)
    _LIVE.add(os.fspath(path))
    return path, fd


def remove_quietly(path: str | os.PathLike | None) -> None:
    """Remove a temporary file (or directory tree); no error if it is gone."""
    if path is None:
        return
    _remove_path(path)
    _LIVE.discard(os.fspath(path))


def protected_path(entry) -> str | os.PathLike | None:
    """The file of a ``protect`` entry: a path, or a ``(path, dataset)`` pair (an HDF5 input)."""
    return entry[0] if isinstance(entry, tuple) else entry


def check_destination(
    dest: str | os.PathLike,
    *,
    force: bool = False,
    protect: Iterable = (),
    expected_bytes: int | None = None,
    is_dir: bool = False,
    update: bool = False,
) -> None:
    """Raise ``LucidIOError`` if an output could not be written to ``dest``.

    The directory must exist and be writable; an existing ``dest`` must be a
    file (a directory for ``is_dir``), none of the ``protect`` files (inputs),
    and is replaced only with ``force`` (``update``: it is updated, the caller
    decides); ``expected_bytes`` must fit on the disk."""
    display = os.fspath(dest)
    path = Path(os.path.abspath(display))
    directory = path.parent
    shown_dir = os.path.dirname(display) or "."
    if path.name in ("", ".", ".."):
        raise LucidIOError(f"{display}: not a file name")
    if not directory.exists():
        raise LucidIOError(f"{display}: output directory {shown_dir} does not exist (create it, or pass --mkdir)")
    if not directory.is_dir():
        raise LucidIOError(f"{display}: {shown_dir} is not a directory")
    if os.path.lexists(path):
        if os.path.isdir(path) != is_dir:
            raise LucidIOError(f"{display}: output is {'not ' if is_dir else ''}a directory")
        for entry in protect:
            other = protected_path(entry)
            if other is not None and same_file(path, other):
                raise LucidIOError(
                    f"{display}: output is the input file {os.fspath(other)}; choose another output name"
                )
        if not (force or update):
            raise LucidIOError(f"{display}: output exists, use --force to replace it")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise LucidIOError(f"{display}: output directory {shown_dir} is not writable")
    if expected_bytes is not None:
        free = shutil.disk_usage(directory).free
        if expected_bytes > free:
            raise LucidIOError(
                f"{display}: no space left on device: the output needs {human_bytes(expected_bytes)}, "
                f"{human_bytes(free)} free in {shown_dir}"
            )


def _stamp(path: str | os.PathLike) -> tuple | None:
    """What tells one state of a file from another: device, inode, size, mtime (None if absent).

    Symlinks are followed: for a destination reached through one, the file that was copied counts."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class AtomicTarget:
    """A destination path plus the temporary file (or directory) that becomes it on ``commit``.

    ``force``: replace a destination that exists (at the start or at commit).
    ``is_dir``: the temporary target is a directory (a Zarr store, say).
    ``update``: start from a copy of the existing destination file; commit
    only if the destination is still that file.  ``cleaned`` lists the stale
    temporary files of dead processes removed from the directory on the way.
    """

    def __init__(
        self,
        dest: str | os.PathLike,
        *,
        force: bool = False,
        protect: Iterable = (),
        expected_bytes: int | None = None,
        is_dir: bool = False,
        update: bool = False,
    ):
        self.display = os.fspath(dest)
        self.dest = Path(os.path.abspath(os.fspath(dest)))
        self.force = force
        self.is_dir = is_dir
        self.committed = False
        self.aborted = False
        self.synced = False  # the finished temporary file is on disk (sync())
        self._unsynced = 0  # bytes written since the last flush to disk
        self.base: tuple | None = None  # update: the stamp of the file the temporary copy was made from
        self.cleaned: list[str] = []
        protect = list(protect)
        check_destination(dest, force=force, protect=protect, expected_bytes=expected_bytes, is_dir=is_dir,
                          update=update)
        directory = self.dest.parent
        shown_dir = os.path.dirname(self.display) or "."
        self.cleaned = _clean_quietly(directory)
        try:
            self.tmp, fd = make_temp(directory, self.dest.name, is_dir=is_dir)
            _LIVE.add(os.fspath(self.tmp))
        except PermissionError:
            raise LucidIOError(f"{self.display}: output directory {shown_dir} is not writable") from None
        except OSError as exc:
            if is_no_space(exc):
                raise no_space_error(self.display) from None
            raise LucidIOError(f"{self.display}: cannot create a file in {shown_dir}: {exc.strerror or exc}") from None
        if fd is not None:
            os.close(fd)
        if update and not is_dir:
            self._copy_existing(shown_dir)

    def _copy_existing(self, shown_dir: str) -> None:
        """Make the temporary file a copy of the destination (if it exists), remembering which file it was."""
        before = _stamp(self.dest)
        if before is None:
            return
        try:
            clone_file(self.dest, self.tmp)
            shutil.copymode(self.dest, self.tmp)
        except BaseException as exc:
            self.abort()
            if isinstance(exc, OSError):
                if is_no_space(exc):
                    raise no_space_error(self.display, exc) from None
                raise LucidIOError(f"{self.display}: cannot copy the existing file to update it: "
                                   f"{exc.strerror or exc}") from None
            raise
        if _stamp(self.dest) != before:
            self.abort()
            raise LucidIOError(f"{self.display}: the file changed while it was copied; try again")
        self.base = before

    @property
    def active(self) -> bool:
        return not (self.committed or self.aborted)

    SYNC_EVERY = 64 << 20

    def wrote(self, nbytes: int) -> None:
        """Count bytes written; every 64 MiB flush them to disk.

        The writer thread pays for durability while the reader and the kernels
        keep working, instead of one long fsync at commit."""
        self._unsynced += nbytes
        if self._unsynced < self.SYNC_EVERY or self.is_dir:
            return
        self._unsynced = 0
        try:
            fd = os.open(self.tmp, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            try:
                os.fdatasync(fd) if hasattr(os, "fdatasync") else os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            if is_no_space(exc):
                raise no_space_error(self.display, exc) from None
            raise LucidIOError(f"{self.display}: cannot flush the output to disk: {exc.strerror or exc}") from None

    def sync(self) -> None:
        """fsync the finished temporary file, without renaming it yet.

        This is where a full disk shows up at the end (delayed allocation), so a
        caller with several outputs syncs them all before committing any; on
        failure the temporary file is removed.  A directory target is synced
        by its writer (file by file); here only the directory itself."""
        if self.synced or self.committed:
            return
        if self.aborted:
            raise LucidIOError(f"{self.display}: cannot commit an aborted output")
        try:
            for path in self._to_sync():
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            self.abort()
            if is_no_space(exc):
                raise no_space_error(self.display, exc) from None
            raise LucidIOError(f"{self.display}: cannot flush the output to disk: {exc.strerror or exc}") from None
        self.synced = True

    def _to_sync(self):
        """What ``sync`` flushes: the temporary file (a directory store: its entries, then itself)."""
        return [self.tmp]

    def commit(self) -> None:
        """fsync the finished temporary file (unless ``sync`` did) and rename it into place.

        Without ``force`` a destination that appeared since the start is left
        alone (LucidIOError); with ``update`` the destination must still be the
        file that was copied."""
        if self.committed:
            return
        if self.aborted:
            raise LucidIOError(f"{self.display}: cannot commit an aborted output")
        self.sync()
        try:
            if self.base is not None:
                self._replace_if_unchanged()
            elif self.force and not self.is_dir:
                os.replace(self.tmp, self.dest)
            elif self.force:
                self._replace_directory()
            else:
                rename_noreplace(self.tmp, self.dest)
        except FileExistsError:
            self.abort()
            raise LucidIOError(f"{self.display}: output appeared during the run (another process wrote it) "
                               f"and was left alone; run again, with --force to replace it") from None
        except OSError as exc:
            self.abort()
            if is_no_space(exc):
                raise no_space_error(self.display, exc) from None
            raise LucidIOError(f"{self.display}: could not move the finished output into place: {exc}") from None
        _LIVE.discard(os.fspath(self.tmp))
        self.committed = True
        _fsync_dir(self.dest.parent)

    def _replace_if_unchanged(self) -> None:
        """Put the updated copy in place only if the destination is still the file it was copied from.

        With RENAME_EXCHANGE the check comes after an atomic swap (and swaps
        back on a mismatch), so no change made by another process in between
        is lost; elsewhere it comes just before the rename."""
        try:
            swapped = rename_exchange(self.tmp, self.dest)
        except FileNotFoundError:  # the file was deleted meanwhile
            raise self._changed() from None
        if swapped:
            if _stamp(self.tmp) == self.base:  # the swapped-out file is the one we copied
                _remove_path(self.tmp)
                return
            rename_exchange(self.tmp, self.dest)
            raise self._changed()
        if _stamp(self.dest) != self.base:
            raise self._changed()
        os.replace(self.tmp, self.dest)

    def _changed(self) -> LucidIOError:
        self.abort()
        return LucidIOError(f"{self.display}: the file was changed by another process during the run; "
                            f"it was left as that process wrote it")

    def _replace_directory(self) -> None:
        """``force`` for a directory: swap it in atomically, then delete the old tree."""
        if not os.path.lexists(self.dest):
            try:
                rename_noreplace(self.tmp, self.dest)
                return
            except FileExistsError:
                pass  # appeared meanwhile: replace it below
        if rename_exchange(self.tmp, self.dest):
            _remove_path(self.tmp)  # now the old tree
            return
        aside = self.dest.parent / temp_name(self.dest.name)
        os.rename(self.dest, aside)  # without RENAME_EXCHANGE there is an instant with no destination
        _LIVE.add(os.fspath(aside))
        os.rename(self.tmp, self.dest)
        remove_quietly(aside)

    def abort(self) -> None:
        """Remove the temporary file; idempotent."""
        if self.committed or self.aborted:
            return
        self.aborted = True
        remove_quietly(self.tmp)


def _clean_quietly(directory: Path) -> list[str]:
    """Remove stale temporary files of dead lucid processes; never fails a run."""
    try:
        return clean_stale(directory).removed
    except OSError:
        return []


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


class FileSink(Sink):
    """What every file format's sink shares: the box checks and the finish/commit sequence.

    Subclasses set ``target`` (an AtomicTarget), count ``written`` against
    ``expected_written`` (in ``written_unit``), and implement ``_finish()``:
    close the format's file so that only the rename remains.
    """

    target: AtomicTarget
    written = 0
    written_unit = "values"
    _prepared = False

    def _set_array(self, shape, dtype, like, kind: str) -> None:
        """The output's shape, its dtype in native byte order, its kind, and the input layout it keeps."""
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype).newbyteorder("=")
        self.kind = kind
        self.layout = like.layout

    @property
    def expected_written(self) -> int:
        return math.prod(self.shape)

    def _box(self, index, data) -> tuple[slice, ...]:
        """Check a write against the sink's state and shape; the normalized box."""
        if not self.target.active:
            raise LucidIOError(f"{self.name}: write after {'commit' if self.target.committed else 'abort'}")
        index = normalize_index(index, self.shape, self.name)
        if np.shape(data) != box_shape(index):
            raise ValueError(f"{self.name}: data of shape {np.shape(data)} for box of shape {box_shape(index)}")
        return index

    def _finish(self) -> None:
        raise NotImplementedError

    def prepare(self) -> None:
        if self.target.committed or self._prepared:
            return
        if self.target.aborted:
            raise LucidIOError(f"{self.name}: cannot commit an aborted output")
        if self.written < self.expected_written:
            self.abort()
            raise LucidIOError(
                f"{self.name}: incomplete output: {self.written} of {self.expected_written} {self.written_unit} written"
            )
        self._finish()
        self.target.sync()
        self._prepared = True

    def commit(self) -> None:
        if self.target.committed:
            return
        self.prepare()
        self.target.commit()
