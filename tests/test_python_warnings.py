"""#13.8: no Python warning reaches stderr as Python prints it ("RuntimeWarning: ...", a source line).

A finite upstream gradient too large for the float32 gradient map (1e300) is
refused in one line naming the --grad-in file and the value, as is a value
too large for a narrower --out-dtype.  Any other warning raised during a run
(numpy, nibabel, h5py; in any thread) becomes one of lucid's one-line
warnings: ``report.warnings`` from Python, ``Warning: ...`` from the CLI.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import h5py
import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from lucid.io import LucidIOError
from lucid.io.nifti import NiftiSource
from lucid.stream.api import pool3d_file
from lucid_cli.main import main

LEAKS = ("RuntimeWarning", "UserWarning", "Traceback", "warnings.warn", ".py:")


def _volume(tmp_path):
    x = np.random.default_rng(0).standard_normal((8, 8, 8)).astype(np.float32)
    path = tmp_path / "in.nii"
    nib.save(nib.Nifti1Image(x, np.eye(4)), path)
    return path


def _gradient(tmp_path, value):
    g = np.ones((4, 4, 4))
    g[1, 2, 3] = value
    g[0, 0, 0] = np.inf  # infinities are values, never refused
    path = tmp_path / "g.nii"
    nib.save(nib.Nifti1Image(g, np.eye(4)), path)
    return path


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _no_leak(text: str) -> None:
    for word in LEAKS:
        assert word not in text, text


def test_a_huge_gradient_value_is_refused_naming_the_file_and_value(tmp_path):
    src, grad = _volume(tmp_path), _gradient(tmp_path, 1e300)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the cast must not even warn
        with pytest.raises(LucidIOError, match=r"g\.nii: upstream gradient value 1e\+300 does not fit .* float32"):
            pool3d_file(str(src), str(tmp_path / "o.nii"), 2, grad_in=str(grad), grad_out=str(tmp_path / "gr.nii"))
    result = _cli("pool3d", src, tmp_path / "o.nii", "--grad-in", grad, "--grad-out", tmp_path / "gr.nii")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "1e+300" in lines[0] and str(grad) in lines[0]
    _no_leak(result.output)
    assert not list(tmp_path.glob("o.nii*")) and not list(tmp_path.glob("gr.nii*"))


def test_gradient_infinities_and_nan_still_pass_without_a_warning(tmp_path):
    src, grad = _volume(tmp_path), _gradient(tmp_path, -np.inf)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pool3d_file(str(src), str(tmp_path / "o.nii"), 2, grad_in=str(grad), grad_out=str(tmp_path / "gr.nii"))
    grad_map = np.asarray(nib.load(tmp_path / "gr.nii").dataobj)
    assert np.isposinf(grad_map).sum() == 1 and np.isneginf(grad_map).sum() == 1


def test_a_value_too_large_for_a_narrower_out_dtype_is_refused(tmp_path):
    path = tmp_path / "in.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.full((4, 4, 4), 1e300)
    result = _cli("pool3d", path, tmp_path / "o.h5", "--out-dtype", "float32")
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "value 1e+300 does not fit the output dtype float32" in result.output
    _no_leak(result.output)


def _warn_while_reading(monkeypatch):
    """A library warning raised in the reader thread, as numpy or nibabel would."""
    read = NiftiSource.read

    def noisy(self, index):
        warnings.warn("overflow encountered in cast", RuntimeWarning)
        warnings.warn("odd-sized\nextension", UserWarning)
        return read(self, index)

    monkeypatch.setattr(NiftiSource, "read", noisy)


def test_warnings_during_a_run_become_report_lines(tmp_path, monkeypatch, recwarn):
    src = _volume(tmp_path)
    _warn_while_reading(monkeypatch)
    report = pool3d_file(str(src), str(tmp_path / "o.nii"), 2)
    assert f"{src}: overflow encountered in cast" in report.warnings
    assert f"{src}: odd-sized extension" in report.warnings  # one line, once
    assert not [w for w in recwarn if "overflow" in str(w.message)]


def test_warnings_during_a_run_are_one_line_each_in_the_cli(tmp_path, monkeypatch):
    src = _volume(tmp_path)
    _warn_while_reading(monkeypatch)
    result = _cli("pool3d", src, tmp_path / "o.nii", "-q")
    assert result.exit_code == 0
    assert result.output.splitlines() == [f"Warning: {src}: overflow encountered in cast",
                                          f"Warning: {src}: odd-sized extension"]


def test_a_warning_outside_the_run_is_one_line_too(tmp_path, monkeypatch):
    src = _volume(tmp_path)
    import lucid_cli.main as cli_main

    describe = cli_main.describe

    def noisy(*args, **kwargs):
        warnings.warn("something\nodd", RuntimeWarning)
        return describe(*args, **kwargs)

    monkeypatch.setattr(cli_main, "describe", noisy)
    result = _cli("info", src)
    assert result.exit_code == 0
    assert "Warning: something odd" in result.output
    _no_leak(result.output)


SUBPROCESS = """
import sys, warnings
from lucid.io.nifti import NiftiSource
read = NiftiSource.read
def noisy(self, index):
    warnings.warn("overflow encountered in cast", RuntimeWarning)
    return read(self, index)
NiftiSource.read = noisy
from lucid_cli.main import main
main()
"""


@pytest.mark.slow
def test_subprocess_stderr_has_only_lucid_lines(tmp_path):
    src = _volume(tmp_path)
    grad = _gradient(tmp_path, 1e300)
    env = {"PYTHONWARNINGS": "always"}
    import os

    env = {**os.environ, **env}
    ok = subprocess.run([sys.executable, "-c", SUBPROCESS, "pool3d", str(src), str(tmp_path / "o.nii"), "-q"],
                        capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr.splitlines() == [f"Warning: {src}: overflow encountered in cast"]
    bad = subprocess.run([sys.executable, "-m", "lucid_cli.main", "pool3d", str(src), str(tmp_path / "p.nii"),
                          "--grad-in", str(grad), "--grad-out", str(tmp_path / "gr.nii")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 1
    assert len(bad.stderr.splitlines()) == 1 and bad.stderr.startswith("Error: ") and "1e+300" in bad.stderr
    _no_leak(ok.stderr + bad.stderr)
