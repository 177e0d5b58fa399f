"""Ctrl-C from Python callers: a KeyboardInterrupt raised inside HDF5's file callbacks stays one."""

from __future__ import annotations

import numpy as np
import pytest

from lucid.io import hdf5
from lucid.stream.api import pool3d_file


class _InterruptOnce:
    """A raw file whose first write raises KeyboardInterrupt halfway, as a SIGINT handler would."""

    def __init__(self, raw):
        self._raw = raw
        self.fired = False

    def write(self, view):
        if not self.fired:
            self.fired = True
            raise KeyboardInterrupt
        return self._raw.write(view)

    def __getattr__(self, name):
        return getattr(self._raw, name)


@pytest.mark.parametrize("when", ["first write", "close"])
def test_keyboard_interrupt_inside_hdf5_callback_is_not_turned_into_an_error(tmp_path, monkeypatch, when):
    opened = []

    def fake_open(path, *args, **kwargs):
        f = _InterruptOnce(open(path, *args, **kwargs))
        f.fired = when != "first write"  # armed below for "close"
        opened.append(f)
        return f

    monkeypatch.setattr(hdf5.sink, "open", fake_open, raising=False)  # where the sink opens its file
    if when == "close":
        real_finish = hdf5.HDF5Sink._finish

        def finish(self):
            for f in opened:
                f.fired = False  # the next write (HDF5 flushing at close) is interrupted
            real_finish(self)

        monkeypatch.setattr(hdf5.HDF5Sink, "_finish", finish)
    data = np.random.default_rng(0).standard_normal((1, 1, 16, 16, 16)).astype(np.float32)
    with pytest.raises(KeyboardInterrupt):
        pool3d_file(data, tmp_path / "out.h5", 2, memory_limit="64K", compression="none")
    assert opened and all(f.fired for f in opened)
    assert list(tmp_path.iterdir()) == []  # no output, no temporary file
