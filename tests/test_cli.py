"""The `lucid` command line: formats in and out, parity with the in-memory library, errors, exit codes.

Most tests drive the click app in-process (CliRunner); a few run the installed
`lucid` executable as a real subprocess (skipped only if it is not installed).
"""

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

import lucid
from lucid import Tensor
from lucid.nn.functional import max_pool3d
from lucid_cli import main as cli_main
from lucid_cli.main import main

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_data"
CT = SAMPLES / "ct_phantom.nii.gz"
MRI = SAMPLES / "mri_4d.nii.gz"
VIDEO = SAMPLES / "video_clip.h5"
VOL5 = SAMPLES / "volume_5d.h5"
VOL5_GRAD = SAMPLES / "volume_5d_grad.h5"


def lucid_cmd(*args):
    """Run the CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(*args):
    result = lucid_cmd(*args)
    assert result.exit_code == 0, result.stderr
    return result


def one_error_line(result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr and "Usage:" not in result.stderr
    return lines[0]


def raw_nifti(path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj.get_unscaled())


def reference(x: np.ndarray, kernel, stride=None, padding=0, grad=None, **kw):
    """In-memory lucid on an (N, C, D, H, W) array: values, input gradient, flat indices."""
    t = Tensor(x.astype(np.float32), requires_grad=True)
    y, idx = max_pool3d(t, kernel, kernel if stride is None else stride, padding, return_indices=True, **kw)
    y.backward(np.ones(y.shape, np.float32) if grad is None else grad)
    return y.data, t.grad.data, idx.data


def window_centre_matrix(kernel, stride, padding=(0, 0, 0)) -> np.ndarray:
    m = np.eye(4)
    for a in range(3):
        m[a, a] = stride[a]
        m[a, 3] = (kernel[a] - 1) / 2 - padding[a]
    return m


def h5_read(path, dataset="/data"):
    with h5py.File(path, "r") as f:
        ds = f[dataset]
        return ds[()], dict(ds.attrs), ds.compression


# ---------------------------------------------------------------- formats, parity, metadata


def test_nifti_to_nifti_forward_backward_indices_and_header(tmp_path):
    out, grad, idx = tmp_path / "ct.nii.gz", tmp_path / "grad.nii.gz", tmp_path / "idx.nii"
    result = ok("pool3d", CT, out, "-k", "2", "--grad-out", grad, "--indices-out", idx)
    assert "wrote" in result.stderr and result.stdout == ""
    raw = raw_nifti(CT)
    values, gradient, indices = reference(raw[None, None], 2)
    src, img = nib.load(CT), nib.load(out)
    assert img.get_data_dtype() == np.int16
    np.testing.assert_array_equal(raw_nifti(out), values[0, 0].astype(np.int16))
    assert (img.dataobj.slope, img.dataobj.inter) == (1.0, -1024.0)
    np.testing.assert_allclose(img.affine, src.affine @ window_centre_matrix((2,) * 3, (2,) * 3), atol=1e-4)
    np.testing.assert_allclose(img.header.get_zooms(), np.array(src.header.get_zooms()) * 2, rtol=1e-6)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    np.testing.assert_array_equal(nib.load(grad).get_fdata(dtype=np.float32), gradient[0, 0])
    np.testing.assert_array_equal(np.asarray(nib.load(idx).dataobj), indices[0, 0])


@pytest.mark.parametrize("spelling", ["2,2,1", "2x2x1"])
def test_per_axis_values_in_both_spellings_nifti_to_hdf5(tmp_path, spelling):
    out = tmp_path / "mri.h5"
    ok("pool3d", MRI, out, "-k", spelling, "--out-dataset", "/pooled/mri")
    data, attrs, compression = h5_read(out, "/pooled/mri")
    raw = raw_nifti(MRI)  # x, y, z, t: t is carried
    want = reference(np.moveaxis(raw, 3, 0)[:, None], (2, 2, 1))[0][:, 0]
    np.testing.assert_array_equal(data, np.moveaxis(want, 0, 3))
    assert data.dtype == np.float32 and compression is None  # uncompressed by default (bench_compression.py)
    np.testing.assert_allclose(attrs["element_size_um"], [6000.0, 6000.0, 4000.0])
    assert list(attrs["lucid_kernel"]) == [2, 2, 1] and list(attrs["lucid_stride"]) == [2, 2, 1]
    assert attrs["lucid_version"] == lucid.__version__ and attrs["lucid_kind"] == "output"


def test_plain_nifti_to_hdf5_keeps_geometry_and_scaling_as_attributes(tmp_path):
    plain = tmp_path / "ct.nii"
    plain.write_bytes(gzip.decompress(CT.read_bytes()))  # the same header and bytes, uncompressed
    out = tmp_path / "ct.h5"
    ok("pool3d", plain, out, "-k", "2")
    data, attrs, _ = h5_read(out)
    np.testing.assert_array_equal(data, reference(raw_nifti(CT)[None, None], 2)[0][0, 0].astype(np.int16))
    assert data.dtype == np.int16 and (attrs["scl_slope"], attrs["scl_inter"]) == (1.0, -1024.0)
    np.testing.assert_allclose(attrs["affine"], nib.load(CT).affine @ window_centre_matrix((2,) * 3, (2,) * 3),
                               atol=1e-4)
    np.testing.assert_allclose(attrs["element_size_um"], [1600.0, 1600.0, 3000.0], rtol=1e-6)


def test_hdf5_to_nifti_moves_axes_and_converts_spacing(tmp_path):
    out = tmp_path / "vol.nii"
    ok("pool3d", VOL5, out, "--kernel", "2")
    x, attrs, _ = h5_read(VOL5)
    want = reference(x, 2)[0]  # n, c, d, h, w
    img = nib.load(out)
    np.testing.assert_array_equal(np.asarray(img.dataobj), want.transpose(4, 3, 2, 1, 0))
    # element_size_um (d, h, w) = (2, 0.5, 0.5) um, doubled, in mm along x=w, y=h, z=d
    np.testing.assert_allclose(img.header.get_zooms()[:3], [0.001, 0.001, 0.004], rtol=1e-5)


def test_hdf5_backward_with_upstream_gradient_and_attributes(tmp_path):
    out, grad = tmp_path / "out.h5", tmp_path / "grad.h5"
    ok("pool3d", VOL5, out, "-k", "2", "--grad-in", f"{VOL5_GRAD}:/grad", "--grad-out", grad, "--compression", "lzf")
    x, _, _ = h5_read(VOL5)
    upstream, _, _ = h5_read(VOL5_GRAD, "/grad")
    values, gradient, _ = reference(x, 2, grad=upstream)
    data, attrs, compression = h5_read(out)
    np.testing.assert_array_equal(data, values)
    assert compression == "lzf"
    np.testing.assert_allclose(attrs["element_size_um"], [4.0, 1.0, 1.0])
    assert attrs["description"].startswith("lucid sample 5-D") and attrs["lucid_source"].endswith("volume_5d.h5:/data")
    g, gattrs, _ = h5_read(grad)
    np.testing.assert_array_equal(g, gradient)
    assert gattrs["lucid_kind"] == "gradient"
    np.testing.assert_allclose(gattrs["element_size_um"], [2.0, 0.5, 0.5])


def test_video_pools_time_and_space_and_carries_channels(tmp_path):
    out = tmp_path / "clip.h5"
    ok("pool3d", f"{VIDEO}:/frames", out, "-k", "2", "-s", "2,2,2", "--out-dtype", "float32", "--compression", "none")
    frames, _, _ = h5_read(VIDEO, "/frames")
    data, attrs, compression = h5_read(out, "/frames")
    want = reference(np.moveaxis(frames, 3, 0)[None], 2)[0][0]
    assert data.dtype == np.float32 and compression is None and attrs["fps"] == 12.5  # time pooled by 2
    np.testing.assert_array_equal(data, np.moveaxis(want, 0, 3))


def test_padding_stride_dilation_and_ceil_mode_match_the_library(tmp_path):
    out = tmp_path / "vol.h5"
    ok("pool3d", VOL5, out, "-k", "3", "-s", "2", "-p", "1x1x0", "--dilation", "1,2,1", "--ceil-mode",
       "--padding-mode", "ignore")
    x, _, _ = h5_read(VOL5)
    want = reference(x, 3, 2, (1, 1, 0), dilation=(1, 2, 1), ceil_mode=True, padding_mode="ignore")[0]
    np.testing.assert_array_equal(h5_read(out)[0], want)


def test_axes_option_overrides_the_layout(tmp_path):
    out = tmp_path / "clip.h5"
    ok("pool3d", VIDEO, out, "-k", "2,2,1", "--axes", "zyxc", "--json")
    frames, _, _ = h5_read(VIDEO, "/frames")
    want = reference(np.moveaxis(frames, 3, 0)[None], (2, 2, 1))[0][0]
    np.testing.assert_array_equal(h5_read(out, "/frames")[0], np.moveaxis(want, 0, 3))


# ---------------------------------------------------------------- dry run, JSON, overwrite


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    result = ok("pool3d", CT, tmp_path / "ct.nii.gz", "-k", "2", "--grad-out", tmp_path / "g.nii.gz", "--dry-run",
                "--memory-limit", "3M")
    assert list(tmp_path.iterdir()) == []
    text = result.stdout
    for expected in ("64x64x48 int16", "32x32x24 int16", "0.8 x 0.8 x 1.5 mm -> 1.6 x 1.6 x 3 mm",
                     "new affine", "slabs along z", "estimated, limit 3.0 MiB", "nothing written"):
        assert expected in text, text
    h5 = ok("pool3d", VOL5, tmp_path / "v.h5", "--dry-run").stdout
    assert "4 x 1 x 1 um (element_size_um)" in h5 and "new affine" not in h5
    assert list(tmp_path.iterdir()) == []


def test_json_is_exactly_one_object_on_stdout(tmp_path):
    result = ok("pool3d", CT, tmp_path / "ct.h5", "-k", "2", "--json")
    assert result.stdout.count("\n") == 1
    report = json.loads(result.stdout)
    assert report["out_shape"] == [32, 32, 24] and report["dtype"] == "int16" and report["dry_run"] is False
    assert report["lucid_version"] == lucid.__version__ and report["warnings"] == []
    assert report["spacing_unit"] == "mm" and len(report["affine_out"]) == 4
    assert result.stderr == ""  # no summary with --json
    plan = json.loads(ok("pool3d", CT, tmp_path / "x.nii", "--dry-run", "--json").stdout)
    assert plan["dry_run"] is True and plan["slabs"] >= 1 and not (tmp_path / "x.nii").exists()
    assert report["output"] == f"{tmp_path / 'ct.h5'}:/data" and plan["output"] == str(tmp_path / "x.nii")


def test_reports_name_the_hdf5_datasets_written(tmp_path):
    out, grad = tmp_path / "v.h5", tmp_path / "g.h5"
    report = json.loads(ok("pool3d", VIDEO, out, "--grad-out", grad, "--json").stdout)
    assert report["output"] == f"{out}:/frames" and report["grad_out"] == f"{grad}:/frames"
    with h5py.File(out) as f, h5py.File(grad) as g:
        assert list(f) == ["frames"] and list(g) == ["frames"]
    plan = json.loads(ok("pool3d", VIDEO, f"{tmp_path / 'p.h5'}:/pooled", "--dry-run", "--json").stdout)
    assert plan["output"] == f"{tmp_path / 'p.h5'}:/pooled"
    assert f"wrote {tmp_path / 'w.h5'}:/frames:" in ok("pool3d", VIDEO, tmp_path / "w.h5").stderr


def test_refuses_to_overwrite_without_force(tmp_path):
    out = tmp_path / "ct.nii"
    ok("pool3d", CT, out)
    before = out.read_bytes()
    line = one_error_line(lucid_cmd("pool3d", CT, out, "-k", "4"), 1)
    assert str(out) in line and "use --force" in line
    assert out.read_bytes() == before
    assert "exists" in lucid_cmd("pool3d", CT, out, "--dry-run").stderr
    line = one_error_line(lucid_cmd("pool3d", CT, tmp_path / "nowhere" / "x.nii", "--dry-run"), 1)
    assert "nowhere does not exist" in line
    ok("pool3d", CT, out, "-k", "4", "--force", "-q")
    assert nib.load(out).shape == (16, 16, 12)


def test_output_that_is_the_input_is_refused(tmp_path):
    copy = tmp_path / "ct.nii.gz"
    shutil.copy(CT, copy)
    line = one_error_line(lucid_cmd("pool3d", copy, copy, "--force"), 2)
    assert "is the INPUT file" in line
    line = one_error_line(lucid_cmd("pool3d", copy, tmp_path / "o.nii", "--grad-out", tmp_path / "o.nii"), 2)
    assert "same file" in line
    link = tmp_path / "link.nii.gz"
    os.link(copy, link)
    line = one_error_line(lucid_cmd("pool3d", copy, link, "--force"), 2)
    assert "is the INPUT file" in line
    assert copy.read_bytes() == CT.read_bytes()


def test_quiet_prints_nothing_and_no_bar_without_a_terminal(tmp_path):
    result = ok("pool3d", CT, tmp_path / "a.nii", "-q")
    assert result.stdout == "" and result.stderr == ""
    assert "slab/s" not in ok("pool3d", CT, tmp_path / "b.nii").stderr


def test_progress_bar_reports_slabs(tmp_path, monkeypatch):
    monkeypatch.setattr(cli_main, "wanted", lambda quiet: not quiet)
    result = ok("pool3d", VOL5, tmp_path / "v.h5", "--memory-limit", "1M")
    assert "pooling" in result.stderr and "slab" in result.stderr
    assert "pooling:" not in ok("pool3d", VOL5, tmp_path / "w.h5", "-q").stderr


# ---------------------------------------------------------------- warnings and errors


def test_padding_warning_on_ct_air(tmp_path):
    result = ok("pool3d", CT, tmp_path / "ct.nii.gz", "-k", "3", "-p", "1")
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and "--padding-mode ignore" in warnings[0]
    quiet = ok("pool3d", CT, tmp_path / "ct2.nii.gz", "-k", "3", "-p", "1", "--json", "-q")
    assert json.loads(quiet.stdout)["padding_won"] is True and quiet.stderr.startswith("Warning:")
    ignore = ok("pool3d", CT, tmp_path / "ct3.nii.gz", "-k", "3", "-p", "1", "--padding-mode", "ignore")
    assert "Warning" not in ignore.stderr


@pytest.mark.parametrize("args, fragment", [
    (["-k", "two"], "'two' is not an integer"),
    (["-k", "2x"], "'2x' is not an integer"),
    (["-k", "0"], ">= 1"),
    (["-k", "2,2"], "has 2 values"),
    (["-p", "-1"], ">= 0"),
    (["--memory-limit", "lots"], "'lots'"),
    (["--axes", "xyq"], "unknown letter 'q'"),
    (["--out-dtype", "complex64"], "complex64"),
    (["--compression", "zip"], "'zip'"),
    (["--padding-mode", "reflect"], "'reflect'"),
    (["--grad-in", str(VOL5_GRAD)], "--grad-in needs --grad-out"),
    (["--dataset", "/x"], "NIfTI file, which has no datasets"),
    (["-k", "3", "-p", "2", "--padding-mode", "ignore"], "padding 2 exceeds half the kernel 3"),
    (["--kernal", "2"], "No such option"),
])
def test_usage_errors_exit_2_with_one_line(tmp_path, args, fragment):
    line = one_error_line(lucid_cmd("pool3d", CT, tmp_path / "o.nii", *args), 2)
    assert fragment in line
    assert list(tmp_path.iterdir()) == []


def test_usage_errors_for_arguments(tmp_path):
    assert "Missing argument 'OUTPUT'" in one_error_line(lucid_cmd("pool3d", CT), 2)
    line = one_error_line(lucid_cmd("pool3d", CT, tmp_path / "o.png"), 2)
    assert "o.png: unsupported file type" in line
    assert "No such command" in one_error_line(lucid_cmd("pool4d"), 2)


@pytest.mark.parametrize("args, fragments", [
    (["pool3d", "missing.nii.gz", "o.nii"], ["missing.nii.gz: no such file"]),
    (["pool3d", f"{VOL5}:/nope", "o.h5"], ["volume_5d.h5: no dataset /nope", "/data 2x3x32x32x32"]),
    (["pool3d", VOL5, "o.h5", "-k", "3", "--grad-in", f"{VOL5_GRAD}:/grad", "--grad-out", "g.h5"],
     ["n=2 c=3 d=16 h=16 w=16", "n=2 c=3 d=10 h=10 w=10"]),
    (["pool3d", CT, "o.nii", "-k", "100"], ["ct_phantom.nii.gz", "kernel 100", "64"]),
    (["pool3d", MRI, "o.nii", "--axes", "zyx"], ["mri_4d.nii.gz", "axes 'zyx'"]),
    (["pool3d", CT, "o.nii", "--out-dtype", "uint8"], ["o.nii", "do not fit the output dtype uint8"]),
    (["info", "missing.h5"], ["missing.h5: no such file"]),
])
def test_runtime_errors_exit_1_with_one_line_naming_the_file(tmp_path, monkeypatch, args, fragments):
    monkeypatch.chdir(tmp_path)
    line = one_error_line(lucid_cmd(*args), 1)
    for fragment in fragments:
        assert fragment in line, line
    assert [p.name for p in tmp_path.iterdir()] == []  # no output, no temporary file


def test_json_errors_are_reported_as_json_too(tmp_path):
    result = lucid_cmd("pool3d", "missing.nii", tmp_path / "o.nii", "--json")
    assert json.loads(result.stdout) == {"error": "missing.nii: no such file", "exit_code": 1,
                                         "input": "missing.nii", "output": str(tmp_path / "o.nii")}
    one_error_line(result, 1)


def test_debug_shows_the_traceback(tmp_path):
    result = lucid_cmd("--debug", "pool3d", "missing.nii", tmp_path / "o.nii")
    assert result.exit_code == 1 and "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "Error: missing.nii: no such file"


@contextmanager
def signal_at_first_slab(monkeypatch, signum):
    """Make the run receive ``signum`` from inside the engine, at its first progress report."""

    @contextmanager
    def progress_bar(enabled, description="pooling"):
        yield lambda done, total, nbytes: os.kill(os.getpid(), signum)

    monkeypatch.setattr(cli_main, "progress_bar", progress_bar)
    yield


@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_interrupts_leave_no_output(tmp_path, monkeypatch, signum, code, word):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with signal_at_first_slab(monkeypatch, signum):
        result = lucid_cmd("pool3d", VOL5, tmp_path / "o.h5", "--grad-out", tmp_path / "g.nii.gz",
                           "--memory-limit", "1M")
    assert one_error_line(result, code) == f"Error: {word}"
    assert list(tmp_path.iterdir()) == []
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before  # handlers restored


# ---------------------------------------------------------------- info, version, help


@pytest.mark.parametrize("name", ["ct_phantom.nii.gz", "mri_4d.nii.gz", "video_clip.h5", "volume_5d.h5",
                                  "volume_5d_grad.h5"])
def test_info_on_every_sample(name):
    text = ok("info", SAMPLES / name).stdout
    assert text.startswith("file ") and "shape " in text and "axes " in text
    data = json.loads(ok("info", SAMPLES / name, "--json").stdout)
    assert data["volume"]["shape"] == [int(n) for n in text.split("shape", 1)[1].split()[0].split("x")]


def test_info_shows_nifti_scaling_and_hdf5_datasets(tmp_path):
    ct = ok("info", CT).stdout
    assert "scl_slope 1, scl_inter -1024" in ct and "sform         code 1 (scanner)" in ct and "affine" in ct
    video = ok("info", VIDEO).stdout
    assert "/frames 32x64x64x3 uint8" in video and "gzip level 4" in video and "thwc" in video
    multi = tmp_path / "multi.h5"
    with h5py.File(multi, "w") as f:
        f["a"] = np.zeros((3, 4, 5), np.float32)
        f["b"] = np.zeros((3, 4, 5), np.int16)
    text = ok("info", multi).stdout
    assert "/a 3x4x5 float32" in text and "/b 3x4x5 int16" in text and "name one" in text
    assert "int16" in ok("info", multi, "--dataset", "b").stdout.split("dtype", 1)[1]
    assert "zyx" in ok("info", f"{multi}:/a", "--axes", "zyx").stdout


def test_version_and_help():
    assert ok("--version").stdout.strip() == f"lucid {lucid.__version__}"
    for command in ([], ["pool3d"], ["info"]):
        text = ok(*command, "--help").stdout
        assert text.startswith("Usage: lucid ") and "Examples:" in text
        assert "\n    lucid " in text  # \b keeps the example lines as written
    assert "Usage:" in lucid_cmd("pool3d").stderr  # no arguments: the help, as click does


# ---------------------------------------------------------------- the installed executable


def _executable() -> str | None:
    found = shutil.which("lucid") or str(Path(sys.executable).with_name("lucid"))
    return found if os.access(found, os.X_OK) else None


LUCID = _executable()
needs_exe = pytest.mark.skipif(LUCID is None, reason="the lucid console script is not installed")


def run_exe(*args, **kw):
    return subprocess.run([LUCID, *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=120, **kw)


@needs_exe
def test_installed_command_runs_the_quick_start(tmp_path):
    out, grad = tmp_path / "ct_pooled.nii.gz", tmp_path / "ct_grad.nii.gz"
    for _ in range(2):  # --force: the second run replaces the outputs
        done = run_exe("pool3d", "sample_data/ct_phantom.nii.gz", out, "-k", "2", "--grad-out", grad, "--force")
        assert done.returncode == 0, done.stderr
    assert nib.load(out).shape == (32, 32, 24) and nib.load(grad).shape == (64, 64, 48)
    assert float(nib.load(grad).get_fdata().sum()) == 32 * 32 * 24


@needs_exe
def test_installed_command_exit_codes_and_json(tmp_path):
    done = run_exe("pool3d", CT, tmp_path / "o.nii", "-k", "2x")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith("Error:")
    done = run_exe("pool3d", "nope.nii", tmp_path / "o.nii")
    assert done.returncode == 1 and done.stderr == "Error: nope.nii: no such file\n"
    done = run_exe("pool3d", VIDEO, tmp_path / "v.h5", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["out_shape"] == [16, 32, 32, 3]
    assert run_exe("--version").stdout.strip() == f"lucid {lucid.__version__}"


@needs_exe
def test_broken_pipe_is_quiet():
    proc = subprocess.Popen([LUCID, "info", str(MRI)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    proc.stdout.close()  # the reader is gone before lucid writes (`lucid info x | true`)
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 141 and err == ""


@needs_exe
def test_sigterm_aborts_the_outputs(tmp_path):
    x = np.random.default_rng(0).standard_normal((192, 192, 192)).astype(np.float32)  # ~2 s of work
    with h5py.File(tmp_path / "big.h5", "w") as f:
        f.create_dataset("data", data=x, chunks=(8, 192, 192))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([LUCID, "pool3d", str(tmp_path / "big.h5"), str(out / "o.nii.gz"), "-k", "3", "-s", "1",
                             "--grad-out", str(out / "g.h5"), "--memory-limit", "8M", "-j", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not list(out.iterdir()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # wait until the temporary outputs exist: the run is under way
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == 143 and stderr == "Error: terminated\n"
    assert list(out.iterdir()) == []
