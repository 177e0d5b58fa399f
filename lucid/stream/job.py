"""``PoolJob``: one run described as data (what to read, how to pool, what to write, within which budget).

Small and picklable. The CLI builds one, ``pool3d_file`` runs one, and the
batch and Dask paths send copies of one to their workers, so every path runs
the same job the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from lucid.io.compression import DEFAULT as DEFAULT_COMPRESSION

if TYPE_CHECKING:
    from lucid.stream.api import PoolReport
    from lucid.stream.engine import Progress

DEFAULT_MEMORY_LIMIT = "512M"
# what a job's outputs depend on, besides its input files (not where they go, nor memory or threads)
_CONTENT_FIELDS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "padding_mode", "axes", "dataset",
                   "level", "out_dtype", "grad_dtype", "compression", "zarr_format", "shards")


@dataclass(frozen=True)
class PoolJob:
    """A ``pool3d`` run.  Field names and defaults are ``pool3d_file``'s keywords.

    ``stride`` defaults to ``kernel_size``; per-axis tuples follow the order in
    which the pooled axes appear in the file.  ``grad_out`` asks for the
    backward pass (routing ``grad_in``, ones when omitted).
    """

    input: str
    output: str | None = None
    kernel_size: int | tuple[int, ...] = 2
    stride: int | tuple[int, ...] | None = None
    padding: int | tuple[int, ...] = 0
    dilation: int | tuple[int, ...] = 1
    ceil_mode: bool = False
    padding_mode: str = "zeros"
    # reading
    axes: str | None = None
    dataset: str | None = None
    level: int | None = None  # an OME-Zarr input's resolution level (default 0)
    grad_in: str | None = None
    # writing
    out_dataset: str | None = None
    grad_out: str | None = None
    indices_out: str | None = None
    out_dtype: str | None = None
    grad_dtype: str = "float32"
    compression: str = DEFAULT_COMPRESSION
    zarr_format: int | None = None
    shards: Any = None
    force: bool = False
    make_dirs: bool = False
    # resources
    memory_limit: int | str = DEFAULT_MEMORY_LIMIT
    threads: int | None = None
    dry_run: bool = False
    # where: None runs this machine's streaming engine; a ``lucid.dask.cluster.ClusterSpec``
    # runs one dask task per block (``lucid.dask.volume``), ``resume`` continuing a cut-off run
    cluster: Any = None
    resume: bool = False
    block_bytes: int | str | None = None  # input bytes per dask task [default: lucid.dask.blocks.DEFAULT_BLOCK_BYTES]

    def run(self, progress: Progress | None = None) -> PoolReport:
        """Open, plan, stream and commit; see :func:`lucid.stream.api.pool3d_file`."""
        from lucid.stream.api import run_job

        return run_job(self, progress)

    def with_files(self, input: str, output: str | None, **files: str | None) -> PoolJob:
        """The same pooling and options on other files (``grad_in=``, ``grad_out=``, ``indices_out=``)."""
        return replace(self, input=input, output=output, **files)

    def fingerprint(self) -> str:
        """A short hash of what decides the output's content: the input file as it is now (path, size,
        mtime), the pooling and the output options.  Outputs carry it, so a rerun can tell whether an
        existing output is this run's result (``lucid batch`` skips those)."""
        from lucid.io import detect_format

        def identity(path: str | None):
            if path is None or not isinstance(path, (str, os.PathLike)):
                return None if path is None else type(path).__name__  # an array: nothing on disk to compare
            path = os.fspath(path)
            file = detect_format(path)[1]
            st = os.stat(file)
            return [os.path.realpath(file), path[len(file):], st.st_size, st.st_mtime_ns]

        what = {name: getattr(self, name) for name in _CONTENT_FIELDS}
        what.update(input=identity(self.input), grad_in=identity(self.grad_in))
        text = json.dumps(what, sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PoolJob:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
