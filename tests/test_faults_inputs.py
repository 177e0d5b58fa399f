"""Bad paths, bad files, bad parameters and bad gradients: a clear error every time, nothing lost.

Every case runs twice:

* through the real command (``python -m lucid_cli.main pool3d ...`` in a
  subprocess, cwd = the case's directory): exit 2 for usage errors, 1 for
  input/runtime errors, exactly one ``Error:`` line on stderr naming the file
  or value, no traceback;
* through the Python API (``lucid.stream.api.pool3d_file``): ValueError or
  TypeError for arguments, LucidIOError for files, with a one-line message.

Both check that the directory is exactly as before: inputs byte-identical, no
output created or changed, no ``.lucid-tmp-`` file left.  The subprocess runs
are started together (a module fixture) because interpreter start-up dominates
them.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest

from tests.faults_helpers import (
    CliResult,
    IS_ROOT,
    Snapshot,
    assert_one_error_line,
    assert_one_line_message,
    nifti_bytes,
    CliServer,
    run_cli,
    volume,
    write_h5,
    write_nifti,
    write_unavailable_filter_h5,
)
from lucid.io import LucidIOError
from lucid.stream.api import pool3d_file

USAGE, FAILURE = 2, 1


@dataclass
class Case:
    id: str
    setup: Callable[[Path], None]
    cli: list | None  # arguments after "pool3d"; None: no command-line spelling
    code: int  # expected exit status of the command
    api: dict | None  # pool3d_file keyword arguments; None: CLI-only spelling (e.g. "-k two")
    exc: type | tuple = LucidIOError  # expected exception from the API
    says: tuple = ()  # fragments both messages contain
    cli_says: tuple = ()
    api_says: tuple = ()
    nobody: bool = False  # run the command as an unprivileged user (permission cases under root)
    deny: tuple = ()  # API half: paths os.access() reports as inaccessible (the root workaround)
    marks: tuple = field(default_factory=tuple)


# ---------------------------------------------------------------- file makers


def h5(name="a.h5", **kw):
    return lambda d: write_h5(d / name, **kw)


def nii(name="a.nii.gz", data=None):
    return lambda d: write_nifti(d / name, data)


def both(*makers):
    def setup(d):
        for m in makers:
            m(d)

    return setup


def raw(name, content: bytes):
    return lambda d: (d / name).write_bytes(content)


def mkdir(name, mode=None):
    def setup(d):
        (d / name).mkdir()
        if mode is not None:
            os.chmod(d / name, mode)

    return setup


def chmod(name, mode):
    return lambda d: os.chmod(d / name, mode)


def symlink(name, target):
    return lambda d: os.symlink(target, d / name)


def truncated_gz(d):
    data = nifti_bytes(volume((16, 16, 16), seed=3), gz=True)
    (d / "cut.nii.gz").write_bytes(data[: len(data) // 2])


def truncated_nii(d):
    data = nifti_bytes()
    (d / "cut.nii").write_bytes(data[: 352 + (len(data) - 352) // 2])


def header_claims_more(d):
    """A valid 8x8x8 float32 .nii whose header says 8x8x16: half the data is missing."""
    data = bytearray(nifti_bytes())
    struct.pack_into("<h", data, 40 + 2 * 3, 16)  # dim[3]
    (d / "short.nii").write_bytes(bytes(data))


def multi(d):
    with h5py.File(d / "multi.h5", "w") as f:
        f["x"] = volume()
        f["g/y"] = volume(seed=1)
        f["scalar"] = 1.5
        f["line"] = np.zeros(5, np.float32)
        f["plane"] = np.zeros((4, 4), np.float32)
        f["zero"] = np.zeros((4, 0, 4), np.float32)
        f["bool"] = np.zeros((4, 4, 4), bool)
        f["complex"] = np.zeros((4, 4, 4), np.complex64)
        f["bytes"] = np.full((4, 4, 4), b"ab", dtype="S2")
        f["text"] = np.full((4, 4, 4), "ab", dtype=h5py.string_dtype())
        f["compound"] = np.zeros((4, 4, 4), dtype=[("a", "<f4"), ("b", "<i4")])


def grads(d):
    """a.h5 (8^3) and upstream gradients for its 4^3 output: wrong shape, wrong kinds."""
    write_h5(d / "a.h5")
    with h5py.File(d / "up.h5", "w") as f:
        f["shape"] = np.ones((4, 4, 3), np.float32)
        f["bytes"] = np.full((4, 4, 4), b"1", dtype="S1")
        f["complex"] = np.ones((4, 4, 4), np.complex64)


def zero_dim_nifti(d):
    data = bytearray(nifti_bytes())
    struct.pack_into("<h", data, 40 + 2 * 2, 0)  # dim[2] = 0
    (d / "zero.nii").write_bytes(bytes(data))


A_H5 = h5()
OUT_EXISTS = b"an existing output that must survive"

CASES = [
    # ------------------------------------------------------------ paths
    Case("input-missing-h5", lambda d: None, ["missing.h5", "o.h5"], FAILURE,
         dict(input="missing.h5", output="o.h5"), says=("missing.h5", "no such file")),
    Case("input-missing-nii", lambda d: None, ["missing.nii.gz", "o.h5"], FAILURE,
         dict(input="missing.nii.gz", output="o.h5"), says=("missing.nii.gz", "no such file")),
    Case("input-broken-symlink", symlink("gone.h5", "nowhere.h5"), ["gone.h5", "o.h5"], FAILURE,
         dict(input="gone.h5", output="o.h5"), says=("gone.h5", "broken symbolic link")),
    Case("input-is-directory", mkdir("dir.h5"), ["dir.h5", "o.h5"], FAILURE,
         dict(input="dir.h5", output="o.h5"), says=("dir.h5", "directory")),
    Case("input-is-directory-nii", mkdir("dir.nii"), ["dir.nii", "o.nii"], FAILURE,
         dict(input="dir.nii", output="o.nii"), says=("dir.nii", "directory")),
    Case("input-unreadable-h5", both(A_H5, chmod("a.h5", 0)), ["a.h5", "out/o.h5"], FAILURE,
         dict(input="a.h5", output="out/o.h5"), says=("a.h5", "permission denied"),
         nobody=True, deny=("a.h5",)),
    Case("input-unreadable-nii", both(nii(), chmod("a.nii.gz", 0)), ["a.nii.gz", "out/o.h5"], FAILURE,
         dict(input="a.nii.gz", output="out/o.h5"), says=("a.nii.gz", "permission denied"),
         nobody=True, deny=("a.nii.gz",)),
    Case("output-dir-missing", A_H5, ["a.h5", "nodir/o.h5"], FAILURE,
         dict(input="a.h5", output="nodir/o.h5"), says=("nodir", "does not exist")),
    Case("output-dir-read-only", both(A_H5, mkdir("ro", 0o555)), ["a.h5", "ro/o.h5"], FAILURE,
         dict(input="a.h5", output="ro/o.h5"), says=("ro/o.h5", "not writable"), nobody=True, deny=("ro",)),
    Case("output-is-directory", both(A_H5, mkdir("o.h5")), ["a.h5", "o.h5", "--force"], FAILURE,
         dict(input="a.h5", output="o.h5", force=True), says=("o.h5", "directory")),
    Case("output-is-input", A_H5, ["a.h5", "a.h5"], USAGE,
         dict(input="a.h5", output="a.h5"), says=("a.h5", "input")),
    Case("output-is-input-forced", A_H5, ["a.h5", "a.h5", "--force"], USAGE,
         dict(input="a.h5", output="a.h5", force=True), says=("a.h5", "input")),
    Case("output-is-input-relative", both(A_H5, mkdir("sub")), ["a.h5", "sub/../a.h5", "--force"], USAGE,
         dict(input="a.h5", output="sub/../a.h5", force=True), says=("a.h5", "input")),
    Case("output-is-input-symlink", both(A_H5, symlink("link.h5", "a.h5")), ["a.h5", "link.h5", "--force"], USAGE,
         dict(input="a.h5", output="link.h5", force=True), says=("link.h5", "input")),
    Case("output-is-input-hardlink", both(A_H5, lambda d: os.link(d / "a.h5", d / "hard.h5")),
         ["a.h5", "hard.h5", "--force"], USAGE,
         dict(input="a.h5", output="hard.h5", force=True), says=("hard.h5", "input")),
    # another dataset of the input file is a legitimate output (tests/test_hdf5_update.py); the input dataset is not
    Case("output-is-input-via-dataset", A_H5, ["a.h5:/data", "a.h5:/data", "--force"], USAGE,
         dict(input="a.h5:/data", output="a.h5:/data", force=True), says=("a.h5", "input")),
    Case("output-is-input-dataset-by-default", A_H5, ["a.h5:/data", "a.h5", "--force"], USAGE,
         dict(input="a.h5:/data", output="a.h5", force=True), says=("a.h5", "input")),
    Case("output-is-input-nifti", nii(), ["a.nii.gz", "./a.nii.gz", "--force"], USAGE,
         dict(input="a.nii.gz", output="./a.nii.gz", force=True), says=("a.nii.gz", "input")),
    Case("grad-out-is-input", A_H5, ["a.h5", "o.h5", "--grad-out", "a.h5", "--force"], USAGE,
         dict(input="a.h5", output="o.h5", grad_out="a.h5", force=True), says=("a.h5", "input")),
    Case("grad-out-is-output", A_H5, ["a.h5", "o.h5", "--grad-out", "o.h5"], USAGE,
         dict(input="a.h5", output="o.h5", grad_out="o.h5"), exc=ValueError, says=("o.h5",),
         api_says=("different files",)),
    Case("output-exists", both(A_H5, raw("o.h5", OUT_EXISTS)), ["a.h5", "o.h5"], FAILURE,
         dict(input="a.h5", output="o.h5"), says=("o.h5", "exists", "--force")),
    Case("grad-out-exists", both(A_H5, raw("g.nii", OUT_EXISTS)), ["a.h5", "o.h5", "--grad-out", "g.nii"], FAILURE,
         dict(input="a.h5", output="o.h5", grad_out="g.nii"), says=("g.nii", "exists", "--force")),
    Case("input-unknown-suffix", raw("a.txt", b"1 2 3"), ["a.txt", "o.h5"], USAGE,
         dict(input="a.txt", output="o.h5"), says=("a.txt", "unsupported file type")),
    Case("input-no-suffix", raw("volume", b"1 2 3"), ["volume", "o.h5"], USAGE,
         dict(input="volume", output="o.h5"), says=("volume", "unsupported file type")),
    Case("output-unknown-suffix", A_H5, ["a.h5", "o.nii.bz2"], USAGE,
         dict(input="a.h5", output="o.nii.bz2"), says=("o.nii.bz2", "unsupported file type")),
    Case("grad-out-unknown-suffix", A_H5, ["a.h5", "o.h5", "--grad-out", "g.npy"], USAGE,
         dict(input="a.h5", output="o.h5", grad_out="g.npy"), says=("g.npy", "unsupported file type")),
    # ------------------------------------------------------------ files
    Case("empty-nii", raw("e.nii", b""), ["e.nii", "o.h5"], FAILURE,
         dict(input="e.nii", output="o.h5"), says=("e.nii", "empty")),
    Case("empty-nii-gz", raw("e.nii.gz", b""), ["e.nii.gz", "o.h5"], FAILURE,
         dict(input="e.nii.gz", output="o.h5"), says=("e.nii.gz", "empty")),
    Case("empty-h5", raw("e.h5", b""), ["e.h5", "o.h5"], FAILURE,
         dict(input="e.h5", output="o.h5"), says=("e.h5", "empty")),
    Case("empty-gzip-stream", raw("e.nii.gz", gzip.compress(b"", mtime=0)), ["e.nii.gz", "o.h5"], FAILURE,
         dict(input="e.nii.gz", output="o.h5"), says=("e.nii.gz",)),
    Case("truncated-nii-gz", truncated_gz, ["cut.nii.gz", "o.nii.gz"], FAILURE,
         dict(input="cut.nii.gz", output="o.nii.gz"), says=("cut.nii.gz", "truncated")),
    Case("truncated-nii-gz-header", raw("cut.nii.gz", nifti_bytes(gz=True)[:30]), ["cut.nii.gz", "o.h5"], FAILURE,
         dict(input="cut.nii.gz", output="o.h5"), says=("cut.nii.gz",)),
    Case("truncated-nii", truncated_nii, ["cut.nii", "o.nii"], FAILURE,
         dict(input="cut.nii", output="o.nii"), says=("cut.nii", "truncated")),
    Case("truncated-nii-header", raw("cut.nii", nifti_bytes()[:200]), ["cut.nii", "o.h5"], FAILURE,
         dict(input="cut.nii", output="o.h5"), says=("cut.nii",)),
    Case("nii-header-claims-more", header_claims_more, ["short.nii", "o.h5"], FAILURE,
         dict(input="short.nii", output="o.h5"), says=("short.nii", "truncated")),
    Case("garbage-h5", raw("junk.h5", np.random.default_rng(5).bytes(4096)), ["junk.h5", "o.h5"], FAILURE,
         dict(input="junk.h5", output="o.h5"), says=("junk.h5", "not an hdf5 file")),
    Case("garbage-nii", raw("junk.nii", np.random.default_rng(6).bytes(4096)), ["junk.nii", "o.h5"], FAILURE,
         dict(input="junk.nii", output="o.h5"), says=("junk.nii",)),
    Case("nifti-named-h5", raw("n.h5", nifti_bytes()), ["n.h5", "o.h5"], FAILURE,
         dict(input="n.h5", output="o.h5"), says=("n.h5", "not an hdf5 file")),
    Case("h5-named-nii", lambda d: write_h5(d / "h.nii"), ["h.nii", "o.h5"], FAILURE,
         dict(input="h.nii", output="o.h5"), says=("h.nii",)),
    Case("dataset-missing", A_H5, ["a.h5:/nope", "o.h5"], FAILURE,
         dict(input="a.h5:/nope", output="o.h5"), says=("a.h5", "/nope", "/data")),
    Case("dataset-option-missing", A_H5, ["a.h5", "o.h5", "--dataset", "nope"], FAILURE,
         dict(input="a.h5", output="o.h5", dataset="nope"), says=("a.h5", "/nope", "/data")),
    Case("dataset-ambiguous", multi, ["multi.h5", "o.h5"], FAILURE,
         dict(input="multi.h5", output="o.h5"), says=("multi.h5", "/x", "/g/y", "--dataset")),
    Case("dataset-is-group", multi, ["multi.h5:/g", "o.h5"], FAILURE,
         dict(input="multi.h5:/g", output="o.h5"), says=("multi.h5", "group", "/g/y")),
    *[
        Case(f"dataset-{ds}", multi, [f"multi.h5:/{ds}", "o.h5"], FAILURE,
             dict(input=f"multi.h5:/{ds}", output="o.h5"), says=(f"multi.h5:/{ds}", words))
        for ds, words in [
            ("scalar", "cannot be pooled in 3-d"), ("line", "cannot be pooled in 3-d"),
            ("plane", "cannot be pooled in 3-d"), ("zero", "zero-sized"), ("bool", "boolean"),
            ("complex", "complex"), ("bytes", "unsupported data type"), ("text", "unsupported data type"),
            ("compound", "unsupported data type"),
        ]
    ],
    Case("nifti-zero-dim", zero_dim_nifti, ["zero.nii", "o.h5"], FAILURE,
         dict(input="zero.nii", output="o.h5"), says=("zero.nii", "zero-sized")),
    Case("nifti-complex", nii("c.nii", np.zeros((4, 4, 4), np.complex64)), ["c.nii", "o.h5"], FAILURE,
         dict(input="c.nii", output="o.h5"), says=("c.nii", "complex")),
    Case("nifti-rgb", nii("rgb.nii", np.zeros((4, 4, 4), [("R", "u1"), ("G", "u1"), ("B", "u1")])),
         ["rgb.nii", "o.h5"], FAILURE, dict(input="rgb.nii", output="o.h5"), says=("rgb.nii",)),
    Case("h5-filter-unavailable", lambda d: write_unavailable_filter_h5(d / "blosc.h5"), ["blosc.h5", "o.h5"],
         FAILURE, dict(input="blosc.h5", output="o.h5"), says=("blosc.h5", "filter 300", "not available")),
    # ------------------------------------------------------------ parameters
    *[
        Case(f"{flag.strip('-')}-{value}", A_H5, ["a.h5", "o.h5", flag, value], USAGE,
             dict(input="a.h5", output="o.h5", **{key: int(value)}), exc=ValueError,
             says=(value,), cli_says=(flag,), api_says=(key, ">= 1"))
        for flag, key in [("-k", "kernel_size"), ("-s", "stride"), ("--dilation", "dilation")]
        for value in ("0", "-2")
    ],
    Case("padding-negative", A_H5, ["a.h5", "o.h5", "-p", "-1"], USAGE,
         dict(input="a.h5", output="o.h5", padding=-1), exc=ValueError, says=("padding", "-1", ">= 0")),
    Case("padding-negative-per-axis", A_H5, ["a.h5", "o.h5", "-p", "0,-1,0"], USAGE,
         dict(input="a.h5", output="o.h5", padding=(0, -1, 0)), exc=ValueError, says=("padding", "-1")),
    Case("kernel-two-values", A_H5, ["a.h5", "o.h5", "-k", "2,2"], USAGE,
         dict(input="a.h5", output="o.h5", kernel_size=(2, 2)), exc=ValueError,
         cli_says=("2,2", "2 values"), api_says=("kernel_size", "3", "(2, 2)")),
    Case("stride-four-values", A_H5, ["a.h5", "o.h5", "-s", "2x2x2x2"], USAGE,
         dict(input="a.h5", output="o.h5", stride=(2, 2, 2, 2)), exc=ValueError, says=("2",),
         cli_says=("4 values",), api_says=("stride",)),
    Case("kernel-word", A_H5, ["a.h5", "o.h5", "-k", "two"], USAGE,
         dict(input="a.h5", output="o.h5", kernel_size="two"), exc=TypeError, says=("two",)),
    Case("kernel-trailing-x", A_H5, ["a.h5", "o.h5", "-k", "2x"], USAGE,
         dict(input="a.h5", output="o.h5", kernel_size="2x"), exc=TypeError, says=("2x",)),
    Case("kernel-float", A_H5, ["a.h5", "o.h5", "-k", "2.5"], USAGE,
         dict(input="a.h5", output="o.h5", kernel_size=2.5), exc=TypeError, says=("2.5",)),
    Case("kernel-larger-than-volume", A_H5, ["a.h5", "o.h5", "-k", "2,2,9"], FAILURE,
         dict(input="a.h5", output="o.h5", kernel_size=(2, 2, 9)), exc=ValueError,
         says=("a.h5", "kernel 9", "axis 2 (w) 8")),
    Case("kernel-larger-than-padded", A_H5, ["a.h5", "o.h5", "-k", "11,2,2", "-p", "1,0,0"], FAILURE,
         dict(input="a.h5", output="o.h5", kernel_size=(11, 2, 2), padding=(1, 0, 0)), exc=ValueError,
         says=("a.h5", "kernel 11", "padding 1", "axis 0 (d) 8")),
    Case("dilated-kernel-too-large", nii(), ["a.nii.gz", "o.h5", "-k", "3", "--dilation", "1,4,1"], FAILURE,
         dict(input="a.nii.gz", output="o.h5", kernel_size=3, dilation=(1, 4, 1)), exc=ValueError,
         says=("a.nii.gz", "kernel 3", "dilation 4", "axis 1 (y) 8")),
    Case("axes-too-long", A_H5, ["a.h5", "o.h5", "--axes", "cdhw"], FAILURE,
         dict(input="a.h5", output="o.h5", axes="cdhw"), exc=ValueError, says=("a.h5", "cdhw", "3 dimensions")),
    Case("axes-too-short", A_H5, ["a.h5", "o.h5", "--axes", "hw"], USAGE,
         dict(input="a.h5", output="o.h5", axes="hw"), exc=ValueError, says=("hw",)),
    Case("axes-repeated", A_H5, ["a.h5", "o.h5", "--axes", "ddw"], USAGE,
         dict(input="a.h5", output="o.h5", axes="ddw"), exc=ValueError, says=("ddw", "repeats")),
    Case("axes-not-three-pooled", A_H5, ["a.h5", "o.h5", "--axes", "ncd"], USAGE,
         dict(input="a.h5", output="o.h5", axes="ncd"), exc=ValueError, says=("ncd", "three pooled")),
    Case("axes-unknown-letter", A_H5, ["a.h5", "o.h5", "--axes", "dhq"], USAGE,
         dict(input="a.h5", output="o.h5", axes="dhq"), exc=ValueError, says=("dhq", "unknown letter")),
    Case("memory-limit-too-small", A_H5, ["a.h5", "o.h5", "--memory-limit", "1K"], USAGE,  # the CLI's minimum is 1M
         dict(input="a.h5", output="o.h5", memory_limit="1K"), exc=ValueError, says=("memory",),
         cli_says=("--memory-limit", "1K", "minimum is 1M"), api_says=("a.h5", "too small", "need at least")),
    *[
        Case(f"memory-limit-{name}", A_H5, ["a.h5", "o.h5", f"--memory-limit={text}"], USAGE,
             dict(input="a.h5", output="o.h5", memory_limit=text), exc=ValueError,
             says=("memory limit", repr(text)))
        for name, text in [("word", "lots"), ("negative", "-5M"), ("empty", ""), ("unit", "5Q"), ("nan", "nanG")]
    ],
    # ------------------------------------------------------------ gradients
    Case("grad-in-wrong-shape", grads, ["a.h5", "o.h5", "--grad-out", "g.h5", "--grad-in", "up.h5:/shape"],
         FAILURE, dict(input="a.h5", output="o.h5", grad_out="g.h5", grad_in="up.h5:/shape"),
         says=("up.h5", "d=4 h=4 w=3", "d=4 h=4 w=4")),
    Case("grad-in-strings", grads, ["a.h5", "o.h5", "--grad-out", "g.h5", "--grad-in", "up.h5:/bytes"],
         FAILURE, dict(input="a.h5", output="o.h5", grad_out="g.h5", grad_in="up.h5:/bytes"),
         says=("up.h5", "data type")),
    Case("grad-in-complex", grads, ["a.h5", "o.h5", "--grad-out", "g.h5", "--grad-in", "up.h5:/complex"],
         FAILURE, dict(input="a.h5", output="o.h5", grad_out="g.h5", grad_in="up.h5:/complex"),
         says=("up.h5", "complex")),
    Case("grad-in-missing-file", grads, ["a.h5", "o.h5", "--grad-out", "g.h5", "--grad-in", "nope.h5"],
         FAILURE, dict(input="a.h5", output="o.h5", grad_out="g.h5", grad_in="nope.h5"),
         says=("nope.h5", "no such file")),
    Case("grad-in-without-grad-out", grads, ["a.h5", "o.h5", "--grad-in", "up.h5:/shape"], USAGE,
         dict(input="a.h5", output="o.h5", grad_in="up.h5:/shape"), exc=ValueError, says=("grad", "grad")),
]

IDS = [c.id for c in CASES]
assert len(set(IDS)) == len(IDS), "case ids must be unique"
BY_ID = {c.id: c for c in CASES}


def make_case_dir(base: Path, case: Case, world: bool = False) -> Path:
    d = base / case.id
    d.mkdir()
    if world:  # the unprivileged user must reach the files (and write beside them)
        os.chmod(d, 0o777)
        (d / "out").mkdir()
        os.chmod(d / "out", 0o777)
    else:
        (d / "out").mkdir()
    case.setup(d)
    return d


def _restore_permissions(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, 0o755 if os.path.isdir(p) else 0o644)


# ---------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    """Every case's command, each in a fresh process; {id: (result, before, after)}."""
    base = tmp_path_factory.mktemp("cli-cases")
    # permission cases run as 'nobody', who cannot enter pytest's private tmp directory
    world = Path(tempfile.mkdtemp(prefix="lucid-faults-"))
    os.chmod(world, 0o755)
    try:
        found = {}
        with CliServer() as server:
            for case in CASES:
                if case.cli is None:
                    continue
                d = make_case_dir(world if case.nobody else base, case, world=case.nobody)
                before = Snapshot.take(d)
                result = server.run("pool3d", *case.cli, cwd=d, as_nobody=case.nobody)
                found[case.id] = (result, before, Snapshot.take(d), d)
        yield found
    finally:
        _restore_permissions(world)
        shutil.rmtree(world, ignore_errors=True)


@pytest.mark.parametrize("case_id", [c.id for c in CASES if c.cli is not None])
def test_command_fails_cleanly(cli_results, case_id):
    case = BY_ID[case_id]
    if case.nobody and not IS_ROOT and os.name != "posix":  # pragma: no cover
        pytest.skip("file permissions are not POSIX here")
    result, before, after, _ = cli_results[case_id]
    assert_one_error_line(result, case.code, *case.says, *case.cli_says)
    assert result.stdout == ""
    after.assert_unchanged(before)


# ---------------------------------------------------------------- the library


@pytest.mark.parametrize("case_id", [c.id for c in CASES if c.api is not None])
def test_api_fails_cleanly(tmp_path, monkeypatch, case_id):
    case = BY_ID[case_id]
    d = make_case_dir(tmp_path, case)
    monkeypatch.chdir(d)
    if case.deny and IS_ROOT:
        # root reads and writes through any permission bits: let os.access() answer as
        # the file system would for an ordinary user (lucid checks it before opening)
        denied = {os.path.realpath(d / p) for p in case.deny}
        real_access = os.access

        def access(path, mode, *args, **kwargs):
            if os.path.realpath(path) in denied:
                return False
            return real_access(path, mode, *args, **kwargs)

        monkeypatch.setattr(os, "access", access)
    before = Snapshot.take(d)
    kwargs = dict(case.api)
    with pytest.raises(case.exc) as info:
        pool3d_file(kwargs.pop("input"), kwargs.pop("output"), **kwargs)
    assert_one_line_message(info.value, *case.says, *case.api_says)
    if case.exc is LucidIOError:
        assert isinstance(info.value, LucidIOError)
    Snapshot.take(d).assert_unchanged(before)
    _restore_permissions(d)


# Cases of each kind again through `python -m lucid_cli.main` and the installed
# `lucid` script in a plain subprocess: the fork server answers exactly like them.
SAMPLE = {
    "python -m": ["input-missing-h5", "output-is-input-symlink", "truncated-nii-gz", "dataset-ambiguous",
                  "kernel-word", "grad-in-wrong-shape"],
    "installed script": ["output-exists", "kernel-larger-than-volume", "memory-limit-word"],
}


@pytest.mark.parametrize("how", list(SAMPLE))
def test_fork_server_answers_like_the_real_command(cli_results, how):
    script = shutil.which("lucid", path=os.path.dirname(sys.executable))
    if how == "installed script" and script is None:
        pytest.skip("the lucid console script is not installed in this environment")
    for case_id in SAMPLE[how]:
        case = BY_ID[case_id]
        fast, _, _, d = cli_results[case_id]
        if how == "python -m":
            real = run_cli("pool3d", *case.cli, cwd=d)
        else:
            proc = subprocess.run([script, "pool3d", *case.cli], cwd=d, capture_output=True, text=True, timeout=60)
            real = CliResult(case.cli, proc.returncode, proc.stdout, proc.stderr)
        assert (real.returncode, real.stdout, real.stderr) == (fast.returncode, fast.stdout, fast.stderr), case_id


def test_every_case_runs_both_ways_unless_a_spelling_does_not_exist():
    cli_only = {c.id for c in CASES if c.api is None}
    api_only = {c.id for c in CASES if c.cli is None}
    assert not cli_only and not api_only


# ---------------------------------------------------------------- `lucid info` on the same bad files

INFO_CASES = [
    # (case whose files to use, FILE argument, exit code, fragments)
    ("input-missing-h5", "missing.h5", FAILURE, ("missing.h5", "no such file")),
    ("input-is-directory", "dir.h5", FAILURE, ("dir.h5", "directory")),
    ("empty-nii-gz", "e.nii.gz", FAILURE, ("e.nii.gz", "empty")),
    ("truncated-nii-header", "cut.nii", FAILURE, ("cut.nii",)),
    ("nii-header-claims-more", "short.nii", FAILURE, ("short.nii", "truncated")),
    ("garbage-h5", "junk.h5", FAILURE, ("junk.h5", "not an hdf5 file")),
    ("dataset-missing", "a.h5:/nope", FAILURE, ("a.h5", "/nope")),
    ("dataset-is-group", "multi.h5:/g", FAILURE, ("multi.h5", "group")),
    ("h5-filter-unavailable", "blosc.h5", FAILURE, ("blosc.h5", "filter 300")),
    ("input-unknown-suffix", "a.txt", USAGE, ("a.txt", "unsupported file type")),
]


@pytest.fixture(scope="module")
def server():
    with CliServer() as s:
        yield s


@pytest.mark.parametrize("case_id,target,code,says", INFO_CASES, ids=[c[0] for c in INFO_CASES])
def test_info_fails_cleanly_on_the_same_files(tmp_path, server, case_id, target, code, says):
    d = make_case_dir(tmp_path, BY_ID[case_id])
    before = Snapshot.take(d)
    result = server.run("info", target, cwd=d)
    assert_one_error_line(result, code, *says)
    assert result.stdout == ""
    Snapshot.take(d).assert_unchanged(before)
