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


def test_the_single_machine_paths_never_import_dask_numba_or_matplotlib():
    import subprocess
    import sys

    code = ("import sys, lucid, lucid.nn, lucid.stream.api, lucid.io, lucid_cli.main; "
            "print(sorted(m for m in ('dask', 'distributed', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_lucid_never_imports_click_or_tqdm():
    import subprocess
    import sys

    code = ("import sys, lucid, lucid.nn, lucid.stream.api, lucid.io, lucid.inspect, lucid.stream.job, "
            "lucid.dask.cluster; print(sorted(m for m in ('click', 'tqdm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
