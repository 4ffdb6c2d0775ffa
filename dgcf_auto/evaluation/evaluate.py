"""Evaluate a folder of sCTs against reference CTs: match cases, check grids, compute metrics, write a summary.

Reference folder: SynthRAD2023 case folders (`<case>/ct.nii.gz` or a DICOM folder `<case>/ct/`, with `mask`
and `mr`/`cbct` used when present) and/or flat files `<case>.nii.gz` (or DICOM folders `<case>/`). Prediction (and mask) folder: `<case>.{nii.gz,nii,mha}`.
Every case's files are checked (readable, same grid) before any metric is computed, so a bad input fails
in seconds, lists every problem, and leaves no summary behind.
"""
from __future__ import annotations

import math
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from dgcf_auto.atomic import check_writable, write_json
from dgcf_auto.dicomio import is_dicom_folder
from dgcf_auto.dataset.validation import check_image_file, direction_problem
from dgcf_auto.errors import DGCFError, DGCFInputErrors
from dgcf_auto.evaluation.metrics import evaluate_pair, summarize
from dgcf_auto.imageio import IMAGE_SUFFIXES, find_image, geometry_mismatch, image_suffix, read_header, read_image, strip_suffix

SOURCE_STEMS = ("mr", "cbct")
DEFINITIONS = ("mae/psnr/ssim: SynthRAD2023 metrics functions/image_metrics.py, HU range [-1024, 3000]; "
               "ms_ssim: SynthRAD2025 evaluation image_metrics.py (masked), HU range [-1024, 3071]; "
               "mae_<tissue>: MAE inside the mask where the CT is < -250 (air), in [-250, 250] (soft tissue), "
               "> 250 HU (bone); segscore: mean Dice of TotalSegmentator pelvic structures present in the CT. "
               "See documentation/evaluation.md")


@dataclass
class EvalCase:
    name: str
    ct: Path
    sct: Path | None = None
    mask: Path | None = None
    source: Path | None = None


def one_image(folder: Path, stem: str, case: str) -> Path | None:
    found = find_image(folder, stem)
    if len(found) > 1:
        raise DGCFError(f"case {case}: several files for '{stem}' in {folder} ({', '.join(p.name for p in found)})")
    return found[0] if found else None


def flat_images(folder: Path) -> dict[str, Path]:
    """{case: file} of `<case>.{nii.gz,nii,mha}` (or a DICOM series folder `<case>/`, as
    `dgcf_predict --output-format dicom` writes) directly in `folder`; a DGCFError on duplicates."""
    images: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if ((path.is_file() and image_suffix(path)) or is_dicom_folder(path)) and not path.name.startswith("."):
            case = strip_suffix(path)
            if case in images:
                raise DGCFError(f"case {case}: several files in {folder} ({images[case].name}, {path.name})")
            images[case] = path
    return images


def _check_folder(folder, what: str) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise DGCFError(f"{what} folder {folder}: not found")
    return folder


def find_reference_cases(ref_dir) -> dict[str, EvalCase]:
    """Reference CTs by case name, from case folders and flat files (a DGCFError if there are none)."""
    ref_dir = _check_folder(ref_dir, "reference")
    cases = {name: EvalCase(name, path) for name, path in flat_images(ref_dir).items()}
    for sub in sorted(p for p in ref_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        ct = one_image(sub, "ct", sub.name)
        if ct is None:
            continue
        if sub.name in cases:
            raise DGCFError(f"case {sub.name}: both {cases[sub.name].ct.name} and {sub.name}/{ct.name} in {ref_dir}")
        source = next((p for stem in SOURCE_STEMS if (p := one_image(sub, stem, sub.name))), None)
        cases[sub.name] = EvalCase(sub.name, ct, mask=one_image(sub, "mask", sub.name), source=source)
    if not cases:
        raise DGCFError(f"reference folder {ref_dir}: no CT images (expected <case>/ct.nii.gz or "
                        f"<case>{{{','.join(IMAGE_SUFFIXES)}}})")
    return dict(sorted(cases.items()))


def find_masks(mask_dir) -> dict[str, Path]:
    """Masks by case name: `<case>.nii.gz` or `<case>/mask.nii.gz`."""
    mask_dir = _check_folder(mask_dir, "mask")
    masks = flat_images(mask_dir)
    for sub in sorted(p for p in mask_dir.iterdir() if p.is_dir()):
        found = one_image(sub, "mask", sub.name)
        if found is not None and sub.name not in masks:
            masks[sub.name] = found
    return masks


def match_cases(ref_dir, pred_dir, mask_dir=None, warn=None) -> list[EvalCase]:
    """Reference cases that have a prediction; warns about the others; a DGCFError when none match."""
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    refs = find_reference_cases(ref_dir)
    preds = flat_images(_check_folder(pred_dir, "prediction"))
    if not preds:
        raise DGCFError(f"prediction folder {pred_dir}: no images (expected <case>{{{','.join(IMAGE_SUFFIXES)}}})")
    common = [name for name in refs if name in preds]
    if not common:
        raise DGCFError(f"no case in {pred_dir} matches a reference case in {ref_dir} "
                        f"(references: {_names(refs)}; predictions: {_names(preds)})")
    if missing := [n for n in refs if n not in preds]:
        warn(f"{len(missing)} reference case(s) without prediction, not evaluated: {_names(missing)}")
    if extra := [n for n in preds if n not in refs]:
        warn(f"{len(extra)} prediction(s) without reference CT, not evaluated: {_names(extra)}")
    masks = find_masks(mask_dir) if mask_dir is not None else {}
    matched = []
    for name in common:
        case = refs[name]
        case.sct = preds[name]
        if mask_dir is not None:
            if name not in masks:
                raise DGCFError(f"case {name}: no mask in {mask_dir} (expected {name}.nii.gz or {name}/mask.nii.gz)")
            case.mask = masks[name]
        matched.append(case)
    return matched


def _names(names, limit: int = 10) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def check_cases(cases: list[EvalCase]) -> dict[str, str]:
    """Reference/mask problems raise, all at once (headers only). A prediction gets the checks the inputs get
    (complete voxel block, finite, orthonormal direction) and the CT's grid; a bad one is not scored:
    returns {case: why} for those."""
    problems, unusable = [], {}
    for case in cases:
        try:
            ref = read_header(case.ct, case.name)
            if problem := direction_problem(np.array(ref.GetDirection()).reshape(3, 3)):
                problems.append(f"case {case.name}: file {case.ct.name}: {problem}")
            if case.mask is not None and (diff := geometry_mismatch(ref, read_header(case.mask, case.name))):
                problems.append(f"case {case.name}: file {case.mask.name}: not on the grid of {case.ct.name} ({diff})")
        except DGCFError as exc:
            problems.append(str(exc))
            continue
        reader, problem = check_image_file(case.sct, f"case {case.name}: file {case.sct.name}")
        if problem is None and (diff := geometry_mismatch(ref, reader)):
            problem = f"case {case.name}: file {case.sct.name}: not on the grid of {case.ct.name} ({diff})"
        if problem:
            unusable[case.name] = problem
    if problems:
        raise DGCFInputErrors(problems)
    return unusable


def _evaluate_one(case: EvalCase, png_dir: Path | None) -> dict:
    """Metrics of one case (a worker process runs this)."""
    ct = read_image(case.ct, case.name)
    sct = read_image(case.sct, case.name)
    mask = read_image(case.mask, case.name) if case.mask is not None else None
    mask_arr = sitk.GetArrayFromImage(mask) > 0 if mask is not None else None
    if mask_arr is not None and not mask_arr.any():
        raise DGCFError(f"case {case.name}: file {case.mask.name}: the mask is empty")
    ct_arr = sitk.GetArrayFromImage(ct).astype(np.float32)
    sct_arr = sitk.GetArrayFromImage(sct).astype(np.float32)
    try:
        metrics = evaluate_pair(ct_arr, sct_arr, mask_arr)
    except ValueError as exc:  # e.g. fewer than 7 voxels along an axis for SSIM
        raise DGCFError(f"case {case.name}: file {case.sct.name}: {exc}") from None
    if png_dir is not None:
        from dgcf_auto.evaluation.report import save_case_figure

        source = read_image(case.source, case.name) if case.source is not None else None
        save_case_figure(source, sct, ct, mask, Path(png_dir) / f"{case.name}.png", title=case.name)
    return metrics


def _finite_or_none(value):
    return value if isinstance(value, (int, str)) or (value is not None and math.isfinite(value)) else None


def evaluate_folders(ref_dir, pred_dir, output_json, mask_dir=None, segscore: bool = False,
                     segscore_fast: bool = False, device: str | None = None, png_dir=None,
                     num_processes: int = 1, segmenter=None) -> dict:
    """Evaluate every matched case, write the summary JSON atomically and return it."""
    check_writable(Path(output_json).parent, "output folder")  # before minutes of metrics
    if png_dir is not None:
        check_writable(png_dir, "figure folder")
    cases = match_cases(ref_dir, pred_dir, mask_dir)
    unusable = check_cases(cases)
    if len(unusable) == len(cases):
        raise DGCFInputErrors(list(unusable.values()))
    cases = [c for c in cases if c.name not in unusable]
    if not any(c.mask for c in cases):
        print("warning: no masks found; metrics cover the whole image", file=sys.stderr)
    if segscore and segmenter is None:  # fail on missing weights before the long image metrics
        from dgcf_auto.evaluation.segscore import TotalSegmentatorSegmenter

        segmenter = TotalSegmentatorSegmenter(fast=segscore_fast, device=device)
    per_case: dict[str, dict] = {}
    bar = tqdm(total=len(cases), desc="evaluating", unit="case")
    if num_processes > 1 and len(cases) > 1:
        with ProcessPoolExecutor(max_workers=min(num_processes, len(cases))) as pool:
            futures = {c.name: pool.submit(_evaluate_one, c, png_dir) for c in cases}
            for name, future in futures.items():
                per_case[name] = future.result()
                bar.update()
    else:
        for case in cases:
            per_case[case.name] = _evaluate_one(case, png_dir)
            bar.update()
    bar.close()
    if segscore:
        from dgcf_auto.evaluation.segscore import segscore as compute_segscore

        for case in tqdm(cases, desc="SegScore", unit="case"):
            per_case[case.name].update(compute_segscore(read_image(case.ct, case.name),
                                                        read_image(case.sct, case.name), segmenter))
    stats = summarize(per_case)
    summary = {
        "metric_per_case": [
            {"case": c.name, "reference_file": str(c.ct), "prediction_file": str(c.sct),
             "mask_file": str(c.mask) if c.mask else None,
             "metrics": {k: _finite_or_none(v) for k, v in per_case[c.name].items()}}
            for c in cases
        ],
        **{key: {k: _finite_or_none(v) for k, v in stats[key].items()} for key in ("mean", "std", "n")},
        "definitions": DEFINITIONS,
        "not_evaluated": [{"case": name, "reason": why} for name, why in unusable.items()],
    }
    write_json(summary, output_json)
    return summary


def format_table(summary: dict, metrics=("mae", "psnr", "ssim", "ms_ssim", "segscore")) -> str:
    """Plain-text table: one row per case, then mean and std."""
    shown = [m for m in metrics if m in summary["mean"]]
    width = max([len("case")] + [len(row["case"]) for row in summary["metric_per_case"]])
    lines = [f"{'case':<{width}}  " + "  ".join(f"{m:>10}" for m in shown)]

    def fmt(value):
        return f"{'n/a':>10}" if value is None else f"{value:>10.4f}"

    for row in summary["metric_per_case"]:
        lines.append(f"{row['case']:<{width}}  " + "  ".join(fmt(row["metrics"].get(m)) for m in shown))
    for key in ("mean", "std"):
        lines.append(f"{key:<{width}}  " + "  ".join(fmt(summary[key].get(m)) for m in shown))
    return "\n".join(lines)
