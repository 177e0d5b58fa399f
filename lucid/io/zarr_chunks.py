"""Whole-chunk reads and writes of a Zarr array in a local directory, without zarr-python's indexing path.

zarr-python 3 reads a box by scheduling every chunk on its event loop and
copying each decoded chunk into the result on that one thread; for a slab of
uncompressed 64^3 chunks that costs about 6x reading the chunk files and
copying them in place (``benchmarks/bench_zarr.py``).  :class:`ChunkReader`
does the latter: each chunk file of the box is read once (``readinto`` a
chunk buffer when it is stored raw), decoded by the same numcodecs codec
zarr-python would use, and copied into the result by a small thread pool
(file reads, numcodecs and numpy copies release the GIL).

Only layouts whose bytes mean exactly what zarr-python would make of them are
handled: a regular chunk grid; v3 with the ``bytes`` codec followed by gzip,
zstd or blosc (no transpose, no sharding, no checksum codec); v2 in C order
with no filters and any numcodecs compressor.  :func:`chunk_reader` returns
None for anything else, and the source reads through zarr-python as before.
A missing chunk file is the fill value, as in zarr-python.

:class:`ChunkWriter` is the other direction for the arrays lucid creates:
a box of whole chunks is cut into chunks, each encoded (none, gzip, zstd, or
the v2 numcodecs compressor) and written to its file by the thread pool, an
edge chunk padded with the fill value as zarr-python stores it.  zarr-python
would build a full chunk buffer per chunk, fill and copy it, and test it for
emptiness on its one event-loop thread.  Every chunk is written, empty or not
(zarr-python's ``write_empty_chunks=True``).  A box that is not made of whole
chunks goes through zarr-python, which merges it with what is stored.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor, wait
from itertools import product

import numpy as np

MAX_WORKERS = 4


def _all(pool: ThreadPoolExecutor, fn, todo, *args) -> None:
    """``fn(coords, *args)`` for every chunk on the pool; waits for all before raising the first error
    (no thread may still write into an output that its caller is about to remove)."""
    futures = [pool.submit(fn, coords, *args) for coords in todo]
    wait(futures)
    for f in futures:
        f.result()


def _v3_decoders(meta):
    """(stored byte order, [decode functions]) for a plain v3 codec chain, or None."""
    import numcodecs
    from zarr import codecs

    chain = list(meta.codecs)
    if not chain or type(chain[0]) is not codecs.BytesCodec:
        return None
    endian = getattr(chain[0].endian, "value", chain[0].endian)
    decoders = []
    for codec in reversed(chain[1:]):  # applied last first
        kind = type(codec)
        if kind is codecs.GzipCodec:
            decoders.append(numcodecs.GZip().decode)
        elif kind is codecs.ZstdCodec:
            decoders.append(numcodecs.Zstd().decode)
        elif kind is codecs.BloscCodec:
            decoders.append(numcodecs.Blosc().decode)
        else:
            return None
    return ("<" if endian in (None, "little") else ">"), decoders


def _v3_encoders(meta):
    """[encode functions] for a v3 chain of ``bytes`` (little endian) and gzip or zstd, or None."""
    import numcodecs
    from zarr import codecs

    chain = list(meta.codecs)
    if not chain or type(chain[0]) is not codecs.BytesCodec:
        return None
    if getattr(chain[0].endian, "value", chain[0].endian) not in (None, "little"):
        return None
    encoders = []
    for codec in chain[1:]:
        kind = type(codec)
        if kind is codecs.GzipCodec:
            encoders.append(numcodecs.GZip(level=codec.level).encode)
        elif kind is codecs.ZstdCodec:
            encoders.append(numcodecs.Zstd(level=codec.level, checksum=codec.checksum).encode)
        else:
            return None
    return encoders


def chunk_writer(arr, store, workers: int | None = None) -> ChunkWriter | None:
    """A :class:`ChunkWriter` for ``arr`` (native numeric dtype, regular chunks, no shards), else None."""
    from zarr.core.chunk_grids import RegularChunkGrid
    from zarr.storage import LocalStore

    if not isinstance(store, LocalStore) or getattr(arr, "shards", None):
        return None
    meta = arr.metadata
    dtype = np.dtype(arr.dtype)
    if dtype.kind not in "biuf" or (dtype.itemsize > 1 and dtype.byteorder not in ("=", "<", "|")):
        return None
    if meta.zarr_format == 3:
        if not isinstance(meta.chunk_grid, RegularChunkGrid):
            return None
        encoders = _v3_encoders(meta)
        if encoders is None:
            return None
    else:
        if meta.order != "C" or meta.filters:
            return None
        encoders = [meta.compressor.encode] if meta.compressor is not None else []
    fill = 0 if arr.fill_value is None else arr.fill_value
    folder = os.path.join(os.fspath(store.root), *[p for p in arr.path.split("/") if p])
    return ChunkWriter(folder, tuple(int(n) for n in arr.shape), tuple(int(c) for c in arr.chunks),
                       dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype, encoders, meta.encode_chunk_key,
                       fill, workers)


def chunk_reader(arr, store, workers: int | None = None) -> ChunkReader | None:
    """A :class:`ChunkReader` for ``arr`` when its chunks can be read directly, else None."""
    from zarr.core.chunk_grids import RegularChunkGrid
    from zarr.storage import LocalStore

    if not isinstance(store, LocalStore) or getattr(arr, "shards", None):
        return None
    meta = arr.metadata
    dtype = np.dtype(arr.dtype)
    if dtype.kind not in "biuf":
        return None
    if meta.zarr_format == 3:
        if not isinstance(meta.chunk_grid, RegularChunkGrid):
            return None
        found = _v3_decoders(meta)
        if found is None:
            return None
        order, decoders = found
        stored = dtype.newbyteorder(order) if dtype.itemsize > 1 else dtype
    else:
        if meta.order != "C" or meta.filters:
            return None
        decoders = [meta.compressor.decode] if meta.compressor is not None else []
        stored = dtype
    fill = 0 if arr.fill_value is None else arr.fill_value
    folder = os.path.join(os.fspath(store.root), *[p for p in arr.path.split("/") if p])
    return ChunkReader(folder, tuple(int(n) for n in arr.shape), tuple(int(c) for c in arr.chunks), stored,
                       decoders, meta.encode_chunk_key, fill, workers)


class _ChunkTasks:
    """What the reader and the writer share: the chunks a box covers, run on a small thread pool."""

    def __init__(self, folder: str, shape, chunks, stored: np.dtype, key, fill, workers: int | None, name: str):
        self.folder, self.shape, self.chunks = folder, shape, chunks
        self.stored, self.key, self.fill = stored, key, fill
        self.workers = max(1, min(MAX_WORKERS, workers or os.cpu_count() or 1))
        self._name = name
        self._pool: ThreadPoolExecutor | None = None

    def _each_chunk(self, fn, box: tuple[slice, ...], *args) -> None:
        """``fn(coords, box, *args)`` for every chunk ``box`` touches, inline or on the pool."""
        todo = list(product(*[range(s.start // n, -(-s.stop // n)) for s, n in zip(box, self.chunks)]))
        if self.workers == 1 or len(todo) == 1:
            for coords in todo:
                fn(coords, box, *args)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=self._name)
        _all(self._pool, fn, todo, box, *args)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class ChunkReader(_ChunkTasks):
    """Reads boxes of one array chunk by chunk; ``read(box, out)`` fills ``out`` (native dtype)."""

    def __init__(self, folder: str, shape, chunks, stored: np.dtype, decoders, key, fill, workers: int | None):
        super().__init__(folder, shape, chunks, stored, key, fill, workers, "lucid-zarr-read")
        self.decoders = decoders
        self.chunk_bytes = math.prod(chunks) * stored.itemsize

    def memory(self) -> int:
        """Bytes held while reading: per worker, one decoded chunk and its stored bytes."""
        return self.workers * 2 * self.chunk_bytes

    def _chunk(self, coords) -> np.ndarray | None:
        path = os.path.join(self.folder, *self.key(coords).split("/"))
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            return None
        with fh:
            if not self.decoders:
                data = np.empty(self.chunks, dtype=self.stored)
                got = fh.readinto(memoryview(data).cast("B"))
                if got != data.nbytes or fh.read(1):
                    raise ValueError(f"chunk {self.key(coords)}: {os.path.getsize(path)} bytes, "
                                     f"expected {data.nbytes}")
                return data
            raw = fh.read()
        for decode in self.decoders:
            raw = decode(raw)
        buf = memoryview(raw).cast("B") if not isinstance(raw, np.ndarray) else raw.view(np.uint8).ravel()
        if buf.nbytes != self.chunk_bytes:
            raise ValueError(f"chunk {self.key(coords)}: decodes to {buf.nbytes} bytes, expected {self.chunk_bytes}")
        return np.frombuffer(buf, dtype=self.stored).reshape(self.chunks)

    def _place(self, coords, box, out: np.ndarray) -> None:
        inner, outer = [], []
        for c, n, s, full in zip(coords, self.chunks, box, self.shape):
            lo, hi = max(s.start, c * n), min(s.stop, (c + 1) * n, full)
            inner.append(slice(lo - c * n, hi - c * n))
            outer.append(slice(lo - s.start, hi - s.start))
        data = self._chunk(coords)
        if data is None:
            out[tuple(outer)] = self.fill
        else:
            out[tuple(outer)] = data[tuple(inner)]

    def read(self, box: tuple[slice, ...], out: np.ndarray) -> np.ndarray:
        self._each_chunk(self._place, box, out)
        return out


class ChunkWriter(_ChunkTasks):
    """Writes boxes made of whole chunks of one array; ``write(box, data)`` returns False (nothing
    written) for a box that is not, so the caller can write it through zarr-python."""

    def __init__(self, folder: str, shape, chunks, stored: np.dtype, encoders, key, fill, workers: int | None):
        super().__init__(folder, shape, chunks, stored, key, fill, workers, "lucid-zarr-write")
        self.encoders = encoders
        self._dirs: set[str] = set()

    def whole(self, box: tuple[slice, ...]) -> bool:
        return all(s.start % c == 0 and (s.stop % c == 0 or s.stop == n)
                   for s, c, n in zip(box, self.chunks, self.shape))

    def _put(self, coords, box, data: np.ndarray) -> None:
        sub, full = [], True
        for c, n, s in zip(coords, self.chunks, box):
            lo = c * n - s.start
            sub.append(slice(lo, min(lo + n, s.stop - s.start)))
            full = full and sub[-1].stop - lo == n
        part = data[tuple(sub)]
        if full:
            chunk = np.ascontiguousarray(part, dtype=self.stored)
        else:  # an edge chunk is stored whole, padded with the fill value
            chunk = np.full(self.chunks, self.fill, dtype=self.stored)
            chunk[tuple(slice(0, x.stop - x.start) for x in sub)] = part
        raw = memoryview(chunk).cast("B")
        for encode in self.encoders:
            raw = encode(raw)
        path = os.path.join(self.folder, *self.key(coords).split("/"))
        parent = os.path.dirname(path)
        if parent not in self._dirs:
            os.makedirs(parent, exist_ok=True)
            self._dirs.add(parent)
        with open(path, "wb") as fh:
            fh.write(raw)

    def write(self, box: tuple[slice, ...], data: np.ndarray) -> bool:
        if not self.whole(box):
            return False
        self._each_chunk(self._put, box, data)
        return True
