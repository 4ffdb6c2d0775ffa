"""`dgcf_evaluate --dose photon proton`: per case, plan on the CT, recompute on the sCT, metrics and files.

Files per case under `<summary folder>/dose/<case>/`: dose_ct_<modality>.nii.gz and dose_sct_<modality>.nii.gz
(Gy per fraction, on the dose grid, in the planning frame), structures_plan.nii.gz (PTV, OARs and body on
the planning-frame CT grid; bit i = the i-th name of `structures_plan_bits`), dose_<modality>.png (CT dose,
sCT dose, difference, three views, on the CT grid) and dvh_<modality>.png. The reference plan (weights and
CT dose) is cached per case and modality, keyed by the CT file's hash, the planning structures' hash, the
case's Rx and that modality's plan settings (nothing else: a photon-only run reuses what a photon and
proton run planned), so every method compared on the same cases is scored against the same plan. A case
whose structures, Rx or plan fail is listed under `not_evaluated` with its reason; the others are scored.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dgcf_auto.atomic import atomic_folder, write_npy
from dgcf_auto.errors import DGCFError
from dgcf_auto.evaluation.dose import metrics as dm
from dgcf_auto.evaluation.dose.figures import save_dose_figure, save_dvh_figure
from dgcf_auto.evaluation.dose.plan import (
    DoseSettings,
    Planner,
    PlanningCase,
    image_to_masks,
    masks_to_image,
    planning_frame,
    rx_for_case,
)
from dgcf_auto.evaluation.dose.structures import (
    CaseStructures,
    check_structures,
    plan_structures,
    read_structures,
    rtstruct_structures,
    structure_files,
    totalsegmentator_structures,
)
from dgcf_auto.hashing import file_sha256
from dgcf_auto.imageio import read_image, write_image
from dgcf_auto.log import get_logger, progress_bar
from dgcf_auto.workers import map_cases

METRIC_NAMES = ("dose_mae_target", "dvh", "gamma")
DEFINITIONS = {
    "dose_mae_target_<m>": "sum |D_sct - D_ct| / Rx / n over the n CT-grid voxels with D_ct >= 0.9 Rx (dose "
                           "interpolated linearly from the dose grid onto the CT grid, as matRad does)",
    "dvh_<m>": "|dD98|/D98_ct + |dCI95|/CI95_ct of the PTV + mean |dD2|/D2_ct + mean |dDmean|/Dmean_ct of the "
               "3 OARs with the highest (D5 + Dmean)/2 on the CT (SynthRAD DoseMetrics.dvh_metric, eps 1e-12)",
    "gamma_<m>": "% of the dose-grid voxels inside the body where either dose exceeds the cut-off (default matRad's: "
                 "2 % of each dose's own maximum; --gamma_cutoff) with gamma < 1 at 2 %/2 mm global (pymedphys)",
}


@dataclass
class DoseJob:
    case: str
    ct_file: Path
    sct_file: Path
    settings: DoseSettings
    out_dir: Path
    structures_dir: Path | None
    cache_dir: Path | None
    device: str | None = None
    progress: bool = True
    targets: tuple[str, ...] = ()     # this case's target names in order (from the table, else the settings)


def find_structures(job: DoseJob, ct: sitk.Image) -> CaseStructures | str:
    """The case's structures, or one line saying why there are none."""
    files = structure_files(job.case, job.ct_file, job.structures_dir)
    if files is not None:
        return read_structures(job.case, ct, *files)
    if (from_rtstruct := rtstruct_structures(job.case, ct, job.ct_file)) is not None:
        return from_rtstruct
    try:
        return totalsegmentator_structures(job.case, ct, job.device)
    except DGCFError as exc:
        return (f"case {job.case}: no structures for the dose plan (no structures.nii.gz + structures.json in "
                f"{'--structures or ' if job.structures_dir else ''}the case folder, no RTSTRUCT; TotalSegmentator: "
                f"{exc})")


class ReferenceCache:
    """Reference plans on disk: `<dir>/<case>_<modality>_<key>/{weights.npy, dose_ct.nii.gz, key.json}`."""

    def __init__(self, folder: Path | None):
        self.folder = Path(folder) if folder is not None else None

    def _entry(self, case: str, modality: str, key: dict) -> Path:
        if self.folder is None:
            raise ValueError("a ReferenceCache without a folder has no entries")
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return self.folder / f"{case}_{modality}_{digest}"

    def load(self, case: str, modality: str, key: dict, num_bixels: int):
        """(weights, dose) when a verified entry exists, else None."""
        if self.folder is None:
            return None
        entry = self._entry(case, modality, key)
        try:
            if json.loads((entry / "key.json").read_text()) != key:
                return None
            weights = np.load(entry / "weights.npy", allow_pickle=False)
            dose = sitk.ReadImage(str(entry / "dose_ct.nii.gz"))
            values = sitk.GetArrayViewFromImage(dose)
            if weights.shape != (num_bixels,) or not np.isfinite(weights).all() or not np.isfinite(values).all():
                return None
            return weights, dose
        except (OSError, ValueError, RuntimeError):
            return None  # absent or unreadable: planned again and rewritten

    def store(self, case: str, modality: str, key: dict, weights: np.ndarray, dose: sitk.Image) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_folder(self._entry(case, modality, key)) as tmp:
            write_npy(weights, tmp / "weights.npy")
            write_image(dose, tmp / "dose_ct.nii.gz")
            (tmp / "key.json").write_text(json.dumps(key, sort_keys=True))


def on_grid(image: sitk.Image, grid: sitk.Image, interp, default: float) -> sitk.Image:
    return sitk.Resample(image, grid, sitk.Transform(), interp, default, image.GetPixelID())


def masks_digest(masks: dict[str, np.ndarray]) -> str:
    """SHA-256 of named masks (names, shapes and voxels, in order): what the plan optimises on."""
    digest = hashlib.sha256()
    for name, mask in masks.items():
        digest.update(f"{name}:{mask.shape}".encode())
        digest.update(np.packbits(mask.astype(bool)).tobytes())
    return digest.hexdigest()


def structure_values(dose: np.ndarray, masks: dict[str, np.ndarray], rx: float) -> dict[str, dict]:
    return {name: dm.structure_values(dose, mask, rx, target=name == "PTV") for name, mask in masks.items()}


def dose_metrics(d_ct: np.ndarray, d_sct: np.ndarray, masks: dict[str, np.ndarray], rx: float) -> tuple[dict, dict]:
    """({mae, dvh}, {"ct": values, "sct": values, "oars_used": [...]}) of one case and modality."""
    ct_values, sct_values = structure_values(d_ct, masks, rx), structure_values(d_sct, masks, rx)
    oars_ct = {k: v for k, v in ct_values.items() if k != "PTV"}
    oars_sct = {k: v for k, v in sct_values.items() if k != "PTV"}
    dvh, used = dm.dvh_metric(ct_values["PTV"], sct_values["PTV"], oars_ct, oars_sct)
    return ({"dose_mae_target": dm.mae_target(d_ct, d_sct, rx), "dvh": dvh},
            {"ct": ct_values, "sct": sct_values, "oars_used": used})


def planning_case(job: DoseJob, ct: sitk.Image, structures: CaseStructures) -> PlanningCase:
    """CT, PTV, OARs and body of a case in the planning frame."""
    ct_p = planning_frame(sitk.Cast(ct, sitk.sitkFloat32))
    labels_p = planning_frame(masks_to_image(structures.masks, ct), reference=ct, label=True)
    masks_p = CaseStructures(image_to_masks(labels_p, list(structures.masks)), structures.source)
    chosen = plan_structures(job.case, masks_p, sitk.GetArrayFromImage(ct_p), tuple(reversed(ct_p.GetSpacing())),
                             job.targets or job.settings.targets, job.settings.margin_mm)
    return PlanningCase(ct_p, chosen.ptv, chosen.oars, chosen.body, extra=chosen.record)


def body_on_dose_grid(case: PlanningCase, dose: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(on_grid(masks_to_image({"BODY": case.body}, case.ct), dose,
                                          sitk.sitkNearestNeighbor, 0)) > 0


def score(job: DoseJob, case: PlanningCase, modality: str, dose_ct: sitk.Image, dose_sct: sitk.Image,
          record: dict, rx: float) -> dict:
    """{metric_modality: value}: MAE and DVH on the CT grid (dose interpolated linearly, as matRad's resultGUI
    cubes that SynthRAD scores), gamma on the dose grid inside the body; a DGCFError when the plan missed the PTV."""
    d_ct, d_sct = (sitk.GetArrayFromImage(on_grid(sitk.Cast(d, sitk.sitkFloat64), case.ct, sitk.sitkLinear, 0.0))
                   for d in (dose_ct, dose_sct))
    if not (d_ct[case.ptv] >= 0.5 * rx).any():
        raise DGCFError(f"case {job.case}: the automatic {modality} plan gives no PTV voxel half the prescription "
                        f"({rx:g} Gy; {int(case.ptv.sum())} PTV voxels, maximum there "
                        f"{float(d_ct[case.ptv].max()):.3g} Gy)")
    masks = {"PTV": case.ptv, **case.oars}
    values, record["dvh"][modality] = dose_metrics(d_ct, d_sct, masks, rx)
    cutoff = job.settings.gamma_cutoff_percent
    values["gamma"] = dm.gamma_pass_rate(sitk.GetArrayFromImage(dose_ct), sitk.GetArrayFromImage(dose_sct),
                                         tuple(reversed(dose_ct.GetSpacing())), body_on_dose_grid(case, dose_ct),
                                         dm.MATRAD_CUTOFF_PERCENT if cutoff is None else cutoff)
    out = job.out_dir / job.case
    save_dvh_figure(d_ct, d_sct, masks, out / f"dvh_{modality}.png",
                    f"{job.case} {modality} DVH (solid CT, dashed sCT)")
    return {f"{name}_{modality}": value for name, value in values.items()}


def write_doses(job: DoseJob, case: PlanningCase, modality: str, dose_ct: sitk.Image, dose_sct: sitk.Image,
                rx: float) -> dict:
    """The two dose files and the dose PNG (on the CT's own grid); {what: path} (with the DVH PNG `score` draws)."""
    out = job.out_dir / job.case
    files = {"dose_ct": out / f"dose_ct_{modality}.nii.gz", "dose_sct": out / f"dose_sct_{modality}.nii.gz",
             "dose_png": out / f"dose_{modality}.png", "dvh_png": out / f"dvh_{modality}.png"}
    write_image(dose_ct, files["dose_ct"])
    write_image(dose_sct, files["dose_sct"])
    structures = {}
    for name, mask in {"PTV": case.ptv, **case.oars}.items():
        image = sitk.GetImageFromArray(mask.astype(np.uint8))
        image.CopyInformation(case.ct)
        structures[name] = image
    save_dose_figure(case.ct, on_grid(dose_ct, case.ct, sitk.sitkLinear, 0.0),
                     on_grid(dose_sct, case.ct, sitk.sitkLinear, 0.0), structures, rx, files["dose_png"],
                     f"{job.case} {modality}: plan on the CT, recomputed on the sCT")
    return {k: str(v) for k, v in files.items() if k != "dvh_png" or v.is_file()}


def evaluate_case(job: DoseJob) -> dict:
    """{"metrics": {...}, "case": {files, dvh values, structures, "not_evaluated": {modality: reason}}} or
    {"not_evaluated": reason} for the whole case. No problem of one case ever stops the others."""
    settings = job.settings
    stages = ["structures"] + [f"{m}: {s}" for m in settings.modalities for s in ("plan", "sCT dose", "metrics")]
    bar = progress_bar(total=len(stages), desc=f"dose {job.case}", unit="stage", leave=False, disable=not job.progress)
    try:
        bar.set_postfix_str(stages[0])
        try:
            rx, rx_source = rx_for_case(job.case, settings.rx_gy)
            check_structures(job.case, job.ct_file, job.structures_dir)
            ct = read_image(job.ct_file, job.case)
            structures = find_structures(job, ct)
            if isinstance(structures, str):
                return {"not_evaluated": structures}
            case = planning_case(job, ct, structures)
            sct_p = planning_frame(sitk.Cast(read_image(job.sct_file, job.case), sitk.sitkFloat32), reference=ct)
            sct_p.CopyInformation(case.ct)  # checked to be on the CT's grid: drop float rounding of its header
        except DGCFError as exc:
            return {"not_evaluated": str(exc)}
        except Exception as exc:  # e.g. SimpleITK on a damaged structure file: this case only
            return {"not_evaluated": f"case {job.case}: dose structures failed ({type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0][:200] if str(exc) else ''})"}
        bar.update()
        out = job.out_dir / job.case
        out.mkdir(parents=True, exist_ok=True)
        structures_file = out / "structures_plan.nii.gz"
        write_image(masks_to_image({"PTV": case.ptv, **case.oars, "BODY": case.body}, case.ct), structures_file)
        cache = ReferenceCache(job.cache_dir)
        key = {"ct_sha256": file_sha256(job.ct_file),
               "plan_structures_sha256": masks_digest({"PTV": case.ptv, **case.oars, "BODY": case.body})}
        metrics, record = {}, {"structures_source": structures.source, "structure_files": structures.files,
                               **case.extra, "rx_gy": rx, "rx_source": rx_source, "oars": list(case.oars),
                               "dvh": {}, "files": {"structures_plan": str(structures_file)},
                               "structures_plan_bits": ["PTV", *case.oars, "BODY"]}
        for modality in settings.modalities:
            try:
                metrics.update(_evaluate_modality(job, case, modality, sct_p, rx, cache, key, record, bar))
            except DGCFError as exc:
                record.setdefault("not_evaluated", {})[modality] = str(exc)
            except Exception as exc:  # pyRadPlan or pymedphys failing on one case: that case only
                first = str(exc).splitlines()[0][:200] if str(exc) else ""
                record.setdefault("not_evaluated", {})[modality] = (
                    f"case {job.case}: {modality} plan failed ({type(exc).__name__}: {first})")
        return {"metrics": metrics, "case": record}
    finally:
        bar.close()


def _evaluate_modality(job: DoseJob, case: PlanningCase, modality: str, sct_p: sitk.Image, rx: float,
                       cache: ReferenceCache, key: dict, record: dict, bar) -> dict:
    bar.set_postfix_str(f"{modality}: plan")
    planner = Planner(case, modality, job.settings, rx)
    modality_key = {**key, "plan": job.settings.plan_key(modality, rx)}
    cached = cache.load(job.case, modality, modality_key, planner.num_bixels)
    record[f"{modality}_reference"] = "cache" if cached else "planned"
    weights, dose_ct = cached if cached else planner.optimise()
    if not cached:
        cache.store(job.case, modality, modality_key, weights, dose_ct)
    bar.update()
    bar.set_postfix_str(f"{modality}: sCT dose")
    dose_sct = planner.dose(sct_p, weights)
    bar.update()
    bar.set_postfix_str(f"{modality}: metrics")
    values = score(job, case, modality, dose_ct, dose_sct, record, rx)
    record["files"][modality] = write_doses(job, case, modality, dose_ct, dose_sct, rx)
    bar.update()
    return values


def evaluate_dose(cases, settings: DoseSettings, out_dir: Path, structures_dir=None, cache_dir=None,
                  num_processes: int = 1, device: str | None = None, warn=None) -> tuple[dict, dict, list]:
    """({case: dose metrics}, the summary's "dose" entry, [{"case", "reason"} not evaluated]) over the cases
    (EvalCase: name, ct, sct). A case's problem leaves that case (or modality) out with its reason."""
    warn = warn or get_logger(__name__).warning
    if structures_dir is not None and not Path(structures_dir).is_dir():
        raise DGCFError(f"structures folder {structures_dir}: not found")
    table = settings.case_targets or {}
    jobs = [DoseJob(c.name, Path(c.ct), Path(c.sct), settings, Path(out_dir),
                    Path(structures_dir) if structures_dir else None, Path(cache_dir) if cache_dir else None,
                    device, progress=num_processes <= 1, targets=tuple(table.get(c.name, settings.targets)))
            for c in cases]
    per_case, records, not_evaluated = {}, {}, []
    for job, result in zip(jobs, map_cases(evaluate_case, jobs, num_processes=num_processes, desc="dose")):
        if "not_evaluated" in result and "case" not in result:
            warn(result["not_evaluated"])
            records[job.case] = {"not_evaluated": result["not_evaluated"]}
            not_evaluated.append({"case": job.case, "reason": result["not_evaluated"], "part": "dose"})
            continue
        for modality, reason in result["case"].get("not_evaluated", {}).items():
            warn(reason)
            not_evaluated.append({"case": job.case, "reason": reason, "part": f"dose {modality}"})
        per_case[job.case] = {k: (v if math.isfinite(v) else math.nan) for k, v in result["metrics"].items()}
        records[job.case] = result["case"]
    return per_case, {"settings": settings.describe(), "definitions": DEFINITIONS,
                      "reference_cache": str(cache_dir) if cache_dir else None, "cases": records}, not_evaluated
