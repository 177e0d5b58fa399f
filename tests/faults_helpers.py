"""Shared pieces of the fault tests (tests/test_faults_*.py, tests/test_fuzz_*.py).

* small input files (``write_h5``, ``write_nifti``, ...),
* ``Snapshot``: hashes of every file in a directory, to prove inputs were not
  modified, no output appeared or changed and no ``.lucid-tmp-`` file was left,
* ``run_cli``: the real ``lucid`` command as a subprocess (``python -m
  lucid_cli.main``); ``CliServer``: the same in forked children of one
  pre-imported interpreter (fast), optionally as an unprivileged user so that
  permission cases work when the tests run as root,
* ``assert_one_error_line``: non-zero exit, exactly one ``Error:`` line, no traceback.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np

from lucid.io.atomic import TMP_MARK

ROOT = Path(__file__).resolve().parent.parent
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
NOBODY = 65534
TMP_MARKS = (TMP_MARK, ".lucid-spool-")


def volume(shape=(8, 8, 8), dtype=np.float32, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -1000), min(info.max, 1000), shape, endpoint=True).astype(dtype)


def write_h5(path, data=None, name="data", **kwargs) -> Path:
    data = volume() if data is None else data
    with h5py.File(path, "w") as f:
        f.create_dataset(name, data=data, **kwargs)
    return Path(path)


def write_nifti(path, data=None, affine=None) -> Path:
    data = volume() if data is None else data
    img = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    img.header.set_data_dtype(data.dtype)
    nib.save(img, os.fspath(path))
    return Path(path)


def nifti_bytes(data=None, gz=False) -> bytes:
    """The bytes of a .nii (or .nii.gz) file holding ``data``."""
    data = volume() if data is None else data
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_data_dtype(data.dtype)
    raw = img.to_bytes()
    return gzip.compress(raw, mtime=0) if gz else raw


UNAVAILABLE_FILTER = 300  # HDF5 keeps 256-511 for testing: no plugin provides it (hdf5plugin provides blosc)


def write_unavailable_filter_h5(path, data=None) -> Path:
    """A chunked dataset whose pipeline needs filter 300, which no HDF5 installation has.

    h5py's ``allow_unknown_filter`` creates the dataset; ``write_direct_chunk``
    stores raw chunks with filter_mask 0 ("the filter was applied"), so reading
    them needs the filter.
    """
    data = volume() if data is None else data
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("data", shape=data.shape, dtype=data.dtype, chunks=(4, 4, 4),
                              compression=UNAVAILABLE_FILTER, compression_opts=(0, 0, 0, 0, 4, 1, 1),
                              allow_unknown_filter=True)
        for i in range(0, data.shape[0], 4):
            for j in range(0, data.shape[1], 4):
                for k in range(0, data.shape[2], 4):
                    block = np.ascontiguousarray(data[i:i + 4, j:j + 4, k:k + 4])
                    ds.id.write_direct_chunk((i, j, k), block.tobytes(), filter_mask=0)
    return Path(path)


def h5_data(path, name="data") -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f[name][()]


# ---------------------------------------------------------------- directory snapshots


def file_hash(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Snapshot:
    """Hashes of the regular files directly in (and one level below) a directory."""

    root: Path
    files: dict

    @classmethod
    def take(cls, root) -> "Snapshot":
        root = Path(root)
        files = {}
        for dirpath, dirnames, filenames in os.walk(root):
            for name in filenames:
                p = Path(dirpath) / name
                if p.is_symlink() or not p.is_file():
                    files[os.fspath(p.relative_to(root))] = "link" if p.is_symlink() else "other"
                    continue
                try:
                    files[os.fspath(p.relative_to(root))] = file_hash(p)
                except PermissionError:  # pragma: no cover - only when not root
                    files[os.fspath(p.relative_to(root))] = "unreadable"
        return cls(root, files)

    def leftovers(self) -> list[str]:
        return sorted(n for n in self.files if any(m in n for m in TMP_MARKS))

    def assert_unchanged(self, before: "Snapshot", allow_new=()) -> None:
        """Nothing created, removed or modified (except names in ``allow_new``), no temp files."""
        assert self.leftovers() == [], f"temporary files left behind: {self.leftovers()}"
        new = sorted(set(self.files) - set(before.files) - set(allow_new))
        gone = sorted(set(before.files) - set(self.files))
        changed = sorted(n for n in before.files if n in self.files and self.files[n] != before.files[n])
        assert not new, f"files created: {new}"
        assert not gone, f"files removed: {gone}"
        assert not changed, f"files modified: {changed}"


# ---------------------------------------------------------------- the real command


@dataclass
class CliResult:
    args: list
    returncode: int
    stdout: str
    stderr: str


def cli_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.fspath(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("LUCID_DEBUG", None)
    return env


def cli_argv(*args) -> list[str]:
    return [sys.executable, "-m", "lucid_cli.main", *[os.fspath(a) for a in args]]


def _demote():  # pragma: no cover - runs in the child
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def run_cli(*args, cwd=None, as_nobody=False, timeout=120) -> CliResult:
    """Run ``lucid ARGS`` in a subprocess; ``as_nobody`` drops root privileges first."""
    proc = subprocess.run(
        cli_argv(*args), cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout,
        preexec_fn=_demote if as_nobody and IS_ROOT else None,
    )
    return CliResult([os.fspath(a) for a in args], proc.returncode, proc.stdout, proc.stderr)


# The fork server: a Python process that has imported lucid, h5py, nibabel and
# click once, then forks a fresh child per command.  The child redirects fds 1
# and 2 to files, runs ``lucid_cli.main`` as ``__main__`` (what ``python -m``
# does), runs the atexit hooks and exits with the command's status: a real
# process with its own exit code, stdout, stderr and signal handlers, without
# paying ~0.5 s of interpreter start-up and imports per case.  Tests that run a
# sample of cases both ways check that it answers like ``python -m lucid_cli.main``.
SERVER_CODE = r"""
import atexit, json, os, runpy, sys, tempfile, traceback
import gzip, secrets, shutil, signal, threading, queue
import numpy, h5py, nibabel, click, tqdm
import nibabel.nifti1, nibabel.nifti2, nibabel.arrayproxy, nibabel.openers
import lucid_cli.options, lucid_cli.report, lucid_cli.progress, lucid_cli.interrupts  # not .main: runpy runs it
import lucid.io.hdf5, lucid.io.nifti, lucid.stream.api, lucid.stream.engine, lucid.inspect

def child(req, out, err):
    os.dup2(out, 1)
    os.dup2(err, 2)
    code = 0
    try:
        if req["nobody"]:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
        os.chdir(req["cwd"])
        sys.argv = ["lucid", *req["args"]]
        runpy.run_module("lucid_cli.main", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)

for line in sys.stdin:
    req = json.loads(line)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            child(req, out.fileno(), err.fileno())
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        reply = {"code": os.waitstatus_to_exitcode(status),
                 "stdout": out.read().decode(errors="replace"), "stderr": err.read().decode(errors="replace")}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
"""


class CliServer:
    """Runs ``lucid ARGS`` in forked children of one pre-imported interpreter (see SERVER_CODE)."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER_CODE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=cli_env(), text=True)

    def run(self, *args, cwd=None, as_nobody=False) -> CliResult:
        args = [os.fspath(a) for a in args]
        request = {"args": args, "cwd": os.fspath(cwd or os.getcwd()), "nobody": bool(as_nobody and IS_ROOT)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the CLI fork server died (exit {self.proc.wait()})")
        reply = json.loads(line)
        return CliResult(args, reply["code"], reply["stdout"], reply["stderr"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def assert_one_error_line(result: CliResult, code: int, *fragments: str) -> str:
    """Exit ``code``, exactly one stderr line, starting ``Error:``, mentioning every fragment."""
    detail = f"args={result.args}\nexit={result.returncode}\nstdout={result.stdout!r}\nstderr={result.stderr!r}"
    assert result.returncode == code, detail
    assert "Traceback" not in result.stderr, detail
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, detail
    assert lines[0].startswith("Error: "), detail
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), f"{fragment!r} not in the message\n{detail}"
    return lines[0]


def assert_one_line_message(exc: BaseException, *fragments: str) -> str:
    text = str(exc)
    assert text and "\n" not in text, repr(text)
    for fragment in fragments:
        assert fragment.lower() in text.lower(), f"{fragment!r} not in {text!r}"
    return text
