"""Functional interface: ``lucid.nn.functional.max_pool3d`` and friends."""

from lucid.nn.pool_op import max_pool3d  # noqa: F401
from lucid.nn.conv import conv3d  # noqa: F401
from lucid.nn.linear import linear  # noqa: F401
from lucid.nn.activation import relu  # noqa: F401
