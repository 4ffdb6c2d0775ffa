"""`dgcf_predict --save_probabilities`: each case's sCT before the way back to int16 HU, and reading it back.

nnU-Net keeps softmax probabilities (`<case>.npz`) and the case's properties (`<case>.pkl`) so that folders can
be ensembled later. An sCT has no probabilities; its counterpart is the normalised prediction on the case's
slice grid (the mean over folds and mirror TTA, float32, the CT window mapped to [-1, 1]), which is what
ensembling must average: averaging before rounding to int16 and before resampling to the original grid.

Per case, beside `<case>.nii.gz`:
- `<case>.npz` (numpy, no pickle): `sct` (S, H, W) float32 normalised slice stack; `background_mask`
  (z, y, x) uint8 on the original grid when voxels outside the body were set to -1000 HU;
- `<case>.json`: the case's preprocessing properties (slice grid, original grid, normalisation values).
Once per folder, `plans.json`: the plans of the model (`restore_ct` reads the CT window and interpolator).
JSON, not pickle: reading a file never runs code.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dgcf_auto.atomic import atomic_path, read_json, write_json
from dgcf_auto.errors import DGCFError
from dgcf_auto.plans import DEFAULT_CONFIGURATION, upgrade_plans
from dgcf_auto.plans_schema import check_plans

PLANS_FILE = "plans.json"
SAVED_VERSION = 1
# What each case adds beside its sCT, for the output-name collision check ({suffix after the case name: what}).
SAVED_OUTPUTS = {".npz": "saved float prediction", ".json": "saved properties"}


@dataclass
class SavedPrediction:
    case: str
    normalised: np.ndarray               # (S, H, W) float32
    properties: dict
    background_mask: np.ndarray | None   # (z, y, x) uint8 or None


def saved_files(folder: Path, case: str) -> tuple[Path, Path]:
    """(`<case>.npz`, `<case>.json`) in `folder`."""
    return Path(folder) / f"{case}.npz", Path(folder) / f"{case}.json"


def write_saved_prediction(folder: Path, case: str, normalised: np.ndarray, properties: dict,
                           background_mask: np.ndarray | None) -> None:
    """Write `<case>.npz` and `<case>.json` atomically (the JSON last: a case with a JSON is complete)."""
    npz, meta = saved_files(folder, case)
    arrays: dict[str, Any] = {"sct": np.ascontiguousarray(normalised, dtype=np.float32)}
    if background_mask is not None:
        arrays["background_mask"] = np.ascontiguousarray(background_mask, dtype=np.uint8)
    with atomic_path(npz, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)
    write_json({"saved_version": SAVED_VERSION, "case": case, "properties": properties}, meta)


def write_folder_plans(folder: Path, plans: dict) -> None:
    write_json(plans, Path(folder) / PLANS_FILE)


def read_folder_plans(folder: Path) -> dict:
    path = Path(folder) / PLANS_FILE
    if not path.is_file():
        raise DGCFError(f"folder {folder}: no {PLANS_FILE}; predict it with dgcf_predict --save_probabilities")
    try:
        plans = read_json(path)
    except ValueError as exc:
        raise DGCFError(f"folder {folder}: {PLANS_FILE} is not valid JSON ({exc})") from None
    if not isinstance(plans, dict) or "configurations" not in plans or "ct_normalization" not in plans:
        raise DGCFError(f"folder {folder}: {PLANS_FILE} is not a dgcf_auto plans file")
    upgrade_plans(plans).setdefault("configuration", DEFAULT_CONFIGURATION)  # saved before configurations
    return check_plans(plans, f"folder {folder}: {PLANS_FILE}", complete=False)


def saved_cases(folder: Path) -> list[str]:
    """Cases with a saved prediction (`<case>.json` beside `<case>.npz`) in `folder`, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DGCFError(f"folder {folder}: not found")
    return sorted(p.name[:-len(".npz")] for p in folder.glob("*.npz")
                  if not p.name.startswith(".") and (folder / f"{p.name[:-len('.npz')]}.json").is_file())


def read_background_mask(folder: Path, case: str) -> np.ndarray | None:
    """Only the background mask of a saved case (the ensemble's check before it writes anything)."""
    npz = saved_files(folder, case)[0]
    try:
        with np.load(npz, allow_pickle=False) as data:
            if "sct" not in data.files:
                raise KeyError("sct")
            return data["background_mask"] if "background_mask" in data.files else None
    except (ValueError, KeyError, OSError, zipfile.BadZipFile) as exc:
        raise DGCFError(f"case {case}: {npz.name} in {folder} is unreadable or not a saved dgcf_predict "
                        f"prediction ({type(exc).__name__})") from None


def read_saved_prediction(folder: Path, case: str) -> SavedPrediction:
    """One case's saved prediction; a missing, truncated or foreign file is one line naming case and file."""
    npz, meta = saved_files(folder, case)
    for path in (npz, meta):
        if not path.is_file():
            raise DGCFError(f"case {case}: {path} is missing; predict {folder} with --save_probabilities")
    try:
        record = read_json(meta)
        properties = record["properties"]
        if record.get("case") != case or not isinstance(properties, dict):
            raise KeyError("case")
        with np.load(npz, allow_pickle=False) as data:
            normalised = data["sct"]
            mask = data["background_mask"] if "background_mask" in data.files else None
    except (ValueError, KeyError, TypeError, OSError, zipfile.BadZipFile) as exc:
        raise DGCFError(f"case {case}: {npz.name}/{meta.name} in {folder} is unreadable or not a saved "
                        f"dgcf_predict prediction ({type(exc).__name__})") from None
    shape = [int(v) for v in properties.get("shape", [])]
    if normalised.dtype != np.float32 or list(normalised.shape) != shape:
        raise DGCFError(f"case {case}: {npz} holds a {normalised.dtype} array of shape {list(normalised.shape)}, "
                        f"but {meta.name} records float32 {shape}")
    if not np.isfinite(normalised).all():
        raise DGCFError(f"case {case}: {npz} holds NaN or infinite values")
    grid = properties["original_geometry"]["size"]
    if mask is not None and list(mask.shape) != [int(v) for v in reversed(grid)]:
        raise DGCFError(f"case {case}: {npz}: background mask of shape {list(mask.shape)} is not on the "
                        f"case's grid {list(reversed(grid))}")
    return SavedPrediction(case, normalised, properties, mask)
