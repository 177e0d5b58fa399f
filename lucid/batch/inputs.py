"""Which files a batch reads and where each output goes (pure path arithmetic, no I/O but globbing)."""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass

from lucid.io import LucidIOError, detect_format
from lucid.io.atomic import file_identity

DEFAULT_TEMPLATE = "{stem}_pooled{ext}"
# longest first: ".nii.gz" before ".gz", ".ome.zarr" before ".zarr"
SUFFIXES = (".ome.zarr", ".nii.gz", ".mgz", ".mgh", ".nii", ".hdf5", ".hdf", ".h5", ".zarr", ".zip", ".hdr", ".img")
GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class FilePair:
    input: str
    output: str


def split_suffix(name: str) -> tuple[str, str]:
    """``("scan", ".nii.gz")`` for ``scan.nii.gz``: the volume suffix, double ones included."""
    lower = name.lower()
    for suffix in SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], name[-len(suffix):]
    return os.path.splitext(name)


def output_for(input: str, out_dir: str, template: str = DEFAULT_TEMPLATE) -> str:
    """The output path for ``input``: ``template`` filled with ``{stem}``, ``{ext}``, ``{name}``,
    ``{parent}`` (the input directory's name), put in ``out_dir``.  ``a.h5:/data`` keeps ``:/data``."""
    _, file, _ = detect_format(input)
    inner = input[len(file):]  # ":/dataset", or ""
    name = os.path.basename(file.rstrip("/"))
    stem, ext = split_suffix(name)
    parent = os.path.basename(os.path.dirname(os.path.abspath(file)))
    try:
        out = template.format(stem=stem, ext=ext, name=name, parent=parent)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"output name template {template!r}: unknown field {exc}; "
                         "use {stem}, {ext}, {name} and {parent}") from None
    return os.path.join(out_dir, out) + inner


def expand(patterns: Sequence[str]) -> list[str]:
    """Paths as given; shell globs (``**`` too) expanded in sorted order.  A glob matching nothing is an error."""
    paths: list[str] = []
    for pattern in patterns:
        file, inner = pattern, ""
        head, sep, tail = pattern.rpartition(":/")
        if sep and not GLOB_CHARS & set(tail) and head:  # scan*.h5:/data: glob the file part only
            file, inner = head, sep + tail
        if GLOB_CHARS & set(file):
            matches = sorted(glob.glob(file, recursive=True))
            if not matches:
                raise LucidIOError(f"{pattern}: no file matches")
            paths += [m + inner for m in matches]
        else:
            paths.append(pattern)
    return paths


def read_list(list_file: str) -> list[tuple[str, str | None]]:
    """A list file: one input per line (blank lines and ``#`` comments skipped), or a CSV whose
    header names an ``input`` column and optionally an ``output`` column.  Relative paths are
    taken from the current directory, as a shell would."""
    try:
        with open(list_file, newline="") as f:
            text = f.read()
    except OSError as exc:
        raise LucidIOError(f"{list_file}: {exc.strerror or exc}") from None
    lines = text.splitlines()
    first = lines[0].strip().lower() if lines else ""
    if "," in first and "input" in [c.strip() for c in first.split(",")]:
        rows = list(csv.DictReader(lines))
        pairs = []
        for n, row in enumerate(rows, start=2):
            row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
            if not row.get("input"):
                raise LucidIOError(f"{list_file}: line {n}: no input")
            pairs.append((row["input"], row.get("output") or None))
        return pairs
    return [(line.strip(), None) for line in lines if line.strip() and not line.strip().startswith("#")]


def plan_files(inputs: Sequence[str] = (), out_dir: str | None = None, template: str = DEFAULT_TEMPLATE,
               list_file: str | None = None) -> list[FilePair]:
    """Every (input, output) pair of a batch, checked up front: each output is named once and is
    none of the inputs (links included)."""
    given: list[tuple[str, str | None]] = [(p, None) for p in expand(inputs)]
    if list_file is not None:
        given += read_list(list_file)
    if not given:
        raise ValueError("no input files: give paths, globs or --list FILE")
    pairs = []
    for input, output in given:
        if output is None:
            if out_dir is None:
                raise ValueError(f"{input}: no output: give --out-dir (or an output column in the list file)")
            output = output_for(input, out_dir, template)
        detect_format(output)  # a bad suffix is refused before anything runs
        pairs.append(FilePair(input, output))
    seen: dict[object, str] = {}
    inputs_read = {_identity(p.input): p.input for p in pairs}
    for pair in pairs:
        key = _identity(pair.output)
        if key in seen:
            raise ValueError(f"{pair.output}: two inputs would write it ({seen[key]} and {pair.input}); "
                             "change the --name template")
        if key in inputs_read:
            raise ValueError(f"{pair.output}: the output of {pair.input} is an input of this batch")
        seen[key] = pair.input
    return pairs


def _identity(path: str):
    """The same key for two names of one file (links, ``..``); the path itself for a file not there yet."""
    fmt, file, inner = detect_format(path)
    return (file_identity(file), inner or "")
