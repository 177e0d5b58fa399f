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
