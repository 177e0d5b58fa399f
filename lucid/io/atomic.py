"""Output safety: write beside the destination, rename into place on commit.

:class:`AtomicTarget` does every check a sink needs *before* any work starts
(destination exists without force, destination is an input, missing or
read-only directory, a directory in the way) and creates the temporary file
``.<name>.lucid-tmp-<random>`` in the destination directory, so the final
``os.replace`` is atomic (same file system).  ``commit()`` fsyncs the file,
renames it over the destination and fsyncs the directory; ``abort()`` deletes
it.  An existing destination is only replaced by ``commit()``.

Temporary files that are neither committed nor aborted when the interpreter
exits are removed by an ``atexit`` hook; a process killed with SIGKILL leaves
its hidden ``.lucid-tmp-`` file behind.
"""

from __future__ import annotations

import atexit
import math
import errno
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterable

import numpy as np

from lucid.io.base import LucidIOError, Sink, box_shape, normalize_index

TMP_MARK = ".lucid-tmp-"
_LIVE: set[str] = set()


@atexit.register
def _remove_leftovers() -> None:  # pragma: no cover - runs at interpreter exit
    for path in list(_LIVE):
        try:
            os.unlink(path)
        except OSError:
            pass
    _LIVE.clear()


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
    """Create (O_EXCL) a hidden temporary file in ``directory``; returns (path, fd)."""
    for _ in range(100):
        path = directory / f".{name}{mark}{secrets.token_hex(4)}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        _LIVE.add(os.fspath(path))
        return path, fd
    raise FileExistsError(f"could not create a temporary file in {directory}")  # pragma: no cover


def remove_quietly(path: str | os.PathLike | None) -> None:
    if path is None:
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        pass
    _LIVE.discard(os.fspath(path))


def check_destination(
    dest: str | os.PathLike,
    *,
    force: bool = False,
    protect: Iterable[str | os.PathLike | None] = (),
    expected_bytes: int | None = None,
) -> None:
    """Raise ``LucidIOError`` if an output could not be written to ``dest``.

    The directory must exist and be writable; an existing ``dest`` must be a
    file, none of the ``protect`` files (inputs), and is replaced only with
    ``force``; ``expected_bytes`` must fit on the disk."""
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
        if os.path.isdir(path):
            raise LucidIOError(f"{display}: output is a directory")
        for other in protect:
            if other is not None and same_file(path, other):
                raise LucidIOError(
                    f"{display}: output is the input file {os.fspath(other)}; choose another output name"
                )
        if not force:
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


class AtomicTarget:
    """A destination path plus the temporary file that becomes it on ``commit``."""

    def __init__(
        self,
        dest: str | os.PathLike,
        *,
        force: bool = False,
        protect: Iterable[str | os.PathLike | None] = (),
        expected_bytes: int | None = None,
    ):
        self.display = os.fspath(dest)
        self.dest = Path(os.path.abspath(os.fspath(dest)))
        self.committed = False
        self.aborted = False
        self.synced = False  # the finished temporary file is on disk (sync())
        self._unsynced = 0  # bytes written since the last flush to disk
        check_destination(dest, force=force, protect=protect, expected_bytes=expected_bytes)
        directory = self.dest.parent
        shown_dir = os.path.dirname(self.display) or "."
        try:
            self.tmp, fd = make_temp_path(directory, self.dest.name)
        except PermissionError:
            raise LucidIOError(f"{self.display}: output directory {shown_dir} is not writable") from None
        except OSError as exc:
            if is_no_space(exc):
                raise no_space_error(self.display) from None
            raise LucidIOError(f"{self.display}: cannot create a file in {shown_dir}: {exc.strerror or exc}") from None
        os.close(fd)

    @property
    def active(self) -> bool:
        return not (self.committed or self.aborted)

    SYNC_EVERY = 64 << 20

    def wrote(self, nbytes: int) -> None:
        """Count bytes written; every 64 MiB flush them to disk.

        The writer thread pays for durability while the reader and the kernels
        keep working, instead of one long fsync at commit."""
        self._unsynced += nbytes
        if self._unsynced < self.SYNC_EVERY:
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
        failure the temporary file is removed."""
        if self.synced or self.committed:
            return
        if self.aborted:
            raise LucidIOError(f"{self.display}: cannot commit an aborted output")
        try:
            fd = os.open(self.tmp, os.O_RDONLY | getattr(os, "O_BINARY", 0))
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

    def commit(self) -> None:
        """fsync the finished temporary file (unless ``sync`` did) and rename it over the destination."""
        if self.committed:
            return
        if self.aborted:
            raise LucidIOError(f"{self.display}: cannot commit an aborted output")
        self.sync()
        try:
            os.replace(self.tmp, self.dest)
        except OSError as exc:
            self.abort()
            if is_no_space(exc):
                raise no_space_error(self.display, exc) from None
            raise LucidIOError(f"{self.display}: could not move the finished output into place: {exc}") from None
        _LIVE.discard(os.fspath(self.tmp))
        self.committed = True
        _fsync_dir(self.dest.parent)

    def abort(self) -> None:
        """Remove the temporary file; idempotent."""
        if self.committed or self.aborted:
            return
        self.aborted = True
        remove_quietly(self.tmp)


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
