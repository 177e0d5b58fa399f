"""Human-readable text for ``PoolReport.to_dict()`` and ``lucid.inspect.describe()`` dicts."""

from __future__ import annotations

import os
from typing import Any, Sequence

from lucid.io.atomic import human_bytes
from lucid.io.base import UNIT_TO_UM
from lucid.io import NIBABEL_SUFFIXES

LABEL = 14  # width of the label column


def shape(values: Sequence[int]) -> str:
    return "x".join(str(int(v)) for v in values)


def triple(values: Sequence[int]) -> str:
    """``2`` when all three agree, else ``2x2x1``."""
    return str(values[0]) if len(set(values)) == 1 else shape(values)


def number(value: float | None) -> str:
    return "non-finite" if value is None else f"{value:.6g}"  # JSON-ready dicts hold NaN/inf as None


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
    """An output that stores ``element_size_um`` (HDF5, Zarr): not one of the nibabel formats."""
    return path is not None and not path.lower().endswith(NIBABEL_SUFFIXES)


def _pooling(r: dict[str, Any]) -> str:
    text = f"kernel {triple(r['kernel'])}, stride {triple(r['stride'])}, padding {triple(r['padding'])}"
    if max(r["dilation"]) > 1:
        text += f", dilation {triple(r['dilation'])}"
    if r["ceil_mode"]:
        text += ", ceil mode"
    padded = max(r["padding"]) > 0 or r["ceil_mode"]
    return text + (f", padding mode {r['padding_mode']}" if padded else "")


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _slabs(r: dict[str, Any]) -> str:
    """``1 slab along z, 24 output rows each``; with outer axes ``5 slabs (1 along z for each of 5 t), ...``."""
    rows = plural(r["rows_per_slab"], "output row")
    outer = r.get("outer_axes") or {}
    if not outer:
        return f"{plural(r['slabs'], 'slab')} along {r['slab_axis']}, {rows} each"
    along = r.get("slabs_along_axis") or r["slabs"]
    return (f"{plural(r['slabs'], 'slab')} ({along} along {r['slab_axis']} for each of "
            f"{shape(outer.values())} {','.join(outer)}), {rows} each")


def _shape_of(r: dict[str, Any], key: str, fallback: str) -> str:
    """A file's shape in its own axis order (NIfTI written from HDF5 is x, y, z first)."""
    return shape((r.get("file_shapes") or {}).get(key) or r[fallback])


def plan_lines(r: dict[str, Any]) -> list[str]:
    """Everything ``--dry-run`` promises: shapes, dtypes, geometry, slab plan, memory."""
    out = [
        line("input", f"{r['input']}: {shape(r['in_shape'])} {r['dtype']}, axes {r['axes']}"),
    ]
    if r["output"]:
        out.append(line("output", f"{r['output']}: {_shape_of(r, 'output', 'out_shape')} {r['out_dtype']}"))
    if r["grad_out"]:
        upstream = r["grad_in"] or "ones (how many windows chose each voxel)"
        out.append(line("gradient", f"{r['grad_out']}: {_shape_of(r, 'grad_out', 'in_shape')} {r['grad_dtype']}, "
                                    f"upstream {upstream}"))
    if r["indices_out"]:
        out.append(line("indices", f"{r['indices_out']}: {_shape_of(r, 'indices_out', 'out_shape')} int64"))
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
    if r.get("created_dirs"):
        out.append(line("directories", f"would create {', '.join(r['created_dirs'])}"))
    blocks = (r.get("extra") or {}).get("dask_plan")
    if blocks:
        parts = [f"{blocks[k + '_blocks']} {k} ({' x '.join(map(str, blocks[k + '_grid']))})"
                 for k in ("forward", "backward") if blocks[k + "_blocks"]]
        out.append(line("dask tasks", ", ".join(parts) + f"; within {human_bytes(r['memory_limit'])} each"))
    else:
        out.append(line("slabs", _slabs(r)))
    out.append(line("memory", f"{human_bytes(r['memory_estimate'])} estimated, limit {human_bytes(r['memory_limit'])}"))
    return out


def summary_lines(r: dict[str, Any]) -> list[str]:
    """A short account of a finished run."""
    out = [f"{r['input']}: {shape(r['in_shape'])} {r['dtype']} (axes {r['axes']}), {_pooling(r)}"]
    if r["output"]:
        out.append(f"  wrote {r['output']}: {_shape_of(r, 'output', 'out_shape')} {r['out_dtype']}")
    if r["grad_out"]:
        out.append(f"  wrote {r['grad_out']}: gradient map {_shape_of(r, 'grad_out', 'in_shape')} {r['grad_dtype']}"
                   f" (upstream {r['grad_in'] or 'ones'})")
    for directory in r.get("created_dirs") or []:
        out.append(f"  created directory {directory}")
    if r["indices_out"]:
        out.append(f"  wrote {r['indices_out']}: argmax indices {_shape_of(r, 'indices_out', 'out_shape')} int64")
    if r["spacing_in"] is not None:
        out.append(f"  voxel size {sizes(r['spacing_in'], r['spacing_unit'])} -> "
                   f"{sizes(r['spacing_out'], r['spacing_unit'])}")
    run = r.get("extra", {}).get("dask")
    if run:
        peaks = run.get("worker_peak_mib") or {}
        top = f", worker peak memory {max(peaks.values()):.0f} MiB" if peaks else ""
        out.append(f"  on a dask {run['cluster']}: {run['tasks']} tasks ({run['resumed_blocks']} done before); "
                   f"{r['seconds']:.2f} s{top} (limit {human_bytes(r['memory_limit'])} per task)")
        return out
    out.append(f"  {_slabs(r)}; {r['seconds']:.2f} s, peak memory {r['peak_memory_mib']:.0f} MiB "
               f"(estimate {human_bytes(r['memory_estimate'])}, limit {human_bytes(r['memory_limit'])})")
    return out


def _attr(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 70 else text[:67] + "..."


FORMAT_NAMES = {"hdf5": "HDF5", "nifti": "NIfTI", "analyze": "Analyze", "mgh": "MGH", "zarr": "Zarr"}


def info_lines(d: dict[str, Any]) -> list[str]:
    """``lucid info`` text: the file, its datasets (HDF5) and the volume that would be pooled."""
    fmt = FORMAT_NAMES.get(d["format"], "NIfTI")
    v = d["volume"]
    if v is not None and d["format"] == "zarr":
        fmt = f"Zarr v{v['zarr_format']}" + (f", OME-Zarr {v['ome']['version']}" if v["ome"] else "")
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
    elif d["format"] == "zarr":
        out += _zarr_lines(v)
    elif d["format"] in ("analyze", "mgh"):
        out += [line("datatype", v["datatype"]), line("zooms", " x ".join(number(z) for z in v["zooms"])),
                line("data", f"{v['data_file']} from byte {v['vox_offset']}")]
    else:
        out += _hdf5_lines(v)
    if v["affine"] is not None:
        out += matrix("affine", v["affine"])
    return out


def info_row(d: dict[str, Any]) -> list[str]:
    """One ``lucid info`` line for many files (as nib-ls): name, format, shape, dtype, axes, voxel size."""
    fmt = FORMAT_NAMES.get(d["format"], "NIfTI")
    v = d["volume"]
    if v is None:
        return [d["path"], fmt, d["note"] or "no volume"]
    if d["format"] == "nifti":
        fmt += f"-{v['nifti_version']}"
    return [v["name"], fmt, shape(v["shape"]), v["dtype"], v["axes"], sizes(v["spacing"], v["spacing_unit"])]


def columns(rows: list[list[str]]) -> list[str]:
    """Rows of cells as aligned text columns (the last cell of each row is not padded)."""
    widths: dict[int, int] = {}
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths.get(i, 0), len(cell))
    return ["  ".join([cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + row[-1:]) for row in rows]


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
    out += [line("warning", text) for text in v.get("warnings", ())]
    return out




def _zarr_lines(v: dict[str, Any]) -> list[str]:
    storage = f"chunks {shape(v['chunks'])}" + (f", shards {shape(v['shards'])}" if v["shards"] else "")
    storage += ", " + (" ".join(v["codecs"]) or "no codecs")
    out = [line("storage", storage)]
    ngff = v["ome"]
    if ngff:
        out.append(line("level", f"{ngff['level']} of {ngff['levels']} ({', '.join(ngff['paths'])})"
                        + ("; a label image" if ngff["label"] else "")))
        for i, axis in enumerate(ngff["axes"]):
            unit = f" {axis['unit']}" if axis.get("unit") else ""
            out.append(line("NGFF axes" if i == 0 else "",
                            f"{axis.get('name')} ({axis.get('type', '-')}): scale {number(ngff['scale'][i])}{unit}, "
                            f"translation {number(ngff['translation'][i])}{unit}"))
    elif any(v["dim_labels"]):
        out.append(line("dim labels", " ".join(str(lab or "-") for lab in v["dim_labels"])))
    for i, (key, value) in enumerate(v["attrs"].items()):
        if key == "lucid_affine":
            continue
        out.append(line("attributes" if i == 0 else "", f"{key} = {_attr(value)}"))
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
    if found.resumable:
        lines.append(f"{found.directory}: kept {len(found.resumable)} part{'' if len(found.resumable) == 1 else 's'} "
                     f"of cut-off cluster runs ({', '.join(found.resumable)}): rerun with --resume to finish, "
                     "or delete them")
    return lines
