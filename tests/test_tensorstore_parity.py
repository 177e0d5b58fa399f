"""Parity with TensorStore's ``downsample`` driver (``method="max"``), skipped without tensorstore.

TensorStore's window is ``[i*f, (i+1)*f)`` and a partial edge block is reduced over
its in-bounds voxels: lucid with kernel = stride = f, padding 0, ``ceil_mode=True``,
``padding_mode="ignore"``.
"""

from __future__ import annotations

import numpy as np
import pytest

from lucid.stream.api import pool3d_file

ts = pytest.importorskip("tensorstore")

SHAPES = [(7, 9, 11), (13, 5, 3), (1, 17, 6)]
FACTORS = [(2, 2, 2), (3, 2, 1), (2, 3, 4)]


def _data(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("factors", FACTORS)
def test_downsample_max_equals_lucid(dtype, shape, factors):
    a = _data(shape, dtype, seed=sum(shape) + sum(factors))
    want = ts.downsample(ts.array(a), list(factors), method="max").read().result()
    out = np.empty(want.shape, a.dtype)
    pool3d_file(a, out, kernel_size=factors, ceil_mode=True, padding_mode="ignore", memory_limit="64K")
    np.testing.assert_array_equal(out, want)


def test_zarr3_pyramid_level_equals_tensorstore_downsample(tmp_path):
    from lucid.pyramid import pyramid_file

    a = _data((21, 30, 19), np.uint16, 9)
    import h5py

    with h5py.File(tmp_path / "in.h5", "w") as f:
        f.create_dataset("data", data=a)
    pyramid_file(str(tmp_path / "in.h5"), str(tmp_path / "p.ome.zarr"), levels=3, isotropic=False,
                 memory_limit="1M")
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(tmp_path / "p.ome.zarr" / "0")}}
    level0 = ts.open(spec, read=True).result()
    np.testing.assert_array_equal(level0.read().result(), a)  # TensorStore reads our Zarr v3
    for i, f in ((1, 2), (2, 4)):
        want = ts.downsample(level0, [f, f, f], method="max").read().result()
        spec["kvstore"]["path"] = str(tmp_path / "p.ome.zarr" / str(i))
        np.testing.assert_array_equal(ts.open(spec, read=True).result().read().result(), want)
