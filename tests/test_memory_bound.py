"""Peak memory follows the budget, not the volume: a 128 MiB volume through a 16 MiB limit."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

LIMIT_MIB = 16
OVERHEAD_MIB = 150  # Python, numpy, h5py, nibabel and their allocators


@pytest.fixture(scope="module")
def big_volume(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.h5"
    rng = np.random.default_rng(0)
    n = 320  # 320^3 float32 = 125 MiB, eight times the limit
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("data", (n, n, n), np.float32, chunks=(8, n, n))
        for z in range(0, n, 8):
            ds[z : z + 8] = rng.standard_normal((8, n, n), dtype=np.float32)
    return path


def _run_child(args: str) -> dict:
    code = (
        "import json; from lucid.stream.api import peak_memory_mib, pool3d_file; "
        f"r = pool3d_file({args}); "
        "print(json.dumps({'peak': peak_memory_mib(), 'slabs': r.slabs, 'estimate': r.memory_estimate}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_baseline_overhead_is_what_we_think():
    code = "import json, lucid.stream.api as a, h5py, nibabel; print(json.dumps(a.peak_memory_mib()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert float(out) < OVERHEAD_MIB


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward+backward"])
def test_peak_memory_stays_within_limit_plus_overhead(big_volume, tmp_path, backward):
    grad = f", grad_out={str(tmp_path / 'grad.h5')!r}" if backward else ""
    stats = _run_child(
        f"{str(big_volume)!r}, {str(tmp_path / 'out.h5')!r}, 3, 2, 1, memory_limit='{LIMIT_MIB}M', "
        f"compression='lzf'{grad}"
    )
    assert stats["slabs"] > 8  # it really streamed
    assert stats["estimate"] <= LIMIT_MIB << 20
    assert stats["peak"] < LIMIT_MIB + OVERHEAD_MIB, stats
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert f["data"].shape == (160, 160, 160)
