"""Click callbacks that turn option text into library values (bad text: exit 2, one line)."""

from __future__ import annotations

import os
import re

import click
import numpy as np

from lucid.io import LucidIOError, detect_format
from lucid.io.atomic import human_bytes
from lucid.io.compression import CompressionError, parse_codec
from lucid.io.layout import parse_layout
from lucid.stream.api import MAX_AXIS_VALUE
from lucid.stream.plan import parse_size

_SEPARATORS = re.compile(r"[,x]")
MIN_MEMORY_LIMIT = 1 << 20  # below this nothing useful fits; Python and the libraries alone take ~55 MiB


def per_axis(minimum: int):
    """Callback for ``-k 2``, ``-k 2,2,1`` or ``-k 2x2x1``: an int or a 3-tuple, each in [minimum, MAX_AXIS_VALUE]."""

    def callback(ctx: click.Context, param: click.Parameter, value: str | None):
        if value is None:
            return None
        parts = [p.strip() for p in _SEPARATORS.split(value.strip().lower())]
        if not all(re.fullmatch(r"[+-]?\d+", p) for p in parts):
            raise click.BadParameter(f"{value!r} is not an integer or three integers such as 2,2,1 or 2x2x1")
        if len(parts) not in (1, 3):
            raise click.BadParameter(
                f"{value!r} has {len(parts)} values; give one for all pooled axes or three, one per pooled axis"
            )
        numbers = [int(p) for p in parts]
        if min(numbers) < minimum:
            raise click.BadParameter(f"{value!r}: every value must be >= {minimum}")
        if max(numbers) > MAX_AXIS_VALUE:
            raise click.BadParameter(f"{value!r}: every value must be <= {MAX_AXIS_VALUE}")
        return numbers[0] if len(numbers) == 1 else tuple(numbers)

    return callback


class VolumePath(click.Path):
    """A volume file: offered as a file by shell completion, need not exist, ``file.h5:/dataset`` allowed.

    Only the suffix is checked here (bad: exit 2); existence, readability and
    directories are the library's to report (exit 1), naming the file."""

    name = "volume"

    def __init__(self) -> None:
        super().__init__(dir_okay=True, readable=False, path_type=str)

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            value = os.fspath(value)
        try:
            detect_format(value)
        except LucidIOError as exc:
            self.fail(str(exc), param, ctx)
        return super().convert(value, param, ctx)


VOLUME = VolumePath()
ANY_PATH = click.Path(dir_okay=True, readable=False, path_type=str)  # completes as a file; checked per file later


def volume_path(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Callback form of :class:`VolumePath` (the suffix check only)."""
    return None if value is None else VOLUME.convert(value, param, ctx)


def memory_size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        size = parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if size < MIN_MEMORY_LIMIT:
        raise click.BadParameter(f"{value!r} is {human_bytes(size)}; the minimum is 1M")
    return size


def block_size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """Input bytes per dask task: a size like 128M (no 1M floor: small volumes may want many blocks)."""
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc).replace("memory limit", "block size")) from None


def dtype_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A numpy integer or float dtype name such as ``float32`` or ``uint8``."""
    if value is None:
        return None
    try:
        dtype = np.dtype(value)
    except TypeError:
        raise click.BadParameter(f"{value!r} is not a numpy dtype (e.g. float32, int16, uint8)") from None
    if dtype.kind not in "iuf":
        raise click.BadParameter(f"{value!r}: the output must be an integer or float dtype")
    return dtype.name


def axes_text(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An axes string with known letters, no repeats and exactly three pooled axes."""
    if value is None:
        return None
    try:
        parse_layout(value, len(value.strip()), "array")
    except ValueError as exc:  # LayoutError
        raise click.BadParameter(str(exc)) from None
    return value.strip().lower()


def compression_text(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return str(parse_codec(value))
    except CompressionError as exc:
        raise click.BadParameter(str(exc)) from None


def shards_text(ctx: click.Context, param: click.Parameter, value: str | None):
    """``--shards auto`` (one shard per slab) or a shape ``64,256,256``."""
    if value is None:
        return None
    text = value.strip().lower()
    if text == "auto":
        return True
    try:
        shape = tuple(int(v) for v in re.split(r"[,x]", text))
    except ValueError:
        raise click.BadParameter(f"{value!r}: use auto or one positive integer per axis, e.g. 64,256,256") from None
    if any(v <= 0 for v in shape):
        raise click.BadParameter(f"{value!r}: shard extents must be positive")
    return shape


def cluster_options(command):
    """``--scheduler``, ``--scheduler-file`` and ``--workers``: where a command runs on dask (``lucid.dask.cluster``)."""
    options = [
        click.option("--scheduler", metavar="ADDRESS",
                     help="Run on this dask scheduler (tcp://host:8786) [env: DASK_SCHEDULER_ADDRESS]."),
        click.option("--scheduler-file", metavar="FILE", type=click.Path(dir_okay=False, path_type=str),
                     help="Run on the dask scheduler this file (dask scheduler --scheduler-file) names."),
        click.option("--workers", type=click.IntRange(min=1), metavar="N",
                     help="Start a local dask cluster of N worker processes on 127.0.0.1 for this run."),
    ]
    for option in reversed(options):
        command = option(command)
    return command
