"""``lucid preview``: a PNG of a volume's three orthogonal planes (``lucid.preview``)."""

from __future__ import annotations

import os

import click

from . import options as opt

PREVIEW_HELP = """Draw FILE's three orthogonal mid-planes (or --slice / --mip) as a PNG.

Planes are in physical units (the aspect follows the voxel size), labelled
with the file's own axes; the colour bar is in physical values (HU for a
scaled CT). Carried axes show index 0 unless --index says otherwise; a video's
3 colour channels are shown in colour. Needs the [preview] extra (matplotlib).

\b
Examples:
  lucid preview sample_data/ct_phantom.nii.gz -o ct.png
  lucid preview sample_data/mri_4d.nii.gz -o mri.png --index t=3 --slice z=10
  lucid preview sample_data/video_clip.h5 -o clip.png --mip
"""


def default_png(file: str) -> str:
    """``dir/ct.nii.gz`` -> ``ct.png`` in the current directory."""
    name = os.path.basename(file.split(":", 1)[0] if ".h5:" in file or ".hdf5:" in file else file)
    for suffix in (".nii.gz", ".nii", ".hdf5", ".h5", ".hdf"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] + ".png"
    return name + ".png"


def png_path(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value.lower().endswith(".png"):
        raise click.BadParameter(f"{value!r}: the picture is a PNG; give a name ending in .png")
    return value


def assignments(what: str):
    def callback(ctx: click.Context, param: click.Parameter, value: str | None):
        from lucid.preview import parse_assignments

        try:
            return parse_assignments(value, what)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return callback


@click.command("preview", help=PREVIEW_HELP, no_args_is_help=True)
@click.argument("file", callback=opt.volume_path)
@click.option("-o", "--output", metavar="PNG", callback=png_path,
              help="Where to write the picture [default: FILE's name with .png, in the current directory].")
@click.option("--slice", "slices", metavar="x=40,y=12", callback=assignments("--slice"),
              help="Voxel index of the plane through each pooled axis [default: the middle].")
@click.option("--mip", is_flag=True, help="Maximum-intensity projections instead of planes (streams slab by slab).")
@click.option("--index", metavar="t=3", callback=assignments("--index"),
              help="Index along carried axes (time, channel) [default: 0; colour for 3 channels].")
@click.option("--dataset", metavar="PATH", help="HDF5 dataset (or FILE as file.h5:/PATH).")
@click.option("--axes", metavar="AXES", callback=opt.axes_text, help="Layout, e.g. zyx, thwc, xyzt.")
@click.option("-f", "--force", is_flag=True, help="Replace an existing PNG.")
@click.pass_context
def preview_command(ctx: click.Context, file: str, output: str | None, slices, mip: bool, index,
                    dataset: str | None, axes: str | None, force: bool) -> None:
    from lucid.io import detect_format
    from lucid.preview import render, save

    ctx.meta["lucid.input"] = file
    output = output or default_png(file)
    fig = render(file, slices=slices, mip=mip, index=index, dataset=dataset, axes=axes)
    written = save(fig, output, force=force, protect=[detect_format(file)[1]])
    click.echo(f"wrote {written}", err=True)
