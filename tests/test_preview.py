"""``lucid preview`` and ``pool3d --preview``: the picture puts each voxel where it is.

A bright cube at a known world position must show up at that position in
the PNG (sampled through the axes' own data-to-pixel transform), and its
mirror image must not: a wrong aspect, flip or offset fails.
"""

from __future__ import annotations

import subprocess
import sys
import tracemalloc

import h5py
import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

matplotlib = pytest.importorskip("matplotlib")  # the [preview] extra, part of the test extra
from matplotlib.image import imread  # noqa: E402

from lucid import preview  # noqa: E402
from lucid.kernels.windows import PoolSpec  # noqa: E402
from lucid_cli.main import main  # noqa: E402

SPACING = (1.0, 1.0, 3.0)  # mm: z is coarse, so a wrong aspect moves the cube
CUBE = (slice(4, 8), slice(20, 24), slice(2, 4))  # x, y, z voxels, far from every mirror image


def _cube_volume(shape=(32, 32, 12), dtype=np.int16, low=-1000, high=1000):
    x = np.full(shape, low, dtype)
    x[CUBE] = high
    return x


def _nifti(path, data, spacing=SPACING):
    img = nib.Nifti1Image(data, np.diag([*spacing, 1.0]))
    img.header.set_xyzt_units("mm")
    nib.save(img, path)
    return path


def _pixel(fig, png, gid, x, y):
    """The RGB the saved PNG has at data point (x, y) of the axes ``gid``."""
    ax = next(a for a in fig.axes if a.get_gid() == gid)
    image = imread(png)
    col, row = ax.transData.transform((x, y))
    return image[int(round(image.shape[0] - row)), int(round(col)), :3]


def _bright(rgb) -> bool:
    return float(np.mean(rgb)) > 0.8


def _dark(rgb) -> bool:
    return float(np.mean(rgb)) < 0.2


def _centre(s: slice, step: float) -> float:
    return (s.start + s.stop - 1) / 2 * step


def test_nifti_planes_put_the_cube_at_its_world_position(tmp_path):
    path = _nifti(tmp_path / "cube.nii", _cube_volume())
    fig = preview.render(path, slices={"x": 5, "y": 21, "z": 3})
    png = tmp_path / "cube.png"
    preview.save(fig, png)
    width, height = fig.get_size_inches() * fig.dpi
    assert imread(png).shape[:2] == (round(height), round(width))
    cx, cy, cz = (_centre(s, SPACING[a]) for a, s in enumerate(CUBE))
    mx, my, mz = 31 * 1.0 - cx, 31 * 1.0 - cy, 11 * 3.0 - cz  # mirror images
    # plane through z: x across, y up; through y: x across, z up; through x: y across, z up
    for gid, (h, v), (mh, mv) in (("0:2", (cx, cy), (mx, my)), ("0:1", (cx, cz), (mx, mz)), ("0:0", (cy, cz), (my, mz))):
        assert _bright(_pixel(fig, png, gid, h, v)), gid
        assert _dark(_pixel(fig, png, gid, mh, v)) and _dark(_pixel(fig, png, gid, h, mv)), gid
    ax = next(a for a in fig.axes if a.get_gid() == "0:1")
    assert ax.get_ylim()[1] - ax.get_ylim()[0] == pytest.approx(12 * 3.0)  # z drawn in mm, not voxels
    assert "toward R" in ax.get_xlabel() and "mm" in ax.get_xlabel()


def test_the_colour_bar_is_in_physical_units(tmp_path):
    raw = _cube_volume(low=24, high=2024)  # stored as HU + 1024
    img = nib.Nifti1Image(raw, np.diag([*SPACING, 1.0]))
    img.header.set_slope_inter(1.0, -1024.0)
    nib.save(img, tmp_path / "ct.nii.gz")
    fig = preview.render(tmp_path / "ct.nii.gz", slices={"x": 5, "y": 21, "z": 3})
    bar = [a for a in fig.axes if a.get_gid() is None][0]
    assert bar.get_ylabel() == "HU"
    hu = nib.load(tmp_path / "ct.nii.gz").get_fdata()
    assert bar.get_ylim() == pytest.approx((hu.min(), hu.max())) and hu.min() < -990 and hu.max() > 990


def test_hdf5_5d_rows_go_down_and_index_picks_the_carried_axes(tmp_path):
    x = np.zeros((2, 3, 12, 32, 32), np.float32)  # n, c, d, h, w
    x[1, 2, 2:4, 20:24, 4:8] = 1.0
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["data"] = x
        f["data"].attrs["element_size_um"] = [3.0, 1.0, 1.0]
    png = tmp_path / "v.png"
    fig = preview.render(tmp_path / "v.h5", slices={"d": 3, "h": 21, "w": 5}, index={"n": 1, "c": 2})
    preview.save(fig, png)
    # plane through d: w across, h down
    assert _bright(_pixel(fig, png, "0:0", 5.5, 21.5)) and _dark(_pixel(fig, png, "0:0", 5.5, 31 - 21.5))
    ax = next(a for a in fig.axes if a.get_gid() == "0:1")  # d down, w across
    assert ax.get_ylim()[0] > ax.get_ylim()[1] and "um" in ax.get_ylabel()
    assert _bright(_pixel(fig, png, "0:1", 5.5, 2.5 * 3.0))
    other = preview.render(tmp_path / "v.h5", slices={"d": 3, "h": 21, "w": 5}, index={"n": 0, "c": 2})
    preview.save(other, tmp_path / "o.png")
    assert _dark(_pixel(other, tmp_path / "o.png", "0:0", 5.5, 21.5))


def test_video_frames_with_three_channels_are_in_colour(tmp_path):
    clip = np.zeros((8, 32, 48, 3), np.uint8)  # t, h, w, c
    clip[:, 4:10, 30:40, 0] = 255  # a red box
    with h5py.File(tmp_path / "clip.h5", "w") as f:
        f["frames"] = clip
        for i, label in enumerate("thwc"):
            f["frames"].dims[i].label = label
    png = tmp_path / "clip.png"
    fig = preview.render(tmp_path / "clip.h5")
    preview.save(fig, png)
    red = _pixel(fig, png, "0:0", 34.5, 6.5)
    assert red[0] > 0.9 and red[1] < 0.1 and red[2] < 0.1
    assert _dark(_pixel(fig, png, "0:0", 34.5, 31 - 6.5))


def test_4d_nifti_time_index(tmp_path):
    x = np.zeros((32, 32, 12, 4), np.float32)
    x[(*CUBE, 3)] = 5.0
    _nifti(tmp_path / "t.nii.gz", x)
    png = tmp_path / "t.png"
    later = preview.render(tmp_path / "t.nii.gz", slices={"x": 5, "y": 21, "z": 3}, index={"t": 3})
    preview.save(later, png)
    assert _bright(_pixel(later, png, "0:2", 5.5, 21.5))
    first = preview.render(tmp_path / "t.nii.gz", slices={"x": 5, "y": 21, "z": 3})
    preview.save(first, tmp_path / "f.png")
    assert _dark(_pixel(first, tmp_path / "f.png", "0:2", 5.5, 21.5))


def test_mip_shows_what_the_mid_planes_miss(tmp_path):
    path = _nifti(tmp_path / "cube.nii", _cube_volume())
    cx, cy = _centre(CUBE[0], 1.0), _centre(CUBE[1], 1.0)
    planes, mip = preview.render(path), preview.render(path, mip=True)
    preview.save(planes, tmp_path / "p.png")
    preview.save(mip, tmp_path / "m.png")
    assert _dark(_pixel(planes, tmp_path / "p.png", "0:2", cx, cy))  # z=6 misses the cube
    assert _bright(_pixel(mip, tmp_path / "m.png", "0:2", cx, cy))


def test_run_rows_show_the_same_world_position(tmp_path):
    src = _nifti(tmp_path / "cube.nii", _cube_volume())
    runner = CliRunner()
    out, grad, png = tmp_path / "o.nii", tmp_path / "g.nii", tmp_path / "run.png"
    result = runner.invoke(main, ["pool3d", str(src), str(out), "-k", "2", "--grad-out", str(grad),
                                  "--preview", str(png)])
    assert result.exit_code == 0, result.stderr
    spec = PoolSpec.create(2, 2)
    fig = preview.render_run(src, out, grad, spec=spec, slices={"x": 5, "y": 21, "z": 3})
    preview.save(fig, tmp_path / "again.png")
    assert imread(png).shape == imread(tmp_path / "again.png").shape
    cx, cy = _centre(CUBE[0], 1.0), _centre(CUBE[1], 1.0)
    for row in ("0", "1"):  # input and output: the cube at the same place
        assert _bright(_pixel(fig, tmp_path / "again.png", f"{row}:2", cx, cy)), row
        assert _dark(_pixel(fig, tmp_path / "again.png", f"{row}:2", 31 - cx, cy)), row
    bar = [a for a in fig.axes if a.get_gid() is None][-1]
    assert "gradient" in bar.get_ylabel()


def test_pool3d_preview_refuses_an_existing_png_before_the_run(tmp_path):
    src = _nifti(tmp_path / "cube.nii", _cube_volume())
    (tmp_path / "p.png").write_bytes(b"mine")
    result = CliRunner().invoke(main, ["pool3d", str(src), str(tmp_path / "o.nii"), "--preview", str(tmp_path / "p.png")])
    assert result.exit_code == 1 and "exists" in result.stderr
    assert not (tmp_path / "o.nii").exists() and (tmp_path / "p.png").read_bytes() == b"mine"


def test_preview_command_errors_are_one_line(tmp_path):
    src = _nifti(tmp_path / "cube.nii", _cube_volume())
    runner = CliRunner()
    ok = runner.invoke(main, ["preview", str(src), "-o", str(tmp_path / "c.png")])
    assert ok.exit_code == 0, ok.stderr
    for args, code in ((["-o", str(tmp_path / "c.png")], 1), (["-o", str(tmp_path / "c.jpg")], 2),
                       (["--slice", "q=3", "-o", str(tmp_path / "d.png")], 1), (["--slice", "x=99", "-o", "e.png"], 1),
                       (["--index", "t"], 2)):
        result = runner.invoke(main, ["preview", str(src), *args])
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == code and len(lines) == 1 and lines[0].startswith("Error: "), (args, result.stderr)
    assert not (tmp_path / "d.png").exists()


def test_planes_and_projections_stay_within_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(preview, "MIP_SLAB_BYTES", 8 << 20)
    shape = (256, 256, 256)  # 64 MiB of float32, read plane by plane or 8 MiB slab by slab
    with h5py.File(tmp_path / "big.h5", "w") as f:
        ds = f.create_dataset("data", shape, np.float32, chunks=(16, 64, 64))
        for d in range(0, 256, 16):
            ds[d:d + 16] = d
    volume_mib = 64
    for mip in (False, True):
        tracemalloc.start()
        fig = preview.render(tmp_path / "big.h5", mip=mip)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        fig.clear()
        assert peak < (24 if mip else 16) < volume_mib / 2, (mip, peak)


def test_without_matplotlib_the_error_names_the_extra(tmp_path):
    src = _nifti(tmp_path / "cube.nii", _cube_volume())
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from lucid_cli.main import main\n"
            f"main(['preview', {str(src)!r}, '-o', {str(tmp_path / 'x.png')!r}])")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stderr.strip() == "Error: pictures need matplotlib: pip install 'lucid-pool[preview]'"


def test_ome_zarr_planes_follow_the_ngff_scales(tmp_path):
    from lucid.stream.api import pool3d_file

    x = np.zeros((12, 32, 32), np.float32)  # d, h, w
    x[2:4, 20:24, 4:8] = 1.0
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["data"] = x
        f["data"].attrs["element_size_um"] = [3.0, 1.0, 1.0]
    pool3d_file(str(tmp_path / "v.h5"), str(tmp_path / "v.ome.zarr"), kernel_size=1)  # an OME-Zarr copy
    png = tmp_path / "z.png"
    fig = preview.render(tmp_path / "v.ome.zarr", slices={"z": 3, "y": 21, "x": 5})
    preview.save(fig, png)
    gids = sorted(a.get_gid() for a in fig.axes if a.get_gid())
    assert gids[:3] == ["0:0", "0:1", "0:2"]
    ax = next(a for a in fig.axes if a.get_gid() == "0:1")  # through y: x across, z (3 um voxels) down
    assert abs(ax.get_ylim()[1] - ax.get_ylim()[0]) == pytest.approx(12 * 3.0) and "um" in ax.get_ylabel()
    assert _bright(_pixel(fig, png, "0:1", 5.5, 2.5 * 3.0)) and _dark(_pixel(fig, png, "0:1", 5.5, 8.5 * 3.0))
    assert _bright(_pixel(fig, png, "0:0", 5.5, 21.5)) and _dark(_pixel(fig, png, "0:0", 5.5, 31 - 21.5))
