"""SynthRAD's dose metrics (SynthRAD2023/metrics, functions/dose_metrics.py, class DoseMetrics) on dose arrays.

- `mae_target`: sum |D_ct - D_sct| / Rx / n over the n voxels where D_ct >= 0.9 Rx.
- DVH values as matRad's matRad_calcQualityIndicators computes them (SynthRAD reads them from matRad's `qi`):
  D_x linear interpolation of the ascending sorted structure dose at (100 - x) % (numpy's percentile at
  100 - x), mean, and for the target the conformity number CI = V_target,95^2 / (N_target * V_treated,95) at
  95 % of Rx (matRad's `CI_<Rx>Gy`, which SynthRAD's code reads as "V95"). V95, the fraction of the target
  receiving >= 95 % of Rx, is recorded too.
- `dvh_metric`: |D98_ct - D98_sct + eps| / (D98_ct + eps) + |CI_ct - CI_sct + eps| / (CI_ct + eps)
  + mean over the three OARs with the highest (D5 + Dmean) / 2 on the CT of |D2 error| / D2_ct
  + mean over the same OARs of |Dmean error| / Dmean_ct (eps = 1e-12 inside the absolute value, as there).
- `gamma`: pymedphys' gamma, 2 % / 2 mm, global (2 % of the CT dose maximum). Evaluated as matRad's
  matRad_gammaIndex, whose per-structure pass rate SynthRAD reads for its ROI: the voxels inside the body
  where either dose exceeds the cut-off, each dose against its own maximum as matRad's `doseIx` has it
  (default the dose criterion, 2 %; `cutoff_percent` for another, e.g. 10 %); pass rate in % of them with gamma < 1.
"""
from __future__ import annotations

import math

import numpy as np

MAE_THRESHOLD = 0.9          # fraction of Rx above which mae_target counts voxels
DVH_EPS = 1e-12
NUM_OARS = 3
# lower_percent_dose_cutoff -inf: every voxel gets its gamma as in matRad, a slightly negative (resampled) CT dose
# too; which of them are scored is gamma_voxels' rule
GAMMA = {"dose_percent_threshold": 2.0, "distance_mm_threshold": 2.0, "lower_percent_dose_cutoff": -math.inf,
         "local_gamma": False, "interp_fraction": 10,
         "skip_once_passed": True}  # stops searching a voxel once gamma < 1: the same pass/fail, faster
MATRAD_CUTOFF_PERCENT = GAMMA["dose_percent_threshold"]  # matRad's cut-off is its dose criterion


def mae_target(d_ct: np.ndarray, d_sct: np.ndarray, rx: float) -> float:
    high = d_ct >= MAE_THRESHOLD * rx
    if not high.any():
        return math.nan
    return float(np.sum(np.abs(d_ct[high] - d_sct[high]) / rx) / int(high.sum()))


def dose_at_volume(dose_in_structure: np.ndarray, percent: float) -> float:
    """matRad's DX: the dose that `percent` % of the structure receives at least."""
    return float(np.percentile(dose_in_structure, 100.0 - percent))


def structure_values(dose: np.ndarray, mask: np.ndarray, rx: float, target: bool = False) -> dict[str, float]:
    """D2, D5, D98, Dmean (Gy) of one structure; for the target also V95 and CI95 (matRad's CI_<Rx>Gy)."""
    values = dose[mask].astype(np.float64)
    if values.size == 0:  # the target's V95 and CI95 too, so that dvh_metric gives NaN rather than a KeyError
        return {k: math.nan for k in ("D2", "D5", "D98", "Dmean") + (("V95", "CI95") if target else ())}
    out = {"D2": dose_at_volume(values, 2), "D5": dose_at_volume(values, 5),
           "D98": dose_at_volume(values, 98), "Dmean": float(values.mean())}
    if target:
        in_target = int(np.sum(values >= 0.95 * rx))
        treated = int(np.sum(dose >= 0.95 * rx))
        out["V95"] = in_target / values.size
        out["CI95"] = in_target ** 2 / (values.size * treated) if treated else math.nan
    return out


def _relative(ct: float, sct: float) -> float:
    return abs(ct - sct + DVH_EPS) / (ct + DVH_EPS)


def most_exposed_oars(ct_values: dict[str, dict], num: int = NUM_OARS) -> list[str]:
    """The OARs with the highest (D5 + Dmean) / 2 on the CT dose, as SynthRAD chooses them."""
    score = {name: float(np.mean((v["D5"], v["Dmean"]))) for name, v in ct_values.items()
             if math.isfinite(v["Dmean"])}
    return sorted(score, key=lambda name: score[name], reverse=True)[:num]


def dvh_metric(target_ct: dict, target_sct: dict, oars_ct: dict[str, dict], oars_sct: dict[str, dict]
               ) -> tuple[float, list[str]]:
    """SynthRAD's DVH metric and the OARs it used."""
    if not all(math.isfinite(v) for v in (target_ct["D98"], target_sct["D98"], target_ct["CI95"],
                                          target_sct["CI95"])):
        return math.nan, []
    target = _relative(target_ct["D98"], target_sct["D98"]) + _relative(target_ct["CI95"], target_sct["CI95"])
    used = most_exposed_oars(oars_ct)
    if not used:
        return float(target), used
    d2 = [_relative(oars_ct[o]["D2"], oars_sct[o]["D2"]) for o in used]
    dmean = [_relative(oars_ct[o]["Dmean"], oars_sct[o]["Dmean"]) for o in used]
    return float(target + np.mean(d2) + np.mean(dmean)), used


def gamma_voxels(d_ct: np.ndarray, d_sct: np.ndarray, body: np.ndarray,
                 cutoff_percent: float = MATRAD_CUTOFF_PERCENT) -> np.ndarray:
    """The voxels gamma is scored on: inside the body, either dose above cutoff_percent of its own maximum."""
    fraction = cutoff_percent / 100.0
    above = (d_ct > fraction * float(d_ct.max())) | (d_sct > fraction * float(d_sct.max()))
    return np.asarray(body, dtype=bool) & above


def gamma_pass_rate(d_ct: np.ndarray, d_sct: np.ndarray, spacing_zyx, body: np.ndarray,
                    cutoff_percent: float = MATRAD_CUTOFF_PERCENT) -> float:
    """% of `gamma_voxels` with gamma < 1 (pymedphys.gamma, 2 %/2 mm global, the CT dose the reference)."""
    import pymedphys

    evaluated = gamma_voxels(d_ct, d_sct, body, cutoff_percent)
    if not evaluated.any():
        return math.nan
    axes = tuple(np.arange(n, dtype=np.float64) * s for n, s in zip(d_ct.shape, spacing_zyx))
    gamma = pymedphys.gamma(axes, d_ct.astype(np.float64), axes, d_sct.astype(np.float64), **GAMMA)
    return float(100.0 * np.mean(gamma[evaluated] < 1))
