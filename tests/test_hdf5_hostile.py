"""HDF5 inputs that read other files, or carry hand-written metadata.

An output must never be any file the input reads (external links, virtual
dataset sources, external storage); a virtual dataset whose sources are gone
is refused instead of pooling its fill value; hand-written DIMENSION_LABELS
never abort the interpreter; a guessed video layout is said, not silent;
frame rates follow the time stride.
"""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from lucid.io import LucidIOError, open_source
from lucid.stream.api import pool3d_file
from lucid_cli.main import main

VOLUME = np.arange(6 * 8 * 10, dtype=np.float32).reshape(6, 8, 10)


def _file(path, **datasets):
    with h5py.File(path, "w") as f:
        for name, data in datasets.items():
            f[name] = data
    return path


def _bytes(path) -> bytes:
    return open(path, "rb").read()


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_error(result, code=1) -> str:
    assert result.exit_code == code, (result.exit_code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def test_an_external_link_target_is_never_an_output(tmp_path):
    target = _file(tmp_path / "target.h5", data=VOLUME)
    with h5py.File(tmp_path / "ext.h5", "w") as f:
        f["data"] = h5py.ExternalLink("target.h5", "/data")
    before = _bytes(target)
    for args in (["-f"], ["--grad-out", target, "-f", "--compression", "none"]):
        out = target if args[0] == "-f" else tmp_path / "o.h5"
        line = _one_error(_run("pool3d", f"{tmp_path / 'ext.h5'}:/data", out, "-k", "2", *args))
        assert "target.h5" in line and "input" in line
        assert _bytes(target) == before
    assert not (tmp_path / "o.h5").exists()
    with pytest.raises(LucidIOError, match="target.h5"):
        pool3d_file(f"{tmp_path / 'ext.h5'}:/data", target, 2, force=True)
    assert _bytes(target) == before


def test_every_file_of_a_link_chain_is_protected(tmp_path):
    _file(tmp_path / "c.h5", data=VOLUME)
    with h5py.File(tmp_path / "b.h5", "w") as f:
        f["hop"] = h5py.ExternalLink("c.h5", "/data")
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["grp/data"] = h5py.ExternalLink("b.h5", "/hop")
    with open_source(f"{tmp_path / 'a.h5'}:/grp/data") as src:
        files = {os.path.basename(p) for p in src.files()}
        np.testing.assert_array_equal(src.read((slice(0, 6), slice(0, 8), slice(0, 10))), VOLUME)
    assert files == {"a.h5", "b.h5", "c.h5"}
    for victim in ("b.h5", "c.h5"):
        before = _bytes(tmp_path / victim)
        _one_error(_run("pool3d", f"{tmp_path / 'a.h5'}:/grp/data", tmp_path / victim, "-f"))
        assert _bytes(tmp_path / victim) == before


def _vds(tmp_path, sources, shape=(6, 8, 10)):
    layout = h5py.VirtualLayout(shape=shape, dtype=np.float32)
    rows = shape[0] // len(sources)
    for i, (name, src_shape) in enumerate(sources):
        layout[i * rows:(i + 1) * rows] = h5py.VirtualSource(name, "data", shape=src_shape)[:rows]
    with h5py.File(tmp_path / "vds.h5", "w") as f:
        f.create_virtual_dataset("data", layout, fillvalue=-7)
    return tmp_path / "vds.h5"


def test_a_virtual_dataset_source_is_never_an_output(tmp_path):
    _file(tmp_path / "s0.h5", data=VOLUME[:3])
    _file(tmp_path / "s1.h5", data=VOLUME[3:])
    vds = _vds(tmp_path, [("s0.h5", (3, 8, 10)), ("s1.h5", (3, 8, 10))])
    report = pool3d_file(vds, tmp_path / "ok.h5", 2, compression="none")
    with h5py.File(tmp_path / "ok.h5") as f:
        assert f["data"].shape == report.out_shape and f["data"][0, 0, 0] == VOLUME[:2, :2, :2].max()
    before = _bytes(tmp_path / "s1.h5")
    line = _one_error(_run("pool3d", vds, tmp_path / "s1.h5", "-f"))
    assert "s1.h5" in line
    _one_error(_run("pool3d", vds, tmp_path / "g.h5", "--grad-out", tmp_path / "s1.h5", "-f"))
    assert _bytes(tmp_path / "s1.h5") == before and not (tmp_path / "g.h5").exists()


def test_a_virtual_dataset_with_a_missing_source_is_refused(tmp_path):
    _file(tmp_path / "s0.h5", data=VOLUME[:3])
    vds = _vds(tmp_path, [("s0.h5", (3, 8, 10)), ("gone.h5", (3, 8, 10))])
    line = _one_error(_run("pool3d", vds, tmp_path / "o.h5"))
    assert "gone.h5" in line and "missing" in line
    assert not (tmp_path / "o.h5").exists()


def test_a_virtual_dataset_source_smaller_than_its_mapping_is_refused(tmp_path):
    _file(tmp_path / "s0.h5", data=VOLUME[:3])
    _file(tmp_path / "s1.h5", data=VOLUME[3:5])  # 2 rows where the mapping reads 3
    vds = _vds(tmp_path, [("s0.h5", (3, 8, 10)), ("s1.h5", (3, 8, 10))])
    line = _one_error(_run("info", vds))
    assert "s1.h5" in line and "2x8x10" in line


def test_external_storage_files_are_protected(tmp_path):
    raw = tmp_path / "raw.bin"
    VOLUME.tofile(raw)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("data", shape=VOLUME.shape, dtype=np.float32, external=[("raw.bin", 0, VOLUME.nbytes)])
    with open_source(tmp_path / "x.h5") as src:
        assert str(raw) in src.files()


LABELS = [
    "np.array([1, 2, 3])",
    "np.array([b'a', b'b'])",
    "'abc'",
    "np.array(['t', 'h', 'w', 'c', 'x'], dtype=h5py.string_dtype())",
    "np.array([b'd', b'h', b'w'], dtype='S1')",
    "np.float64(3)",
]


@pytest.mark.parametrize("labels", LABELS)
def test_hand_written_dimension_labels_never_abort(tmp_path, labels):
    path = tmp_path / "labels.h5"
    code = f"""
import h5py, numpy as np
with h5py.File({str(path)!r}, 'w') as f:
    f['data'] = np.ones((4, 6, 8), np.float32)
    f['data'].attrs['DIMENSION_LABELS'] = {labels}
from lucid_cli.main import main
for args in (['info', {str(path)!r}], ['pool3d', {str(path)!r}, {str(tmp_path / 'o.h5')!r}, '-f', '-q'],
             ['pool3d', {str(path)!r}, {str(tmp_path / 'o.h5')!r}, '--axes', 'dhw', '-f', '-q']):
    try:
        main(args)
    except SystemExit as exit:
        assert exit.code == 0, (args, exit.code)
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    assert "Traceback" not in run.stderr


def test_well_formed_labels_still_give_the_layout(tmp_path):
    with h5py.File(tmp_path / "clip.h5", "w") as f:
        f["frames"] = np.zeros((4, 6, 8, 3), np.uint8)
        for i, letter in enumerate("thwc"):
            f["frames"].dims[i].label = letter
    with open_source(tmp_path / "clip.h5") as src:
        assert src.layout.axes == "thwc" and not src.warnings


def test_an_unlabelled_video_layout_is_said_not_guessed(tmp_path):
    _file(tmp_path / "clip.h5", frames=np.zeros((30, 48, 64, 3), np.uint8))
    result = _run("pool3d", tmp_path / "clip.h5", tmp_path / "o.h5", "-k", "2")
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and "--axes thwc" in warnings[0] and "c,d,h,w" in warnings[0]
    quiet = _run("pool3d", tmp_path / "clip.h5", tmp_path / "o2.h5", "-k", "2", "--axes", "thwc")
    assert quiet.exit_code == 0 and "Warning" not in quiet.stderr
    with h5py.File(tmp_path / "o2.h5") as f:
        assert f["frames"].shape == (15, 24, 32, 3)
    _file(tmp_path / "chans.h5", data=np.zeros((3, 8, 8, 3), np.float32))  # first axis 3 too: no guess to doubt
    assert not open_source(tmp_path / "chans.h5").warnings


def test_frame_rates_follow_the_time_stride(tmp_path):
    with h5py.File(tmp_path / "clip.h5", "w") as f:
        f["frames"] = np.zeros((8, 6, 8, 3), np.uint8)
        for i, letter in enumerate("thwc"):
            f["frames"].dims[i].label = letter
        f["frames"].attrs.update({"fps": 25.0, "frame_interval": 0.04, "title": "clip"})
    pool3d_file(tmp_path / "clip.h5", tmp_path / "t2.h5", (2, 2, 2))
    pool3d_file(tmp_path / "clip.h5", tmp_path / "t1.h5", (1, 2, 2))
    with h5py.File(tmp_path / "t2.h5") as a, h5py.File(tmp_path / "t1.h5") as b:
        assert a["frames"].attrs["fps"] == 12.5 and a["frames"].attrs["frame_interval"] == pytest.approx(0.08)
        assert b["frames"].attrs["fps"] == 25.0 and b["frames"].attrs["title"] == "clip"
