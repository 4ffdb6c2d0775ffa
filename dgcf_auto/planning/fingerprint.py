"""Dataset fingerprint: per-case and pooled geometry and foreground intensity statistics.

Per case (one worker process reads one case at a time): size, spacing, origin, direction, the geometry
in the canonical LPS frame, the body-mask bounding box (voxels and mm, LPS axes), and inside-mask
statistics (mean, std, min, max, percentiles) of source and CT, plus the source's 99th percentile, and the
whole source's intensity signature (dtype, range, distinct values, HU-like air, mask share; what
`dataset.source_checks` compares a new source with).

Pooled statistics are combined from small per-case summaries, never from concatenated voxels: sums give
the mean and std, fixed-bin histograms give the percentiles (1 HU bins for CT/CBCT, exact for integer
HU; for MR, whose units differ per scan, the histogram is of intensity / case p99 in steps of 0.005).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dgcf_auto.atomic import write_json
from dgcf_auto.dataset.discovery import Case
from dgcf_auto.dataset.source_checks import intensity_signature
from dgcf_auto.dataset.validation import load_case
from dgcf_auto.errors import DGCFError
from dgcf_auto.geometry import canonical_frame, mask_box
from dgcf_auto.imageio import geometry
from dgcf_auto.log import get_logger
from dgcf_auto.schema import read_checked
from dgcf_auto.workers import map_cases

FINGERPRINT_FILE = "dataset_fingerprint.json"
FINGERPRINT_VERSION = 2  # 2: per-case source_signature; an older file is extracted again
PERCENTILES = (0.5, 1, 5, 25, 50, 75, 95, 99, 99.5, 99.9)
HU_EDGES = np.arange(-2048.5, 4096.5 + 1, 1.0)          # 1 HU bins centred on integers
RELATIVE_EDGES = np.arange(0.0, 5.0 + 0.005, 0.005)   # MR intensity / case p99
_NUMBERS = {"type": "array", "items": {"type": "number"}}
# What the planners read: a file that misses any of it is extracted again, never half used.
FINGERPRINT_SCHEMA = {
    "type": "object",
    "required": ["fingerprint_version", "modality", "task", "num_cases", "input_signature", "pooled", "cases"],
    "properties": {
        "fingerprint_version": {"type": "integer"}, "modality": {"type": "string"}, "task": {"type": "string"},
        "num_cases": {"type": "integer", "minimum": 1}, "input_signature": {"type": "string"},
        "pooled": {"type": "object", "required": ["median_spacing_lps", "mask_bbox_mm_lps", "source_p99"]},
        "cases": {"type": "array", "minItems": 1, "items": {
            "type": "object",
            "required": ["name", "size", "spacing", "lps", "mask_bbox_voxels_lps", "source_signature"],
            "properties": {"name": {"type": "string"}, "size": _NUMBERS, "spacing": _NUMBERS,
                           "mask_bbox_voxels_lps": _NUMBERS, "source_signature": {"type": "object"}}}},
    },
}


def _stats(values: np.ndarray) -> dict:
    values = values.astype(np.float64, copy=False)
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
            "max": float(values.max()),
            "percentiles": {f"{q:g}": float(v) for q, v in zip(PERCENTILES, np.percentile(values, PERCENTILES))},
            "n": int(values.size), "sum": float(values.sum()), "sum_sq": float(np.square(values).sum())}


def _histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    # Out-of-range values go to the end bins, so counts always add up to the number of voxels.
    return np.histogram(np.clip(values, edges[0] + 1e-6, edges[-1] - 1e-6), bins=edges)[0].astype(np.int64)


def case_fingerprint(case: Case) -> tuple[dict, dict]:
    """(JSON record, histograms for pooling) of one case."""
    source, ct, mask = load_case(case)
    frame = canonical_frame(source, "LPS")
    mask_image = sitk.Cast(mask != 0, sitk.sitkUInt8)
    mask_image.CopyInformation(source)
    box = mask_box(mask_image, frame)
    if box is None:  # validation refuses an empty mask; one emptied since is refused here
        raise DGCFError(f"case {case.name}: the body mask is empty")
    lower, upper = box
    extent_voxels = upper - lower + 1
    inside = sitk.GetArrayViewFromImage(mask_image).astype(bool)
    src = sitk.GetArrayViewFromImage(source)[inside]
    p99 = float(np.percentile(src, 99.0))
    if case.modality == "mr" and not p99 > 0:
        raise DGCFError(f"case {case.name}: file {case.source_path.name}: 99th percentile inside the mask is {p99:g}; "
                        f"an MR image needs positive intensities in the body")
    record = {
        "name": case.name, "modality": case.modality,  # no file paths: a fingerprint travels in model zips
        **geometry(source),
        "lps": {"size": frame["size"].tolist(), "spacing": frame["spacing"].tolist()},
        "mask_bbox_voxels_lps": extent_voxels.astype(int).tolist(),
        "mask_bbox_mm_lps": (extent_voxels * frame["spacing"]).tolist(),
        "mask_voxels": int(inside.sum()),
        "source_p99": p99,
        "source": _stats(src),
        "source_signature": intensity_signature(sitk.GetArrayViewFromImage(source), inside),
    }
    hists = {}
    if case.modality == "mr":
        hists["source_relative"] = _histogram(src / p99 if p99 > 0 else src, RELATIVE_EDGES)
    else:
        hists["source"] = _histogram(src, HU_EDGES)
    if ct is not None:
        values = sitk.GetArrayViewFromImage(ct)[inside]
        record["ct"] = _stats(values)
        hists["ct"] = _histogram(values, HU_EDGES)
    return record, hists


def histogram_percentiles(counts: np.ndarray, edges: np.ndarray, qs=PERCENTILES) -> dict:
    """Percentiles from a histogram: the centre of the bin where the cumulative count reaches q %."""
    cumulative = np.cumsum(counts)
    centres = 0.5 * (edges[:-1] + edges[1:])
    out = {}
    for q in qs:
        index = int(np.searchsorted(cumulative, q / 100.0 * cumulative[-1], side="left"))
        out[f"{q:g}"] = float(centres[min(index, len(centres) - 1)])
    return out


def _pool_stats(records: list[dict], counts: np.ndarray, edges: np.ndarray) -> dict:
    n = sum(r["n"] for r in records)
    total = sum(r["sum"] for r in records)
    mean = total / n
    var = max(sum(r["sum_sq"] for r in records) / n - mean * mean, 0.0)
    return {"mean": mean, "std": float(np.sqrt(var)), "min": min(r["min"] for r in records),
            "max": max(r["max"] for r in records), "percentiles": histogram_percentiles(counts, edges), "n": n}


def _pool(records: list[dict], hist_sums: dict) -> dict:
    extents = np.array([r["mask_bbox_mm_lps"] for r in records])
    spacings = np.array([r["lps"]["spacing"] for r in records])
    sizes = np.array([r["lps"]["size"] for r in records])
    p99 = np.array([r["source_p99"] for r in records])
    pooled = {
        "median_spacing_lps": np.median(spacings, axis=0).tolist(),
        "median_size_lps": np.median(sizes, axis=0).tolist(),
        "mask_bbox_mm_lps": {"median": np.median(extents, axis=0).tolist(),
                             "p95": np.percentile(extents, 95, axis=0).tolist(),
                             "max": extents.max(axis=0).tolist()},
        "source_p99": {"median": float(np.median(p99)), "min": float(p99.min()), "max": float(p99.max())},
    }
    if "source" in hist_sums:
        pooled["source"] = _pool_stats([r["source"] for r in records], hist_sums["source"], HU_EDGES)
    if "source_relative" in hist_sums:
        pooled["source_relative_to_p99"] = {
            "percentiles": histogram_percentiles(hist_sums["source_relative"], RELATIVE_EDGES)}
    with_ct = [r["ct"] for r in records if "ct" in r]
    if with_ct:
        pooled["ct"] = _pool_stats(with_ct, hist_sums["ct"], HU_EDGES)
    return pooled


def input_signature(cases: list[Case]) -> str:
    """Hash of the input files' paths, sizes and modification times (changes when any input changes)."""
    entries = []
    for case in cases:
        for key in ("source", "ct", "mask"):
            path = getattr(case, key)
            if path is not None:
                # A DICOM folder: its files' total size and latest change, so an edited slice counts too.
                stats = ([f.stat() for f in Path(path).iterdir() if f.is_file()] if Path(path).is_dir()
                         else [os.stat(path)])
                entries.append([case.name, key, str(Path(path).resolve()), sum(s.st_size for s in stats),
                                max((s.st_mtime_ns for s in stats), default=0)])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def extract_fingerprint(cases: list[Case], num_processes: int = 1, progress: bool = True) -> dict:
    if not cases:
        raise DGCFError("fingerprint: no cases")
    records: list[dict] = []
    hist_sums: dict[str, np.ndarray] = {}
    for record, hists in map_cases(case_fingerprint, cases, num_processes, "fingerprint", progress):
        records.append(record)
        for key, counts in hists.items():
            hist_sums[key] = hist_sums.get(key, 0) + counts
    modality = records[0]["modality"]
    return {"fingerprint_version": FINGERPRINT_VERSION, "modality": modality,
            "task": "mr2ct" if modality == "mr" else "cbct2ct", "num_cases": len(records),
            "percentiles": list(PERCENTILES), "input_signature": input_signature(cases),
            "pooled": _pool(records, hist_sums), "cases": records}


def fingerprint_dataset(cases: list[Case], out_file: Path, num_processes: int = 1, overwrite: bool = False,
                        progress: bool = True) -> dict:
    """Read the fingerprint when it is up to date with the inputs, else extract it and write it atomically."""
    out_file = Path(out_file)
    if out_file.is_file() and not overwrite:
        try:
            existing = read_checked(out_file, FINGERPRINT_SCHEMA, f"fingerprint {out_file}")
        except DGCFError as exc:  # derived data: extracted again rather than trusted or fatal
            get_logger(__name__).warning(f"{exc}; extracting it again")
            existing = {}
        if (existing.get("input_signature") == input_signature(cases)
                and existing.get("fingerprint_version") == FINGERPRINT_VERSION):
            return existing
    fingerprint = extract_fingerprint(cases, num_processes, progress)
    write_json(fingerprint, out_file)
    return fingerprint
