"""What the planner counts besides the slab buffers: the reader's chunk cache and
decompressor, the backward's per-tap tables, and kernels far wider than the
volume (issue #13.10)."""

from __future__ import annotations

import random
import re

import h5py
import numpy as np
import pytest

from lucid import Tensor
from lucid.kernels.maxpool import _edge_taps
from lucid.kernels.windows import AxisWindow
from lucid.nn.functional import max_pool3d
from lucid.stream import resources
from lucid.stream.api import pool3d_file
from lucid.stream.plan import MemoryLimitError


def _filtered(path, shape, chunks, dtype=np.float32):
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.ones(shape, dtype), chunks=chunks, compression="lzf")
    return path


def test_a_compressed_chunk_larger_than_the_budget_is_refused_naming_the_minimum(tmp_path):
    src = _filtered(tmp_path / "in.h5", (64, 256, 256), (64, 256, 256))  # one 16 MiB lzf chunk
    with pytest.raises(MemoryLimitError, match=r"in\.h5.*need at least .*try --memory-limit (\d+)M") as caught:
        pool3d_file(src, tmp_path / "out.h5", 2, memory_limit="16M", dry_run=True)
    minimum = int(re.search(r"try --memory-limit (\d+)M", str(caught.value)).group(1))
    assert minimum > 2 * 16  # the compressed chunk and its decompressed copy, besides the slab
    report = pool3d_file(src, tmp_path / "out.h5", 2, memory_limit=f"{minimum}M", compression="none")
    assert report.memory_estimate <= minimum << 20
    assert not list(tmp_path.glob(".*lucid-tmp*"))


def test_the_chunk_cache_is_one_input_slab_counted_in_the_estimate(tmp_path):
    src = _filtered(tmp_path / "in.h5", (64, 64, 64), (8, 64, 64))
    raw = tmp_path / "raw.h5"
    with h5py.File(raw, "w") as f:
        f.create_dataset("data", data=np.ones((64, 64, 64), np.float32), chunks=(8, 64, 64))
    kw = dict(kernel_size=2, memory_limit="1M", dry_run=True)
    filtered = pool3d_file(src, tmp_path / "a.h5", **kw)
    unfiltered = pool3d_file(raw, tmp_path / "b.h5", **kw)
    # Same slabs for the same limit would mean the cache and decompressor were not counted.
    assert filtered.memory_estimate <= 1 << 20 and unfiltered.memory_estimate <= 1 << 20
    assert filtered.slabs > unfiltered.slabs


def test_a_slab_larger_than_the_machine_is_refused_even_under_a_huge_limit(tmp_path):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((16, 16, 16), np.float32), np.eye(4)), tmp_path / "in.nii")
    total = resources.machine_memory()
    if total is None:
        pytest.skip("the OS does not say how much memory there is")
    with pytest.raises(MemoryLimitError, match=r"more than this machine's"):
        # The backward's tables hold one entry per window tap: 4001^3 of them.
        pool3d_file(tmp_path / "in.nii", tmp_path / "out.nii", 4001, 1, 2000, grad_out=tmp_path / "g.nii",
                    memory_limit="1T", dry_run=True)


def test_a_kernel_far_wider_than_the_volume_costs_its_real_taps():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 2, 6, 5, 7)).astype(np.float32)
    for mode, floor in (("zeros", 0.0), ("ignore", -np.inf)):
        y = max_pool3d(Tensor(x), 3001, 1, 1500, padding_mode=mode).numpy()
        assert y.shape == (1, 2, 6, 5, 7)
        # every window covers the whole volume and, in zeros mode, some padding
        want = np.maximum(x.max(axis=(2, 3, 4)), floor)[..., None, None, None]
        np.testing.assert_array_equal(y, np.broadcast_to(want, y.shape))


def test_edge_taps_keep_only_the_first_padding_tap():
    # The analytic taps equal the full tap list with every padding tap after the first removed:
    # later padding taps tie with the first and lose (first maximum, smaller code).
    rnd = random.Random(1)
    for _ in range(3000):
        k, s, d, p, n = rnd.randint(1, 9), rnd.randint(1, 4), rnd.randint(1, 4), rnd.randint(0, 12), rnd.randint(1, 12)
        pad_end = p + rnd.randint(0, 3)  # ceil_mode's overhang lies past pad_end
        size_out = max(1, (n + p + pad_end - d * (k - 1) - 1) // s + 1)
        w = AxisWindow(k, s, d, p, n, size_out, pad_end)
        for o in range(size_out):
            full, seen_pad = [], False
            for j in range(k):
                pos = o * s - p + j * d
                if not w.takes_part(pos) or (w.is_padding(pos) and seen_pad):
                    continue
                seen_pad |= w.is_padding(pos)
                full.append((j, None if w.is_padding(pos) else slice(pos, pos + 1)))
            assert _edge_taps(w, o) == tuple(full), (w, o)
