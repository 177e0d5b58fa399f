"""Human-readable text for ``PoolReport.to_dict()`` and ``lucid.inspect.describe()`` dicts."""

from __future__ import annotations

import os
from typing import Any, Sequence

from lucid.io.atomic import human_bytes
from lucid.io.base import UNIT_TO_UM

LABEL = 14  # width of the label column


def shape(values: Sequence[int]) -> str:
    return "x".join(str(int(v)) for v in values)


def triple(values: Sequence[int]) -> str:
    """``2`` when all three agree, else ``2x2x1``."""
    return str(values[0]) if len(set(values)) == 1 else shape(values)


def number(value: float) -> str:
    return f"{value:.6g}"


def sizes(values: Sequence[float] | None, unit: str | None) -> str:
    if values is None:
        return "unknown"
    return " x ".join(number(v) for v in values) + (f" {unit}" if unit else " (unit unknown)")


def line(label: str, text: str) -> str:
    return f"{label:<{LABEL}}{text}"


def matrix(label: str, rows: Sequence[Sequence[float]]) -> list[str]:
    cells = [[f"{v:.6g}" for v in row] for row in rows]
    width = max(len(c) for row in cells for c in row)
    out = [" ".join(c.rjust(width) for c in row) for row in cells]
    return [line(label if i == 0 else "", text) for i, text in enumerate(out)]


def _is_hdf5(path: str | None) -> bool:
    return path is not None and not path.lower().endswith((".nii", ".nii.gz"))


def _pooling(r: dict[str, Any]) -> str:
    text = f"kernel {triple(r['kernel'])}, stride {triple(r['stride'])}, padding {triple(r['padding'])}"
    if max(r["dilation"]) > 1:
        text += f", dilation {triple(r['dilation'])}"
    if r["ceil_mode"]:
        text += ", ceil mode"
    padded = max(r["padding"]) > 0 or r["ceil_mode"]
    return text + (f", padding mode {r['padding_mode']}" if padded else "")


def _slabs(r: dict[str, Any]) -> str:
    n = r["slabs"]
    return f"{n} slab{'s' if n != 1 else ''} along {r['slab_axis']}, {r['rows_per_slab']} output rows each"


def plan_lines(r: dict[str, Any]) -> list[str]:
    """Everything ``--dry-run`` promises: shapes, dtypes, geometry, slab plan, memory."""
    out = [
        line("input", f"{r['input']}: {shape(r['in_shape'])} {r['dtype']}, axes {r['axes']}"),
    ]
    if r["output"]:
        out.append(line("output", f"{r['output']}: {shape(r['out_shape'])} {r['out_dtype']}"))
    if r["grad_out"]:
        upstream = r["grad_in"] or "ones (how many windows chose each voxel)"
        out.append(line("gradient", f"{r['grad_out']}: {shape(r['in_shape'])} {r['grad_dtype']}, upstream {upstream}"))
    if r["indices_out"]:
        out.append(line("indices", f"{r['indices_out']}: {shape(r['out_shape'])} int64"))
    out.append(line("pooling", _pooling(r)))
    out.append(line("voxel size", f"{sizes(r['spacing_in'], r['spacing_unit'])} -> "
                                  f"{sizes(r['spacing_out'], r['spacing_unit'])}"))
    slope, inter = (r.get("extra") or {}).get("scale", (1.0, 0.0))
    if (slope, inter) != (1.0, 0.0):
        out.append(line("scaling", f"scl_slope {number(slope)}, scl_inter {number(inter)} (kept)"))
    if r["affine_out"] is not None:
        out += matrix("new affine", r["affine_out"])
    if _is_hdf5(r["output"]) and r["spacing_out"] is not None and r["spacing_unit"] in UNIT_TO_UM:
        um = [v * UNIT_TO_UM[r["spacing_unit"]] for v in r["spacing_out"]]
        out.append(line("element size", " x ".join(number(v) for v in um) + " um (element_size_um)"))
    out.append(line("slabs", _slabs(r)))
    out.append(line("memory", f"{human_bytes(r['memory_estimate'])} estimated, limit {human_bytes(r['memory_limit'])}"))
    return out


def summary_lines(r: dict[str, Any]) -> list[str]:
    """A short account of a finished run."""
    out = [f"{r['input']}: {shape(r['in_shape'])} {r['dtype']} (axes {r['axes']}), {_pooling(r)}"]
    if r["output"]:
        out.append(f"  wrote {r['output']}: {shape(r['out_shape'])} {r['out_dtype']}")
    if r["grad_out"]:
        out.append(f"  wrote {r['grad_out']}: gradient map {shape(r['in_shape'])} {r['grad_dtype']}"
                   f" (upstream {r['grad_in'] or 'ones'})")
    if r["indices_out"]:
        out.append(f"  wrote {r['indices_out']}: argmax indices {shape(r['out_shape'])} int64")
    if r["spacing_in"] is not None:
        out.append(f"  voxel size {sizes(r['spacing_in'], r['spacing_unit'])} -> "
                   f"{sizes(r['spacing_out'], r['spacing_unit'])}")
    out.append(f"  {_slabs(r)}; {r['seconds']:.2f} s, peak memory {r['peak_memory_mib']:.0f} MiB "
               f"(estimate {human_bytes(r['memory_estimate'])}, limit {human_bytes(r['memory_limit'])})")
    return out


def _attr(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 70 else text[:67] + "..."


def info_lines(d: dict[str, Any]) -> list[str]:
    """``lucid info`` text: the file, its datasets (HDF5) and the volume that would be pooled."""
    fmt = "HDF5" if d["format"] == "hdf5" else "NIfTI"
    v = d["volume"]
    if v is not None and d["format"] == "nifti":
        fmt += f"-{v['nifti_version']}"
    out = [line("file", f"{d['path']} ({fmt}, {human_bytes(d['file_bytes'])})")]
    for i, ds in enumerate(d["datasets"] or []):
        storage = f" chunks {shape(ds['chunks'])}" if ds["chunks"] else " contiguous"
        storage += f" {ds['compression']}" if ds["compression"] else ""
        out.append(line("datasets" if i == 0 else "", f"{ds['path']} {shape(ds['shape']) or 'scalar'} {ds['dtype']}{storage}"))
    if d["datasets"] == []:
        out.append(line("datasets", "none"))
    if d["note"]:
        out.append(line("note", d["note"]))
    if v is None:
        return out
    out += [
        line("volume", v["name"]),
        line("shape", shape(v["shape"])),
        line("dtype", f"{v['dtype']} ({human_bytes(v['nbytes'])} uncompressed)"),
        line("axes", f"{v['axes']} (pooled {v['pooled_axes']}"
                     + (f", carried {v['carried_axes']}" if v["carried_axes"] else "")
                     + f"; slabs along {v['slab_axis']})"),
        line("voxel size", sizes(v["spacing"], v["spacing_unit"])),
    ]
    if v["scl_slope"] != 1.0 or v["scl_inter"] != 0.0 or d["format"] == "nifti":
        out.append(line("scaling", f"scl_slope {number(v['scl_slope'])}, scl_inter {number(v['scl_inter'])}"))
    if d["format"] == "nifti":
        out += _nifti_lines(v)
    else:
        out += _hdf5_lines(v)
    if v["affine"] is not None:
        out += matrix("affine", v["affine"])
    return out


def _nifti_lines(v: dict[str, Any]) -> list[str]:
    out = [
        line("datatype", v["datatype"]),
        line("zooms", " x ".join(number(z) for z in v["zooms"]) + f" ({v['xyzt_units'][0]}, {v['xyzt_units'][1]})"),
        line("qform", f"code {v['qform_code']} ({v['qform_code_name']})"),
        line("sform", f"code {v['sform_code']} ({v['sform_code_name']})"),
    ]
    dim = v["dim_info"]
    if any(x is not None for x in dim.values()):
        out.append(line("dim_info", ", ".join(f"{k} {x}" for k, x in dim.items() if x is not None)
                        + (f"; slice_code {v['slice_code']}, slice_duration {number(v['slice_duration'])}"
                           if v["slice_code"] else "")))
    if v["intent"]["code"] not in ("none", 0):
        out.append(line("intent", f"{v['intent']['code']} {v['intent']['params']} {v['intent']['name']}".rstrip()))
    if v["cal_min"] or v["cal_max"]:
        out.append(line("cal range", f"{number(v['cal_min'])} .. {number(v['cal_max'])}"))
    if v["descrip"]:
        out.append(line("descrip", v["descrip"]))
    return out


def _hdf5_lines(v: dict[str, Any]) -> list[str]:
    if v["chunks"]:
        storage = f"chunks {shape(v['chunks'])}"
    else:
        storage = "contiguous"
    if v["compression"]:
        storage += f", {v['compression']}" + (f" level {v['compression_opts']}" if v["compression_opts"] is not None else "")
    if v["shuffle"]:
        storage += ", shuffle"
    out = [line("storage", storage)]
    if any(v["dim_labels"]):
        out.append(line("dim labels", " ".join(lab or "-" for lab in v["dim_labels"])))
    for i, (key, value) in enumerate(v["attrs"].items()):
        out.append(line("attributes" if i == 0 else "", f"{key} = {_attr(value)}"))
    return out


def clean_lines(found, dry_run: bool) -> list[str]:
    """What ``lucid clean`` did (``found`` is a lucid.io.tempfiles.CleanReport)."""
    verb = "would remove" if dry_run else "removed"
    lines = [f"{verb} {os.path.join(found.directory, name)}" for name in found.removed]
    lines.append(f"{found.directory}: {verb} {len(found.removed)} stale temporary file"
                 f"{'' if len(found.removed) == 1 else 's'}"
                 + (f", kept {len(found.kept)} of running processes or other machines" if found.kept else ""))
    return lines
