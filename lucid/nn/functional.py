"""Functional interface: ``lucid.nn.functional.max_pool3d`` and friends."""

from lucid.nn.pool_op import max_pool3d  # noqa: F401
