"""Which cluster a run uses: join one (``--scheduler``, ``--scheduler-file``, ``DASK_SCHEDULER_ADDRESS``)
or start a local one of N worker processes on 127.0.0.1 (``--workers N``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

INSTALL_HINT = "install the dask extra: pip install 'lucid-pool[dask]'"
ENV_ADDRESS = "DASK_SCHEDULER_ADDRESS"


class ClusterError(RuntimeError):
    """A cluster that cannot be reached or started (one line, exit 1)."""


def import_distributed():
    """``distributed``, or one line naming the extra to install."""
    try:
        import distributed
    except ImportError:
        raise ClusterError(f"dask.distributed is not installed; {INSTALL_HINT}") from None
    return distributed


@dataclass(frozen=True)
class ClusterSpec:
    """Where to run: an address, a scheduler file, or a local cluster of ``workers`` processes."""

    scheduler: str | None = None
    scheduler_file: str | None = None
    workers: int | None = None
    memory_limit: int | str | None = None  # per local worker process; dask's default ("auto") when None
    timeout: float = 30  # seconds to reach the scheduler (or start the local cluster)

    def __post_init__(self) -> None:
        given = [n for n, v in (("scheduler", self.scheduler), ("scheduler_file", self.scheduler_file),
                               ("workers", self.workers)) if v is not None]
        if len(given) > 1:
            raise ValueError(f"give one of scheduler, scheduler_file and workers, not {' and '.join(given)}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")

    @classmethod
    def from_options(cls, scheduler: str | None = None, scheduler_file: str | None = None,
                     workers: int | None = None, memory_limit=None, env=os.environ) -> ClusterSpec | None:
        """The cluster asked for, or None: run on this machine's streaming engine.

        ``DASK_SCHEDULER_ADDRESS`` counts as ``scheduler`` when nothing else is given."""
        if scheduler is None and scheduler_file is None and workers is None:
            scheduler = env.get(ENV_ADDRESS) or None
            if scheduler is None:
                return None
        return cls(scheduler, scheduler_file, workers, memory_limit)

    def describe(self) -> str:
        if self.scheduler:
            return f"scheduler {self.scheduler}"
        if self.scheduler_file:
            return f"scheduler file {self.scheduler_file}"
        return f"local cluster of {self.workers} worker process{'es' if self.workers != 1 else ''}"


@contextlib.contextmanager
def connect(spec: ClusterSpec, timeout: float | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` for ``spec``; a local cluster is started here and stopped on exit."""
    distributed = import_distributed()
    timeout = spec.timeout if timeout is None else timeout
    cluster = None
    try:
        if spec.workers is not None:
            cluster = distributed.LocalCluster(
                n_workers=spec.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address="127.0.0.1:0", worker_dashboard_address="127.0.0.1:0", scheduler_port=0,
                memory_limit=spec.memory_limit if spec.memory_limit is not None else "auto",
            )
            client = distributed.Client(cluster, timeout=timeout)
        elif spec.scheduler_file is not None:
            if not os.path.exists(spec.scheduler_file):
                raise ClusterError(f"{spec.scheduler_file}: no such scheduler file")
            client = distributed.Client(scheduler_file=spec.scheduler_file, timeout=timeout)
        else:
            client = distributed.Client(spec.scheduler, timeout=timeout)
    except ClusterError:
        if cluster is not None:
            cluster.close()
        raise
    except Exception as exc:  # OSError, TimeoutError, a worker that fails to start (RuntimeError)  # noqa: BLE001
        if cluster is not None:
            cluster.close()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClusterError(f"cannot reach the {spec.describe()}: {first}") from None
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
