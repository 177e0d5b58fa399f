"""Regenerate ``sample_data/ct_preview.png``, the README's picture: the CT sample,
pooled 2x2x2, and its gradient map, side by side (``python sample_data/make_preview.py``)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from lucid.kernels.windows import PoolSpec
from lucid.preview import render_run, save
from lucid.stream.api import pool3d_file

HERE = Path(__file__).resolve().parent


def main() -> None:
    ct = HERE / "ct_phantom.nii.gz"
    with tempfile.TemporaryDirectory() as tmp:
        out, grad = Path(tmp) / "ct_pooled.nii.gz", Path(tmp) / "ct_grad.nii.gz"
        pool3d_file(ct, out, 2, grad_out=grad)
        fig = render_run(ct, out, grad, spec=PoolSpec.create(2, 2))
        fig.set_dpi(70)
        save(fig, HERE / "ct_preview.png", force=True)


if __name__ == "__main__":
    main()
