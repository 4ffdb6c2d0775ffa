"""Evaluate a folder of sCTs against reference CTs: match cases, check grids, compute metrics, write a summary.

Reference folder: SynthRAD2023 case folders (`<case>/ct.nii.gz` or a DICOM folder `<case>/ct/`, with `mask`
and `mr`/`cbct` used when present) and/or flat files `<case>.nii.gz` (or DICOM folders `<case>/`). Prediction
(and mask) folder: `<case>.{nii.gz,nii,mha}`.
Every case's files are checked (readable, same grid) before any metric is computed, so a bad input fails
in seconds, lists every problem, and leaves no summary behind.

The per-case result folders of a run (the figure folder, `dose/` beside the summary) are written into temporary
folders and replace the old ones as a whole (`atomic.atomic_folder`) just before the summary is written, so no
file of an earlier or killed run survives beside a new summary.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dgcf_auto.atomic import atomic_folder, check_output_file, check_writable, write_json
from dgcf_auto.dataset.validation import check_image_file, direction_problem
from dgcf_auto.dicomio import is_dicom_folder
from dgcf_auto.errors import DGCFError, DGCFInputErrors
from dgcf_auto.evaluation.dose import DOSE_PREFIXES
from dgcf_auto.evaluation.metrics import summarize
from dgcf_auto.evaluation.profiles import DEFAULT_PROFILE, Profile, get_profile
from dgcf_auto.evaluation.scorers import DoseScorer, EvaluationOptions, Scorer, SegScoreScorer
from dgcf_auto.evaluation.units import metric_header
from dgcf_auto.imageio import (
    IMAGE_SUFFIXES,
    find_image,
    geometry_mismatch,
    image_suffix,
    read_header,
    read_image,
    strip_suffix,
)
from dgcf_auto.log import get_logger
from dgcf_auto.options import apply_keywords, with_option_keywords
from dgcf_auto.paths import DEFAULT_PLANS
from dgcf_auto.schema import finite_or_none
from dgcf_auto.workers import map_cases

log = get_logger(__name__)

SOURCE_STEMS = ("mr", "cbct")
DEFINITIONS = "what each metric computes: see \"profile\" and documentation/evaluation.md"


@dataclass
class EvalCase:
    name: str
    ct: Path
    sct: Path | None = None
    mask: Path | None = None
    source: Path | None = None

    @property
    def sct_path(self) -> Path:
        """`sct` once the case is matched to its prediction (every case checked or scored)."""
        if self.sct is None:
            raise DGCFError(f"case {self.name}: no prediction")
        return self.sct


def one_image(folder: Path, stem: str, case: str) -> Path | None:
    found = find_image(folder, stem)
    if len(found) > 1:
        raise DGCFError(f"case {case}: several files for '{stem}' in {folder} ({', '.join(p.name for p in found)})")
    return found[0] if found else None


def flat_images(folder: Path) -> dict[str, Path]:
    """{case: file} of `<case>.{nii.gz,nii,mha}` (or a DICOM series folder `<case>/`, as
    `dgcf_predict --output_format dicom` writes) directly in `folder`; a DGCFError on duplicates."""
    images: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if ((path.is_file() and image_suffix(path)) or _dicom_series_folder(path)) and not path.name.startswith("."):
            case = strip_suffix(path)
            if case in images:
                raise DGCFError(f"case {case}: several files in {folder} ({images[case].name}, {path.name})")
            images[case] = path
    return images


def _dicom_series_folder(path: Path) -> bool:
    """A DICOM folder that is not a case folder (a case folder may hold an RTSTRUCT beside its ct.nii.gz)."""
    return is_dicom_folder(path) and not any(image_suffix(p) for p in path.iterdir() if p.is_file())


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


def match_cases(ref_dir, pred_dir, mask_dir=None, warn=None, reference: list[EvalCase] | None = None,
                missing: list[str] | None = None) -> list[EvalCase]:
    """Reference cases that have a prediction; warns about the others; a DGCFError when none match.

    `reference`: the reference cases themselves (instead of reading `ref_dir`); `missing` is filled with the
    names of reference cases that have no prediction.
    """
    warn = warn or log.warning
    refs = {c.name: c for c in reference} if reference is not None else find_reference_cases(ref_dir)
    preds = flat_images(_check_folder(pred_dir, "prediction"))
    if not preds:
        raise DGCFError(f"prediction folder {pred_dir}: no images (expected <case>{{{','.join(IMAGE_SUFFIXES)}}})")
    common = [name for name in refs if name in preds]
    if not common:
        raise DGCFError(f"no case in {pred_dir} matches a reference case in {ref_dir or 'the split'} "
                        f"(references: {_names(refs)}; predictions: {_names(preds)})")
    if absent := [n for n in refs if n not in preds]:
        warn(f"{len(absent)} reference case(s) without prediction, not evaluated: {_names(absent)}")
        if missing is not None:
            missing.extend(absent)
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
    """Reference/mask header problems raise, all at once. Their voxels, and a prediction, get the checks the
    inputs get (declared size, complete voxel block, finite, orthonormal direction), a prediction also the
    CT's grid; such a case is not scored: returns {case: why} for those."""
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
        # The reference's voxels get the input checks too (NaN/inf would be read as 0 and change the MAE).
        problem = next((p for path, is_mask in ((case.ct, False), (case.mask, True)) if path is not None
                        and (p := check_image_file(path, f"case {case.name}: file {path.name}", is_mask)[1])), None)
        if problem:
            unusable[case.name] = problem
            continue
        reader, problem = check_image_file(case.sct_path, f"case {case.name}: file {case.sct_path.name}")
        if reader is not None and (diff := geometry_mismatch(ref, reader)):
            problem = f"case {case.name}: file {case.sct_path.name}: not on the grid of {case.ct.name} ({diff})"
        if problem:
            unusable[case.name] = problem
    if problems:
        raise DGCFInputErrors(problems)
    return unusable


def _evaluate_one(job: tuple[EvalCase, str, Path | None, str | None]) -> dict:
    """Metrics of one case under a profile (a worker process runs this)."""
    case, profile_name, png_dir, device = job
    ct = read_image(case.ct, case.name)
    sct = read_image(case.sct_path, case.name)
    mask, mask_arr = None, None
    if case.mask is not None:
        mask = read_image(case.mask, case.name)
        mask_arr = sitk.GetArrayFromImage(mask) > 0
        if not mask_arr.any():
            raise DGCFError(f"case {case.name}: file {case.mask.name}: the mask is empty")
    ct_arr = sitk.GetArrayFromImage(ct).astype(np.float32)
    sct_arr = sitk.GetArrayFromImage(sct).astype(np.float32)
    try:
        metrics = get_profile(profile_name).compute(ct_arr, sct_arr, mask_arr, device)
    except ValueError as exc:  # e.g. fewer than 7 voxels along an axis for SSIM
        raise DGCFError(f"case {case.name}: file {case.sct_path.name}: {exc}") from None
    if png_dir is not None:
        from dgcf_auto.figures import save_case_figure

        source = read_image(case.source, case.name) if case.source is not None else None
        save_case_figure(source, sct, ct, mask, Path(png_dir) / f"{case.name}.png", title=case.name)
    return metrics


def build_summary(cases: list[EvalCase], per_case: dict[str, dict], profile: Profile,
                  missing: Sequence[str] = (), extra: dict | None = None,
                  unusable: dict[str, str] | None = None) -> dict:
    """summary.json's content (its structure lives here only): per case, mean/std/n, what was computed.

    `missing`: reference cases without a prediction (not evaluated; every mean carries its N in "n").
    `unusable`: {case: reason} of predictions that could not be evaluated (corrupt, NaN, wrong grid).
    `extra`: more top-level keys (dataset, split, trainer, segscore settings ...).
    """
    stats = summarize(per_case)
    return {
        "metric_per_case": [
            {"case": c.name, "reference_file": str(c.ct), "prediction_file": str(c.sct),
             "mask_file": str(c.mask) if c.mask else None,
             "metrics": {k: finite_or_none(v) for k, v in per_case[c.name].items()}}
            for c in cases
        ],
        **{key: {k: finite_or_none(v) for k, v in stats[key].items()} for key in ("mean", "std", "n")},
        "num_cases": len(cases),
        "missing_predictions": list(missing),
        "profile": profile.describe(),
        **(extra or {}),
        "definitions": DEFINITIONS,
        "not_evaluated": [{"case": name, "reason": why} for name, why in (unusable or {}).items()],
    }


@with_option_keywords(EvaluationOptions)
def evaluate_folders(ref_dir, pred_dir, output_json, mask_dir=None, options: EvaluationOptions | None = None, *,
                     cases: list[EvalCase] | None = None, extra: dict | None = None, **keywords) -> dict:
    """Evaluate every matched case, write the summary JSON atomically and return it.

    `cases` (reference cases with CT/mask already resolved, e.g. a split's cases) replaces `ref_dir`.
    `extra`: more top-level keys of the summary. `options` (EvaluationOptions) chooses the scorers: the image
    metric profile, SegScore, dose (files under `<summary folder>/dose/`); each of its fields may also be
    given as a keyword (listed below), replacing that field of `options`.
    """
    (o,) = apply_keywords("evaluate_folders", (options or EvaluationOptions(),), keywords)
    chosen = get_profile(o.profile)
    # before minutes of metrics: the dose extra installed, the summary writable, the figure folder too
    dose_dir = Path(output_json).parent / "dose"
    dose = DoseScorer(o, dose_dir) if o.dose is not None else None
    check_output_file(output_json)
    if o.png_dir is not None:
        check_figure_folder(o.png_dir)
    missing: list[str] = []
    cases = match_cases(ref_dir, pred_dir, mask_dir, reference=cases, missing=missing)
    unusable = check_cases(cases)
    if len(unusable) == len(cases):
        raise DGCFInputErrors(list(unusable.values()))
    cases = [c for c in cases if c.name not in unusable]
    if not any(c.mask for c in cases):
        log.warning("no masks found; metrics cover the whole image")
    segscore = SegScoreScorer(o) if o.segscore else None  # missing weights fail before the long image metrics
    per_case: dict[str, dict] = {c.name: {} for c in cases}
    extra = dict(extra or {})
    if (model := _prediction_model(Path(pred_dir))) is not None:
        extra["prediction_model"] = model
    with contextlib.ExitStack() as outputs:  # each folder swapped in whole when the block succeeds
        new_figures = outputs.enter_context(atomic_folder(o.png_dir)) if o.png_dir is not None else None
        scorers: list[Scorer] = [ImageScorer(chosen.name, new_figures, o.metrics_device or o.device,
                                             o.num_processes)]
        scorers += [segscore] if segscore is not None else []
        if dose is not None:
            dose.out_dir = outputs.enter_context(atomic_folder(dose_dir))
            scorers.append(dose)
        for scorer in scorers:
            for name, values in scorer.score_cases(cases).items():
                per_case[name].update(values)
            if scorer is not scorers[0] and (settings := scorer.settings()) is not None:
                # the profile's own is build_summary's "profile"; dose files named where they end up
                extra[scorer.name] = _moved(settings, dose.out_dir, dose_dir) if scorer is dose else settings
    summary = build_summary(cases, per_case, chosen, missing, extra, unusable)
    if dose is not None:  # scored what could be scored; the command still exits non-zero
        summary["not_evaluated"] += dose.left_out
    write_json(summary, output_json)
    return summary


def check_figure_folder(folder) -> Path:
    """A figure folder is replaced as a whole by a run's figures: refuse one that holds anything else (a
    prediction folder, a summary, the user's files), before any work."""
    folder = check_writable(folder, "figure folder")
    if folder.is_dir():
        other = sorted(p.name for p in folder.iterdir() if not (p.is_file() and p.suffix.lower() == ".png")
                       and not p.name.startswith("."))
        if other:
            raise DGCFError(f"figure folder {folder}: holds {other[0]!r}, which is not a figure; a run replaces "
                            f"this folder with its figures as a whole: give an empty folder or one of figures only")
    return folder


def _moved(record, old: Path, new: Path):
    """`record` (JSON-like) with every path under the temporary folder `old` named under its final place `new`."""
    if isinstance(record, dict):
        return {k: _moved(v, old, new) for k, v in record.items()}
    if isinstance(record, list):
        return [_moved(v, old, new) for v in record]
    if isinstance(record, (str, Path)) and Path(record).is_relative_to(old):
        return str(new / Path(record).relative_to(old))
    return record
@dataclass
class ImageScorer(Scorer):
    """The profile's image metrics (MAE, PSNR, SSIM, ...) in the mask, and the case figure; in workers."""
    profile: str
    png_dir: Path | None = None
    device: str | None = None
    num_processes: int = 1
    name = "profile"

    def settings(self) -> dict:
        return get_profile(self.profile).describe()

    def score(self, case: EvalCase) -> dict:
        return _evaluate_one((case, self.profile, self.png_dir, self.device))

    def score_cases(self, cases: list[EvalCase]) -> dict[str, dict]:
        jobs = [(c, self.profile, self.png_dir, self.device) for c in cases]
        results = map_cases(_evaluate_one, jobs, num_processes=self.num_processes, desc="evaluating")
        return {case.name: result for case, result in zip(cases, results)}


def _prediction_model(pred_dir: Path) -> dict | None:
    """The model that wrote the predictions, from their folder's provenance (dgcf_predict), for the summary:
    dgcf_compare labels methods with it. A broken record only costs the label: a warning, not an error."""
    from dgcf_auto.inference.provenance import model_of, read_provenance

    try:
        record = read_provenance(pred_dir)
    except DGCFError as exc:
        log.warning(f"{exc}; the summary names no model")
        return None
    return model_of(record) if record is not None else None


def format_table(summary: dict, metrics=None) -> str:
    """Plain-text table: one row per case, then mean and std (default columns: the profile's, and segscore)."""
    if metrics is None:
        metrics = list(summary.get("profile", {}).get("metrics", {})) + ["segscore"]
        metrics += [m for m in summary["mean"] if m.startswith(DOSE_PREFIXES)]
    shown = [m for m in metrics if m in summary["mean"]]
    headers = [metric_header(m) for m in shown]  # with the unit: 'mae (HU)', 'psnr (dB)'
    widths = [max(10, len(h)) for h in headers]
    width = max([len("case")] + [len(row["case"]) for row in summary["metric_per_case"]])
    lines = [f"{'case':<{width}}  " + "  ".join(f"{h:>{w}}" for h, w in zip(headers, widths))]

    def fmt(value, w):
        return f"{'n/a':>{w}}" if value is None else f"{value:>{w}.4f}"

    for row in summary["metric_per_case"]:
        lines.append(f"{row['case']:<{width}}  " + "  ".join(fmt(row["metrics"].get(m), w)
                                                            for m, w in zip(shown, widths)))
    for key in ("mean", "std"):
        lines.append(f"{key:<{width}}  " + "  ".join(fmt(summary[key].get(m), w) for m, w in zip(shown, widths)))
    return "\n".join(lines)


def split_reference(dataset, split: str, fold: int | str = 0) -> tuple[Path, list, list[EvalCase]]:
    """(raw dataset folder, the split's dataset cases, their reference CTs and masks as EvalCases)."""
    from dgcf_auto.planning.splits import split_cases

    raw, cases = split_cases(dataset, split, fold)
    if no_ct := [c for c in cases if c.ct is None]:
        raise DGCFError(f"case {no_ct[0].name}: no ct.nii.gz in {no_ct[0].folder}; the reference CT is needed "
                        f"({len(no_ct)} {split} case(s) without one)")
    return raw, cases, [EvalCase(c.name, c.ct, mask=c.mask, source=c.source) for c in cases]


def evaluate_split(dataset, split: str, fold: int | str = 0, trainers: list[str] | None = None,
                   plans: str = DEFAULT_PLANS, configuration: str = "2d", pred_dir=None, output_json=None,
                   profile: str = DEFAULT_PROFILE, **kwargs) -> list[tuple[Path, dict]]:
    """`dgcf_evaluate -d ID --split val|test`: the fold's recorded cases, reference CTs and masks from the raw
    dataset, against each trained model's fold_F/validation|test predictions (or `pred_dir`).

    Writes `summary_<profile>.json` beside each model's predictions (or `output_json`); returns [(path, summary)].
    """
    from dgcf_auto.dataset.discovery import task_of
    from dgcf_auto.paths import (
        SPLIT_FOLDERS,
        model_folder_name,
        results_root,
        split_prediction_folder,
        summary_file_name,
    )

    raw, cases, reference = split_reference(dataset, split, fold)
    if pred_dir is not None:
        targets = [(trainers[0] if trainers else None, Path(pred_dir))]
    else:
        if trainers is None:
            model_root = results_root() / raw.name
            models = model_root.glob(model_folder_name("*", plans, configuration))
            trainers = sorted(p.name.split("__")[0] for p in models
                              if (p / f"fold_{fold}" / SPLIT_FOLDERS[split]).is_dir())
            if not trainers:
                raise DGCFError(f"dataset {raw.name}: no fold_{fold}/{SPLIT_FOLDERS[split]} predictions under "
                                f"{model_root}; run dgcf_predict -d {dataset} -f {fold} --split {split} first")
        targets = [(t, split_prediction_folder(raw.name, t, plans, configuration, fold, split)) for t in trainers]
    if output_json is not None and len(targets) > 1:
        raise DGCFError(f"-o names one summary, but {len(targets)} models are evaluated; leave -o out or give -tr")
    results = []
    for trainer, folder in targets:
        extra = {"dataset": raw.name, "task": task_of(cases), "split": split, "fold": int(fold),
                 "trainer": trainer, "plans": plans, "configuration": configuration}
        target = Path(output_json) if output_json else folder / summary_file_name(profile)
        results.append((target, evaluate_folders(None, folder, target, profile=profile, cases=reference,
                                                 extra=extra, **kwargs)))
    return results
