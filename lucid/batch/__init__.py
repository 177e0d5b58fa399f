"""Many files, one task each, on ``dask.distributed`` (``lucid batch pool3d``).

``inputs`` turns paths, globs and list files into (input, output) pairs;
``provenance`` tells whether an existing output is this run's result;
``runner`` submits one :class:`~lucid.stream.job.PoolJob` per file.
"""

from lucid.batch.inputs import FilePair, plan_files
from lucid.batch.runner import BatchReport, FileResult, run_batch

__all__ = ["BatchReport", "FilePair", "FileResult", "plan_files", "run_batch"]
