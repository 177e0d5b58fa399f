"""The README's Python examples run and print what it says (doctest)."""

import doctest
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples():
    failures, tried = doctest.testfile(str(README), module_relative=False, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert tried > 5 and failures == 0


def test_readme_starts_with_the_two_setup_commands():
    text = README.read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    lines = [line for line in block.strip().splitlines()]
    assert lines[0].startswith("# 1.") and "lucid pool3d" in lines[1] and "pip install -e ." in lines[1]
    assert lines[2].startswith("# 2.") and "pytest" in lines[3] and "pip install -e '.[test]'" in lines[3]


# ---------------------------------------------------------------- the command-line examples

import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from lucid_cli.main import main  # noqa: E402

ROOT = README.parent
BIN = os.path.dirname(shutil.which("lucid") or sys.executable)


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", README.read_text(), re.DOTALL)


def _transcripts() -> list[str]:
    return [b for b in _blocks("text") if b.startswith("$ lucid ")]


def test_readme_has_the_transcripts_it_should():
    commands = [t.splitlines()[0] for t in _transcripts()]
    assert any("--dry-run" in c for c in commands) and sum(c.startswith("$ lucid info") for c in commands) >= 2


@pytest.mark.parametrize("transcript", _transcripts(), ids=lambda t: t.splitlines()[0][:60])
def test_readme_transcripts_are_what_lucid_prints(transcript, monkeypatch):
    """Each ```text block starting with `$ lucid ...` is the command's stdout, then its stderr."""
    monkeypatch.chdir(ROOT)
    command, *expected = transcript.rstrip("\n").splitlines()
    result = CliRunner().invoke(main, shlex.split(command)[2:])  # after "$ lucid"
    got = result.stdout.splitlines() + result.stderr.splitlines()
    assert got == expected
    assert result.exit_code == (1 if any(line.startswith("Error:") for line in expected) else 0)


def _batch_loop() -> str:
    (loop,) = [b for b in _blocks("bash") if "for f in scans/" in b]
    return loop


def test_readme_batch_loop_works_on_a_fresh_directory(tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("a.nii.gz", "b.nii.gz"):
        shutil.copy(ROOT / "sample_data" / "ct_phantom.nii.gz", scans / name)
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", "")}
    done = subprocess.run(["bash", "-euc", _batch_loop()], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    runs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert [r["output"] for r in runs] == ["pooled/a.nii.gz", "pooled/b.nii.gz"]
    assert all(r["out_shape"] == [32, 32, 24] for r in runs)
    assert sorted(p.name for p in (tmp_path / "pooled").iterdir()) == ["a.nii.gz", "b.nii.gz"]


def test_readme_completion_lines_install_completion():
    (block,) = [b for b in _blocks("bash") if "_LUCID_COMPLETE=" in b]
    lines = {line.split("#")[-1].strip(): line.split("#")[0].strip() for line in block.strip().splitlines()}
    assert set(lines) == {"bash", "zsh", "fish"}
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", "")}
    done = subprocess.run(["bash", "-c", lines["bash"] + "\ncomplete -p lucid"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "lucid" in done.stdout, done.stderr
    for shell in ("zsh", "fish"):  # those shells may not be installed: check what the line evaluates
        var = re.search(r"_LUCID_COMPLETE=(\w+)", lines[shell]).group(1)
        script = subprocess.run(["lucid"], env={**env, "_LUCID_COMPLETE": var}, capture_output=True, text=True,
                                timeout=60)
        assert script.returncode == 0 and "_LUCID_COMPLETE" in script.stdout and shell in var
