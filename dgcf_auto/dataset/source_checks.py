"""Sources must look like sources: a case's source image against the signature of the training sources.

Shared by prediction (against the plans' `source_signature`, `plans.source_signature`) and preprocessing
(against what the dataset's own folder names and spacings imply). Refused, one line each naming case and file:
- a label or mask volume: integer values only, at most LABEL_MAX_DISTINCT of them (training sources have
  thousands);
- the other modality: a DICOM series' Modality tag first (MR vs CT), then intensity: HU-like air (a share of
  voxels at or below AIR_HU) where the training MR sources were non-negative, or no negative value at all
  where the training CBCT/CT sources held air at about -1000;
- spacing more than SPACING_FACTOR times outside the training spacing range ("in metres?" near 1000x finer);
- a body mask covering a far smaller share of the volume than the training masks did.
`--force` turns refusals into notes, and the run records them (`forced` in the report or dataset.json).
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from dgcf_auto.dataset.discovery import Case
from dgcf_auto.errors import DGCFInputErrors
from dgcf_auto.imageio import read_image
from dgcf_auto.log import get_logger

LABEL_MAX_DISTINCT = 32        # a label map rarely has more classes; a scan has thousands of values
AIR_HU = -500.0                # below any soft tissue in HU, and never reached by MR's non-negative units
CT_AIR_FRACTION = 0.05         # a CT volume is at least this share of air (outside the body, lungs, gas)
SPACING_FACTOR = 10.0
METRES = (300.0, 3000.0)       # a factor near 1000 finer: millimetres written as metres
MASK_FRACTION_FACTOR = 10.0
SAMPLE = 2_000_000             # voxels looked at for the distinct-value count (a strided sample)
MODALITY_NAMES = {"mr": "MR", "cbct": "CBCT"}
DICOM_MODALITIES = {"mr": {"MR"}, "cbct": {"CT"}}  # CBCT series are stored as Modality CT


def intensity_signature(array: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """What the checks compare, for one volume: dtype, whole-volume range, distinct values (of a strided
    sample; integer-valued or not), share of HU-like air, and the share of the volume a mask covers."""
    flat = array.reshape(-1)
    sample = flat[:: max(1, flat.size // SAMPLE)]
    values = np.unique(sample)
    signature = {"dtype": str(array.dtype), "min": float(flat.min()), "max": float(flat.max()),
                 "distinct_values": int(values.size),
                 "integral": bool(np.all(np.isfinite(values)) and np.all(values == np.round(values))),
                 "air_fraction": float(np.count_nonzero(flat <= AIR_HU) / flat.size)}
    if signature["distinct_values"] <= LABEL_MAX_DISTINCT:
        signature["values"] = [float(v) for v in values]
    if mask is not None:
        signature["mask_fraction"] = float(np.count_nonzero(mask) / mask.size)
    return signature


def source_problems(case: Case, expected: dict, trained_on: str | None = None) -> list[str]:
    """The case's source against `expected` (a plans' source_signature, or what a dataset implies): [] when
    it looks like a source of that modality, else one line per reason. `trained_on` ends the modality
    lines ('the model was trained on MR')."""
    modality = expected["modality"]
    name = MODALITY_NAMES.get(modality, modality)
    trained_on = trained_on or f"the model was trained on {name}"
    where = f"case {case.name}: " + (f"folder {case.source.name}/" if case.source.is_dir()
                                     else f"file {case.source.name}")
    if case.source.is_dir():
        from dgcf_auto.dicomio import open_series

        tag = open_series(case.source, case.name, case.series_uids).modality
        if tag in {"MR", "CT"} and tag not in DICOM_MODALITIES.get(modality, {tag}):
            return [f"{where}: DICOM Modality is {tag}; {trained_on}"]
    image = read_image(case.source, case.name, case.series_uids)
    array = sitk.GetArrayViewFromImage(image)
    mask = None
    if case.mask is not None:
        # a copy: the image is not kept
        mask = sitk.GetArrayFromImage(read_image(case.mask, case.name, case.series_uids))
    signature = intensity_signature(array, mask)
    problems = []
    if label := _label_problem(signature, expected):
        problems.append(f"{where}: {label}")
    elif other := _modality_problem(signature, expected, trained_on):
        problems.append(f"{where}: {other}")
    if spacing := spacing_problem(image.GetSpacing(), expected.get("spacing_mm")):
        problems.append(f"{where}: {spacing}")
    if coverage := _mask_problem(signature, expected, case):
        problems.append(f"case {case.name}: file {case.mask.name}: {coverage}")
    return problems


def _label_problem(signature: dict, expected: dict) -> str | None:
    fewest = expected.get("distinct_values_min")
    if not signature["integral"] or signature["distinct_values"] > LABEL_MAX_DISTINCT:
        return None
    if fewest is not None and fewest <= signature["distinct_values"]:
        return None  # the training sources were as coarse: not evidence of a label volume
    shown = ", ".join(f"{v:g}" for v in signature["values"][:6]) + (", ..." if signature["distinct_values"] > 6 else "")
    training = f"; the training sources had at least {fewest}" if fewest is not None else ""
    return (f"looks like a label or mask volume ({signature['distinct_values']} distinct integer values {shown} "
            f"in {signature['dtype']}{training}); give the {MODALITY_NAMES.get(expected['modality'], '')} image")


def _modality_problem(signature: dict, expected: dict, trained_on: str) -> str | None:
    volume_min = expected.get("volume_min")  # [lowest, highest] minimum over the training sources
    if expected["modality"] == "mr":
        floor = volume_min[0] if volume_min else 0.0
        if floor > AIR_HU and signature["air_fraction"] >= CT_AIR_FRACTION:
            training = f", whose sources had no value below {floor:g}" if volume_min else ""
            return (f"looks like a CT ({100 * signature['air_fraction']:.0f}% of voxels at or below {AIR_HU:g}, "
                    f"HU-like air; minimum {signature['min']:g}); {trained_on}{training}")
        return None
    ceiling = volume_min[1] if volume_min else -1000.0
    if ceiling <= AIR_HU and signature["min"] >= 0:
        training = f", whose sources reach {ceiling:g} or lower" if volume_min else ""
        return (f"looks like MR (no value below 0, no HU-like air at -1000; range {signature['min']:g} to "
                f"{signature['max']:g}); {trained_on}{training}")
    return None


def spacing_problem(spacing, expected_range) -> str | None:
    """Spacing more than SPACING_FACTOR outside [low, high] mm, in words; 'in metres?' near 1000x finer."""
    if not expected_range:
        return None
    low, high = expected_range
    shown = "(" + ", ".join(f"{s:.4g}" for s in spacing) + ")"
    finer, coarser = low / min(spacing), max(spacing) / high
    if finer > SPACING_FACTOR:
        metres = "; in metres?" if METRES[0] <= finer <= METRES[1] else ""
        return (f"spacing {shown} mm is {finer:.0f}x finer than the training range {low:.4g}-{high:.4g} mm"
                f"{metres}")
    if coarser > SPACING_FACTOR:
        return f"spacing {shown} mm is {coarser:.0f}x coarser than the training range {low:.4g}-{high:.4g} mm"
    return None


def _mask_problem(signature: dict, expected: dict, case: Case) -> str | None:
    covered, trained = signature.get("mask_fraction"), expected.get("mask_fraction")
    if covered is None or not trained or covered * MASK_FRACTION_FACTOR >= trained[0]:
        return None
    return (f"the body mask covers {100 * covered:.2g}% of the volume; the training masks covered "
            f"{100 * trained[0]:.2g}-{100 * trained[1]:.2g}%")


def check_sources(cases: list[Case], expected: dict, force: bool = False, label: str = "dgcf_predict",
                  trained_on: str | None = None) -> list[dict]:
    """Every source's problems at once: a DGCFInputErrors, or with `force` one note per problem and the
    list of what was forced ({case, reason}) for the run's record."""
    forced = [{"case": case.name, "reason": problem} for case in cases
              for problem in source_problems(case, expected, trained_on)]
    if forced and not force:
        raise DGCFInputErrors([f["reason"] for f in forced])
    for entry in forced:
        get_logger(__name__).warning(f"{label}: --force: {entry['reason']}")
    return forced


def dataset_expectation(cases: list[Case], modality: str) -> dict:
    """What a dataset's sources should look like before any fingerprint exists: the defaults of the
    modality its file names give, and the median of its cases' spacing range."""
    from dgcf_auto.imageio import read_header

    spacings = np.array([sorted(read_header(c.source, c.name, series_uids=c.series_uids).GetSpacing())
                         for c in cases if c.source is not None])
    return {"modality": modality, "spacing_mm": [float(np.median(spacings[:, 0])), float(np.median(spacings[:, -1]))]}


__all__ = ["intensity_signature", "source_problems", "spacing_problem", "check_sources", "dataset_expectation"]
