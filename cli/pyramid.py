"""``lucid pyramid``: the command line over ``lucid.pyramid.pyramid_file``."""

from __future__ import annotations

import json

import click

import lucid
from lucid.inspect import jsonable
from lucid.io.atomic import human_bytes
from lucid.io.compression import DEFAULT as DEFAULT_COMPRESSION

from . import options as opt
from .interrupts import STOP
from .progress import progress_bar, wanted
from .report import number, shape

PYRAMID_HELP = """Write a multiscale max pyramid of INPUT as one OME-Zarr image OUTPUT.

Level 0 is a copy of INPUT; level i+1 is level i max-pooled with kernel =
stride = the factors (-k, default 2 per pooled axis), ceil mode, no padding,
exactly as `lucid pool3d -k F --ceil-mode` would make it. All levels come from
one streaming read of INPUT within --memory-limit. Levels stop before one
would be smaller than a chunk, or at --levels N (level 0 included). With a
known voxel size an axis is pooled only while its voxel is not coarser than
the others (0.2 x 0.2 x 1.0 um: 2x2x1 steps first, then 2x2x2); --no-isotropic
pools every axis at every step. Scales and voxel-centre translations follow
each step; units, time and channel axes carry over. NGFF 0.5 with Zarr v3, or
0.4 with --zarr-format 2.

\b
Examples:
  lucid pyramid stack.h5 stack.ome.zarr
  lucid pyramid ct.nii.gz ct.ome.zarr --levels 4 --json
  lucid pyramid probs.ome.zarr probs_pyr.ome.zarr -k 2,2,1 --method max
  lucid pyramid inverted.h5 inv.ome.zarr --method min --zarr-format 2
"""


@click.command("pyramid", help=PYRAMID_HELP, no_args_is_help=True)
@click.argument("input", type=opt.VOLUME)
@click.argument("output", type=opt.VOLUME)
@click.option("-k", "--factors", default="2", show_default=True, metavar="F", callback=opt.per_axis(1),
              help="Pooling factor per step: one integer or three (2,2,1 or 2x2x1).")
@click.option("--levels", type=click.IntRange(min=1), metavar="N",
              help="Number of levels, level 0 included [default: until a level would be smaller than a chunk].")
@click.option("--isotropic/--no-isotropic", default=True, show_default=True,
              help="Pool an axis only while its voxel is not coarser than the others.")
@click.option("--method", type=click.Choice(["max", "min"]), default="max", show_default=True,
              help="max keeps thin bright structures; min is for inverted intensities.")
@click.option("--force-method", is_flag=True, help="Pool an NGFF label image (image-label) anyway.")
@click.option("--dataset", metavar="PATH", help="HDF5 input dataset (or INPUT as file.h5:/PATH).")
@click.option("--level", type=click.IntRange(min=0), help="OME-Zarr input: the level to start from [default: 0].")
@click.option("--axes", metavar="AXES", callback=opt.axes_text, help="Input layout, e.g. zyx, czyx, thwc.")
@click.option("--zarr-format", type=click.Choice(["2", "3"]), default=None,
              help="3: NGFF 0.5 (default); 2: NGFF 0.4.")
@click.option("--compression", default=DEFAULT_COMPRESSION, show_default=True, metavar="CODEC",
              callback=opt.compression_text, help="none, gzip[:N], zstd[:N], blosc[:NAME[:N]].")
@click.option("--memory-limit", default="512M", show_default=True, metavar="SIZE", callback=opt.memory_size,
              help="Memory for slab and level buffers: bytes or K/M/G/T, at least 1M.")
@click.option("-j", "--threads", type=click.IntRange(min=1), metavar="N", help="Compute threads [default: all cores].")
@click.option("--no-copy", is_flag=True,
              help="Zarr input: level 0 hard-links the input's chunk files instead of copying them.")
@click.option("-f", "--force", is_flag=True, help="Replace an existing OUTPUT store.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with every level on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary.")
@click.pass_context
def pyramid_command(ctx: click.Context, input: str, output: str, factors, levels: int | None, isotropic: bool,
                    method: str, force_method: bool, dataset: str | None, level: int | None, axes: str | None,
                    zarr_format: str | None, compression: str, memory_limit: int, threads: int | None,
                    no_copy: bool, force: bool, as_json: bool, quiet: bool) -> None:
    from lucid.pyramid import pyramid_file

    ctx.meta["lucid.input"] = input
    with progress_bar(wanted(quiet), "pyramid") as progress:
        result = pyramid_file(input, output, factors=factors, levels=levels, isotropic=isotropic, method=method,
                              force_method=force_method, dataset=dataset, axes=axes, level=level,
                              zarr_format=int(zarr_format) if zarr_format else None, compression=compression,
                              memory_limit=memory_limit, threads=threads, force=force, no_copy=no_copy,
                              progress=STOP.guard(progress))
    for text in result.warnings:
        click.echo(f"Warning: {text}", err=True)
    data = result.to_dict()
    if as_json:
        click.echo(json.dumps(jsonable({**data, "lucid_version": lucid.__version__})))
    elif not quiet:
        click.echo("\n".join(summary(data)), err=True)


def summary(r: dict) -> list[str]:
    """One line per level: path, shape, factors, scale and translation, in the stored axis order."""
    axes = ",".join(r["axes"])
    out = [f"{r['input']} -> {r['output']}: {len(r['levels'])} levels, {r['method']}, "
           f"NGFF {r['ngff_version']} (Zarr v{r['zarr_format']}), axes {axes}"]
    for lv in r["levels"]:
        out.append(f"  {lv['path']}: {shape(lv['shape'])}  x{shape(lv['factors'])}  "
                   f"scale {' '.join(number(v) for v in lv['scale'])}  "
                   f"translation {' '.join(number(v) for v in lv['translation'])}")
    out.append(f"  {r['slabs']} slabs of {r['rows_per_slab']} rows; {r['seconds']:.2f} s, peak memory "
               f"{r['peak_memory_mib']:.0f} MiB (estimate {human_bytes(r['memory_estimate'])}, "
               f"limit {human_bytes(r['memory_limit'])})")
    return out
