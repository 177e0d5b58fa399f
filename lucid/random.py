"""The random generator behind lucid's default initializers.

``lucid.random.seed(n)`` makes every later layer construction reproducible;
each initializer also takes ``rng=`` (a ``numpy.random.Generator``) to use
its own stream instead of this module's.
"""

from __future__ import annotations

import numpy as np

_generator: np.random.Generator = np.random.default_rng()


def seed(n: int) -> None:
    """Reset the module-level generator to a fresh ``numpy.random.default_rng(n)``."""
    global _generator
    _generator = np.random.default_rng(n)


def get_generator() -> np.random.Generator:
    """The module-level generator that initializers use when given no ``rng``."""
    return _generator


def resolve(rng: np.random.Generator | None) -> np.random.Generator:
    """``rng`` itself, or the module-level generator when ``rng`` is None."""
    if rng is None:
        return _generator
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator or None, got {type(rng).__name__}")
    return rng


def uniform(low: float, high: float, shape: tuple[int, ...], *, rng: np.random.Generator | None = None) -> np.ndarray:
    """float64 samples from U(low, high) of the given shape."""
    return resolve(rng).uniform(low, high, size=shape)
