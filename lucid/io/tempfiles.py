"""Names of lucid's temporary files, and the cleaner for those of dead processes.

A temporary output is ``.<name>.lucid-tmp-<pid>-<host>-<random>`` beside its
destination (``.lucid-spool-`` for the NIfTI gzip spool): ``pid`` is the
owning process, ``host`` four hex digits of a hash of the machine's name (so
a cleaner on another machine sharing the directory leaves it alone) and
``random`` six hex digits.  ``<name>`` is cut, at a character boundary, so the
whole name fits in the directory's NAME_MAX (255 bytes on most file systems)
whatever the length of the destination's name.

``clean_stale(directory)`` removes the temporary files (or directories) whose
owner on this machine no longer runs: a SIGKILL, a crash or a power cut leave
them behind.  A file is kept while its pid is alive, unless that pid started
after the file was last modified (then the pid was reused).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

TMP_MARK = ".lucid-tmp-"
PART_MARK = ".lucid-part-"  # a cluster run's store and manifest, kept for ``--resume`` (lucid.dask.volume)
SPOOL_MARK = ".lucid-spool-"
MARKS = (TMP_MARK, SPOOL_MARK)
NAME_MAX = 255
_TAIL = re.compile(r"\.lucid-(?:tmp|spool)-(?P<pid>[0-9]+)-(?P<host>[0-9a-f]{4})-[0-9a-f]{6}\Z")


def host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:4]


def name_max(directory: str | os.PathLike) -> int:
    try:
        return min(NAME_MAX, os.pathconf(directory, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return NAME_MAX


def temp_name(name: str, mark: str = TMP_MARK, limit: int = NAME_MAX) -> str:
    """A fresh hidden temporary name for ``name``, at most ``limit`` bytes (UTF-8, surrogateescape)."""
    tail = f"{mark}{os.getpid()}-{host_tag()}-{secrets.token_hex(3)}"
    room = limit - 1 - len(tail.encode())
    stem = os.fsencode(name)[: max(room, 0)]
    while stem and _cuts_a_character(stem):
        stem = stem[:-1]
    return "." + os.fsdecode(stem) + tail


def _cuts_a_character(stem: bytes) -> bool:
    try:
        stem.decode("utf-8")
        return False
    except UnicodeDecodeError as exc:
        return exc.start >= len(stem) - 3  # an incomplete sequence at the end (not bytes that never were UTF-8)


def owner_pid(name: str) -> tuple[int, str] | None:
    """(pid, host tag) of a lucid temporary name, None for any other name."""
    if not name.startswith("."):
        return None
    m = _TAIL.search(name)
    return (int(m.group("pid")), m.group("host")) if m else None


@dataclass
class CleanReport:
    """What ``clean_stale`` removed, and the temporary files it kept (owner alive or elsewhere)."""

    directory: str
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    resumable: list[str] = field(default_factory=list)  # cut-off cluster runs: never removed here


def clean_stale(directory: str | os.PathLike, *, dry_run: bool = False) -> CleanReport:
    """Remove lucid temporary files in ``directory`` whose owning process is gone.

    Only names that ``temp_name`` makes are considered, only those made on this
    machine are removed, and never one whose process still runs."""
    directory = os.fspath(directory)
    report = CleanReport(directory)
    here = host_tag()
    with os.scandir(directory) as entries:
        names = [(e.name, e.path) for e in entries]
    found = [(name, path) for name, path in names if owner_pid(name) is not None]
    # a cluster run's parts have no owner process: a later `--resume` (from any client) continues them
    report.resumable = sorted(name for name, _ in names if name.startswith(".") and PART_MARK in name)
    for name, path in sorted(found):
        pid, host = owner_pid(name)
        if host != here or _owner_alive(pid, path):
            report.kept.append(name)
            continue
        if not dry_run:
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
            except FileNotFoundError:  # another cleaner was faster
                continue
            except OSError:
                report.failed.append(name)
                continue
        report.removed.append(name)
    return report


def _owner_alive(pid: int, path: str) -> bool:
    if pid == os.getpid() or os.name == "nt":  # on Windows os.kill(pid, 0) would terminate the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    except (OverflowError, ValueError):
        return False
    started = _start_time(pid)
    if started is None:
        return True
    try:
        modified = os.lstat(path).st_mtime
    except OSError:
        return True
    return started <= modified + 1.0  # started after the file's last change: a reused pid


def _start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), from /proc; None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        ticks = int(fields[19])  # field 22, starttime, counted after the ")" that ends comm
        with open("/proc/stat", "rb") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def make_temp(directory: Path, name: str, mark: str = TMP_MARK, *, is_dir: bool = False) -> tuple[Path, int | None]:
    """Create (O_EXCL, or mkdir) a temporary file or directory for ``name``; (path, fd or None)."""
    limit = name_max(directory)
    for _ in range(100):
        path = directory / temp_name(name, mark, limit)
        try:
            if is_dir:
                os.mkdir(path, 0o777)
                return path, None
            return path, os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {directory}")  # pragma: no cover
