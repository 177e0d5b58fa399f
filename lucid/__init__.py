"""lucid: 3-D max pooling for volumes and videos, in memory or streamed from disk."""

__version__ = "0.1.0"

from lucid.tensor import Tensor  # noqa: E402
from lucid import nn  # noqa: E402
from lucid import random  # noqa: E402

__all__ = ["Tensor", "nn", "random", "__version__"]
