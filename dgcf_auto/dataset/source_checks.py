"""Sources must look like sources: a case's source image against the signature of the training sources.

Shared by prediction (against the plans' `source_signature`, `plans.source_signature`) and preprocessing
(against what the dataset's own folder names and spacings imply). Refused, one line each naming case and file:
- a label or mask volume: integer values only, at most LABEL_MAX_DISTINCT of them (training sources have
  thousands);
- the other modality: a DICOM series' Modality tag first (MR vs CT), then intensity: HU-like air (a share of
  voxels at or below AIR_HU) where the training MR sources were non-negative, or no negative value at all
  where the training CBCT/CT sources held air at about -1000;
- spacing more than SPACING_FACTOR times outside the training spacing range ("in metres?" near 1000x finer);
- a body mask covering a far smaller share of the volume than the training masks did;
- a voxel beyond what float32, the type every stage computes in, carries exactly (|value| > 2**24; a float32
  maximum or an int32 extreme), or one that becomes infinite when cast to float32 (a float64 1e300);
- intensities far outside the training range (`INTENSITY_RULE`, recorded in the plans' source_signature as
  `intensity_rule`): the volume's p0.5 or p99.5 more than 10x the training range's width beyond it. The
  training range is [lowest minimum, highest maximum] over the training sources (the plans' `volume_min`,
  `volume_max`); before any plans exist (plan time), the median case's [minimum, maximum] of the dataset
  itself (with at least 3 cases).
`--force` turns refusals into notes, and the run records them (`forced` in the report or dataset.json).
"""
from __future__ import annotations

from collections.abc import Sequence

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
CAST_SAFE_MAGNITUDE = 2.0 ** 24  # float32 holds every integer up to 2**24 exactly; beyond, values are not data
# Far outside the training range: a percentile of the volume beyond the range by more than width_factor times
# its width (MR units differ per scanner by a few times, never by ten times the whole range).
INTENSITY_PERCENTILES = (0.5, 99.5)
INTENSITY_RULE = {"percentiles": list(INTENSITY_PERCENTILES), "width_factor": 10.0}
DATASET_RANGE_MIN_CASES = 3
MODALITY_NAMES = {"mr": "MR", "cbct": "CBCT"}
DICOM_MODALITIES = {"mr": {"MR"}, "cbct": {"CT"}}  # CBCT series are stored as Modality CT


def intensity_signature(array: np.ndarray, mask: np.ndarray | None = None,
                        percentiles: Sequence[float] = INTENSITY_PERCENTILES) -> dict:
    """What the checks compare, for one volume: dtype, whole-volume range and percentiles (of a strided
    sample), distinct values (of the sample; integer-valued or not), share of HU-like air, and the share of the
    volume a mask covers."""
    flat = array.reshape(-1)
    sample = flat[:: max(1, flat.size // SAMPLE)]
    values = np.unique(sample)
    levels = np.percentile(sample.astype(np.float64), list(percentiles))  # float64: no overflow at float32 max
    distinct = int(values.size)
    signature = {"dtype": str(array.dtype), "min": float(flat.min()), "max": float(flat.max()),
                 "percentiles": {f"{q:g}": float(v) for q, v in zip(percentiles, levels)},
                 "distinct_values": distinct,
                 "integral": bool(np.all(np.isfinite(values)) and np.all(values == np.round(values))),
                 "air_fraction": float(np.count_nonzero(flat <= AIR_HU) / flat.size)}
    if distinct <= LABEL_MAX_DISTINCT:
        signature["values"] = [float(v) for v in values]
    if mask is not None:
        signature["mask_fraction"] = float(np.count_nonzero(mask) / mask.size)
    return signature


def source_problems(case: Case, expected: dict, trained_on: str | None = None) -> list[str]:
    """The case's source against `expected` (a plans' source_signature, or what a dataset implies): [] when
    it looks like a source of that modality, else one line per reason. `trained_on` ends the modality
    lines ('the model was trained on MR')."""
    return _findings(case, expected, trained_on)[0]


def _where(case: Case) -> str:
    source = case.source_path
    where = f"folder {source.name}/" if source.is_dir() else f"file {source.name}"
    return f"case {case.name}: {where}"


def _findings(case: Case, expected: dict, trained_on: str | None = None) -> tuple[list[str], dict | None]:
    """(problems, the source's intensity signature; None when a DICOM tag or a cast problem settled it)."""
    modality = expected["modality"]
    name = MODALITY_NAMES.get(modality, modality)
    trained_on = trained_on or f"the model was trained on {name}"
    where = _where(case)
    if case.source_path.is_dir():
        from dgcf_auto.dicomio import open_series

        tag = open_series(case.source_path, case.name, case.series_uids).modality
        if tag in {"MR", "CT"} and tag not in DICOM_MODALITIES.get(modality, {tag}):
            return [f"{where}: DICOM Modality is {tag}; {trained_on}"], None
    image = read_image(case.source_path, case.name, case.series_uids)
    array = sitk.GetArrayViewFromImage(image)
    mask = None
    if case.mask is not None:
        # a copy: the image is not kept
        mask = sitk.GetArrayFromImage(read_image(case.mask, case.name, case.series_uids))
    signature = intensity_signature(array, mask, intensity_rule(expected)["percentiles"])
    problems = []
    if cast := cast_problem(array, signature, training_range(expected)):
        problems.append(f"{where}: {cast}")
    elif outside := range_problem(signature, expected):
        problems.append(f"{where}: {outside}")
    if label := _label_problem(signature, expected):
        problems.append(f"{where}: {label}")
    elif other := _modality_problem(signature, expected, trained_on):
        problems.append(f"{where}: {other}")
    if spacing := spacing_problem(image.GetSpacing(), expected.get("spacing_mm")):
        problems.append(f"{where}: {spacing}")
    if case.mask is not None and (coverage := _mask_problem(signature, expected, case)):
        problems.append(f"case {case.name}: file {case.mask.name}: {coverage}")
    return problems, (None if cast else signature)


def intensity_rule(expected: dict) -> dict:
    """The plans' rule for 'far outside the training range' (plans written before it: `INTENSITY_RULE`)."""
    return {**INTENSITY_RULE, **(expected.get("intensity_rule") or {})}


def training_range(expected: dict) -> tuple[float, float] | None:
    """[lowest minimum, highest maximum] of the training sources, or None when the plans do not say."""
    if not expected.get("volume_min") or not expected.get("volume_max"):
        return None
    return float(expected["volume_min"][0]), float(expected["volume_max"][1])


def _training_words(span: tuple[float, float] | None) -> str:
    return f"; the training sources ranged {span[0]:.6g} to {span[1]:.6g}" if span else ""


def cast_problem(array: np.ndarray, signature: dict, span: tuple[float, float] | None) -> str | None:
    """Voxels float32 cannot carry (|value| > 2**24), or that become infinite when cast to float32, in words."""
    if max(abs(signature["min"]), abs(signature["max"])) <= CAST_SAFE_MAGNITUDE:
        return None
    beyond = int(np.count_nonzero((array > CAST_SAFE_MAGNITUDE) | (array < -CAST_SAFE_MAGNITUDE)))
    infinite = ""
    if array.dtype.kind == "f" and array.dtype.itemsize > 4:
        limit = float(np.finfo(np.float32).max)
        count = int(np.count_nonzero((array > limit) | (array < -limit)))
        infinite = f", {count} of them infinite once cast to float32" if count else ""
    return (f"{beyond} voxel{'s' if beyond != 1 else ''} beyond +-{CAST_SAFE_MAGNITUDE:.0f} (range "
            f"{signature['min']:.6g} to {signature['max']:.6g} in {signature['dtype']}{infinite}), more than float32 "
            f"carries exactly; not image data{_training_words(span)}")


def range_problem(signature: dict, expected: dict, span: tuple[float, float] | None = None,
                  what: str = "the training range") -> str | None:
    """The volume's percentiles against the training range (or `span`) by `intensity_rule`, in words."""
    span = span or training_range(expected)
    if span is None:
        return None
    rule = intensity_rule(expected)
    (q_low, q_high), factor = rule["percentiles"], float(rule["width_factor"])
    low, high = signature["percentiles"][f"{q_low:g}"], signature["percentiles"][f"{q_high:g}"]
    width = span[1] - span[0]
    allowed = (span[0] - factor * width, span[1] + factor * width)
    if allowed[0] <= low and high <= allowed[1]:
        return None
    return (f"intensities p{q_low:g}-p{q_high:g} {low:.6g} to {high:.6g} lie far outside {what} "
            f"{span[0]:.6g} to {span[1]:.6g} (accepted: {allowed[0]:.6g} to {allowed[1]:.6g}, {factor:g}x its width "
            f"beyond it); wrong units or a corrupt file?")


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
    list of what was forced ({case, reason}) for the run's record. Without a training range in `expected`
    (plan time), each source's intensities are checked against the dataset's median case."""
    findings = [(case, *_findings(case, expected, trained_on)) for case in cases]
    signatures = [s for _, _, s in findings if s is not None]
    if training_range(expected) is None and len(signatures) >= DATASET_RANGE_MIN_CASES:
        span = (float(np.median([s["min"] for s in signatures])), float(np.median([s["max"] for s in signatures])))
        for case, problems, signature in findings:
            if signature is not None:
                if outside := range_problem(signature, expected, span, "the dataset's median case range"):
                    problems.insert(0, f"{_where(case)}: {outside}")
    forced = [{"case": case.name, "reason": problem} for case, problems, _ in findings for problem in problems]
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


__all__ = ["intensity_signature", "source_problems", "spacing_problem", "cast_problem", "range_problem",
           "intensity_rule", "training_range", "check_sources", "dataset_expectation"]
