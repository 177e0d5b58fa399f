"""Axis layouts: defaults per format, user strings, the t/w rule, errors, NIfTI axis order."""

import pytest

from lucid.io import Layout, LayoutError, LucidIOError, nifti_axis_order, parse_layout


@pytest.mark.parametrize(
    "ndim, fmt, axes, pooled",
    [
        (3, "hdf5", "dhw", (0, 1, 2)),
        (4, "hdf5", "cdhw", (1, 2, 3)),
        (5, "hdf5", "ncdhw", (2, 3, 4)),
        (3, "array", "dhw", (0, 1, 2)),
        (5, "array", "ncdhw", (2, 3, 4)),
        (3, "nifti", "xyz", (0, 1, 2)),
        (4, "nifti", "xyzt", (0, 1, 2)),
        (5, "nifti", "xyztu", (0, 1, 2)),
        (7, "nifti", "xyztuvw", (0, 1, 2)),
    ],
)
def test_defaults(ndim, fmt, axes, pooled):
    layout = parse_layout(None, ndim, fmt)
    assert layout == Layout(axes, pooled)
    assert layout.carried == tuple(i for i in range(ndim) if i not in pooled)


@pytest.mark.parametrize(
    "axes, pooled, carried",
    [
        ("zyx", (0, 1, 2), ()),
        ("czyx", (1, 2, 3), (0,)),
        ("nczyx", (2, 3, 4), (0, 1)),
        ("thwc", (0, 1, 2), (3,)),  # video: t pooled because only h, w are other pooled letters
        ("cthw", (1, 2, 3), (0,)),
        ("xyz", (0, 1, 2), ()),
        ("xyzt", (0, 1, 2), (3,)),  # t carried: x, y, z already pooled
        ("dhwt", (0, 1, 2), (3,)),
        ("zyxc", (0, 1, 2), (3,)),
        ("ZYX", (0, 1, 2), ()),  # case-insensitive
        ("xyztuvw", (0, 1, 2), (3, 4, 5, 6)),  # w carried when x, y, z are there
        ("tdhw", (1, 2, 3), (0,)),
    ],
)
def test_user_strings(axes, pooled, carried):
    layout = parse_layout(axes, len(axes), "hdf5")
    assert layout.pooled == pooled
    assert layout.carried == carried
    assert layout.axes == axes.lower()


def test_user_string_overrides_nifti_default():
    assert parse_layout("zyx", 3, "nifti").axes == "zyx"
    assert parse_layout("xyzt", 4, "nifti").pooled == (0, 1, 2)


@pytest.mark.parametrize(
    "axes, ndim, words",
    [
        ("zyx", 4, ["'zyx'", "3 letters", "4 dimensions"]),
        ("nczyx", 4, ["5 letters", "4 dimensions"]),
        ("zzx", 3, ["repeats", "'z'"]),
        ("zyxq", 4, ["unknown letter", "'q'"]),
        ("abc", 3, ["unknown letter", "'a'"]),
        ("ncz", 3, ["exactly three pooled", "found 1"]),
        ("zyxd", 4, ["exactly three pooled", "found 4"]),
        ("nct", 3, ["exactly three pooled"]),
    ],
)
def test_errors_are_one_line_and_name_the_value(axes, ndim, words):
    with pytest.raises(LayoutError) as info:
        parse_layout(axes, ndim, "hdf5")
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message
    # LayoutError is both a LucidIOError and a ValueError
    assert isinstance(info.value, LucidIOError) and isinstance(info.value, ValueError)


def test_too_few_dims_and_no_default():
    with pytest.raises(LayoutError, match="at least 3"):
        parse_layout(None, 2, "hdf5")
    with pytest.raises(LayoutError, match="no default axes for a 6-D"):
        parse_layout(None, 6, "hdf5")
    assert parse_layout("bnczyx".replace("b", "u"), 6, "hdf5").pooled == (3, 4, 5)
    with pytest.raises(LayoutError, match="at most 7"):
        parse_layout(None, 8, "nifti")
    with pytest.raises(ValueError, match="unknown format"):
        parse_layout(None, 3, "tiff")
    with pytest.raises(LayoutError, match="string"):
        parse_layout(3, 3, "hdf5")


def test_layout_parse_classmethod_and_helpers():
    layout = Layout.parse("thwc", 4, "hdf5")
    assert layout.pooled_letters == "thw"
    assert layout.ndim == 4


@pytest.mark.parametrize(
    "axes, order, expected",
    [
        ("dhw", "C", (2, 1, 0)),  # w -> x, h -> y, d -> z: the bytes keep their order
        ("zyx", "C", (2, 1, 0)),
        ("xyz", "C", (0, 1, 2)),  # the user said axis 0 is x
        ("ncdhw", "C", (4, 3, 2, 1, 0)),  # carried: c -> t (dim 4), n -> dim 5
        ("thwc", "C", (2, 1, 0, 3)),  # video: w, h, t then the channels
        ("xyzt", "F", (0, 1, 2, 3)),  # NIfTI stays as it is
        ("zyx", "F", (0, 1, 2)),  # NIfTI axes are x, y, z whatever the user calls them
    ],
)
def test_nifti_axis_order(axes, order, expected):
    layout = parse_layout(axes, len(axes), "nifti" if order == "F" else "hdf5")
    assert nifti_axis_order(layout, order) == expected
