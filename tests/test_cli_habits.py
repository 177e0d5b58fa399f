"""The command line's habits: --json on every error, --mkdir, shell completion, honest messages,
``lucid info`` on many files and bounds on every numeric option (issues #12 and #13)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from click.shell_completion import BashComplete, FishComplete, ZshComplete
from click.testing import CliRunner

from lucid.stream.api import pool3d_file
from lucid_cli.main import main

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_data"
CT = SAMPLES / "ct_phantom.nii.gz"
MRI = SAMPLES / "mri_4d.nii.gz"
VIDEO = SAMPLES / "video_clip.h5"
VOL5 = SAMPLES / "volume_5d.h5"


def lucid_cmd(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def error_line(result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


# ---------------------------------------------------------------- #12.6 --json on every error


@pytest.mark.parametrize("args, fragment", [
    (["-k", "two"], "'-k' / '--kernel'"),                  # a bad option value
    (["--axes", "ddw"], "'--axes'"),
    (["--bogus"], "No such option '--bogus'"),              # an unknown option
    (["--grad-in", "g.h5"], "--grad-in needs --grad-out"),  # checked in the command, before the run
])
def test_json_usage_errors_print_one_error_object_naming_the_files(tmp_path, args, fragment):
    out = tmp_path / "o.nii"
    result = lucid_cmd("pool3d", CT, out, *args, "--json")
    line = error_line(result, 2)
    obj = json.loads(result.stdout)
    assert obj == {"error": line.removeprefix("Error: "), "exit_code": 2, "input": str(CT), "output": str(out)}
    assert fragment in obj["error"]
    assert not out.exists()


def test_json_usage_errors_for_a_bad_suffix_and_output_is_input(tmp_path):
    result = lucid_cmd("pool3d", "--json", CT, tmp_path / "o.png")
    obj = json.loads(result.stdout)
    assert obj["exit_code"] == 2 and "o.png: unsupported file type" in obj["error"] and obj["output"].endswith("o.png")
    result = lucid_cmd("pool3d", "--json", CT, CT)
    obj = json.loads(result.stdout)
    assert obj["exit_code"] == 2 and "is the INPUT file" in obj["error"] and obj["input"] == obj["output"] == str(CT)


def test_json_errors_when_the_command_line_cannot_be_read(tmp_path):
    result = lucid_cmd("pool3d", "--json", CT)  # the output is missing
    assert json.loads(result.stdout) == {"error": "Missing argument 'OUTPUT'.", "exit_code": 2,
                                         "input": str(CT), "output": None}
    result = lucid_cmd("pool3d", "--json", CT, tmp_path / "o.nii", "-k")  # an option without its value
    assert json.loads(result.stdout)["exit_code"] == 2
    assert lucid_cmd("pool3d", CT, tmp_path / "o.nii", "-k", "two").stdout == ""  # no --json, no JSON


def test_json_runtime_errors_name_input_and_output(tmp_path):
    out = tmp_path / "o.nii"
    result = lucid_cmd("pool3d", CT, out, "-k", "100", "--json")
    obj = json.loads(result.stdout)
    assert obj["exit_code"] == 1 and "kernel 100" in obj["error"] and obj["input"] == str(CT) and obj["output"] == str(out)


# ---------------------------------------------------------------- #12.7 --mkdir


def test_missing_output_directory_is_refused_naming_the_flag(tmp_path):
    line = error_line(lucid_cmd("pool3d", CT, tmp_path / "pooled" / "ct.nii.gz"), 1)
    assert "output directory" in line and "does not exist" in line and "--mkdir" in line
    assert list(tmp_path.iterdir()) == []


def test_mkdir_creates_every_output_directory_as_mkdir_p(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = lucid_cmd("pool3d", CT, "pooled/a/ct.nii.gz", "--grad-out", "grads/g.nii", "--mkdir")
    assert result.exit_code == 0, result.stderr
    assert nib.load("pooled/a/ct.nii.gz").shape == (32, 32, 24) and nib.load("grads/g.nii").shape == (64, 64, 48)
    assert "created directory pooled\n" in result.stderr and "created directory pooled/a\n" in result.stderr
    again = lucid_cmd("pool3d", CT, "pooled/a/ct2.nii.gz", "--mkdir")  # existing directories are fine
    assert again.exit_code == 0 and "created directory" not in again.stderr


def test_mkdir_dry_run_creates_nothing_and_says_what_it_would_create(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = lucid_cmd("pool3d", CT, "pooled/ct.nii.gz", "--mkdir", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "would create pooled" in result.stdout and list(tmp_path.iterdir()) == []
    blocked = tmp_path / "file"
    blocked.write_text("")
    line = error_line(lucid_cmd("pool3d", CT, "file/sub/ct.nii.gz", "--mkdir", "--dry-run"), 1)
    assert "cannot create directory file" in line and "is not a directory" in line


def test_a_failed_run_removes_the_directories_it_created(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("g.nii").write_text("")  # an existing gradient output without --force: refused after the mkdir
    line = error_line(lucid_cmd("pool3d", CT, "pooled/deep/ct.nii.gz", "--grad-out", "g.nii", "--mkdir"), 1)
    assert "g.nii: output exists" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.nii"]


def test_make_dirs_is_a_library_parameter(tmp_path):
    out = tmp_path / "a" / "b" / "ct.nii.gz"
    report = pool3d_file(CT, out, 2, make_dirs=True)
    assert out.exists() and report.created_dirs == [str(tmp_path / "a"), str(tmp_path / "a" / "b")]
    with pytest.raises(Exception, match="does not exist"):
        pool3d_file(CT, tmp_path / "c" / "ct.nii.gz", 2)


# ---------------------------------------------------------------- #12.8 shell completion


def _bash_complete(words: str, cword: int, cwd: Path) -> list[str]:
    env = {**os.environ, "_LUCID_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    done = subprocess.run([sys.executable, "-m", "lucid_cli.main"], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_bash_completion_offers_files_for_every_path(tmp_path):
    assert _bash_complete("lucid pool3d sam", 2, ROOT) == ["file,sam"]  # bash then runs compgen -f
    assert _bash_complete("lucid pool3d a.nii o", 3, ROOT) == ["file,o"]
    assert _bash_complete("lucid pool3d a.nii o.nii --grad-out g", 5, ROOT) == ["file,g"]
    assert _bash_complete("lucid info sample_data/v", 2, ROOT) == ["file,sample_data/v"]
    assert "plain,--mkdir" in _bash_complete("lucid pool3d --mk", 2, ROOT)


@pytest.mark.parametrize("shell", [BashComplete, ZshComplete, FishComplete])
def test_completion_classes_see_file_arguments(shell):
    completer = shell(main, {}, "lucid", "_LUCID_COMPLETE")
    for args, incomplete in ((["pool3d"], "ct"), (["pool3d", "a.nii"], "o"), (["pool3d", "a.nii", "b.nii", "--grad-in"], "g"),
                             (["info"], "x")):
        items = completer.get_completions(args, incomplete)
        assert [(i.type, i.value) for i in items] == [("file", incomplete)], (args, items)


def test_the_completion_scripts_exist_for_bash_zsh_and_fish():
    for shell in ("bash", "zsh", "fish"):
        env = {**os.environ, "_LUCID_COMPLETE": f"{shell}_source"}
        done = subprocess.run([sys.executable, "-m", "lucid_cli.main"], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "_LUCID_COMPLETE" in done.stdout, (shell, done.stderr)


def test_path_type_keeps_dataset_suffix_and_leaves_existence_to_the_library(tmp_path):
    out = tmp_path / "o.h5"
    result = lucid_cmd("pool3d", f"{VOL5}:/data", f"{out}:/pooled/x", "--compression", "none")
    assert result.exit_code == 0, result.stderr
    with h5py.File(out, "r") as f:
        assert f["/pooled/x"].shape == (2, 3, 16, 16, 16)
    assert "no such file" in error_line(lucid_cmd("pool3d", tmp_path / "nope.h5:/data", tmp_path / "p.h5"), 1)
    assert "unsupported file type" in error_line(lucid_cmd("pool3d", CT, tmp_path / "o.txt"), 2)


# ---------------------------------------------------------------- #12.9 messages that mislead


def test_four_d_nifti_says_slabs_per_time_point(tmp_path):
    result = lucid_cmd("pool3d", MRI, tmp_path / "m.h5", "-k", "2,2,1")
    assert result.exit_code == 0, result.stderr
    assert "5 slabs (1 along z for each of 5 t), 24 output rows each" in result.stderr
    plan = lucid_cmd("pool3d", VOL5, tmp_path / "v.h5", "--dry-run").stdout
    assert "6 slabs (1 along d for each of 2x3 n,c), 16 output rows each" in plan


def test_one_output_row_is_singular(tmp_path):
    result = lucid_cmd("pool3d", CT, tmp_path / "o.nii", "-k", "2", "-s", "64")
    assert result.exit_code == 0, result.stderr
    assert "1 slab along z, 1 output row each;" in result.stderr


def test_nifti_padding_error_names_x_y_z_not_depth(tmp_path):
    line = error_line(lucid_cmd("pool3d", CT, tmp_path / "o.nii", "-k", "3", "-p", "2", "--padding-mode", "ignore"), 2)
    assert "along axis 0 (x)" in line and "depth" not in line and "ct_phantom.nii.gz" in line
    line = error_line(lucid_cmd("pool3d", CT, tmp_path / "o.nii", "-k", "3,3,2", "-p", "0,0,2",
                                "--padding-mode", "ignore"), 2)
    assert "along axis 2 (z)" in line
    with pytest.raises(ValueError, match=r"along axis 1 \(y\)"):  # the library call words it the same
        pool3d_file(CT, tmp_path / "o.nii", (3, 3, 3), padding=(0, 2, 0), padding_mode="ignore")


def test_ct_air_hint_only_for_nifti(tmp_path):
    micro = tmp_path / "micro.h5"
    with h5py.File(micro, "w") as f:
        f["data"] = -np.ones((8, 8, 8), np.float32)  # e.g. background-subtracted microscopy
    result = lucid_cmd("pool3d", micro, tmp_path / "o.h5", "-k", "3", "-p", "1")
    assert result.exit_code == 0, result.stderr
    assert "zero padding won the maximum" in result.stderr and "CT" not in result.stderr
    result = lucid_cmd("pool3d", CT, tmp_path / "ct.nii", "-k", "3", "-p", "1")
    assert "CT air at -1000 HU" in result.stderr


def test_axes_error_lists_each_letter_once():
    line = error_line(lucid_cmd("pool3d", CT, "o.nii", "--axes", "qyz"), 2)
    always_pooled = line.split("always pooled:")[1].split(";")[0].split()
    always_carried = line.split("always carried:")[1].split(";")[0].split()
    assert not set(always_pooled) & set(always_carried)
    assert "t" not in always_pooled + always_carried and "w" not in always_pooled + always_carried
    assert "t and w" in line


def test_hdf5_to_nifti_summary_prints_each_file_in_its_own_order(tmp_path):
    out, grad = tmp_path / "v.nii.gz", tmp_path / "g.nii"
    result = lucid_cmd("pool3d", VOL5, out, "--grad-out", grad)
    assert result.exit_code == 0, result.stderr
    assert nib.load(out).shape == (16, 16, 16, 3, 2) and nib.load(grad).shape == (32, 32, 32, 3, 2)
    assert "2x3x32x32x32 float32" in result.stderr  # the input, as HDF5 stores it
    assert f"wrote {out}: 16x16x16x3x2 float32" in result.stderr
    assert f"wrote {grad}: gradient map 32x32x32x3x2" in result.stderr
    info = lucid_cmd("info", out).stdout
    assert "16x16x16x3x2" in info
    plan = lucid_cmd("pool3d", VOL5, tmp_path / "w.nii", "--dry-run", "--json").stdout
    shapes = json.loads(plan)["file_shapes"]
    assert shapes == {"input": [2, 3, 32, 32, 32], "output": [16, 16, 16, 3, 2]}


# ---------------------------------------------------------------- #12.11 lucid info on many files


def test_info_on_many_files_prints_one_line_each_and_goes_on_after_a_failure(tmp_path):
    bad = tmp_path / "broken.nii"
    bad.write_bytes(b"not a nifti header")
    result = lucid_cmd("info", CT, VIDEO, bad, MRI, tmp_path / "notes.txt")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert lines[0].split()[:4] == [str(CT), "NIfTI-1", "64x64x48", "int16"]
    assert lines[1].split()[:5] == [f"{VIDEO}:/frames", "HDF5", "32x64x64x3", "uint8", "thwc"]
    assert lines[2].split()[:5] == [str(MRI), "NIfTI-1", "32x32x24x5", "float32", "xyzt"]
    errors = result.stderr.splitlines()
    assert len(errors) == 2 and all(e.startswith("Error: ") for e in errors)
    assert str(bad) in errors[0] and "notes.txt: unsupported file type" in errors[1]


def test_info_on_many_files_with_json_prints_one_object_per_line(tmp_path):
    result = lucid_cmd("info", CT, VOL5, tmp_path / "nope.h5", "--json")
    assert result.exit_code == 1
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o.get("path") for o in objects[:2]] == [str(CT), str(VOL5)]
    assert objects[1]["volume"]["shape"] == [2, 3, 32, 32, 32]
    assert objects[2] == {"error": f"{tmp_path / 'nope.h5'}: no such file", "exit_code": 1,
                          "input": str(tmp_path / "nope.h5"), "output": None}
    assert lucid_cmd("info", CT, MRI).exit_code == 0  # all fine: exit 0


def test_info_on_one_file_is_unchanged():
    result = lucid_cmd("info", CT)
    assert result.exit_code == 0 and result.stdout.splitlines()[0].startswith("file ")
    assert "unsupported file type" in error_line(lucid_cmd("info", "x.txt"), 2)  # one file: a usage error


# ---------------------------------------------------------------- #13.9 bounds on every numeric option


@pytest.mark.parametrize("flag", ["-k", "-s", "-p", "--dilation"])
@pytest.mark.parametrize("value", ["999999999999999999999999999999", "2147483648", "1,1,2147483648"])
def test_huge_per_axis_values_are_usage_errors_naming_the_option(tmp_path, flag, value):
    line = error_line(lucid_cmd("pool3d", VOL5, tmp_path / "o.h5", flag, value), 2)  # HDF5: once exit 1, C long
    assert f"'{flag}'" in line and "<= 2147483647" in line
    assert list(tmp_path.iterdir()) == []


def test_largest_stride_still_runs(tmp_path):
    result = lucid_cmd("pool3d", VOL5, tmp_path / "o.h5", "-s", "2147483647")
    assert result.exit_code == 0, result.stderr
    with h5py.File(tmp_path / "o.h5", "r") as f:
        assert f["data"].shape == (2, 3, 1, 1, 1) and list(f["data"].attrs["lucid_stride"]) == [2147483647] * 3


@pytest.mark.parametrize("text, shown", [("1", "1 byte"), ("1000", "1000 bytes"), ("1023K", "1023.0 KiB")])
def test_memory_limit_below_the_minimum_is_refused_naming_it(tmp_path, text, shown):
    line = error_line(lucid_cmd("pool3d", CT, tmp_path / "o.nii", "--memory-limit", text), 2)
    assert "'--memory-limit'" in line and shown in line and "minimum is 1M" in line and "0.0 KiB" not in line
    assert lucid_cmd("pool3d", CT, tmp_path / "o.nii", "--memory-limit", "4M").exit_code == 0  # the gzip reader takes 2.3 MiB itself


def test_library_memory_errors_format_small_and_huge_sizes(tmp_path):
    with pytest.raises(ValueError, match=r"memory limit 1 byte is too small .* need at least [1-9][0-9.]* MiB"):
        pool3d_file(CT, tmp_path / "o.nii", 2, memory_limit=1)
    with pytest.raises(ValueError, match=r"volume_5d.h5.*one slab needs [0-9.]+ EiB, more than this machine"):
        pool3d_file(VOL5, tmp_path / "o.h5", 2, padding=2**31 - 1, dry_run=True)


def test_memory_limit_above_the_machine_is_a_warning(tmp_path):
    from lucid.stream.resources import machine_memory

    total = machine_memory()
    assert total and total > 1 << 20
    result = lucid_cmd("pool3d", CT, tmp_path / "o.nii", "--memory-limit", str(2 * total))
    assert result.exit_code == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warning) == 1 and "more than this machine's" in warning[0]
    quiet = lucid_cmd("pool3d", CT, tmp_path / "p.nii", "--memory-limit", str(total // 2))
    assert "Warning" not in quiet.stderr


def test_threads_above_the_cpus_are_clamped_with_a_warning(tmp_path, monkeypatch):
    from lucid.stream import engine, resources

    seen = []
    run = engine.run
    monkeypatch.setattr(engine, "run", lambda *a, **kw: seen.append(kw["threads"]) or run(*a, **kw))
    cpus = resources.usable_cpus()
    result = lucid_cmd("pool3d", CT, tmp_path / "o.nii", "-j", "1000000000")
    assert result.exit_code == 0, result.stderr
    assert f"Warning: threads 1000000000 is more than the {cpus} CPUs this process may use; using {cpus}" in result.stderr
    assert seen == [cpus]
    lines = result.stderr.splitlines()
    assert lines[0].startswith("Warning: threads") and sum(line.startswith("Warning") for line in lines) == 1  # once, first
    report = pool3d_file(CT, tmp_path / "p.nii", 2, threads=cpus)
    assert report.warnings == [] and seen[-1] == cpus
    failed = lucid_cmd("pool3d", CT, tmp_path / "f.nii", "-j", "1000000000", "-k", "100")  # said before the run
    assert failed.exit_code == 1 and failed.stderr.splitlines()[0].startswith("Warning: threads 1000000000")
    huge = lucid_cmd("pool3d", CT, tmp_path / "q.nii", "-j", "99999999999999999999999999999")
    assert huge.exit_code == 0 and "using" in huge.stderr
    assert "'-j' / '--threads'" in error_line(lucid_cmd("pool3d", CT, tmp_path / "r.nii", "-j", "0"), 2)


@pytest.mark.parametrize("signum, code, word", [(2, 130, "interrupted"), (15, 143, "terminated")])
def test_json_error_object_for_interrupts_too(tmp_path, monkeypatch, signum, code, word):
    from contextlib import contextmanager

    from lucid_cli import main as cli_main

    @contextmanager
    def progress_bar(enabled, description="pooling"):
        yield lambda done, total, nbytes: os.kill(os.getpid(), signum)

    monkeypatch.setattr(cli_main, "progress_bar", progress_bar)
    out = tmp_path / "o.h5"
    result = lucid_cmd("pool3d", VOL5, out, "--memory-limit", "1M", "--json")
    assert error_line(result, code) == f"Error: {word}"
    assert json.loads(result.stdout) == {"error": word, "exit_code": code, "input": str(VOL5), "output": str(out)}
    assert list(tmp_path.iterdir()) == []


def test_library_refuses_huge_values_naming_the_argument(tmp_path):
    with pytest.raises(ValueError, match=r"stride must be <= 2147483647, got 10{30}"):
        pool3d_file(VOL5, tmp_path / "o.h5", 2, stride=10**30)
    with pytest.raises(ValueError, match=r"padding must be <= 2147483647"):
        pool3d_file(VOL5, tmp_path / "o.h5", 2, padding=(0, 0, 2**31), dry_run=True)
    assert list(tmp_path.iterdir()) == []


def test_out_of_memory_is_one_line_naming_the_file_not_an_internal_error(tmp_path, monkeypatch):
    from lucid.stream.job import PoolJob

    def run(self, progress=None):
        raise MemoryError()

    monkeypatch.setattr(PoolJob, "run", run)
    line = error_line(lucid_cmd("pool3d", CT, tmp_path / "o.nii"), 1)
    assert line.startswith(f"Error: {CT}: out of memory") and "internal error" not in line
