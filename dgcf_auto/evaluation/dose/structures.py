"""Structures for the dose plan: a label map + JSON legend per case, or TotalSegmentator, and the PTV.

Where a case's structures come from, in this order:
1. `--structures DIR`: `DIR/<case>/structures.nii.gz` + `DIR/<case>/structures.json`, or `DIR/<case>.nii.gz`
   + `DIR/<case>.json`;
2. the reference case folder itself: `<case>/structures.nii.gz` + `<case>/structures.json` (what
   `dgcf_make_example_dataset` writes by default);
3. an RTSTRUCT in the reference CT's DICOM folder or case folder: every ROI rasterised on the CT grid
   (`dicomio.roi_mask`), named in lower case;
4. TotalSegmentator 'total' on the CT, when its weights are installed locally (never downloaded);
otherwise the case is not evaluated, with one line saying why. The legend maps structure names to label values,
e.g. {"prostate": 1, "bladder": 2}. The label map must lie on the CT's grid.

The target is the first of an ordered list of names (default prostate; per case from a table, see
`read_target_table`) that the case holds, matched case-insensitively. When the structures already hold a PTV
(a name starting with PTV) overlapping the target, or the target is itself a PTV, that PTV is planned as it
is; otherwise the target is grown by an isotropic margin in mm (default 5 mm, the usual prostate CTV-to-PTV
margin), kept inside the body. Which one was used is recorded. Target volumes (names starting with PTV, CTV,
GTV or ITV: `PTV_7800`, `ctv1`, ...) and body contours (External, Body, Skin) are never OARs, as in SynthRAD's
dose_metrics.py; every other named structure is. A body contour, when present, is the body (holes filled
slice by slice: a label map's External surrounds the organs); otherwise the CT above BODY_HU.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from dgcf_auto.errors import DGCFError
from dgcf_auto.imageio import geometry_mismatch, read_header, read_image

LABEL_FILE, LEGEND_FILE = "structures.nii.gz", "structures.json"
BODY_HU = -400.0  # body outline: CT above this, holes (gas, lungs) filled
TARGET_VOLUME = re.compile(r"^\s*(ptv|ctv|gtv|itv)", re.IGNORECASE)  # PTV, PTV_7800, ctv1, GTVp, ITV-high
PTV_NAME = re.compile(r"^\s*ptv", re.IGNORECASE)
BODY_NAMES = ("external", "body", "skin")
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


def read_structures(case: str, ct, labels_file: Path, legend_file: Path) -> CaseStructures:
    """Named masks from a label map and its legend (`ct`: the CT image or its header, for the grid check);
    a DGCFError naming the case and file for any problem."""
    legend = read_legend(case, legend_file)
    labels = read_image(labels_file, case)
    if diff := geometry_mismatch(ct, labels):
        raise DGCFError(f"case {case}: file {labels_file}: not on the grid of the CT ({diff})")
    array = sitk.GetArrayFromImage(labels)
    masks = {name: array == value for name, value in legend.items()}
    if empty := [name for name, mask in masks.items() if not mask.any()]:
        raise DGCFError(f"case {case}: file {labels_file}: no voxel has the label of {', '.join(empty)} "
                        f"(legend {legend_file.name})")
    return CaseStructures(masks, "label map", [str(labels_file), str(legend_file)])


def check_structures(case: str, ct_file: Path, structures_dir) -> None:
    """Every problem of a case's given structure files (legend, grid, empty labels), before its plan."""
    files = structure_files(case, ct_file, structures_dir)
    if files is not None:
        read_structures(case, read_header(ct_file, case), *files)
    elif rtstruct := _case_rtstructs(ct_file):
        _rtstruct_roi_names(case, rtstruct)


def _case_rtstructs(ct_file: Path) -> list[Path]:
    """RTSTRUCT files in the CT's DICOM folder and in its case folder."""
    from dgcf_auto.dicomio import rtstruct_files

    ct_file = Path(ct_file)
    return rtstruct_files(([ct_file] if ct_file.is_dir() else []) + [ct_file.parent])


def _rtstruct_roi_names(case: str, files: list[Path]) -> list[str]:
    """The ROI names of the RTSTRUCT files (reading them checks they are readable)."""
    import pydicom

    return [str(roi.ROIName) for path in files
            for roi in getattr(pydicom.dcmread(path, force=True), "StructureSetROISequence", [])]


def rtstruct_structures(case: str, ct: sitk.Image, ct_file: Path) -> CaseStructures | None:
    """Every non-empty ROI of the case's RTSTRUCT on the CT grid, named in lower case; None without one."""
    from dgcf_auto.dicomio import roi_mask

    files = _case_rtstructs(ct_file)
    if not files:
        return None
    _rtstruct_roi_names(case, files)
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


def _filled_slices(mask: np.ndarray) -> np.ndarray:
    return np.stack([ndimage.binary_fill_holes(plane) for plane in mask])


def is_target_volume(name: str) -> bool:
    return bool(TARGET_VOLUME.match(name))


def is_body_contour(name: str) -> bool:
    return name.strip().lower() in BODY_NAMES


def find_name(names, wanted: str) -> str | None:
    """The name in `names` equal to `wanted` ignoring case and surrounding blanks."""
    key = wanted.strip().lower()
    return next((n for n in names if n.strip().lower() == key), None)


@dataclass
class PlanStructures:
    """What the plan uses: PTV, OARs and body (masks on the planning grid) and how each was chosen."""
    ptv: np.ndarray
    oars: dict[str, np.ndarray]
    body: np.ndarray
    record: dict


def plan_structures(case: str, structures: CaseStructures, ct_array: np.ndarray, spacing_zyx,
                    targets, margin_mm: float) -> PlanStructures:
    """PTV, OARs and body of a case; a DGCFError naming the case when none of the `targets` is present."""
    names = list(structures.masks)
    target = next((found for t in targets if (found := find_name(names, t)) is not None), None)
    if target is None:
        raise DGCFError(f"case {case}: no structure named {' or '.join(repr(t) for t in targets)} for the dose "
                        f"target (structures: {', '.join(names) or 'none'}; choose with --dose_target or "
                        f"--dose_targets)")
    body_name = next((n for n in names if is_body_contour(n)), None)
    # A label map cannot overlap: its body contour leaves holes where the organs are, filled slice by slice
    # (an RTSTRUCT's External is filled already; a couch ROI outside it stays out).
    body = _filled_slices(structures.masks[body_name]) if body_name else body_mask(ct_array)
    target_mask = structures.masks[target]
    near_target = ndimage.binary_dilation(target_mask)
    ptvs = [n for n in names if PTV_NAME.match(n) and (structures.masks[n] & near_target).any()]
    if PTV_NAME.match(target):
        ptv_name = target
    elif ptvs:  # the PTV that covers most of the target's neighbourhood (a clinic's PTV_7800 around its prostate)
        ptv_name = max(ptvs, key=lambda n: (int((structures.masks[n] & near_target).sum()), n))
    else:
        ptv_name = None
    if ptv_name is not None:
        ptv = (structures.masks[ptv_name] | target_mask) & body
        how = f"structure {ptv_name!r} as it is" + ("" if ptv_name == target else f" (with {target!r})")
    else:
        ptv = grow(target_mask, margin_mm, spacing_zyx) & body
        how = f"{target!r} grown by {margin_mm:g} mm inside the body"
    oars = {n: m & body for n, m in structures.masks.items()
            if n != target and not is_target_volume(n) and not is_body_contour(n) and (m & body).any()}
    if not ptv.any():
        raise DGCFError(f"case {case}: the PTV ({how}) holds no voxel inside the body")
    record = {"target": target, "ptv": how, "ptv_structure": ptv_name, "margin_mm": None if ptv_name else margin_mm,
              "body": f"structure {body_name!r}" if body_name else f"CT above {BODY_HU:g} HU, holes filled",
              "not_oars": [n for n in names if n != target and (is_target_volume(n) or is_body_contour(n))]}
    return PlanStructures(ptv, oars, body, record)


def read_target_table(path) -> dict[str, tuple[str, ...]]:
    """Per-case dose targets: CSV rows `case,name[,name...]` (a header row `case,...` allowed) or JSON
    {"case": "name" | ["name", ...]}; each case uses the first name it holds."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".json":
            raw = json.loads(path.read_text())
            if not isinstance(raw, dict):
                raise ValueError("expected a JSON object {\"case\": \"name\" or [\"name\", ...]}")
            table = {str(k): (v,) if isinstance(v, str) else tuple(str(x) for x in v) for k, v in raw.items()}
        else:
            with open(path, newline="") as handle:
                rows = [[c.strip() for c in row if c.strip()] for row in csv.reader(handle)]
            rows = [r for r in rows if r and not r[0].startswith("#")]
            if rows and rows[0][0].lower() == "case":
                rows = rows[1:]
            table = {r[0]: tuple(r[1:]) for r in rows}
    except (OSError, ValueError, TypeError) as exc:
        raise DGCFError(f"dose target table {path}: cannot read it ({exc})") from None
    if empty := [case for case, names in table.items() if not names]:
        raise DGCFError(f"dose target table {path}: no target name for {', '.join(empty)}")
    if not table:
        raise DGCFError(f"dose target table {path}: no rows (expected case,name[,name...])")
    return table
