"""HDF5 output compression: parse a codec name into h5py ``create_dataset`` arguments.

Codecs every h5py reads without plugins:
  ``none``, ``gzip`` / ``gzip:N`` (deflate level N, default 1; readable by every
  HDF5 tool and language), ``lzf`` (h5py's own filter; C/MATLAB/Java HDF5
  readers need the LZF plugin).
Codecs from ``hdf5plugin`` (``pip install 'lucid-pool[hdf5plugin]'``; readers need
``import hdf5plugin`` or ``HDF5_PLUGIN_PATH`` too):
  ``blosc:lz4`` / ``blosc:zstd`` / ``blosc:CNAME:N`` (byte shuffle inside blosc),
  ``zstd`` / ``zstd:N``.
Every codec but blosc gets HDF5's shuffle filter for items wider than one byte.

This module imports neither h5py nor hdf5plugin until a plugin codec is used,
so the command line can check ``--compression`` without loading them.
"""

from __future__ import annotations

from dataclasses import dataclass

# Uncompressed, as h5py's own default: every HDF5 reader opens it, and a pooling run
# is not dominated by compression (benchmarks/bench_compression.py: gzip:1 made a
# 512^3 run 2.5-7x slower here, lzf 2.9-10x; zstd from hdf5plugin 1.1-1.9x).
DEFAULT = "none"
BLOSC_NAMES = ("lz4", "lz4hc", "blosclz", "zlib", "zstd")
NAMES = "none, gzip, gzip:N (0-9), lzf, blosc:lz4, blosc:zstd, blosc:NAME:N, zstd, zstd:N"


class CompressionError(ValueError):
    """An unknown codec, a bad level, or a plugin codec without hdf5plugin installed."""


@dataclass(frozen=True)
class Codec:
    """One parsed codec: its family, its level (None: the family's default) and blosc's compressor."""

    family: str  # none | gzip | lzf | blosc | zstd
    level: int | None = None
    cname: str | None = None

    @property
    def needs_plugin(self) -> bool:
        return self.family in ("blosc", "zstd")

    def __str__(self) -> str:
        parts = [self.family] + ([self.cname] if self.cname else []) + ([str(self.level)] if self.level is not None else [])
        return ":".join(parts)

    def dataset_options(self, itemsize: int) -> dict:
        """Keyword arguments for ``h5py.Group.create_dataset``."""
        shuffle = itemsize > 1
        if self.family == "none":
            return {}
        if self.family == "gzip":
            return {"compression": "gzip", "compression_opts": 1 if self.level is None else self.level,
                    "shuffle": shuffle}
        if self.family == "lzf":
            return {"compression": "lzf", "shuffle": shuffle}
        plugin = load_plugin()
        if self.family == "blosc":
            filt = plugin.Blosc(cname=self.cname or "lz4", clevel=5 if self.level is None else self.level,
                                shuffle=plugin.Blosc.SHUFFLE if shuffle else plugin.Blosc.NOSHUFFLE)
            return dict(filt)
        filt = plugin.Zstd(clevel=3 if self.level is None else self.level)
        return {**dict(filt), "shuffle": shuffle}


def load_plugin():
    """``hdf5plugin`` (importing it registers its filters with HDF5); CompressionError if missing."""
    try:
        import hdf5plugin
    except ImportError:
        raise CompressionError(
            "blosc and zstd need the hdf5plugin package: pip install hdf5plugin (or use gzip or lzf)"
        ) from None
    return hdf5plugin


def parse_codec(text: str | None) -> Codec:
    """``'gzip:4'`` -> Codec('gzip', 4); None or '' -> none.  CompressionError names the bad part."""
    raw = "none" if text is None else str(text)
    parts = [p.strip() for p in raw.strip().lower().replace("=", ":").split(":")]
    family, args = parts[0], parts[1:]
    if family in ("none", "no", "off", ""):
        if args:
            raise CompressionError(f"compression {raw!r}: 'none' takes no level")
        return Codec("none")
    if family == "lzf":
        if args:
            raise CompressionError(f"compression {raw!r}: lzf takes no level")
        return Codec("lzf")
    if family == "gzip":
        return Codec("gzip", _level(raw, args, 0, 9, 1))
    if family == "zstd":
        return Codec("zstd", _level(raw, args, 1, 22, 1))
    if family == "blosc":
        cname = args[0] if args else "lz4"
        if cname not in BLOSC_NAMES:
            raise CompressionError(f"compression {raw!r}: blosc compressor must be one of {', '.join(BLOSC_NAMES)}")
        return Codec("blosc", _level(raw, args[1:], 0, 9, 1), cname)
    raise CompressionError(f"unknown compression {raw!r} (use {NAMES})")


def _level(raw: str, args: list[str], low: int, high: int, most: int) -> int | None:
    if not args:
        return None
    if len(args) > most or not args[0].lstrip("+").isdigit() or not low <= int(args[0]) <= high:
        family = raw.split(":")[0].strip().lower()
        raise CompressionError(f"compression {raw!r}: {family} level must be {low}-{high}")
    return int(args[0])
