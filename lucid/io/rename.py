"""Renames that never replace by accident: ``rename_noreplace`` and ``rename_exchange``.

``os.replace`` clobbers whatever appeared at the destination after a run
checked it.  Linux has ``renameat2(RENAME_NOREPLACE)`` (atomic: fails with
EEXIST) and ``RENAME_EXCHANGE`` (swaps two names atomically); both work for
files and directories.  Where the kernel, the C library or the file system
lacks them (EINVAL, ENOSYS, ENOTSUP), a file is committed with ``link()`` +
``unlink()`` (``link`` fails with EEXIST too), or on file systems without
hard links (vfat, some FUSE and SMB mounts) by claiming the name with an
exclusive create first; a directory with ``rename()``, which only replaces
an *empty* directory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import sys

AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP}


def _load_renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        func = libc.renameat2  # glibc >= 2.28; AttributeError on older C libraries
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_renameat2 = _load_renameat2()


def _call_renameat2(src, dst, flags: int) -> bool:
    """True when done, False when renameat2 or the flag is unsupported; OSError otherwise."""
    if _renameat2 is None:
        return False
    if _renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), os.fspath(src), None, os.fspath(dst))


def rename_noreplace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename ``src`` to ``dst``; FileExistsError if ``dst`` exists (also when it appeared meanwhile)."""
    if _call_renameat2(src, dst, RENAME_NOREPLACE):
        return
    if os.path.isdir(src) and not os.path.islink(src):
        try:
            os.rename(src, dst)  # replaces only an empty directory
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise _exists(dst) from None
            raise
        return
    try:
        os.link(src, dst, follow_symlinks=False)  # FileExistsError when dst exists
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED | {errno.EPERM}:  # vfat, some FUSE and SMB mounts: no hard links
            raise
        _reserve_then_replace(src, dst)
        return
    os.unlink(src)


def _reserve_then_replace(src, dst) -> None:
    """Last resort: claim ``dst`` with an exclusive create, then rename over the empty claim.

    Another lucid run sees the claim and refuses; only a writer that opens the
    empty claim in the instant before the rename can still lose its data."""
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # FileExistsError when dst exists
    os.close(fd)
    try:
        os.replace(src, dst)
    except BaseException:
        os.unlink(dst)
        raise


def _exists(path) -> FileExistsError:
    return FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(path))


def rename_exchange(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap the names ``a`` and ``b`` atomically; False when the system cannot."""
    return _call_renameat2(a, b, RENAME_EXCHANGE)
