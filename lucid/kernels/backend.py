"""Which kernels run the forward with winners and the backward: numpy or numba.

``LUCID_KERNELS=auto|numba|numpy`` (default ``auto``), or ``set_backend(name)``.

- ``numpy``: the reference kernels (``lucid.kernels.maxpool``) only; numba is never imported.
- ``numba``: the compiled loops (``lucid.kernels.compiled``) wherever they apply.
- ``auto``: for each window geometry, the numpy kernels until this process
  has spent ``CROSSOVER_SECONDS`` on it in work the compiled loops would do,
  then the compiled loops.  Loading numba costs a process about 1 s and
  120 MB, and a geometry's first compile a few seconds per install, so a
  small volume never pays them, and a long run or a training loop pays them
  once, after at most that much time.  ``preload()`` skips the wait.

Values-only pooling with stride 1 always runs the numpy kernels: they are
at memory speed already.  When numba cannot be imported, or its cache
directory is not writable, lucid warns once and runs the numpy kernels.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import math
import os
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from lucid.kernels.maxpool import MIN, Axes, Order, Windows, _interior, code_mults

BACKENDS = ("auto", "numba", "numpy")
CROSSOVER_SECONDS = 1.0  # numpy time after which "auto" loads numba: about what loading it costs
# A streamed run of this much input loads numba from its first slab under "auto": the numpy kernels
# take 1-4 s per GiB on a forward and backward, so the compiled ones (1.2-2x faster there) save
# about what loading numba costs (1 s) from here on.
RUN_CROSSOVER_BYTES = 1 << 30
NUMBA_RSS_BYTES = 130 << 20  # what numba and the loaded kernels add to a process (measured 115 MB)
TILE_BYTES = 2 << 20  # output rows per backward task: they stay in L2/L3
MAX_TAPS = 125  # taps per window the compiled loops unroll; bigger kernels run numpy's separable passes
FORWARD_TAPS_PER_INPUT = 2  # "auto" runs the forward compiled while windows read at most this many taps per input

_choice: str | None = None
_local = threading.local()  # a per-thread override: kernels("numpy") for runs whose budget cannot hold numba
_module = None  # lucid.kernels.compiled, once loaded
_failed = False
_preloaded = False  # preload(): "auto" runs compiled from the first call
_numpy_seconds: dict[tuple, float] = {}  # per kernel and geometry: numpy time on work the compiled loops could do
_launch = threading.Lock()  # numba's workqueue layer aborts on two launches at once: one at a time


def _checked(name: str | None) -> str | None:
    if name is not None and name not in BACKENDS:
        raise ValueError(f"kernel backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    return name


def set_backend(name: str | None) -> None:
    """Choose the kernels for this process (None: back to ``LUCID_KERNELS``)."""
    global _choice
    _choice = _checked(name)


def backend() -> str:
    name = getattr(_local, "name", None) or _choice or os.environ.get("LUCID_KERNELS", "").strip().lower() or "auto"
    return name if name in BACKENDS else "auto"


@contextlib.contextmanager
def kernels(name: str | None):
    """Use ``name``'s kernels in this thread for the duration (None: no change)."""
    before = getattr(_local, "name", None)
    _local.name = _checked(name) or before
    try:
        yield
    finally:
        _local.name = before


def may_load_numba() -> bool:
    """Whether this process may load numba at all."""
    if backend() == "numpy" or _failed:
        return False
    return _module is not None or importlib.util.find_spec("numba") is not None


def for_run(windows: Windows, kinds: Sequence[Kind], input_bytes: int) -> bool:
    """Whether a streamed run of ``input_bytes`` should load numba for ``kinds`` of work
    (its memory plan then counts ``NUMBA_RSS_BYTES``, and the engine preloads).

    ``auto``: only runs of at least ``RUN_CROSSOVER_BYTES``.  A slab-by-slab run
    knows its size up front, so it decides once instead of after 1 s of numpy
    time: a small volume never loads numba and its memory estimate says so."""
    if not may_load_numba() or not any(applies(np.float32, windows, kind) for kind in kinds):
        return False
    return backend() == "numba" or input_bytes >= RUN_CROSSOVER_BYTES


def cache_dir() -> Path:
    """numba's cache: ``NUMBA_CACHE_DIR``, else lucid's directory in the user cache."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lucid" / "numba"


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".lucid-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


def _fallback(reason: str) -> None:
    global _failed
    _failed = True
    warnings.warn(f"lucid: compiled kernels unavailable ({reason}); using the numpy kernels", RuntimeWarning,
                  stacklevel=4)


def _load():
    """lucid.kernels.compiled, importing numba on first use; None when it cannot be had."""
    global _module
    if _module is not None or _failed:
        return _module
    where = cache_dir()
    if not _writable(where):
        _fallback(f"numba cache directory {where} is not writable")
        return None
    os.environ["NUMBA_CACHE_DIR"] = str(where)
    if "numba" in sys.modules:  # imported before lucid: its config read the environment already
        sys.modules["numba"].config.CACHE_DIR = str(where)
    # omp stalled for whole scheduler slices when another process held a core (issue #17)
    os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")
    try:
        from lucid.kernels import compiled
    except Exception as exc:  # ImportError, or numba's own errors on a broken install
        _fallback(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'cannot import numba'}")
        return None
    _module = compiled
    return compiled


def preload() -> bool:
    """Load numba now (unless the backend is ``numpy``): for a process that knows it will run
    long, so ``auto`` uses the compiled loops from the first call.  Returns whether they loaded."""
    global _preloaded
    _preloaded = backend() != "numpy" and _load() is not None
    return _preloaded


Kind = str  # "pool" (values), "argpool" (values and winners) or "unpool" (the backward)


def _direct(windows: Windows) -> bool:
    """Whether windows read so few taps per input element that the direct loop wins."""
    taps = windows[0].kernel * windows[1].kernel * windows[2].kernel
    return taps <= FORWARD_TAPS_PER_INPUT * math.prod(w.stride for w in windows)


def applies(dtype: np.dtype, windows: Windows, kind: Kind = "unpool") -> bool:
    """Whether the compiled loops handle this dtype, geometry and kind of work (and, under ``auto``, win).

    Measured against the numpy kernels (2 threads): the backward wins on every
    geometry; the forward with winners too (the direct loop 5-7x for k=2 s=2,
    the separable one 2.8-6.4x for k=3 s=2 and 3.6-3.7x for k=3 s=1, floats
    and integers); values only, the direct loop 1.6-1.9x for k=2 s=2 and the
    separable one 0.9-2.0x for k=3 s=2, while numpy's passes with stride 1 are
    at memory speed already (the separable loop 1.0-1.1x there).
    """
    dtype = np.dtype(dtype)
    taps = windows[0].kernel * windows[1].kernel * windows[2].kernel
    if not (dtype.kind in "iu" or dtype in (np.float32, np.float64)) or taps > MAX_TAPS:
        return False
    return kind != "pool" or _direct(windows) or math.prod(w.stride for w in windows) > 1


def _chosen(dtype, windows: Windows, kind: Kind):
    """The compiled module when it should run this work, else None."""
    name = backend()
    if name == "numpy" or _failed or not applies(dtype, windows, kind):
        return None
    if name == "auto" and not _preloaded:
        if _numpy_seconds.get((kind, _geometry(windows)), 0.0) < CROSSOVER_SECONDS:
            return None
    return _load()


def _geometry(windows: Windows) -> tuple:
    """What a compiled loop is made for: (kernels, strides, dilations), one per axis each."""
    return tuple(tuple(getattr(w, f) for w in windows) for f in ("kernel", "stride", "dilation"))


class numpy_time:
    """Times numpy work the compiled loops could have done (the ``auto`` rule counts it).

    Per kernel and window geometry, because each geometry compiles its own
    loop (seconds, on a cold cache): a process that tries many shapes once
    each, a test suite or a notebook, never compiles them all."""

    def __init__(self, dtype, windows: Windows, kind: Kind):
        self.key = (kind, _geometry(windows))
        self.counts = backend() == "auto" and not _failed and applies(dtype, windows, kind)

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        if self.counts:
            _numpy_seconds[self.key] = _numpy_seconds.get(self.key, 0.0) + time.perf_counter() - self.start


def _numba():
    import numba  # loaded already, by _load()

    return numba


def _threads(threads: int | None) -> None:
    numba = _numba()
    numba.set_num_threads(max(1, min(numba.config.NUMBA_NUM_THREADS, threads or numba.config.NUMBA_NUM_THREADS)))


_seen: set[tuple] = set()


def _compiling(key: tuple) -> None:
    """Say once on stderr when a kernel is compiled for this install (a marker file per geometry)."""
    if key in _seen:
        return
    _seen.add(key)
    marker = cache_dir() / f"lucid-{hashlib.sha1(repr(key).encode()).hexdigest()[:16]}.compiled"
    if marker.exists():
        return
    print("lucid: compiling a kernel for this window shape (once per install, a few seconds)",
          file=sys.stderr, flush=True)
    try:
        marker.touch()
    except OSError:
        pass


def _view_as(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """``a`` reshaped without a copy, or None when its axes cannot merge (reshape would copy)."""
    view = a.view()
    try:
        view.shape = shape
    except AttributeError:
        return None
    return view


def _as_4d(a: np.ndarray, axes: Axes) -> np.ndarray | None:
    """A (lead, P, Q, R) view of ``a`` with ``axes`` last, or None when the lead axes cannot merge."""
    if tuple(axes) == tuple(range(a.ndim - 3, a.ndim)) and a.flags.c_contiguous:
        return a.reshape(-1, *a.shape[-3:])  # the common case, without moveaxis's checks
    moved = np.moveaxis(a, axes, (-3, -2, -1))
    return _view_as(moved, (math.prod(moved.shape[:-3]), *moved.shape[-3:]))


def _views(arrays, axes: Axes):
    """Matching (lead, P, Q, R) views of ``arrays``: one set, or one per lead index when they cannot merge."""
    views = [_as_4d(a, axes) for a in arrays]
    if all(v is not None for v in views):
        return [views]
    moved = [np.moveaxis(a, axes, (-3, -2, -1)) for a in arrays]
    return [[m[i][None] for m in moved] for i in np.ndindex(*moved[0].shape[:-3])]


SCRATCH_BYTES = 256 << 10  # the separable forward's rows per task: they stay in L2


def argpool(x: np.ndarray, axes: Axes, windows: Windows, mults, pad_value, order: Order, out, threads) -> bool:
    """Fill ``out`` (values, codes; codes None for values only) with a compiled forward;
    False when it should not run here."""
    values, codes = out
    winners = codes is not None
    mod = _chosen(x.dtype, windows, "argpool" if winners else "pool")
    if mod is None:
        return False
    if codes is None:
        codes = np.empty((1, 1, 1, 1), np.uint8)  # not touched
    views = (_views((x, values, codes), axes) if winners
             else [(xv, vv, codes) for xv, vv in _views((x, values), axes)])
    # the separable loop runs along each plane's rows as one run: (lead, D, H*W) views of the
    # input and outputs; other layouts take the direct loop
    planes = [[_view_as(a, (*a.shape[:2], a.shape[2] * a.shape[3])) for a in view] for view in views]
    direct = _direct(windows) or any(p is None for view in planes for p in view)
    mults = tuple(mults) if winners else code_mults(windows)  # values only: any, the same each time
    key = ("argpool" if direct else "separable", *_geometry(windows), mults, order is MIN, winners)
    kernel = (mod.argpool_kernel if direct else mod.separable_kernel)(*key[1:])
    tables = [mod.tap_table(w, pad_value is not None) for w in windows]
    interior = np.array([_interior(w) for w in windows], np.int64)
    pads = np.array([w.pad for w in windows], np.int64)
    pad = x.dtype.type(0 if pad_value is None else pad_value)
    with _launch:
        _threads(threads)
        _compiling((key, x.dtype.str, codes.dtype.str))
        for (xv, vv, cv), (xp, vp, cp) in zip(views, planes):
            if direct:
                kernel(xv, vv, cv, *tables, interior, pads, pad)
            else:
                h = windows[1]
                row_bytes = xv.shape[-1] * (xv.itemsize + 4)
                band = max(1, (SCRATCH_BYTES // row_bytes - h.span) // h.stride + 1)
                tasks = vv.shape[0] * vv.shape[1] * -(-vv.shape[2] // band)
                chunks = min(tasks, 8 * _numba().get_num_threads())  # a few per thread: balance
                kernel(xp, xv.shape[3], vp, cp, *tables, interior, pads, pad, band, chunks)
    return True


def unpool(grad, codes, axes: Axes, windows: Windows, mults, out: np.ndarray, threads, fresh: bool) -> bool:
    """Add ``grad`` into ``out`` at the winners with the compiled loops; False when they should not run here."""
    mod = _chosen(out.dtype, windows, "unpool")
    priority = sorted(range(3), key=lambda r: -mults[r])
    if (mod is None or tuple(mults) != code_mults(windows, priority)
            or any(out.shape[a] != w.size_in for a, w in zip(axes, windows))):
        return False
    axes_p = tuple(axes[r] for r in priority)
    wins = [windows[r] for r in priority]
    geometry = _geometry(wins)
    # windows that tile the input write each position once: no zero pass, no read of ``out``
    tiling = fresh and all(w.stride == w.kernel and w.pad == 0 and (w.dilation == 1 or w.kernel == 1) for w in wins)
    kernel = mod.tiling_unpool_kernel(geometry[0]) if tiling else mod.unpool_kernel(*geometry)
    pads = np.array([w.pad for w in wins], np.int64)
    with _launch:
        _threads(threads)
        _compiling(("unpool", tiling, *geometry, grad.dtype.str, out.dtype.str, codes.dtype.str))
        for gv, cv, ov in _views((grad, codes, out), axes_p):
            if tiling:
                kernel(gv, cv, ov, out.dtype.type(0))
                continue
            # Tasks own rows along the most significant axis, TILE_BYTES of ``out`` each: measured
            # 4x faster than one task over 8 MiB (2x from threads, the rest from the cache).
            # Each task replays the outputs of about span/stride rows beyond the ones it owns.
            row_bytes = max(1, ov[0, 0].nbytes)
            rows = max(wins[0].span, min(ov.shape[1], TILE_BYTES // row_bytes))
            kernel(gv, cv, ov, pads, rows, fresh)
    return True
