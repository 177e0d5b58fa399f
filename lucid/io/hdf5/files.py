"""HDF5 files as lucid reads them: opened read-only, a dataset chosen, its
dimension labels read without h5py's aborting call, and every other file the
dataset reads (external links, virtual-dataset sources, external storage)."""

from __future__ import annotations

import os

import h5py
import numpy as np

from lucid.io.base import (
    LucidIOError,
    check_input_file,
    one_line,
)
from lucid.io.layout import parse_layout

SKIP_ATTRS = {"DIMENSION_LIST", "REFERENCE_LIST", "CLASS", "NAME"}
KNOWN_FILTERS = {
    307: "bzip2",
    32000: "lzf",
    32001: "blosc",
    32004: "lz4",
    32008: "bitshuffle",
    32015: "zstd",
    32017: "SZ",
    32026: "blosc2",
}


def open_h5_file(path: str, name: str) -> h5py.File:
    """Open an HDF5 file read-only, turning every failure into a one-line LucidIOError."""
    check_input_file(path, name, "an HDF5")
    try:
        return h5py.File(path, "r")
    except PermissionError:
        raise LucidIOError(f"{name}: permission denied") from None
    except (OSError, ValueError, RuntimeError) as exc:
        text = one_line(exc)
        low = text.lower()
        if "truncated" in low:
            raise LucidIOError(f"{name}: truncated HDF5 file ({os.path.getsize(path)} bytes); was it copied completely?") from None
        if "signature" in low or "not an hdf5" in low:
            raise LucidIOError(f"{name}: not an HDF5 file (no HDF5 signature found)") from None
        if "lock" in low:
            raise LucidIOError(
                f"{name}: cannot open, the file is locked by a writer "
                "(set HDF5_USE_FILE_LOCKING=FALSE only if no one is writing it)"
            ) from None
        raise LucidIOError(f"{name}: cannot open as HDF5: {text}") from None


def list_datasets(f: h5py.File) -> list[tuple[str, tuple[int, ...]]]:
    found: list[tuple[str, tuple[int, ...]]] = []

    def visit(path, obj):
        if isinstance(obj, h5py.Dataset):
            found.append(("/" + path, tuple(obj.shape) if obj.shape is not None else ()))

    try:
        f.visititems(visit)
    except Exception:  # pragma: no cover - broken links etc.
        pass
    return found


def _describe(items) -> str:
    if not items:
        return "none"
    text = ", ".join(f"{p} {'x'.join(map(str, s)) or 'scalar'}" for p, s in items[:20])
    return text + (f", ... ({len(items)} in all)" if len(items) > 20 else "")


def select_dataset(f: h5py.File, dataset: str | None, fname: str) -> h5py.Dataset:
    if dataset is not None:
        key = dataset if dataset.startswith("/") else "/" + dataset
        try:
            obj = f.get(key)
        except Exception as exc:
            raise LucidIOError(f"{fname}:{key}: cannot open dataset: {one_line(exc)}") from None
        if obj is None:
            raise LucidIOError(f"{fname}: no dataset {key} (datasets: {_describe(list_datasets(f))})")
        if isinstance(obj, h5py.Group):
            inside = [(p, s) for p, s in list_datasets(f) if p.startswith(key.rstrip("/") + "/")]
            raise LucidIOError(f"{fname}:{key} is a group, not a dataset (datasets in it: {_describe(inside)})")
        if not isinstance(obj, h5py.Dataset):  # pragma: no cover
            raise LucidIOError(f"{fname}:{key} is not a dataset")
        return obj
    found = list_datasets(f)
    candidates = [(p, s) for p, s in found if len(s) >= 3]
    if len(candidates) == 1:
        try:
            return f[candidates[0][0]]
        except Exception as exc:  # listed but cannot be opened: a damaged object header
            raise LucidIOError(f"{fname}:{candidates[0][0]}: cannot open dataset: {one_line(exc)}") from None
    if not candidates:
        raise LucidIOError(f"{fname}: no dataset with 3 or more dimensions (datasets: {_describe(found)})")
    raise LucidIOError(
        f"{fname}: holds {len(candidates)} datasets with 3+ dimensions, name one as "
        f"{fname}:/path or with --dataset: {_describe(candidates)}"
    )


def filter_problem(ds: h5py.Dataset) -> str | None:
    """Name an unavailable filter that stored chunks actually need, else None."""
    try:
        dcpl = ds.id.get_create_plist()
        filters = [dcpl.get_filter(i) for i in range(dcpl.get_nfilters())]
    except Exception:  # pragma: no cover
        return None
    missing = [(i, f) for i, f in enumerate(filters) if not h5py.h5z.filter_avail(f[0])]
    if missing:
        try:  # hdf5plugin registers blosc, zstd, lz4, ... when imported
            import hdf5plugin  # noqa: F401

            missing = [(i, f) for i, f in missing if not h5py.h5z.filter_avail(f[0])]
        except ImportError:
            pass
    if not missing:
        return None
    try:
        nchunks = ds.id.get_num_chunks()
        mask = ds.id.get_chunk_info(0).filter_mask if nchunks else None
    except Exception:
        nchunks, mask = 1, 0
    if not nchunks:
        return None  # nothing stored: reads give the fill value
    for i, (code, _flags, _opts, fname) in missing:
        if not (mask >> i) & 1:  # bit set = filter was skipped for that chunk
            label = fname.decode(errors="replace") if isinstance(fname, bytes) and fname else KNOWN_FILTERS.get(code, "")
            label = label or KNOWN_FILTERS.get(code, "unknown")
            return f"compression filter {code} ({label}) is not available; `pip install hdf5plugin` may provide it"
    return None


def dimension_labels(ds: h5py.Dataset) -> list[str]:
    """The dataset's dimension labels ("" where unset), read from the attribute itself.

    Never through ``ds.dims[i].label``: HDF5's dimension-scale API frees memory it
    does not own, and aborts the interpreter, on a hand-written ``DIMENSION_LABELS``
    of another type or length.  A malformed attribute counts as no labels.
    """
    blank = [""] * ds.ndim
    try:
        if "DIMENSION_LABELS" not in ds.attrs:
            return blank
        attr = ds.attrs.get_id("DIMENSION_LABELS")
        if attr.shape != (ds.ndim,) or attr.get_type().get_class() != h5py.h5t.STRING:
            return blank
        values = ds.attrs["DIMENSION_LABELS"]
    except Exception:  # unreadable: no labels
        return blank
    labels = []
    for value in np.asarray(values, dtype=object).ravel():
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        labels.append(value.strip("\0") if isinstance(value, str) else "")
    return labels


def axes_from_labels(ds: h5py.Dataset) -> str | None:
    """Single-letter dimension labels that form a valid layout (e.g. "thwc"), else None."""
    labels = dimension_labels(ds)
    if not all(isinstance(lab, str) and len(lab) == 1 for lab in labels):
        return None
    text = "".join(labels).lower()
    try:
        parse_layout(text, ds.ndim, "hdf5")
    except (LucidIOError, ValueError):
        return None
    return text


def _resolve(name: str, beside: str) -> str:
    """A file named by an external link, a VDS mapping or external storage: HDF5 looks
    for a relative name beside the file that names it first, then in the working directory."""
    if os.path.isabs(name):
        return name
    near = os.path.join(os.path.dirname(beside), name)
    return os.path.abspath(near if os.path.exists(near) or not os.path.exists(name) else name)


def _linked_files(f: h5py.File, path: str, depth: int = 0) -> list[str]:
    """The file and every file the external links on the way to ``path`` lead through."""
    files = [os.path.abspath(f.filename)]
    parts = path.strip("/").split("/")
    group = f
    for i, part in enumerate(parts):
        link = group.get(part, getlink=True)
        if isinstance(link, h5py.ExternalLink) and depth < 32:
            target = _resolve(link.filename, group.file.filename)
            rest = "/".join([link.path.strip("/"), *parts[i + 1:]])
            with h5py.File(target, "r") as hop:
                return files + _linked_files(hop, rest, depth + 1)
        group = group[part]
    return files


def _virtual_sources(ds: h5py.Dataset, name: str) -> list[str]:
    """The source files of a virtual dataset; refuses missing ones and sources too small
    for their mapping (HDF5 would read the fill value there, silently)."""
    files = []
    here = ds.file.filename
    for vmap in ds.virtual_sources():
        if vmap.file_name == ".":
            src_file = os.path.abspath(here)
        else:
            src_file = _resolve(vmap.file_name, here)
        if not os.path.isfile(src_file):
            raise LucidIOError(f"{name}: virtual dataset source {vmap.file_name} is missing ({src_file})")
        try:
            with h5py.File(src_file, "r") as src:
                target = src.get(vmap.dset_name)
                if not isinstance(target, h5py.Dataset):
                    raise LucidIOError(f"{name}: virtual dataset source {src_file} has no dataset {vmap.dset_name}")
                shape = target.shape
        except OSError as exc:
            raise LucidIOError(f"{name}: cannot open virtual dataset source {src_file}: {one_line(exc)}") from None
        try:
            lo, hi = vmap.src_space.get_select_bounds()
        except Exception:  # an unlimited or empty selection: nothing to check
            hi = None
        if hi is not None and any(h >= n for h, n in zip(hi, shape)):
            need = "x".join(str(h + 1) for h in hi)
            raise LucidIOError(
                f"{name}: virtual dataset source {src_file}:{vmap.dset_name} has shape "
                f"{'x'.join(map(str, shape))}, smaller than its mapping needs ({need})"
            )
        files.append(src_file)
    return files


def files_read(f: h5py.File, path: str, ds: h5py.Dataset, name: str) -> tuple[str, ...]:
    """Every file reading ``ds`` (at ``path`` in ``f``) touches: the file, external-link
    targets on the way, virtual dataset sources and external raw storage."""
    files = [*_linked_files(f, path), os.path.abspath(ds.file.filename)]  # the last: where HDF5 found it
    if ds.is_virtual:
        files += _virtual_sources(ds, name)
    for entry in ds.external or ():
        files.append(_resolve(entry[0], ds.file.filename))
    return tuple(dict.fromkeys(files))


