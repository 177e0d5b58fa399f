"""Peak memory follows the budget, not the volume: a 125 MiB volume through a 16 MiB limit.

README promises peak RSS below the limit + 100 MiB (the interpreter and its
libraries take about 55 MiB of that), for every input format, compressed or not."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import h5py
import nibabel as nib
import numpy as np
import pytest

LIMIT_MIB = 16
OVERHEAD_MIB = 100  # README's promise: Python, numpy, h5py, nibabel, zlib and their allocators
BASELINE_MIB = 75  # the interpreter and libraries alone (about 55 MiB)


@pytest.fixture(scope="module")
def big_volume(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.h5"
    rng = np.random.default_rng(0)
    n = 320  # 320^3 float32 = 125 MiB, eight times the limit
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("data", (n, n, n), np.float32, chunks=(8, n, n))
        for z in range(0, n, 8):
            ds[z : z + 8] = rng.standard_normal((8, n, n), dtype=np.float32)
    return path


@pytest.fixture(scope="module")
def compressed_volumes(big_volume, tmp_path_factory):
    """The same volume as lzf-chunked HDF5 and as .nii.gz, both written plane by plane."""
    import gzip

    import nibabel as nib

    folder = tmp_path_factory.mktemp("compressed")
    lzf, niigz = folder / "lzf.h5", folder / "vol.nii.gz"
    with h5py.File(big_volume, "r") as f, h5py.File(lzf, "w") as g:
        src = f["data"]
        ds = g.create_dataset("data", src.shape, src.dtype, chunks=(16, 160, 160), compression="lzf")
        for z in range(0, src.shape[0], 16):
            ds[z : z + 16] = src[z : z + 16]
        header = nib.Nifti1Header()
        header.set_data_dtype(np.float32)
        header.set_data_shape(src.shape[::-1])
        header["vox_offset"] = 352
        with gzip.open(niigz, "wb", compresslevel=1) as out:
            out.write(header.binaryblock + b"\0" * 4)
            for z in range(src.shape[0]):  # NIfTI x = the file's fastest axis: the planes as stored
                out.write(np.ascontiguousarray(src[z]).tobytes())
    return {"h5-lzf": lzf, "nii.gz": niigz}


def _run_child(args: str) -> dict:
    code = (
        "import json; from lucid.stream.api import peak_memory_mib, pool3d_file; "
        f"r = pool3d_file({args}); "
        "print(json.dumps({'peak': peak_memory_mib(), 'slabs': r.slabs, 'estimate': r.memory_estimate}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_baseline_overhead_is_what_we_think():
    code = "import json, lucid.stream.api as a, h5py, nibabel; print(json.dumps(a.peak_memory_mib()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert float(out) < BASELINE_MIB


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward+backward"])
def test_peak_memory_stays_within_limit_plus_overhead(big_volume, tmp_path, backward):
    grad = f", grad_out={str(tmp_path / 'grad.h5')!r}" if backward else ""
    stats = _run_child(
        f"{str(big_volume)!r}, {str(tmp_path / 'out.h5')!r}, 3, 2, 1, memory_limit='{LIMIT_MIB}M', "
        f"compression='lzf'{grad}"
    )
    assert stats["slabs"] > 8  # it really streamed
    assert stats["estimate"] <= LIMIT_MIB << 20
    assert stats["peak"] < LIMIT_MIB + OVERHEAD_MIB, stats
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert f["data"].shape == (160, 160, 160)


@pytest.mark.slow
@pytest.mark.parametrize("volumes, kind", [("compressed_volumes", "h5-lzf"), ("compressed_volumes", "nii.gz"),
                                           ("relative_volumes", "pair"), ("relative_volumes", "mgz")])
def test_compressed_and_nibabel_relative_inputs_stay_within_the_same_bound(request, tmp_path, volumes, kind):
    # The chunk cache, the compressed chunk and the gzip stream's buffers count against the limit;
    # an Analyze pair and an .mgz are read slab by slab like .nii and .nii.gz.
    stats = _run_child(
        f"{str(request.getfixturevalue(volumes)[kind])!r}, {str(tmp_path / 'out.h5')!r}, 2, "
        f"memory_limit='{LIMIT_MIB}M', compression='none'"
    )
    assert stats["slabs"] > 8
    assert stats["estimate"] <= LIMIT_MIB << 20
    assert stats["peak"] < LIMIT_MIB + OVERHEAD_MIB, stats
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert f["data"].shape == (160, 160, 160)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_200_mib_header_extension_stays_within_the_bound(tmp_path, suffix):
    # The extension is copied to the output 1 MiB at a time, never loaded (it was: 445 MiB peak).
    from tests.test_nifti_extensions import write_with_extension

    src = tmp_path / f"ext{suffix}"
    write_with_extension(src, 200 << 20)
    out = tmp_path / f"out{suffix}"
    stats = _run_child(f"{str(src)!r}, {str(out)!r}, 2, memory_limit='{LIMIT_MIB}M'")
    assert stats["peak"] < LIMIT_MIB + OVERHEAD_MIB, stats
    assert (200 << 20) < os.path.getsize(out) or suffix == ".nii.gz"
    header = nib.Nifti1Header.from_fileobj(open(out, "rb") if suffix == ".nii" else gzip.open(out, "rb"))
    assert [e.get_code() for e in header.extensions] == [40, 6]


@pytest.fixture(scope="module")
def relative_volumes(big_volume, tmp_path_factory):
    """The 125 MiB volume as an Analyze .hdr/.img pair and as an .mgz, both written plane by plane."""
    from nibabel.freesurfer.mghformat import MGHHeader

    folder = tmp_path_factory.mktemp("relatives")
    pair, mgz = folder / "vol.hdr", folder / "vol.mgz"
    with h5py.File(big_volume, "r") as f:
        src = f["data"]
        shape = src.shape[::-1]
        analyze = nib.AnalyzeHeader()
        analyze.set_data_dtype(np.float32)
        analyze.set_data_shape(shape)
        pair.write_bytes(analyze.binaryblock)
        mgh = MGHHeader()
        mgh.set_data_dtype(np.float32)
        mgh.set_data_shape(shape)
        head = mgh.binaryblock[: mgh._hdrdtype.itemsize]
        with open(folder / "vol.img", "wb") as img, gzip.open(mgz, "wb", compresslevel=1) as gz:
            gz.write(head + b"\0" * (284 - len(head)))
            for z in range(src.shape[0]):
                plane = np.ascontiguousarray(src[z])
                img.write(plane.tobytes())
                gz.write(plane.astype(">f4").tobytes())
    return {"pair": pair, "mgz": mgz}
