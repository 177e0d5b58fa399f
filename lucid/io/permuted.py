"""A source whose file axes are a permutation of another volume's axes.

Used for an upstream gradient stored in a format that reorders axes on
writing (NIfTI puts the pooled axes first as x, y, z): it is read back in the
axis order of the input it belongs to, exactly as lucid would have written it.
"""

from __future__ import annotations

import numpy as np

from lucid.io.base import Layout, Source, normalize_index


class PermutedSource(Source):
    """``inner`` seen with its file axis ``j`` as axis ``perm[j]`` (the layout of ``like``)."""

    def __init__(self, inner: Source, perm: tuple[int, ...], layout: Layout):
        self.inner = inner
        self.perm = tuple(perm)
        self.inverse = tuple(int(i) for i in np.argsort(self.perm))
        self.name = inner.name
        self.path = inner.path
        self.dtype = inner.dtype
        self.layout = layout
        self.meta = inner.meta
        self.shape = tuple(inner.shape[j] for j in self.inverse)

    def files(self) -> tuple[str, ...]:
        return self.inner.files()

    def reader_overhead(self) -> int:
        return self.inner.reader_overhead()

    def check_complete(self) -> None:
        self.inner.check_complete()

    def read(self, index):
        index = normalize_index(index, self.shape, self.name)
        inner_index = tuple(index[a] for a in self.perm)
        return self.inner.read(inner_index).transpose(self.inverse)

    def close(self) -> None:
        self.inner.close()
