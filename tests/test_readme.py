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
