"""``clone_file``: copy a file's bytes as cheaply as the file system allows.

First a reflink (``FICLONE``: btrfs, XFS, bcachefs, ...: instant, no space used
until either copy changes), then ``copy_file_range`` (in-kernel, server-side on
NFS 4.2 and SMB), then ``shutil.copyfile`` (sendfile).  The data never passes
through Python's memory.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys

FICLONE = 0x40049409  # _IOW(0x94, 9, int)
_FALLBACK = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOTTY,
             errno.EBADF, errno.EPERM}


def clone_file(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Make ``dst`` (an existing, empty file) a copy of ``src``; returns the method used."""
    with open(src, "rb") as fin, open(dst, "r+b") as fout:
        if _reflink(fin.fileno(), fout.fileno()):
            return "reflink"
        size = os.fstat(fin.fileno()).st_size
        if _copy_range(fin.fileno(), fout.fileno(), size):
            return "copy_file_range"
    shutil.copyfile(src, dst)
    return "copyfile"


def _reflink(fd_in: int, fd_out: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    import fcntl

    try:
        fcntl.ioctl(fd_out, FICLONE, fd_in)
        return True
    except OSError as exc:
        if exc.errno in _FALLBACK:
            return False
        raise


def _copy_range(fd_in: int, fd_out: int, size: int) -> bool:
    if not hasattr(os, "copy_file_range"):
        return False
    done = 0
    while done < size:
        try:
            n = os.copy_file_range(fd_in, fd_out, min(size - done, 1 << 30), done, done)
        except OSError as exc:
            if done == 0 and exc.errno in _FALLBACK:
                return False
            raise
        if n == 0:  # the file shrank under us; the caller's stamp check notices
            break
        done += n
    return True
