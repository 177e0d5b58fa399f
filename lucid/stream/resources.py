"""What the machine offers: CPUs for ``threads`` and physical memory for ``memory_limit``.

A thread count above the CPUs this process may use is clamped to them, and a
memory limit above the machine's memory is kept but warned about, each in one
line for ``PoolReport.warnings``.
"""

from __future__ import annotations

import os

from lucid.io.atomic import human_bytes


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def machine_memory() -> int | None:
    """Physical memory in bytes, or None where the OS does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def check_threads(threads: int | None) -> tuple[int | None, str | None]:
    """``threads`` (None: the default) clamped to the usable CPUs, and a warning if it was clamped."""
    if threads is None:
        return None, None
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise TypeError(f"threads must be an int, got {threads!r}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    cpus = usable_cpus()
    if threads <= cpus:
        return threads, None
    return cpus, f"threads {threads} is more than the {cpus} CPUs this process may use; using {cpus}"


def memory_warning(limit: int) -> str | None:
    """A warning when ``limit`` bytes exceed the machine's physical memory."""
    total = machine_memory()
    if total is None or limit <= total:
        return None
    return (f"memory limit {human_bytes(limit)} is more than this machine's {human_bytes(total)} of memory; "
            "a run that used it would swap or be killed")
