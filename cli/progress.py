"""A tqdm bar on stderr driven by ``pool3d_file``'s ``progress(done, total, bytes_read)`` callback."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator

Callback = Callable[[int, int, int], None]


def wanted(quiet: bool) -> bool:
    """A bar only for a person watching: stderr is a terminal and not ``--quiet``."""
    return not quiet and sys.stderr.isatty()


@contextmanager
def progress_bar(enabled: bool, description: str = "pooling") -> Iterator[Callback | None]:
    """Yield a progress callback (None when disabled); the bar is closed however the run ends."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int, bytes_read: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=description, unit="slab", file=sys.stderr, leave=False,
                       dynamic_ncols=True)
        bar.set_postfix_str(f"{bytes_read / (1 << 20):.1f} MiB read", refresh=False)
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()
