"""lucid on dask (the optional ``[dask]`` extra).

``lucid.dask.max_pool3d`` and ``lucid.dask.max_pool3d_backward`` pool dask
arrays lazily (``lucid.dask.array``).  Importing ``lucid`` never imports
dask; these names do, and say which extra to install when it is missing.
"""

from __future__ import annotations

__all__ = ["max_pool3d", "max_pool3d_backward"]


def __getattr__(name: str):
    if name in __all__:
        try:
            from lucid.dask import array
        except ImportError as exc:
            if "dask" not in str(exc):
                raise
            from lucid.dask.cluster import INSTALL_HINT

            raise ImportError(f"lucid.dask.{name} needs dask; {INSTALL_HINT}") from None
        return getattr(array, name)
    raise AttributeError(f"module 'lucid.dask' has no attribute {name!r}")
