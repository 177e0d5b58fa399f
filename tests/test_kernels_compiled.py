"""Compiled (numba) kernels: bit for bit the numpy kernels and PyTorch; the choice, fallback and cache logic.

Every window geometry compiles its own kernels (a few seconds each on a cold
cache), so the data, shapes, padding, layouts and values are drawn at random
but the geometries come from a short list.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lucid.kernels import backend, maxpool, tiled
from lucid.kernels.maxpool import MAX, MIN
from lucid.kernels.windows import PoolSpec

numba = pytest.importorskip("numba")
try:
    import torch
except ImportError:  # PyTorch is a reference only: skip its comparisons
    torch = None

# (kernel, stride, padding, dilation, ceil_mode): non-overlapping, overlapping, padded and
# dilated with a ceil-mode overhang, and a mixed one with padding more than half the kernel
GEOMETRIES = [
    ((2, 2, 2), (2, 2, 2), (0, 0, 0), (1, 1, 1), False),
    ((3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), False),
    ((3, 3, 3), (2, 2, 2), (1, 1, 1), (2, 2, 2), True),
    ((2, 3, 1), (1, 2, 3), (2, 1, 0), (2, 1, 1), True),
]
# (geometry, order, dtype): every geometry on float32 and int16, the others on one each
SIGNATURES = ([(g, MAX, np.float32) for g in range(4)] + [(g, MAX, np.int16) for g in range(4)]
              + [(0, MAX, np.float64), (0, MAX, np.uint8), (2, MIN, np.float32), (3, MIN, np.int16)])


@pytest.fixture(autouse=True)
def _restore_backend():
    yield
    backend.set_backend(None)


def _run(name, x, axes, windows, pad_value, order, grad, priority=(0, 1, 2)):
    """(values, codes, gradient, values of the values-only forward) with ``name``'s kernels."""
    backend.set_backend(name)
    mults = maxpool.code_mults(windows, priority)
    values, codes = tiled.argpool(x, axes, windows, mults, pad_value, order)
    out = np.empty(x.shape, grad.dtype)
    g = tiled.unpool(grad, codes, axes, windows, mults, out, lead=priority[0], fresh=True)
    return values, codes, g, tiled.pool(x, axes, windows, pad_value, order)


def _data(rng, shape, dtype, specials: float):
    if np.dtype(dtype).kind == "f":
        x = rng.integers(-3, 4, shape).astype(dtype)  # few values: many ties
        mask = rng.random(shape) < specials
        x[mask] = rng.choice(np.array([np.nan, np.inf, -np.inf, -0.0], dtype), int(mask.sum()))
        return x
    info = np.iinfo(dtype)
    return rng.choice(np.array([info.min, info.max, 0, 1, 2], dtype), shape)


@st.composite
def cases(draw):
    g, order, dtype = draw(st.sampled_from(SIGNATURES))
    k, s, p, d, ceil = GEOMETRIES[g]
    mode = draw(st.sampled_from(["zeros", "ignore"]))
    if mode == "ignore":
        p = tuple(min(pp, kk // 2) for pp, kk in zip(p, k))
    sizes = [draw(st.integers(1, 11)) for _ in range(3)]
    lead = [draw(st.integers(1, 3)) for _ in range(draw(st.integers(1, 2)))]
    try:
        windows = PoolSpec.create(k, s, p, d, ceil, mode).windows(sizes)
    except ValueError:  # the windows do not fit: a size every geometry fits
        sizes = [12, 12, 12]
        windows = PoolSpec.create(k, s, p, d, ceil, mode).windows(sizes)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = _data(rng, (*lead, *sizes), dtype, draw(st.sampled_from([0.0, 0.05, 0.3])))
    layout = draw(st.sampled_from(["C", "C", "F", "strided", "moved"]))
    axes = (x.ndim - 3, x.ndim - 2, x.ndim - 1)
    if layout == "F":
        x = np.asfortranarray(x)
    elif layout == "strided":
        big = np.zeros([n * 2 for n in x.shape], x.dtype)
        big[tuple(slice(0, None, 2) for _ in x.shape)] = x
        x = big[tuple(slice(0, None, 2) for _ in x.shape)]
    elif layout == "moved":  # pooled axes first in memory, the carried axes last
        x = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, axes, range(3))), range(3), axes)
    return x, axes, windows, mode, order


# derandomize: each (geometry, dtype, layout, priority) compiles its own kernels, so the same
# examples every run let numba's cache serve a second run (a random draw compiled 32 new ones)
@settings(max_examples=50, deadline=None, derandomize=True)
@given(cases(), st.integers(0, 99), st.booleans())
def test_compiled_matches_numpy_bit_for_bit(case, seed, engine_order):
    """Values (with winners, and values only), codes row-major or in a streaming engine's
    priority (slabs along w; float32 only, to keep the kernels compiled on a cold cache
    few), and gradients; both compiled forwards (direct, separable) are drawn."""
    x, axes, windows, mode, order = case
    priority = (2, 0, 1) if engine_order and x.dtype == np.float32 else (0, 1, 2)
    pad = 0 if mode == "zeros" else None
    out_shape = list(x.shape)
    for a, w in zip(axes, windows):
        out_shape[a] = w.size_out
    grad = np.random.default_rng(seed).standard_normal(out_shape).astype(np.float32)
    grad.flat[::7] = -0.0  # signed zeros keep their bits through the sums
    ref = _run("numpy", x, axes, windows, pad, order, grad, priority)
    got = _run("numba", x, axes, windows, pad, order, grad, priority)
    # One known difference: on a tie of -0.0 and +0.0 the compiled loops keep the first, as
    # PyTorch does, where np.maximum may return the second (README, "Semantics").  Codes agree.
    for a, b in ((ref[0], got[0]), (ref[3], got[3])):
        zeros = (a == 0) & (b == 0)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(np.where(zeros, 0, a), np.where(zeros, 0, b), equal_nan=a.dtype.kind == "f")
    for a, b in zip(ref[1:3], got[1:3]):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


@pytest.mark.parametrize("kernel, stride, padding", [
    ((1, 1, 6), (2, 2, 1), (0, 0, 3)),  # the direct loop
    ((2, 2, 6), (2, 2, 1), (0, 0, 3)),  # the separable one
])
def test_padding_wider_than_the_input(kernel, stride, padding):
    """W = 1 padded by 3 on each side: the first output whose taps are all inside would be
    output 3 of 2 (the direct loop once wrote its edge outputs past the end of the row)."""
    x = (np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4, 1) - 5)
    windows = PoolSpec.create(kernel, stride, padding).windows(x.shape[-3:])
    grad = np.ones([1, 1] + [w.size_out for w in windows], np.float32)
    ref = _run("numpy", x, (2, 3, 4), windows, 0, MAX, grad)
    got = _run("numba", x, (2, 3, 4), windows, 0, MAX, grad)
    for a, b in zip(ref, got):
        assert np.array_equal(a, b)


def test_compiled_backward_adds_into_a_carry_buffer():
    """Not fresh: the streaming engine's carry rows hold partial sums that the kernel adds to."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 9, 8, 7)).astype(np.float32)
    windows = PoolSpec.create(3, 1, 1).windows(x.shape[1:])
    mults = maxpool.code_mults(windows, (1, 0, 2))  # the engine's order: slab axis most significant
    _, codes = tiled.argpool(x, (1, 2, 3), windows, mults)
    grad = rng.standard_normal(codes.shape).astype(np.float32)
    start = rng.standard_normal(x.shape).astype(np.float32)
    results = []
    for name in ("numpy", "numba"):
        backend.set_backend(name)
        results.append(tiled.unpool(grad, codes, (1, 2, 3), windows, mults, start.copy(), lead=1).tobytes())
    assert results[0] == results[1]


@pytest.mark.skipif(torch is None, reason="PyTorch not importable")
@pytest.mark.parametrize("g", [0, 1, 2])
def test_compiled_matches_pytorch(g):
    import lucid.nn.functional as F
    from lucid.tensor import Tensor

    k, s, p, d, ceil = GEOMETRIES[g]
    p = tuple(min(pp, kk // 2) for pp, kk in zip(p, k))  # PyTorch's padding limit
    rng = np.random.default_rng(1)
    x = rng.integers(-3, 4, (2, 3, 9, 10, 11)).astype(np.float32)
    x[0, 0, 1, 1, 1] = np.nan
    x[1, 2, 3, :, 4] = np.inf
    backend.set_backend("numba")
    t = Tensor(x.copy(), requires_grad=True)
    kw = dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil)
    y, idx = F.max_pool3d(t, return_indices=True, padding_mode="ignore", **kw)
    grad = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(Tensor(grad))
    tx = torch.tensor(x, requires_grad=True)
    ty, tidx = torch.nn.functional.max_pool3d(tx, return_indices=True, **kw)
    ty.backward(torch.tensor(grad))
    assert y.data.tobytes() == ty.detach().numpy().tobytes()
    assert np.array_equal(idx.data, tidx.numpy())
    assert t.grad.data.tobytes() == tx.grad.numpy().tobytes()


_PROGRAM = """
import sys, warnings, numpy as np
from lucid.kernels import backend, maxpool, tiled
from lucid.kernels.windows import PoolSpec
x = np.arange(64, dtype=np.float32).reshape(4, 4, 4)
w = PoolSpec.create(2, 2, 0).windows(x.shape)
m = maxpool.code_mults(w)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    for _ in range(2):
        v, c = tiled.argpool(x, (0, 1, 2), w, m)
        g = tiled.unpool(np.ones_like(v), c, (0, 1, 2), w, m, np.empty_like(x), lead=0, fresh=True)
print(len(caught), str(caught[0].message) if caught else '')
print(v.ravel().tolist(), int(g.sum()))
print('numba' in sys.modules)
"""
_HIDE_NUMBA = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == 'numba' or name.startswith('numba.'):
            raise ImportError('numba hidden by the test')
sys.meta_path.insert(0, Block())
"""


def _child(code: str, **env) -> list[str]:
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, **env})
    assert run.returncode == 0, run.stderr
    return run.stdout.splitlines()


def test_falls_back_to_numpy_with_one_warning_when_numba_is_hidden():
    count, values, imported = _child(_HIDE_NUMBA + _PROGRAM, LUCID_KERNELS="numba")
    assert count.startswith("1 ") and "using the numpy kernels" in count and "numba hidden" in count
    assert values == str([21.0, 23.0, 29.0, 31.0, 53.0, 55.0, 61.0, 63.0]) + " 8"
    assert imported == "False"


def test_numpy_backend_never_imports_numba():
    assert _child(_PROGRAM, LUCID_KERNELS="numpy")[-1] == "False"


def test_auto_keeps_numpy_for_small_work_and_switches_after_the_crossover(tmp_path):
    assert _child(_PROGRAM, LUCID_KERNELS="auto")[-1] == "False"  # microseconds of work: numba never loads
    switch = _PROGRAM.replace("from lucid.kernels.windows",
                              "backend.CROSSOVER_SECONDS = 1e-9\nfrom lucid.kernels.windows")
    count, values, imported = _child(switch, LUCID_KERNELS="auto", NUMBA_CACHE_DIR=str(tmp_path))
    assert imported == "True" and count == "0 "  # the second calls ran compiled, with no warning
    assert values == str([21.0, 23.0, 29.0, 31.0, 53.0, 55.0, 61.0, 63.0]) + " 8"


def test_values_only_pooling_with_stride_1_never_imports_numba():
    """numpy's passes are at memory speed there; strided windows get the compiled loops."""
    code = ("import sys, numpy as np\nfrom lucid.kernels import backend, tiled\n"
            "from lucid.kernels.windows import PoolSpec\n"
            "backend.CROSSOVER_SECONDS = 0\nx = np.zeros((64, 64, 64), np.float32)\n"
            "tiled.pool(x, (0, 1, 2), PoolSpec.create({}).windows(x.shape))\nprint('numba' in sys.modules)")
    assert _child(code.format("3, 1, 1"), LUCID_KERNELS="numba") == ["False"]
    assert _child(code.format("3, 2, 1"), LUCID_KERNELS="numba") == ["True"]
    assert _child(code.format("2, 2, 0"), LUCID_KERNELS="numba") == ["True"]


def test_compiling_is_announced_once_per_geometry(tmp_path):
    run = subprocess.run([sys.executable, "-c", _PROGRAM], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "LUCID_KERNELS": "numba", "NUMBA_CACHE_DIR": str(tmp_path)})
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("lucid: compiling") == 2  # forward and backward, not once per call
    again = subprocess.run([sys.executable, "-c", _PROGRAM], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "LUCID_KERNELS": "numba", "NUMBA_CACHE_DIR": str(tmp_path)})
    assert "compiling" not in again.stderr  # cached for this install


_SEPARABLE = """
import numpy as np
from lucid.kernels import backend, compiled, maxpool, tiled
from lucid.kernels.windows import PoolSpec
x = np.random.default_rng(0).standard_normal((9, 9, 9)).astype(np.float32)
w = PoolSpec.create(3, 2, 1).windows(x.shape)
m = maxpool.code_mults(w)
v, c = tiled.argpool(x, (0, 1, 2), w, m)
tiled.unpool(np.ones_like(v), c, (0, 1, 2), w, m, np.empty_like(x), lead=0, fresh=True)
g = backend._geometry(w)
kernels = [compiled.separable_kernel(*g, m, False, True), compiled.unpool_kernel(*g)]
print(sum(sum(k.stats.cache_misses.values()) for k in kernels), sum(sum(k.stats.cache_hits.values()) for k in kernels))
"""


def test_a_second_process_loads_the_kernels_from_the_cache(tmp_path):
    """Each process must find the kernels compiled by an earlier one (a closure over numba
    functions once missed the cache every time: 8 s per process)."""
    env = dict(LUCID_KERNELS="numba", NUMBA_CACHE_DIR=str(tmp_path))
    assert _child(_SEPARABLE, **env)[-1] == "2 0"  # compiled: forward and backward
    assert _child(_SEPARABLE, **env)[-1] == "0 2"  # loaded


def test_cache_dir_from_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert backend.cache_dir() == tmp_path / "lucid" / "numba"
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "own"))
    assert backend.cache_dir() == tmp_path / "own"


def test_unwritable_cache_dir_falls_back_to_numpy(tmp_path):
    """A path under a regular file cannot be created, even by root (a read-only mode can be)."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    count, values, imported = _child(_PROGRAM, LUCID_KERNELS="numba", NUMBA_CACHE_DIR=str(blocker / "numba"))
    assert count.startswith("1 ") and "not writable" in count
    assert imported == "False"


def test_read_only_package_dir_still_caches_in_the_user_cache(tmp_path):
    """An install whose package directory cannot be written (site-packages as another user) caches elsewhere."""
    import shutil

    import lucid

    package = tmp_path / "site" / "lucid"
    shutil.copytree(os.path.dirname(lucid.__file__), package, ignore=shutil.ignore_patterns("__pycache__"))
    for root, dirs, files in os.walk(tmp_path / "site"):
        os.chmod(root, 0o555)
    try:
        env = {"PYTHONPATH": str(tmp_path / "site"), "LUCID_KERNELS": "numba", "XDG_CACHE_HOME": str(tmp_path / "c"),
               "PYTHONDONTWRITEBYTECODE": "1"}
        env_clean = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
        run = subprocess.run([sys.executable, "-c", _PROGRAM], capture_output=True, text=True, timeout=300,
                             env={**env_clean, **env})
    finally:
        for root, dirs, files in os.walk(tmp_path / "site"):
            os.chmod(root, 0o755)
    assert run.returncode == 0, run.stderr
    count, values, imported = run.stdout.splitlines()
    assert count.startswith("0") and imported == "True"
    assert list((tmp_path / "c" / "lucid" / "numba").rglob("*.nbi"))  # numba's index, in the user cache


def test_backend_names_and_the_thread_override():
    with pytest.raises(ValueError, match="numba, numpy"):
        backend.set_backend("fortran")
    backend.set_backend("numba")
    with backend.kernels("numpy"):
        assert backend.backend() == "numpy"
        with backend.kernels(None):
            assert backend.backend() == "numpy"
    assert backend.backend() == "numba"


def test_memory_plan_counts_numba_for_big_runs_when_the_budget_holds_it():
    from lucid.stream.plan import plan_slabs

    def plan(shape, k=2, s=2, p=0, limit=1 << 30, **kw):
        args = dict(slab_axis=0, in_itemsize=2, out_itemsize=2, memory_limit=limit)
        return plan_slabs(shape, (0, 1, 2), PoolSpec.create(k, s, p), **{**args, **kw})

    huge = (1024, 1024, 1024)  # 2 GiB of int16: above backend.RUN_CROSSOVER_BYTES
    big = plan(huge, backward=True)
    assert big.numba_bytes == backend.NUMBA_RSS_BYTES and big.slab_bytes <= 1 << 30
    tight = plan(huge, backward=True, limit=64 << 20)
    assert tight.numba_bytes == 0 and tight.slab_bytes <= 64 << 20  # the run keeps the numpy kernels
    assert plan(huge).numba_bytes == backend.NUMBA_RSS_BYTES  # values only, k=2 s=2: the direct loop
    assert plan(huge, 3, 2, 1).numba_bytes == backend.NUMBA_RSS_BYTES  # values only, strided: separable
    assert plan(huge, 3, 1, 1).numba_bytes == 0  # values only, stride 1: numpy at memory speed
    small = plan((256, 256, 256), backward=True)  # 32 MiB: loading numba would cost more than it saves
    assert small.numba_bytes == 0
    backend.set_backend("numba")
    assert plan((256, 256, 256), backward=True).numba_bytes == backend.NUMBA_RSS_BYTES
    backend.set_backend("numpy")
    assert plan(huge, backward=True).numba_bytes == 0


@pytest.mark.parametrize("crossover, loaded", [(0, "True"), (1 << 40, "False")])
def test_a_streamed_run_loads_numba_only_when_it_is_big_enough(tmp_path, crossover, loaded):
    """The CLI's streaming run decides from its size: numba from the first slab, or never."""
    code = ("import sys\nfrom lucid.kernels import backend\n"
            f"backend.RUN_CROSSOVER_BYTES = {crossover}\n"
            "from lucid_cli.main import main\n"
            f"main(['pool3d', 'sample_data/ct_phantom.nii.gz', '{tmp_path / 'out.nii.gz'}', '-k', '2', "
            f"'--grad-out', '{tmp_path / 'grad.nii.gz'}'], standalone_mode=False)\n"
            "print('numba' in sys.modules)")
    assert _child(code, LUCID_KERNELS="auto")[-1] == loaded


@pytest.mark.parametrize("g", [1, 2])
@pytest.mark.parametrize("rows", [1, 2, 5])
def test_streaming_engine_with_compiled_kernels_equals_numpy(g, rows):
    """Slabs, carry rows and the engine's axis priority: the same bits with either kernels."""
    from tests.test_stream_engine import _stream

    k, s, p, d, ceil = GEOMETRIES[g]
    spec = PoolSpec.create(k, s, p, d, ceil, "zeros")
    rng = np.random.default_rng(rows)
    x = rng.integers(-3, 4, (2, 11, 12, 10)).astype(np.float32)
    x[rng.random(x.shape) < 0.03] = np.nan
    results = []
    for name in ("numpy", "numba"):
        backend.set_backend(name)
        results.append([a.tobytes() for a in _stream(x, spec, rows)])
    assert results[0] == results[1]
