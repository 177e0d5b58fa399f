"""A non-editable install ships only the packages pyproject.toml lists: every package must be listed."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_package_is_listed_in_pyproject():
    text = (ROOT / "pyproject.toml").read_text()
    listed = set(re.findall(r'"([\w.]+)"', re.search(r"^packages = \[(.*?)\]", text, re.M | re.S).group(1)))
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "lucid").rglob("__init__.py")}
    found |= {"lucid_cli"}
    assert found - listed == set(), "add these to [tool.setuptools] packages"
