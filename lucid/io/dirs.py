"""Output directories created as ``mkdir -p`` would, and removed again if the run fails."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from lucid.io.base import LucidIOError

__all__ = ["missing_dirs", "check_creatable", "make_dirs", "remove_dirs"]


def missing_dirs(dest: str | os.PathLike) -> list[Path]:
    """The directories ``mkdir -p`` would create for ``dest``'s parent, outermost first."""
    missing = []
    directory = Path(os.fspath(dest)).parent  # relative stays relative, as the user wrote it
    while not os.path.lexists(directory):
        missing.append(directory)
        directory = directory.parent
    return missing[::-1]


def check_creatable(dest: str | os.PathLike) -> None:
    """Raise ``LucidIOError`` unless ``dest``'s missing directories can be created."""
    missing = missing_dirs(dest)
    if not missing:
        return
    base = missing[0].parent
    shown = os.fspath(dest)
    if not base.is_dir():
        raise LucidIOError(f"{shown}: cannot create directory {missing[0]}: {base} is not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise LucidIOError(f"{shown}: cannot create directory {missing[0]}: {base} is not writable")


def make_dirs(dests: Iterable[str | os.PathLike]) -> list[Path]:
    """Create the missing parent directories of every destination; returns those created, in order."""
    created: list[Path] = []
    for dest in dests:
        check_creatable(dest)
        for directory in missing_dirs(dest):
            try:
                os.mkdir(directory)
            except FileExistsError:  # another run made it meanwhile: not ours to remove
                continue
            except OSError as exc:
                remove_dirs(created)
                raise LucidIOError(f"{os.fspath(dest)}: cannot create directory {directory}: {exc.strerror}") from None
            created.append(directory)
    return created


def remove_dirs(created: list[Path]) -> None:
    """Remove directories made by :func:`make_dirs`, innermost first, where they are still empty."""
    for directory in reversed(created):
        try:
            os.rmdir(directory)
        except OSError:  # not empty (another run uses it) or already gone
            pass
