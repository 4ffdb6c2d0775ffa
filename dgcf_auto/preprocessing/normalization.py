"""Intensity normalisation, each transform next to its inverse. The only copy in the package.

CT (paper: clip to [-1024, 2000] HU, map to [-1, 1]): `normalize_ct` / `denormalize_ct`, with the window
from plans["ct_normalization"]. The inverse is exact on the clipped range.

Source (plans["source_normalization"]):
- scheme "percentile" (MRI, the paper's "normalised using its 99th percentile"): divide by the volume's own
  99th percentile taken over the voxels inside the body mask (over the whole volume when no mask is given;
  the background would otherwise pull the percentile down), clip to [0, clip_max] and map that range
  linearly to [-1, 1]. With clip_max = 1 the brightest 1 % of body voxels saturate at +1, as in the common
  implementation of the paper's rule; background (0) lands on -1, like air on the CT side.
- scheme "window" (CBCT): clip to the planned [clip_low, clip_high] and map to [-1, 1], like CT.
- scheme "percentile_window" (MRI in the release plans, the authors' code): clip to the volume's own
  [p_low, p_high] percentiles over every voxel (no mask; `np.percentile`, linear) and map that range to
  [-1, 1] (their `calculate_ptile` + `ClipTransform` + `LinearNormalize`, see documentation/plans.md).

Clip first: `source_clip_range(params)` / `ct_window(plans)` are the ranges the normalisations clip to, and
`clip_to_range` applies them to the original voxels BEFORE any resampling (pipeline.py), so an outlier voxel
(metal, a float32 maximum) is already at the range's end when the B-spline spreads it over its neighbourhood.
Clipping commutes with the normalisation's own clip, so clean inputs change only where the spline's
overshoot near clipped voxels differed.

`normalize_source` returns the per-case values (the MR p99) as `params`; they go to the case properties so
that `apply_source_normalization` / `denormalize_source` can redo or undo exactly the same mapping.
"""
from __future__ import annotations

import numpy as np

from dgcf_auto.errors import DGCFError

CT_AIR_HU = -1024.0


def _to_unit(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """[low, high] -> [-1, 1] after clipping, in float32 (centre/half-width form); the last clip keeps the
    float32 rounding at the ends (1.0000006 for some windows) inside [-1, 1]."""
    mid, half = np.float32(0.5 * (low + high)), np.float32(0.5 * (high - low))
    x = np.clip(np.asarray(x, dtype=np.float32), low, high)
    return np.clip((x - mid) / half, -1.0, 1.0).astype(np.float32, copy=False)


def _from_unit(x: np.ndarray, low: float, high: float, *, clip: bool = True) -> np.ndarray:
    mid, half = np.float32(0.5 * (low + high)), np.float32(0.5 * (high - low))
    x = np.asarray(x, dtype=np.float32)
    if clip:
        x = np.clip(x, -1.0, 1.0)
    return (x * half + mid).astype(np.float32, copy=False)


def normalize_ct(hu: np.ndarray, clip_low: float, clip_high: float) -> np.ndarray:
    """HU -> [-1, 1]: clip to [clip_low, clip_high] (the plans' window, `ct_window`), then linear."""
    if not clip_high > clip_low:
        raise DGCFError(f"CT window [{clip_low}, {clip_high}] is empty; clip_high must exceed clip_low")
    return _to_unit(hu, clip_low, clip_high)


def denormalize_ct(x: np.ndarray, clip_low: float, clip_high: float, clip: bool = True) -> np.ndarray:
    """[-1, 1] -> HU; the exact inverse of `normalize_ct` on [clip_low, clip_high].

    Network outputs a little outside [-1, 1] are clipped (`clip=True`) so that sCT stays in the window the
    model was trained on.
    """
    return _from_unit(x, clip_low, clip_high, clip=clip)


def ct_window(plans: dict) -> tuple[float, float]:
    cfg = plans["ct_normalization"]
    return float(cfg["clip_low"]), float(cfg["clip_high"])


def source_normalization_params(arr: np.ndarray, mask: np.ndarray | None, scheme_cfg: dict) -> dict:
    """The per-case values the scheme needs (computed on the ORIGINAL voxels, before any resampling)."""
    scheme = scheme_cfg["scheme"]
    if scheme == "percentile":
        values = arr[mask > 0] if mask is not None and np.any(mask) else arr
        q = float(scheme_cfg.get("percentile", 99.0))
        p = float(np.percentile(values, q))
        if not np.isfinite(p) or p <= 0:
            # A non-positive p99 means an empty or negative-valued MR; dividing would flip or blow up.
            raise DGCFError(f"source {q:g}th percentile is {p:g} (must be > 0); is this an MR image?")
        return {"scheme": "percentile", "percentile": q, "value": p,
                "clip_max": float(scheme_cfg.get("clip_max", 1.0)),
                "computed_on": "mask" if values is not arr else "volume"}
    if scheme == "percentile_window":
        low_q, high_q = (float(q) for q in scheme_cfg["percentiles"])
        low, high = (float(v) for v in np.percentile(arr, [low_q, high_q]))
        if not (np.isfinite(low) and np.isfinite(high) and high > low):
            raise DGCFError(f"source percentiles p{low_q:g} = {low:g} and p{high_q:g} = {high:g} leave no range to "
                            f"normalise; is the image constant?")
        return {"scheme": "percentile_window", "percentiles": [low_q, high_q], "clip_low": low, "clip_high": high,
                "computed_on": "volume"}
    if scheme == "window":
        return {"scheme": "window", "clip_low": float(scheme_cfg["clip_low"]),
                "clip_high": float(scheme_cfg["clip_high"])}
    raise DGCFError(f"unknown source normalisation scheme {scheme!r} "
                    f"(expected 'percentile', 'percentile_window' or 'window')")


def source_clip_range(params: dict) -> tuple[float, float]:
    """The source intensities `apply_source_normalization` maps onto [-1, 1] (everything else is clipped)."""
    if params["scheme"] == "percentile":
        return 0.0, float(params["clip_max"]) * float(params["value"])
    return float(params["clip_low"]), float(params["clip_high"])


def clip_to_range(arr: np.ndarray, low: float, high: float) -> np.ndarray:
    """float32 copy of `arr` clipped to [low, high] before the cast, so a float64 1e300 never overflows it
    (NumPy clips integers against float bounds in float64, which holds every int32 exactly)."""
    return np.clip(np.asarray(arr), low, high).astype(np.float32)


def apply_source_normalization(arr: np.ndarray, params: dict) -> np.ndarray:
    """Map source intensities to [-1, 1] with the values from `source_normalization_params`."""
    if params["scheme"] == "percentile":
        return _to_unit(np.asarray(arr, dtype=np.float32) / np.float32(params["value"]), 0.0, params["clip_max"])
    return _to_unit(arr, params["clip_low"], params["clip_high"])


def denormalize_source(x: np.ndarray, params: dict) -> np.ndarray:
    """[-1, 1] -> source intensities (exact inverse on the unclipped range); for display and checks."""
    if params["scheme"] == "percentile":
        return _from_unit(x, 0.0, params["clip_max"]) * np.float32(params["value"])
    return _from_unit(x, params["clip_low"], params["clip_high"])


def normalize_source(arr: np.ndarray, mask: np.ndarray | None, scheme_cfg: dict) -> tuple[np.ndarray, dict]:
    """(normalised float32 array in [-1, 1], params for the case properties)."""
    params = source_normalization_params(arr, mask, scheme_cfg)
    return apply_source_normalization(arr, params), params
