"""Directory outputs that appear whole or not at all (a Zarr store is a directory).

:class:`DirectoryTarget` is an :class:`AtomicTarget` whose temporary entry is a
directory: the store is built under ``.<name>.lucid-tmp-<random>`` beside the
destination; ``sync`` fsyncs every file in it, ``commit`` renames it into place
(through ``AtomicTarget.commit`` when the destination is free), ``abort``
removes the tree.  Replacing an existing store (``force``) moves the old one
aside first and deletes it only after the new one is in place.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from lucid.io.atomic import _LIVE, AtomicTarget, check_destination, protected_path, same_file
from lucid.io.base import LucidIOError

STORE_MARKERS = ("zarr.json", ".zgroup", ".zarray")


def is_zarr_dir(path: str | os.PathLike) -> bool:
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, m)) for m in STORE_MARKERS)


class DirectoryTarget(AtomicTarget):
    """A destination directory plus the temporary directory that becomes it on ``commit``."""

    def __init__(self, dest, *, force: bool = False, protect=(), expected_bytes: int | None = None,
                 fixed_tmp: str | os.PathLike | None = None):
        """``fixed_tmp``: build the store in this directory instead of a fresh random one
        (a resumable run's: reused when it exists, and not removed at exit)."""
        display = os.fspath(dest)
        path = os.path.abspath(display)
        self._replaces = False
        if os.path.isdir(path) and not os.path.islink(path):
            for entry in protect:
                other = protected_path(entry)  # an HDF5 input comes as (file, dataset)
                if other is not None and same_file(path, other):
                    raise LucidIOError(f"{display}: output is the input store {os.fspath(other)}; choose another output name")
            if not force:
                raise LucidIOError(f"{display}: output exists, use --force to replace it")
            if not is_zarr_dir(path):
                raise LucidIOError(f"{display}: output is a directory that is not a Zarr store; refusing to replace it")
            self._replaces = True
            # the checks on the parent directory, as for a new output
            check_destination(os.path.join(os.path.dirname(path), secrets.token_hex(8)), expected_bytes=expected_bytes)
            self.display, self.dest = display, Path(path)
            self.committed = self.aborted = self.synced = False
            self._unsynced = 0
            from lucid.io.atomic import make_temp_path

            self.tmp, fd = make_temp_path(self.dest.parent, self.dest.name)
            os.close(fd)
        else:
            super().__init__(dest, force=force, protect=protect, expected_bytes=expected_bytes)
        os.unlink(self.tmp)  # the name stays reserved by its random part: a directory takes it
        if fixed_tmp is not None:
            _LIVE.discard(os.fspath(self.tmp))
            self.tmp = Path(os.path.abspath(fixed_tmp))
            os.makedirs(self.tmp, exist_ok=True)
        else:
            os.mkdir(self.tmp)

    def keep(self) -> None:
        """Stop here and leave the temporary store as it is (a resumable run that was cut off)."""
        if self.active:
            self.aborted = True
            _LIVE.discard(os.fspath(self.tmp))

    def wrote(self, nbytes: int) -> None:  # durability is paid once, in sync()
        return

    def _to_sync(self):
        linked = getattr(self, "linked", set())  # hard links to input files: as durable as the input
        for root, dirs, files in os.walk(self.tmp):
            for entry in (files if root not in linked else []) + dirs:
                yield os.path.join(root, entry)
        yield self.tmp

    def commit(self) -> None:
        if self.committed:
            return
        if not (self._replaces and os.path.isdir(self.dest)):
            return super().commit()
        if self.aborted:
            raise LucidIOError(f"{self.display}: cannot commit an aborted output")
        self.sync()
        old = self.dest.parent / f".{self.dest.name}.lucid-old-{secrets.token_hex(4)}"
        try:
            os.rename(self.dest, old)
        except OSError as exc:
            self.abort()
            raise LucidIOError(f"{self.display}: could not move the old output aside: {exc}") from None
        try:
            os.rename(self.tmp, self.dest)
        except OSError as exc:
            os.rename(old, self.dest)
            self.abort()
            raise LucidIOError(f"{self.display}: could not move the finished output into place: {exc}") from None
        _LIVE.discard(os.fspath(self.tmp))
        self.committed = True
        shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        if self.committed or self.aborted:
            return
        self.aborted = True
        shutil.rmtree(self.tmp, ignore_errors=True)
        _LIVE.discard(os.fspath(self.tmp))
