"""Release plans (`DGCFReleasePlans.json`, `-pl release`): the authors' preprocessing, fixed, not derived.

Every value is theirs (HiLab-git/DGCF; file and line for each in documentation/plans.md): every stored slice
of the volume stretched to 256 x 256 with bilinear interpolation (`preprocessing/stretch.py`), MR clipped to
the volume's own [p1, p99] and mapped to [-1, 1], CBCT and CT clipped to [-1024, 2000] HU and mapped to
[-1, 1]; at test time the generator's output is mapped back without clipping and resized onto the input's
grid. Only the training values (batch size, epochs, learning rate, iterations) take overrides; the trainer
variant (`-tr ..._release`) sets their optimiser and schedule.
"""
from __future__ import annotations

import math

from dgcf_auto.errors import DGCFError
from dgcf_auto.planning.planner import plan_body_mask
from dgcf_auto.plans import (
    CONFIGURATION_2D,
    KIND_SLICES,
    PLANS_VERSION,
    NetworkPlans,
    TrainingPlans,
    configuration_plans,
)

PLANS_NAME = "DGCFReleasePlans"
DATA_IDENTIFIER = f"{PLANS_NAME}_{CONFIGURATION_2D}"
SLICE_SIZE = [256, 256]                 # base.json preprocess.resize.resize_size
WINDOW_HU = (-1024.0, 2000.0)           # base.json clip_range_A/B, minmax_norm_range_A/B
MR_PERCENTILES = [1.0, 99.0]            # prepost_process.py calculate_ptile(ptile=0.99): 100*(1-p), 100*p
TRAINING_OVERRIDES = ("batch_size", "epochs", "learning_rate", "iterations_per_epoch")
SOURCE = "HiLab-git/DGCF"


def check_overrides(overrides: dict) -> None:
    fixed = sorted(set(overrides) - set(TRAINING_OVERRIDES))
    if fixed:
        raise DGCFError(f"-pl release applies the authors' preprocessing unchanged; it takes no "
                        f"{', '.join('--' + k.replace('_', '-') for k in fixed)} (only "
                        f"{', '.join('--' + k.replace('_', '-') for k in TRAINING_OVERRIDES)})")
    for key in TRAINING_OVERRIDES:
        if key in overrides and not overrides[key] > 0:
            raise DGCFError(f"--{key.replace('_', '-')} must be positive, got {overrides[key]}")


def plan_release(fingerprint: dict, dataset_name: str, overrides: dict | None = None,
                 train_fraction: float = 0.8) -> dict:
    """The release plans dict (same sections as DGCFPlans, so every stage reads it the same way)."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    check_overrides(overrides)
    low, high = WINDOW_HU
    ct_norm = {"clip_low": low, "clip_high": high, "target_range": [-1.0, 1.0], "clip_output": False,
               "derived_from": f"{SOURCE}: CT clipped to [-1024, 2000] HU and mapped to [-1, 1]; the test-time "
                               f"inverse maps [-1, 1] back without clipping"}
    source_norm: dict[str, object]
    if fingerprint["modality"] == "mr":
        source_norm = {"scheme": "percentile_window", "percentiles": list(MR_PERCENTILES), "computed_on": "volume",
                       "derived_from": f"{SOURCE}: MR clipped to the volume's own [p1, p99] (np.percentile over "
                                       f"every voxel, no mask) and mapped to [-1, 1]"}
    else:
        source_norm = {"scheme": "window", "clip_low": low, "clip_high": high,
                       "derived_from": f"{SOURCE}: CBCT clipped to [-1024, 2000] and mapped to [-1, 1]"}
    slices = [int(case["size"][2]) for case in fingerprint["cases"]]
    total_slices = int(sum(slices))
    grid = {"kind": KIND_SLICES, "data_identifier": DATA_IDENTIFIER, "grid": "stretch", "slice_axis": "stored",
            "patch_size": list(SLICE_SIZE), "interpolation": "bilinear", "slice_range": "all",
            "slices_per_case": {"median": float(sorted(slices)[len(slices) // 2]), "total": total_slices},
            "derived_from": f"{SOURCE}: every slice of the volume's stored third voxel axis (no reorientation, "
                            f"no crop to the mask), stretched to 256 x 256 with bilinear interpolation "
                            f"(align_corners False, no antialiasing); back to each slice's own size at test"}
    training = TrainingPlans().to_dict()
    for key in ("batch_size", "epochs", "learning_rate"):
        if key in overrides:
            training[key] = type(training[key])(overrides[key])
    one_pass = max(1, math.ceil(total_slices * train_fraction / training["batch_size"]))
    training["iterations_per_epoch"] = int(overrides.get("iterations_per_epoch", one_pass))
    training["derived_from"] = {"iterations_per_epoch": "one pass over every training slice (theirs: shuffled "
                                                        "slices, batch 4)",
                                "other": "the trainer variant (-tr ..._release) sets their optimiser and schedule"}
    return {"plans_name": PLANS_NAME, "plans_version": PLANS_VERSION, "dataset_name": dataset_name,
            "task": fingerprint["task"],
            "source_modality": fingerprint["modality"], "ct_normalization": ct_norm,
            "source_normalization": source_norm, "body_mask": plan_body_mask(fingerprint),
            "configurations": {CONFIGURATION_2D: grid}, "network": NetworkPlans().to_dict(), "training": training,
            "overrides": {k: overrides[k] for k in TRAINING_OVERRIDES if k in overrides},
            "fingerprint_signature": fingerprint["input_signature"]}


def describe(plans: dict) -> str:
    grid = configuration_plans(plans, CONFIGURATION_2D)
    window = plans["ct_normalization"]
    source = plans["source_normalization"]
    mr = "MR [p1, p99] -> [-1, 1]" if source["scheme"] == "percentile_window" else \
        f"CBCT [{source['clip_low']:g}, {source['clip_high']:g}]"
    return (f"release plans: every stored slice stretched to {grid.patch_size[0]}x{grid.patch_size[1]}, {mr}, "
            f"CT window [{window['clip_low']:g}, {window['clip_high']:g}] HU")
