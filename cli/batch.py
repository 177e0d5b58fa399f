"""``lucid batch pool3d``: many files, one dask task each, over ``lucid.batch.run_batch``."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager

import click

from lucid.batch import plan_files, run_batch
from lucid.batch.inputs import DEFAULT_TEMPLATE
from lucid.batch.runner import DEFAULT_RETRIES, FileResult
from lucid.dask.cluster import ClusterSpec
from lucid.inspect import jsonable
from lucid.stream.job import PoolJob

from . import options as opt
from . import pool_options
from .progress import wanted

BATCH_POOL3D_HELP = """Max-pool every INPUT into --out-dir, one dask task per file.

INPUT can be paths, shell globs (quoted, so lucid expands them: 'scans/**/*.nii.gz')
or come from --list FILE (one path per line, or a CSV with input and output
columns). Every pool3d option applies to every file. Outputs that this same run
already wrote (same input file, same parameters) are skipped, so rerunning a
command finishes what is missing; --force redoes everything.

Without --workers or --scheduler (or DASK_SCHEDULER_ADDRESS), a local cluster
of one worker process per CPU runs on 127.0.0.1. Exit 0 when every file is done
or skipped, 1 when any failed (they are listed).

\b
Examples:
  lucid batch pool3d 'cohort/sub-*/anat/*_T1w.nii.gz' --out-dir pooled -k 2
  lucid batch pool3d --list scans.csv -k 3 -s 2 -p 1 --scheduler tcp://head:8786
  lucid batch pool3d clips/*.h5 --out-dir small --name '{parent}_{stem}{ext}' --json
"""


@click.group("batch")
def batch_group() -> None:
    """Run a command over many files on dask (see lucid batch pool3d --help)."""


@batch_group.command("pool3d", help=BATCH_POOL3D_HELP, no_args_is_help=True)
@click.argument("inputs", metavar="INPUT...", nargs=-1, type=opt.ANY_PATH)
@click.option("--list", "list_file", metavar="FILE", type=click.Path(dir_okay=False, path_type=str),
              help="Inputs from a file: one path per line, or a CSV with input and output columns.")
@click.option("--out-dir", metavar="DIR", type=click.Path(file_okay=False, path_type=str),
              help="Directory for the outputs (created if missing).")
@click.option("--name", "template", default=DEFAULT_TEMPLATE, show_default=True, metavar="TEMPLATE",
              help="Output file name: {stem}, {ext}, {name} and {parent} (the input's directory).")
@pool_options.pooling
@pool_options.resources
@opt.cluster_options
@click.option("--retries", type=click.IntRange(min=0), default=DEFAULT_RETRIES, show_default=True, metavar="N",
              help="Attempts after a transient failure (a lost worker, an I/O error); bad files are not retried.")
@click.option("-f", "--force", is_flag=True, help="Redo files whose outputs exist.")
@click.option("--json", "as_json", is_flag=True, help="One JSON line per file on stdout, then a summary line.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary (failures still show).")
@click.pass_context
def batch_pool3d(ctx: click.Context, inputs, list_file, out_dir, template, kernel, stride, padding, dilation,
                 ceil_mode, padding_mode, axes, dataset, out_dataset, compression, zarr_format, shards, out_dtype,
                 memory_limit, threads, scheduler, scheduler_file, workers, retries, force, as_json, quiet) -> None:
    if not inputs and list_file is None:
        raise click.UsageError("give input files, globs or --list FILE")
    pairs = plan_files(inputs, out_dir, template, list_file)
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
    job = PoolJob(
        "", None, kernel, stride, padding, dilation, ceil_mode, padding_mode, axes=axes, dataset=dataset,
        out_dataset=out_dataset, out_dtype=out_dtype, compression=compression,
        zarr_format=int(zarr_format) if zarr_format else None, shards=shards, force=force,
        memory_limit=memory_limit, threads=threads,
    )
    cluster = ClusterSpec.from_options(scheduler, scheduler_file, workers)

    def show(result: FileResult) -> None:
        if as_json:
            click.echo(json.dumps(jsonable(result.to_dict())))
        elif result.status == "failed":
            click.echo(f"  failed: {result.error}", err=True)
        for text in result.warnings:
            click.echo(f"Warning: {result.input}: {text}", err=True)

    with _file_bar(wanted(quiet or as_json), len(pairs)) as progress:
        result = run_batch(job, pairs, cluster=cluster, retries=retries, progress=progress, on_result=show)
    summary = result.summary()
    if as_json:
        click.echo(json.dumps({"summary": summary}))
    elif not quiet:
        click.echo(f"{summary['files']} files: {summary['done']} done, {summary['skipped']} skipped, "
                   f"{summary['failed']} failed in {summary['seconds']:.1f} s ({summary['where']})", err=True)
    if result.failed:
        click.echo(f"Error: {len(result.failed)} of {len(pairs)} files failed: "
                   + ", ".join(r.input for r in result.failed), err=True)
        ctx.exit(1)


@contextmanager
def _file_bar(enabled: bool, total: int):
    """A tqdm bar over files with the bytes read so far (None when disabled)."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc="files", unit="file", file=sys.stderr, leave=False, dynamic_ncols=True)

    def update(done: int, total: int, bytes_read: int) -> None:
        bar.set_postfix_str(f"{bytes_read / (1 << 20):.1f} MiB read", refresh=False)
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        bar.close()
