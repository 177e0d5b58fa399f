"""The options ``pool3d`` and ``batch pool3d`` share: how to pool and write, and with what resources."""

from __future__ import annotations

import click

from lucid.io.compression import DEFAULT as DEFAULT_COMPRESSION

from . import options as opt


def _apply(options):
    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


# kernel, stride, padding, dilation, ceil mode, padding mode, layout, datasets, output encoding
pooling = _apply([
    click.option("-k", "--kernel", default="2", show_default=True, metavar="K", callback=opt.per_axis(1),
                 help="Window size: one integer or three (2,2,1 or 2x2x1)."),
    click.option("-s", "--stride", metavar="S", callback=opt.per_axis(1),
                 help="Step between windows [default: kernel]."),
    click.option("-p", "--padding", default="0", show_default=True, metavar="P", callback=opt.per_axis(0),
                 help="Padding on both sides of each pooled axis."),
    click.option("--dilation", default="1", show_default=True, metavar="D", callback=opt.per_axis(1),
                 help="Spacing between window taps."),
    click.option("--ceil-mode", is_flag=True, help="Round the output size up (a last partial window)."),
    click.option("--padding-mode", type=click.Choice(["zeros", "ignore"]), default="zeros", show_default=True,
                 help="zeros: padded zeros take part in the maximum; ignore: only real voxels do."),
    click.option("--axes", metavar="AXES", callback=opt.axes_text,
                 help="Input layout, one letter per axis: zyx, czyx, nczyx, thwc, xyz, xyzt, ... "
                      "[default: HDF5 dimension labels, else dhw/cdhw/ncdhw; NIfTI xyz + tuvw]."),
    click.option("--dataset", metavar="PATH", help="HDF5 input dataset (or INPUT as file.h5:/PATH)."),
    click.option("--out-dataset", metavar="PATH", help="HDF5 output dataset [default: the input's name, or /data]."),
    click.option("--compression", default=DEFAULT_COMPRESSION, show_default=True, metavar="CODEC",
                 callback=opt.compression_text,
                 help="HDF5: none, gzip, gzip:N (level 0-9), lzf; with hdf5plugin also blosc:lz4, blosc:zstd, zstd, "
                      "zstd:N. Zarr: none, gzip[:N], zstd[:N], blosc[:NAME[:N]]. .nii.gz is always gzip."),
    click.option("--zarr-format", type=click.Choice(["2", "3"]), default=None,
                 help="Zarr output format [default: 3]."),
    click.option("--shards", metavar="SHAPE", callback=opt.shards_text,
                 help="Zarr v3 output: shard shape (multiple of the chunks) or auto (one shard per slab)."),
    click.option("--out-dtype", metavar="DTYPE", callback=opt.dtype_name,
                 help="Output dtype, e.g. float32 [default: the input's]."),
])

# memory and threads
resources = _apply([
    click.option("--memory-limit", default="512M", show_default=True, metavar="SIZE", callback=opt.memory_size,
                 help="Memory for slab buffers: bytes or K/M/G/T, at least 1M."),
    click.option("-j", "--threads", type=click.IntRange(min=1), metavar="N",
                 help="Compute threads, at most the CPUs this process may use [default: all cores]."),
])
