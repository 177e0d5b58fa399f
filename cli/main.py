"""``lucid``: the command line over ``lucid.stream.job.PoolJob`` and ``lucid.inspect.describe``.

This layer only parses options, calls the library and reports.  Exit codes:
0 success, 1 input/runtime error, 2 usage error, 130 Ctrl-C, 141 broken pipe,
143 SIGTERM (128 + N for the other terminating signals: 129 SIGHUP, 131 SIGQUIT,
...).  Every error is one ``Error: ...`` line on stderr (a traceback
too with ``lucid --debug``); signals are handled as in ``interrupts``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import warnings
from dataclasses import asdict
from typing import Any

import click

import lucid
from lucid.dask.cluster import ClusterError, ClusterSpec  # imports no dask: that waits until a cluster is asked for
from lucid.inspect import describe, jsonable
from lucid.io import LucidIOError, detect_format, primary_file
from lucid.io.atomic import check_destination, file_identity
from lucid.io.tempfiles import clean_stale
from lucid.kernels.windows import PoolSpec
from lucid.stream import resources
from lucid.stream.api import PaddingValueError, pool_spec
from lucid.stream.job import PoolJob

from . import options as opt
from . import pool_options
from . import report
from .interrupts import STOP, Terminated
from .preview import png_path, preview_command
from .pyramid import pyramid_command
from .progress import progress_bar, wanted

EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPT, EXIT_PIPE, EXIT_TERM = 1, 2, 130, 141, 143
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Failure(click.ClickException):
    """A runtime error already worded for the user, with its exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE):
        super().__init__(message)
        self.exit_code = exit_code


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _silence_stdout() -> None:
    """After EPIPE: point stdout at /dev/null so the interpreter's final flush cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (tests)
        pass


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A Python warning as lucid's own ``Warning:`` line (no category, file name or source line)."""
    click.echo(f"Warning: {_one_line(str(message))}", err=True)


class LucidGroup(click.Group):
    """A click group whose every error is one ``Error:`` line with the documented exit code."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        with STOP.installed(), warnings.catch_warnings():
            warnings.showwarning = _show_warning  # what the library did not collect: one line, no source
            code = self._run(args, prog_name, complete_var, **extra)
        if standalone_mode:
            sys.exit(code)
        return code

    def _run(self, args, prog_name, complete_var, **extra) -> int:
        argv = list(sys.argv[1:] if args is None else args)
        try:
            rv = super().main(argv, prog_name or "lucid", complete_var, standalone_mode=False, **extra)
            return rv if isinstance(rv, int) else 0
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()  # the help text, as click does
            return exc.exit_code
        except click.ClickException as exc:  # usage errors (parsed before any command runs) and failures
            return self._error(_one_line(exc.format_message()), exc.exit_code, argv)
        except (click.Abort, KeyboardInterrupt):  # a second Ctrl-C outside the command
            return self._error("interrupted", EXIT_INTERRUPT, argv)
        except Terminated as exc:
            return self._error(exc.message, exc.exit_code, argv)

    def _error(self, message: str, code: int, argv: list[str]) -> int:
        """The ``Error:`` line, and with ``--json`` on the command line the error object on stdout."""
        click.echo(f"Error: {message}", err=True)
        typed = self.typed_options(argv)
        if typed.get("as_json"):
            try:
                _print_json(error_object(message, code, typed))
            except BrokenPipeError:  # nobody reads stdout any more
                _silence_stdout()
        return code

    def typed_options(self, argv: list[str]) -> dict[str, Any]:
        """The subcommand's options and arguments as typed, unchecked (``{}`` without a subcommand).

        Usage errors stop click before any callback ran, so whether ``--json``
        was given, and the files named, are read here from the raw words."""
        words = [w for w in argv if w != "--debug"]
        command = self.get_command(click.Context(self), words[0]) if words else None
        if command is None:
            return {}
        rest = words[1:]
        for _ in range(len(rest) + 1):  # drop unknown options one by one
            try:
                parser = command.make_parser(click.Context(command, info_name=words[0]))
                typed = parser.parse_args(list(rest))[0]
                return {k: v for k, v in typed.items() if isinstance(v, (str, bool, list, tuple))}
            except click.NoSuchOption as exc:
                rest = [w for w in rest if w.split("=", 1)[0] != exc.option_name]
            except click.ClickException:  # e.g. ``-k`` without its value: at least honour --json
                break
        return {"as_json": "--json" in rest[: rest.index("--")] if "--" in rest else "--json" in rest}

    def invoke(self, ctx: click.Context):
        try:
            rv = super().invoke(ctx)
            sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
            STOP.check()  # a signal that came after the last safe point
            return rv
        except (click.ClickException, click.exceptions.Exit):
            raise
        except BrokenPipeError:
            _silence_stdout()
            raise click.exceptions.Exit(EXIT_PIPE) from None
        except (Exception, KeyboardInterrupt, Terminated) as exc:
            message, code = _describe_error(exc, ctx.meta.get("lucid.input"))
            if ctx.meta.get("lucid.debug"):
                traceback.print_exc()
            raise Failure(message, code) from None


def error_object(message: str, code: int, typed: dict[str, Any]) -> dict[str, Any]:
    """The ``--json`` form of an error: the message, the exit code and the files as typed."""
    given = typed.get("input", typed.get("files"))
    if isinstance(given, (list, tuple)):  # ``lucid info`` takes several files
        given = given[0] if len(given) == 1 else list(given)
    return {"error": message, "exit_code": code, "input": given, "output": typed.get("output")}


def _describe_error(exc: BaseException, input_name: str | None) -> tuple[str, int]:
    """The one-line message and exit code for an exception from the library."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", EXIT_INTERRUPT
    if isinstance(exc, Terminated):
        return exc.message, exc.exit_code
    if isinstance(exc, PaddingValueError):  # the way out in this command's own terms
        return _one_line(f"{exc.problem}; use --padding-mode ignore or no padding"), EXIT_FAILURE
    if isinstance(exc, (LucidIOError, ClusterError)):  # names its file (or scheduler) already
        return _one_line(str(exc)), EXIT_FAILURE
    if isinstance(exc, MemoryError):  # numpy names the allocation; the user needs the file and the way out
        detail = f" ({exc})" if str(exc) else ""
        return _one_line(f"{input_name or 'lucid'}: out of memory{detail}; "
                         "try a smaller kernel, padding or --memory-limit"), EXIT_FAILURE
    if isinstance(exc, OSError):
        where = exc.filename or input_name
        what = exc.strerror or str(exc)
        return _one_line(f"{where}: {what}" if where else what), EXIT_FAILURE
    if isinstance(exc, ValueError):  # about the data (MemoryLimitError too)
        text = _one_line(str(exc))
        if input_name and input_name not in text:
            text = f"{input_name}: {text}"
        return text, EXIT_FAILURE
    text = _one_line(f"internal error: {type(exc).__name__}: {exc}")
    return f"{text} (run `lucid --debug ...` for the traceback)", EXIT_FAILURE


def _print_json(obj: dict[str, Any]) -> None:
    click.echo(json.dumps(jsonable(obj)))


def _echo_lines(lines: list[str], err: bool) -> None:
    click.echo("\n".join(lines), err=err)


def _check_dataset(path: str | None, dataset: str | None, flag: str) -> None:
    """``file.h5:/a`` with ``--dataset /b``, or a dataset for a NIfTI file, is a usage error."""
    if path is None or dataset is None:
        return
    fmt, _file, in_path = detect_format(path)
    if fmt == "nifti":
        raise click.UsageError(f"{flag} {dataset}: {path} is a NIfTI file, which has no datasets")
    if in_path is not None and in_path.strip("/") != dataset.strip("/"):
        raise click.UsageError(f"{path} names dataset {in_path} but {flag} says {dataset}; give one")


def _check_files(inputs: dict[str, str | None], outputs: dict[str, str | None],
                 datasets: dict[str, str | None] | None = None) -> None:
    """No output may be an input or another output (the same file under any name, hard links too).

    Another dataset of an HDF5 input file is a legitimate output (the input is
    only read); when the input's dataset is not named, the library decides."""
    datasets = datasets or {}

    def identity(p: str):
        return file_identity(primary_file(p))  # a.hdr and a.img are one volume

    def dataset(label: str, p: str) -> str | None:
        fmt, _file, in_path = detect_format(p)
        named = datasets.get(label) or in_path
        return None if fmt != "hdf5" or named is None else "/" + named.strip("/")

    given = [(identity(p), label, dataset(label, p)) for label, p in inputs.items() if p is not None]
    seen: dict = {}
    for label, path in outputs.items():
        if path is None:
            continue
        key = identity(path)
        out_ds = dataset(label, path)
        for in_key, in_label, in_ds in given:
            if key == in_key and (out_ds is None or out_ds == in_ds):
                raise click.UsageError(f"{label} {path} is the {in_label} file; choose another output name")
        if key in seen:
            raise click.UsageError(f"{label} {path} is the same file as {seen[key]}")
        seen[key] = f"{label} {path}"


def _check_spec(input: str, kernel, stride, padding, dilation, ceil_mode: bool, padding_mode: str,
                dataset: str | None, axes: str | None) -> None:
    try:
        pool_spec(input, kernel, stride, padding, dilation, ceil_mode, padding_mode, dataset=dataset, axes=axes)
    except (TypeError, ValueError) as exc:
        raise click.UsageError(_one_line(str(exc))) from None


# ---------------------------------------------------------------- commands


@click.group(name="lucid", cls=LucidGroup, context_settings=CONTEXT)
@click.version_option(lucid.__version__, "-V", "--version", prog_name="lucid", message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True, help="Show the Python traceback of errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """3-D max pooling of NIfTI, HDF5 and Zarr volumes and videos larger than memory.

    \b
    Examples:
      lucid info sample_data/ct_phantom.nii.gz
      lucid pool3d sample_data/ct_phantom.nii.gz ct_pooled.nii.gz -k 2
      lucid pool3d sample_data/video_clip.h5 clip_pooled.h5 -k 2x2x2 --dry-run
      lucid pyramid stack.h5 stack.ome.zarr --levels 5
      lucid batch pool3d 'scans/*.nii.gz' --out-dir pooled/ -k 2
      lucid clean pooled/        # temporary files of killed runs

    \b
    Exit codes: 0 ok, 1 input or runtime error, 2 usage error,
    130 interrupted (Ctrl-C), 141 broken pipe, 143 terminated (SIGTERM;
    128 + N for signal N: 129 SIGHUP, 131 SIGQUIT, 138 SIGUSR1).
    """
    ctx.meta["lucid.debug"] = debug


POOL3D_HELP = """Max-pool INPUT into OUTPUT, streaming slabs within --memory-limit.

Formats follow the suffix, for input and output independently: .nii, .nii.gz,
.hdr/.img, .mgh, .mgz, .h5/.hdf5 (file.h5:/group/dataset names a dataset), .zarr. Values per axis are given
in the order the pooled axes appear in the file (x,y,z for NIfTI, d,h,w or
t,h,w for HDF5). The stride defaults to the kernel. Outputs appear only when
everything succeeded.

\b
Examples:
  # CT: 2x2x2 pooling and the gradient map (how often each voxel won)
  lucid pool3d ct.nii.gz ct_pooled.nii.gz -k 2 --grad-out ct_grad.nii.gz
  # keep slices: pool x and y only, into HDF5
  lucid pool3d mri_4d.nii.gz mri_pooled.h5 -k 2,2,1
  # a video (t,h,w,c): pool time and space, channels carried through
  lucid pool3d clip.h5:/frames clip_pooled.h5 -k 2x2x2 --compression lzf
  # backward pass with an upstream gradient on the output grid
  lucid pool3d vol.h5 out.h5 -k 2 --grad-in up.h5:/grad --grad-out grad.h5
  # a huge volume, one dask task per block on 2 local workers (or --scheduler tcp://host:8786)
  lucid pool3d em.zarr em_pooled.zarr -k 3 -s 2 -p 1 --workers 2
  # plan only: shapes, geometry, slabs and memory, as JSON
  lucid pool3d big.h5 small.h5 -k 3 -s 2 -p 1 --memory-limit 256M --dry-run --json
"""


@main.command("pool3d", help=POOL3D_HELP, no_args_is_help=True)
@click.argument("input", type=opt.VOLUME)
@click.argument("output", type=opt.VOLUME)
@pool_options.pooling
@click.option("--grad-out", metavar="FILE", type=opt.VOLUME,
              help="Write the gradient map on the input grid (float32).")
@click.option("--grad-in", metavar="FILE", type=opt.VOLUME,
              help="Upstream gradient on the output grid [default: ones, i.e. a count of selections].")
@click.option("--indices-out", metavar="FILE", type=opt.VOLUME,
              help="Write argmax flat indices (int64, PyTorch convention).")
@pool_options.resources
@click.option("-f", "--force", is_flag=True, help="Replace existing output files.")
@click.option("--mkdir", "make_dirs", is_flag=True,
              help="Create missing output directories, as mkdir -p does (removed again if the run fails).")
@click.option("--dry-run", is_flag=True, help="Print the plan (shapes, geometry, slabs, memory); write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the report on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary (warnings and errors still show).")
@click.option("--preview", metavar="PNG", callback=png_path,
              help="After the run, draw input, output and gradient map side by side (needs the [preview] extra).")
@opt.cluster_options
@click.option("--resume", is_flag=True,
              help="On a dask cluster: continue a run whose scheduler or client died, skipping the blocks done.")
@click.option("--block-size", "block_bytes", metavar="SIZE", callback=opt.block_size,
              help="On a dask cluster: input bytes per task [default: 128M; each task within --memory-limit].")
@click.pass_context
def pool3d(ctx: click.Context, input: str, output: str, kernel, stride, padding, dilation, ceil_mode: bool,
           padding_mode: str, axes: str | None, dataset: str | None, level: int | None, out_dataset: str | None,
           compression: str,
           zarr_format: str | None, shards, out_dtype: str | None, grad_out: str | None, grad_in: str | None,
           indices_out: str | None, memory_limit: int, threads: int | None, force: bool, make_dirs: bool,
           dry_run: bool, as_json: bool, quiet: bool, preview: str | None, scheduler: str | None,
           scheduler_file: str | None, workers: int | None, resume: bool, block_bytes: int | None) -> None:
    if grad_in is not None and grad_out is None:
        raise click.UsageError("--grad-in needs --grad-out: the upstream gradient is only used for a gradient map")
    cluster = ClusterSpec.from_options(scheduler, scheduler_file, workers)
    if (resume or block_bytes is not None) and cluster is None:
        raise click.UsageError(f"{'--resume' if resume else '--block-size'} needs a dask cluster: "
                               "--workers N, --scheduler ADDRESS or --scheduler-file FILE")
    if cluster is not None:
        _quiet_dask()
    _check_dataset(input, dataset, "--dataset")
    _check_dataset(output, out_dataset, "--out-dataset")
    _check_spec(input, kernel, stride, padding, dilation, ceil_mode, padding_mode, dataset, axes)
    outputs = {"OUTPUT": output, "--grad-out": grad_out, "--indices-out": indices_out}
    _check_files({"INPUT": input, "--grad-in": grad_in}, outputs, {"INPUT": dataset, "OUTPUT": out_dataset})
    ctx.meta["lucid.input"] = input
    early = _machine_warnings(threads, memory_limit)  # said now, not after a long run
    for text in early:
        click.echo(f"Warning: {text}", err=True)
    if preview is not None:  # refused before the run, not after it
        check_destination(preview, force=force, protect=[detect_format(p)[1] for p in (input, grad_in) if p])

    with progress_bar(wanted(quiet) and not dry_run) as progress:
        job = PoolJob(
            input, output, kernel, stride, padding, dilation, ceil_mode, padding_mode, axes=axes, dataset=dataset,
            level=level, grad_in=grad_in, out_dataset=out_dataset, grad_out=grad_out, indices_out=indices_out, out_dtype=out_dtype,
            compression=compression, zarr_format=int(zarr_format) if zarr_format else None, shards=shards,
            force=force, make_dirs=make_dirs, memory_limit=memory_limit, threads=threads, dry_run=dry_run,
            cluster=cluster, resume=resume,
            block_bytes=block_bytes,
        )
        result = job.run(STOP.guard(progress))
    warnings = list(result.warnings)  # a dry run lists outputs that exist
    if result.padding_won and result.padding_mode == "zeros":
        example = ", e.g. CT air at -1000 HU" if detect_format(input)[0] == "nifti" else ""
        warnings.append(
            f"zero padding won the maximum at the border of {result.input} (the data has values below 0 there"
            f"{example}); use --padding-mode ignore to pool real voxels only"
        )
    for text in warnings:
        if text not in early:
            click.echo(f"Warning: {text}", err=True)
    if preview is not None and not dry_run:
        from lucid.preview import render_run, save

        spec = PoolSpec.create(kernel, kernel if stride is None else stride, padding, dilation, ceil_mode, padding_mode)
        picture = render_run(input, result.output, result.grad_out, spec=spec, dataset=dataset, axes=axes)
        save(picture, preview, force=force)
        if not quiet and not as_json:
            click.echo(f"  wrote {preview}: input, output{' and gradient map' if grad_out else ''}", err=True)
    data = result.to_dict()
    if as_json:
        _print_json({**data, "lucid_version": lucid.__version__, "warnings": warnings})
    elif dry_run:
        _echo_lines(report.plan_lines(data) + ["dry run: nothing written"], err=False)
    elif not quiet:
        _echo_lines(report.summary_lines(data), err=True)


def _quiet_dask() -> None:
    """dask's own log lines (here and in local workers) would bury the one ``Error:`` line."""
    import logging

    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "critical")  # local workers inherit it
    try:
        import distributed  # noqa: F401  (its import sets its loggers' levels: set ours after it)
    except ImportError:
        return  # the run says which extra to install
    for name in ["distributed", *logging.root.manager.loggerDict]:
        if name == "distributed" or name.startswith("distributed."):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _machine_warnings(threads: int | None, memory_limit: int) -> list[str]:
    """What ``pool3d_file`` will warn about the machine (too many threads, a limit above its memory)."""
    return [w for w in (resources.check_threads(threads)[1], resources.memory_warning(memory_limit)) if w]


INFO_HELP = """Show what FILE holds: shape, dtype, axes, voxel size, affine and more.

NIfTI: scaling (scl_slope/scl_inter), qform/sform codes, header fields.
HDF5: every dataset in the file, chunks, compression and attributes of the
one that would be pooled (name it as file.h5:/PATH or with --dataset).
Several files: one line each (one JSON object per line with --json), as
nib-ls does; a file that fails prints its error and the others still print
(exit 1 if any failed).

\b
Examples:
  lucid info sample_data/ct_phantom.nii.gz
  lucid info sample_data/video_clip.h5:/frames
  lucid info sample_data/volume_5d.h5 --json | python -m json.tool
  lucid info sample_data/*.nii.gz sample_data/*.h5
"""


@main.command("info", help=INFO_HELP, no_args_is_help=True)
@click.argument("files", metavar="FILE...", nargs=-1, required=True, type=opt.ANY_PATH)
@click.option("--dataset", metavar="PATH", help="HDF5 dataset (or FILE as file.h5:/PATH).")
@click.option("--axes", metavar="AXES", callback=opt.axes_text, help="Layout, e.g. zyx, thwc, xyzt.")
@click.option("--level", type=click.IntRange(min=0), help="OME-Zarr resolution level [default: 0].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout (one per line for several files).")
@click.pass_context
def info(ctx: click.Context, files: tuple[str, ...], dataset: str | None, axes: str | None, level: int | None,
         as_json: bool) -> int:
    if len(files) > 1:
        return _info_many(ctx, files, dataset, axes, as_json, level)
    file = opt.VOLUME.convert(files[0], ctx.command.params[0], ctx)  # one file: a bad suffix is a usage error
    _check_dataset(file, dataset, "--dataset")
    ctx.meta["lucid.input"] = file
    found = describe(file, dataset=dataset, axes=axes, level=level)
    if as_json:
        _print_json(found)
    else:
        _echo_lines(report.info_lines(found), err=False)
    return 0


def _info_many(ctx: click.Context, files: tuple[str, ...], dataset: str | None, axes: str | None,
               as_json: bool, level: int | None = None) -> int:
    """One line (or JSON object) per file; each failure is its own ``Error:`` line."""
    rows: list[list[str]] = []
    failed = 0
    for file in files:
        try:
            _check_dataset(file, dataset, "--dataset")
            found = describe(file, dataset=dataset, axes=axes, level=level)
        except (Exception, click.UsageError) as exc:
            if isinstance(exc, click.UsageError):
                message = _one_line(exc.format_message())
            else:
                message, _code = _describe_error(exc, file)
                if ctx.meta.get("lucid.debug"):
                    traceback.print_exc()
            failed += 1
            click.echo(f"Error: {message}", err=True)
            if as_json:
                _print_json(error_object(message, EXIT_FAILURE, {"input": file}))
            continue
        if as_json:
            _print_json(found)
        else:
            rows.append(report.info_row(found))
    if rows:
        _echo_lines(report.columns(rows), err=False)
    return EXIT_FAILURE if failed else 0


main.add_command(preview_command)
main.add_command(pyramid_command)


CLEAN_HELP = """Remove the temporary files that killed lucid runs left in DIR.

A run writes its outputs to hidden files named .NAME.lucid-tmp-PID-HOST-XXXXXX
beside them and removes them on success, on errors and on every signal it can
catch. SIGKILL, a crash or a power cut leave them behind. This removes those
whose process (PID, on this machine) no longer runs; any run into DIR does the
same on the way. Files of running processes and of other machines are kept.

\b
Examples:
  lucid clean pooled/
  lucid clean . --dry-run
"""


@main.command("clean", help=CLEAN_HELP, no_args_is_help=True)
@click.argument("directory", metavar="DIR", type=click.Path(exists=True, file_okay=False))
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing (errors still show).")
@click.pass_context
def clean(ctx: click.Context, directory: str, dry_run: bool, as_json: bool, quiet: bool) -> None:
    ctx.meta["lucid.input"] = directory
    found = clean_stale(directory, dry_run=dry_run)
    if as_json:
        _print_json({**asdict(found), "dry_run": dry_run})
    elif not quiet:
        _echo_lines(report.clean_lines(found, dry_run), err=False)
    if found.failed:
        raise Failure(f"{directory}: could not remove {len(found.failed)} stale temporary file"
                      f"{'s' if len(found.failed) > 1 else ''}: {', '.join(found.failed)}")


if __name__ == "__main__":  # python -m lucid_cli.main
    main()


from .batch import batch_group  # noqa: E402  (registered after the commands it reuses)

main.add_command(batch_group)
