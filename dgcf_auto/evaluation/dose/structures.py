"""Structures for the dose plan: a label map + JSON legend per case, or TotalSegmentator, and the PTV.

Where a case's structures come from, in this order:
1. `--structures DIR`: `DIR/<case>/structures.nii.gz` + `DIR/<case>/structures.json`, or `DIR/<case>.nii.gz`
   + `DIR/<case>.json`;
2. the reference case folder itself: `<case>/structures.nii.gz` + `<case>/structures.json` (what
   `dgcf_make_example_dataset` writes by default);
3. an RTSTRUCT in the reference CT's DICOM folder or case folder: every ROI rasterised on the CT grid
   (`dicomio.roi_mask`), named in lower case;
4. TotalSegmentator 'total' on the CT, when its weights are installed locally (never downloaded);
otherwise the case is skipped with one line saying why. The legend maps structure names to label values,
e.g. {"prostate": 1, "bladder": 2}. The label map must lie on the CT's grid.

The target is a named structure (default prostate) grown by an isotropic margin in mm (default 5 mm, the
usual prostate CTV-to-PTV margin), kept inside the body; every other named structure is an OAR.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from dgcf_auto.errors import DGCFError
from dgcf_auto.imageio import geometry_mismatch, read_header, read_image

LABEL_FILE, LEGEND_FILE = "structures.nii.gz", "structures.json"
BODY_HU = -400.0  # body outline: CT above this, holes (gas, lungs) filled
# TotalSegmentator 'total' names used when no structures are given (its v2 class map has no rectum).
TOTALSEG_NAMES = {"prostate": "prostate", "urinary_bladder": "bladder", "colon": "colon",
                  "femur_left": "femur_left", "femur_right": "femur_right"}


@dataclass
class CaseStructures:
    """Named boolean masks (z, y, x) on the CT grid, and where they came from."""
    masks: dict[str, np.ndarray]
    source: str
    files: list[str] = field(default_factory=list)


def structure_files(case: str, ct_file: Path, structures_dir=None) -> tuple[Path, Path] | None:
    """(label map, legend) of a case, or None when there are none."""
    candidates = []
    if structures_dir is not None:
        root = Path(structures_dir)
        candidates += [(root / case / LABEL_FILE, root / case / LEGEND_FILE),
                       (root / f"{case}.nii.gz", root / f"{case}.json")]
    if Path(ct_file).parent.name == case:
        candidates.append((Path(ct_file).parent / LABEL_FILE, Path(ct_file).parent / LEGEND_FILE))
    for labels, legend in candidates:
        if labels.is_file():
            if not legend.is_file():
                raise DGCFError(f"case {case}: file {labels}: no legend {legend.name} beside it "
                                "(JSON {\"name\": label value})")
            return labels, legend
    return None


def read_legend(case: str, path: Path) -> dict[str, int]:
    try:
        legend = json.loads(Path(path).read_text())
        if not isinstance(legend, dict) or not legend:
            raise ValueError("expected a JSON object {\"name\": label value}")
        return {str(name): int(value) for name, value in legend.items()}
    except (ValueError, TypeError) as exc:
        raise DGCFError(f"case {case}: file {path}: not a structure legend ({exc})") from None


def read_structures(case: str, ct, labels_file: Path, legend_file: Path, target: str | None = None) -> CaseStructures:
    """Named masks from a label map and its legend (`ct`: the CT image or its header, for the grid check);
    a DGCFError naming the case and file for any problem, and when `target` is not in the legend."""
    legend = read_legend(case, legend_file)
    if target is not None and target not in legend:
        raise DGCFError(f"case {case}: no structure named {target!r} for the dose target "
                        f"(structures: {', '.join(legend)}; choose one with --dose_target)")
    labels = read_image(labels_file, case)
    if diff := geometry_mismatch(ct, labels):
        raise DGCFError(f"case {case}: file {labels_file}: not on the grid of the CT ({diff})")
    array = sitk.GetArrayFromImage(labels)
    masks = {name: array == value for name, value in legend.items()}
    if empty := [name for name, mask in masks.items() if not mask.any()]:
        raise DGCFError(f"case {case}: file {labels_file}: no voxel has the label of {', '.join(empty)} "
                        f"(legend {legend_file.name})")
    return CaseStructures(masks, "label map", [str(labels_file), str(legend_file)])


def check_structures(case: str, ct_file: Path, structures_dir, target: str) -> None:
    """Every problem of a case's given structures, before any plan is computed (no half-written output)."""
    files = structure_files(case, ct_file, structures_dir)
    if files is not None:
        read_structures(case, read_header(ct_file, case), *files, target=target)
    elif rtstruct := _case_rtstructs(ct_file):
        _rtstruct_roi_names(case, rtstruct, target)


def _case_rtstructs(ct_file: Path) -> list[Path]:
    """RTSTRUCT files in the CT's DICOM folder and in its case folder."""
    from dgcf_auto.dicomio import rtstruct_files

    ct_file = Path(ct_file)
    return rtstruct_files(([ct_file] if ct_file.is_dir() else []) + [ct_file.parent])


def _rtstruct_roi_names(case: str, files: list[Path], target: str | None) -> list[str]:
    """The ROI names of the RTSTRUCT files; a DGCFError when `target` (any case) is not among them."""
    import pydicom

    names = [str(roi.ROIName) for path in files
             for roi in getattr(pydicom.dcmread(path, force=True), "StructureSetROISequence", [])]
    if target is not None and target.strip().lower() not in {n.strip().lower() for n in names}:
        raise DGCFError(f"case {case}: no ROI named {target!r} for the dose target in "
                        f"{', '.join(p.name for p in files)} "
                        f"(ROIs: {', '.join(names) or 'none'}; choose one with --dose_target)")
    return names


def rtstruct_structures(case: str, ct: sitk.Image, ct_file: Path) -> CaseStructures | None:
    """Every non-empty ROI of the case's RTSTRUCT on the CT grid, named in lower case; None without one."""
    from dgcf_auto.dicomio import roi_mask

    files = _case_rtstructs(ct_file)
    if not files:
        return None
    _rtstruct_roi_names(case, files, None)
    masks = {name.strip().lower(): sitk.GetArrayFromImage(roi_mask(files, name, ct, f"case {case}")) > 0
             for name in _contoured_rois(files)}
    return CaseStructures(masks, "rtstruct", [str(f) for f in files])


def _contoured_rois(files: list[Path]) -> list[str]:
    """Names of the ROIs that have contours (an RTSTRUCT often lists contourless ones, e.g. a planned PTV)."""
    import pydicom

    names = []
    for path in files:
        ds = pydicom.dcmread(path, force=True)
        contoured = {int(c.ReferencedROINumber) for c in getattr(ds, "ROIContourSequence", [])
                     if len(getattr(c, "ContourSequence", [])) > 0}
        names += [str(r.ROIName) for r in getattr(ds, "StructureSetROISequence", []) if int(r.ROINumber) in contoured]
    return names


def totalsegmentator_structures(case: str, ct: sitk.Image, device: str | None = None) -> CaseStructures:
    """TotalSegmentator's pelvic structures; a DGCFError (the case is skipped) when its weights are missing."""
    from dgcf_auto.evaluation import segscore

    segmenter = segscore.TotalSegmentatorSegmenter(fast=False, device=device)
    labels = segscore._labels(segmenter, ct)  # the segmenter's labels on the CT's grid, as SegScore reads them
    ids = {name: label for label, name in segscore.totalseg_class_map().items()}
    masks = {ours: labels == ids[theirs] for theirs, ours in TOTALSEG_NAMES.items()
             if theirs in ids and (labels == ids[theirs]).any()}
    return CaseStructures(masks, f"TotalSegmentator {segmenter.settings['version']} 'total'")


def body_mask(ct_array: np.ndarray) -> np.ndarray:
    """Everything above BODY_HU, holes filled, largest connected component."""
    body = ndimage.binary_fill_holes(ct_array > BODY_HU)
    components, n = ndimage.label(body)
    if n > 1:
        sizes = ndimage.sum(body, components, index=range(1, n + 1))
        body = components == (1 + int(np.argmax(sizes)))
    return body


def grow(mask: np.ndarray, margin_mm: float, spacing_zyx) -> np.ndarray:
    """Voxels within margin_mm (Euclidean, physical) of the mask."""
    if margin_mm <= 0:
        return mask.copy()
    return ndimage.distance_transform_edt(~mask, sampling=spacing_zyx) <= margin_mm


def plan_structures(case: str, structures: CaseStructures, ct_array: np.ndarray, spacing_zyx,
                    target: str, margin_mm: float) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """(PTV, {OAR name: mask}, body) for the plan; a DGCFError when the target structure is missing."""
    if target not in structures.masks:
        raise DGCFError(f"case {case}: no structure named {target!r} for the dose target "
                        f"(structures: {', '.join(structures.masks) or 'none'}; choose one with --dose_target)")
    body = body_mask(ct_array)
    ptv = grow(structures.masks[target], margin_mm, spacing_zyx) & body
    oars = {name: mask & body for name, mask in structures.masks.items() if name != target and (mask & body).any()}
    return ptv, oars, body
