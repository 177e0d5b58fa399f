"""lucid on dask (the optional ``[dask]`` extra).

``max_pool3d`` and ``max_pool3d_backward`` take and return lazy dask arrays,
one task per block; ``cluster`` finds or starts a ``dask.distributed`` cluster.
Importing ``lucid`` never imports dask; these functions do when called, and
say which extra to install when it is missing.
"""

from lucid.dask.array import max_pool3d, max_pool3d_backward

__all__ = ["max_pool3d", "max_pool3d_backward"]
