"""Plans (`DGCFPlans.json`): every value derived from the fingerprint by a stated rule, or overridden.

Each derived section carries a `derived_from` note naming the fingerprint values and the rule, so a plans
file explains itself; command-line overrides replace a value and are listed in plans["overrides"].
The rules are documented (with their reasons) in documentation/plans.md.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from dgcf_auto.dataset.source_checks import INTENSITY_RULE
from dgcf_auto.errors import DGCFError
from dgcf_auto.geometry import ORIENTATIONS
from dgcf_auto.paths import DEFAULT_PLANS
from dgcf_auto.planning.plan_3d import plan_3d_fullres
from dgcf_auto.plans import (
    CONFIGURATION_2D,
    CONFIGURATION_3D,
    CONFIGURATION_25D,
    KIND_SLABS,
    KIND_SLICES,
    PLANS_VERSION,
    NetworkPlans,
    TrainingPlans,
    check_slab_size,
    configuration_plans,
)

PLANS_NAME = DEFAULT_PLANS
DATA_IDENTIFIER = f"{PLANS_NAME}_{CONFIGURATION_2D}"

CT_CLIP_LOW = -1024.0
CT_HIGH_PERCENTILE = "99.9"   # of pooled foreground CT
CT_HIGH_ROUND = 500.0         # round up to a multiple of this ...
CT_HIGH_MIN, CT_HIGH_MAX = 1000.0, 3000.0   # ... and keep within these bounds
MR_PERCENTILE, MR_CLIP_MAX = 99.0, 1.0
MAX_PATCH_EDGE = 256          # the paper's slice size: the FOV is sampled with at most this many pixels
FOV_MARGIN_MM = 10.0          # per side, around the largest body bounding box
LPS_AXIS_NAMES = ("sagittal", "coronal", "axial")  # slice axis = LPS axis 0, 1, 2
# In-plane (row, column) LPS axes of each orientation: the first two letters are column, row.
INPLANE_AXES = {"axial": (1, 0), "coronal": (2, 0), "sagittal": (2, 1)}

# Override name -> what it sets; the values are validated in `check_overrides`.
OVERRIDES = ("patch_size", "spacing", "ct_window", "batch_size", "epochs", "learning_rate", "features",
             "iterations_per_epoch", "interpolation", "slab_size", "memory_budget_gb")
SLAB_SIZE = 5   # 2.5d: the predicted slice and two neighbours on each side (IMPACT-Synth's 2.5D input)
INTERPOLATIONS = ("bspline", "linear")


def network_multiples(network: NetworkPlans) -> dict[str, int]:
    """Each registered 2D network's slice-size multiple at these plans' depth (the registry's declaration)."""
    from dgcf_auto.network import NETWORKS

    return {name: spec.size_multiple(replace(network, architecture=name)) for name, spec in NETWORKS.items()
            if spec.spatial_dims == 2}


def size_multiple(network: NetworkPlans) -> int:
    """Patch edges divide by every registered network's multiple, so one set of plans serves every -tr."""
    return math.lcm(*network_multiples(network).values())


def _round_up(value: float, step: float) -> float:
    return math.ceil(value / step - 1e-9) * step


def _slice_axis(pooled: dict) -> str:
    spacing = np.array(pooled["median_spacing_lps"])
    # The coarsest axis is the slice axis; axial wins ties (within 1 %), as in SynthRAD's axial scans.
    coarsest = int(np.argmax(spacing))
    return "axial" if spacing[2] >= 0.99 * spacing[coarsest] else LPS_AXIS_NAMES[coarsest]


def plan_ct_window(pooled_ct: dict, source: str = "CT") -> dict:
    high_value = pooled_ct["percentiles"][CT_HIGH_PERCENTILE]
    high = min(CT_HIGH_MAX, max(CT_HIGH_MIN, _round_up(high_value, CT_HIGH_ROUND)))
    low = CT_CLIP_LOW
    low_value = pooled_ct["percentiles"]["0.5"]
    if low_value < CT_CLIP_LOW:  # only CBCT with a negative offset goes below air; keep all of it
        low = math.floor(low_value / 100.0) * 100.0
    return {"clip_low": low, "clip_high": high, "target_range": [-1.0, 1.0],
            "derived_from": f"clip_low: -1024 HU (air), lower only if pooled foreground {source} p0.5 "
                            f"({low_value:g}) is below it; clip_high: pooled foreground {source} "
                            f"p{CT_HIGH_PERCENTILE} ({high_value:g}) rounded up to {CT_HIGH_ROUND:g} HU, "
                            f"kept in [{CT_HIGH_MIN:g}, {CT_HIGH_MAX:g}]"}


def plan_slice_grid(fingerprint: dict, network: NetworkPlans, overrides: dict) -> dict:
    pooled = fingerprint["pooled"]
    axis = _slice_axis(pooled)
    row_axis, col_axis = INPLANE_AXES[axis]
    spacing_lps = pooled["median_spacing_lps"]
    extent = np.array(pooled["mask_bbox_mm_lps"]["max"])
    fov = np.array([extent[row_axis], extent[col_axis]]) + 2 * FOV_MARGIN_MM
    median_inplane = float(min(spacing_lps[row_axis], spacing_lps[col_axis]))
    multiple = size_multiple(network)
    notes = {"fov_mm": f"largest body-mask bounding box (rows, cols) {extent[row_axis]:.1f} x "
                       f"{extent[col_axis]:.1f} mm + {FOV_MARGIN_MM:g} mm per side"}
    if "spacing" in overrides:
        spacing = float(overrides["spacing"])
        notes["inplane_spacing"] = "override"
    elif "patch_size" in overrides:
        spacing = max(median_inplane, float(np.max(fov / np.array(overrides["patch_size"], float))))
        notes["inplane_spacing"] = ("max(median in-plane spacing, fov / overridden patch_size): the smallest "
                                    "spacing at which the overridden patch still covers the fov")
    else:
        spacing = max(median_inplane, float(fov.max()) / MAX_PATCH_EDGE)
        notes["inplane_spacing"] = (f"max(median in-plane spacing {median_inplane:.4g} mm, largest fov edge "
                                    f"{fov.max():.1f} mm / {MAX_PATCH_EDGE}): native resolution unless the fov "
                                    f"would need more than {MAX_PATCH_EDGE} pixels (the paper's 256)")
    if "patch_size" in overrides:
        patch = [int(v) for v in overrides["patch_size"]]
        notes["patch_size"] = "override"
    else:
        patch = [int(_round_up(f / spacing, multiple)) for f in fov]
        notes["patch_size"] = f"fov / spacing, rounded up to a multiple of {multiple}"
    notes["size_multiple"] = ("lcm of every registered network's input-size multiple at these features: " +
                              ", ".join(f"{k} {v}" for k, v in network_multiples(network).items()))
    slices = [c["mask_bbox_voxels_lps"][LPS_AXIS_NAMES.index(axis)] for c in fingerprint["cases"]]
    return {"kind": KIND_SLICES, "data_identifier": DATA_IDENTIFIER, "slice_axis": axis,
            "orientation": ORIENTATIONS[axis],
            "inplane_spacing": [spacing, spacing], "patch_size": patch, "size_multiple": multiple,
            "slice_spacing": "native", "interpolation": overrides.get("interpolation", "bspline"),
            "fov_mm": fov.tolist(),
            "slices_per_case": {"median": float(np.median(slices)), "total": int(np.sum(slices))},
            "derived_from": notes}


def plan_slab_configuration(overrides: dict) -> dict:
    """2.5d: 2d's grid and arrays (nnU-Net's inherits_from; nothing preprocessed again), each slice fed with its
    neighbours as input channels (`dgcf_auto.slabs`)."""
    size = int(overrides.get("slab_size", SLAB_SIZE))
    return {"kind": KIND_SLABS, "inherits_from": CONFIGURATION_2D, "slab_size": size,
            "derived_from": {"slab_size": "override" if "slab_size" in overrides else
                             f"{SLAB_SIZE}: the slice and {SLAB_SIZE // 2} neighbours on each side (IMPACT-Synth's "
                             f"2.5D input); edges replicate the first and last slice"}}


def plan_source_normalization(fingerprint: dict) -> dict:
    pooled = fingerprint["pooled"]
    if fingerprint["modality"] == "mr":
        return {"scheme": "percentile", "percentile": MR_PERCENTILE, "clip_max": MR_CLIP_MAX,
                "computed_on": "mask",
                "derived_from": "paper: MRI normalised by its own 99th percentile inside the body mask, "
                                f"clipped to [0, {MR_CLIP_MAX:g}] and mapped to [-1, 1]; per-case value in the "
                                f"case properties (dataset median p99 {pooled['source_p99']['median']:.4g})"}
    window = plan_ct_window(pooled["source"], "CBCT")
    return {"scheme": "window", "clip_low": window["clip_low"], "clip_high": window["clip_high"],
            "derived_from": window["derived_from"]}


BODY_THRESHOLD_FRACTION = 0.3  # of the way from air to the median body intensity
MR_AIR, CBCT_AIR_HU = 0.0, -1000.0


def plan_body_mask(fingerprint: dict) -> dict:
    """How prediction finds the body when no mask is given (see inference/body_mask.py)."""
    pooled = fingerprint["pooled"]
    if fingerprint["modality"] == "mr":
        air, median, units = MR_AIR, pooled["source_relative_to_p99"]["percentiles"]["50"], "relative_to_p99"
        where = "pooled median of source / case p99 inside the training masks"
    else:
        air, median, units = CBCT_AIR_HU, pooled["source"]["percentiles"]["50"], "source"
        where = "pooled median source value inside the training masks"
    return {"method": "threshold", "units": units,
            "threshold": air + BODY_THRESHOLD_FRACTION * (median - air),
            "derived_from": f"air ({air:g}) + {BODY_THRESHOLD_FRACTION:g} x ({where} ({median:.4g}) - air); "
                            f"then the largest connected component, holes filled slice by slice"}


def check_overrides(overrides: dict) -> None:
    unknown = set(overrides) - set(OVERRIDES)
    if unknown:
        raise DGCFError(f"unknown plans override(s): {', '.join(sorted(unknown))}")
    features = overrides.get("features", NetworkPlans().features)
    multiple = size_multiple(NetworkPlans(features=[int(f) for f in features]))
    if "patch_size" in overrides:
        patch = overrides["patch_size"]
        if len(patch) != 2 or any(int(p) <= 0 or int(p) % multiple for p in patch):
            raise DGCFError(f"--patch_size {' '.join(map(str, patch))}: give 2 values, each a positive "
                            f"multiple of {multiple} (what every registered network accepts)")
    if "ct_window" in overrides and not overrides["ct_window"][1] > overrides["ct_window"][0]:
        raise DGCFError(f"--ct_window {overrides['ct_window']}: the upper bound must exceed the lower")
    for key in ("spacing", "batch_size", "epochs", "learning_rate", "iterations_per_epoch", "memory_budget_gb"):
        if key in overrides and not overrides[key] > 0:
            raise DGCFError(f"--{key.replace('_', '-')} must be positive, got {overrides[key]}")
    if overrides.get("interpolation", "bspline") not in INTERPOLATIONS:
        raise DGCFError(f"--interpolation must be one of {', '.join(INTERPOLATIONS)}")
    if "features" in overrides and (len(features) < 2 or any(f <= 0 for f in features)):
        raise DGCFError("--features: give at least 2 positive channel counts")
    if "slab_size" in overrides:
        check_slab_size(overrides["slab_size"])


def plan_source_signature(fingerprint: dict) -> dict:
    """What a source given to this model must look like (`dataset.source_checks`): the training sources'
    dtypes, fewest distinct values, range of their minima, HU-like air share, mask share and spacing range."""
    cases = [c["source_signature"] for c in fingerprint["cases"]]
    spacings = np.array([c["spacing"] for c in fingerprint["cases"]], float)

    def span(key):
        values = [c[key] for c in cases if key in c]
        return [float(min(values)), float(max(values))] if values else None

    return {"modality": fingerprint["modality"], "dtypes": sorted({c["dtype"] for c in cases}),
            "distinct_values_min": int(min(c["distinct_values"] for c in cases)),
            "volume_min": span("min"), "volume_max": span("max"), "air_fraction": span("air_fraction"),
            "mask_fraction": span("mask_fraction"), "spacing_mm": [float(spacings.min()), float(spacings.max())],
            "intensity_rule": dict(INTENSITY_RULE),
            "derived_from": "the fingerprint's per-case source_signature and spacing: [lowest, highest] over "
                            "the training cases; sources are checked against it (dataset/source_checks.py); "
                            "intensity_rule: a source whose percentiles lie more than width_factor times the "
                            "width of [volume_min[0], volume_max[1]] beyond that range is refused"}


def plan_experiment(fingerprint: dict, dataset_name: str, overrides: dict | None = None,
                    train_fraction: float = 0.8) -> dict:
    """The plans dict. `train_fraction`: share of cases a fold trains on (for iterations_per_epoch)."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    check_overrides(overrides)
    if "ct" not in fingerprint["pooled"]:
        raise DGCFError("planning needs cases with a CT; the fingerprint has none")
    network = NetworkPlans()
    if "features" in overrides:
        network.features = [int(f) for f in overrides["features"]]
    ct_norm = plan_ct_window(fingerprint["pooled"]["ct"])
    if "ct_window" in overrides:
        ct_norm.update(clip_low=float(overrides["ct_window"][0]), clip_high=float(overrides["ct_window"][1]),
                       derived_from="override")
    grid = plan_slice_grid(fingerprint, network, overrides)

    training = TrainingPlans().to_dict()
    for key in ("batch_size", "epochs", "learning_rate"):
        if key in overrides:
            training[key] = type(training[key])(overrides[key])
    train_slices = grid["slices_per_case"]["total"] * train_fraction
    training["iterations_per_epoch"] = int(overrides.get(
        "iterations_per_epoch", max(1, math.ceil(train_slices / training["batch_size"]))))
    training["derived_from"] = {
        "iterations_per_epoch": "override" if "iterations_per_epoch" in overrides else
        f"one pass over the training slices: ceil({grid['slices_per_case']['total']} slices x train fraction "
        f"{train_fraction:.3g} / batch size {training['batch_size']})",
        "other": "paper section 3.1: Adam 2e-4, batch 4, 100 epochs, L1 + MLDP (lambda 1) on DINOv3 layers "
                 "3/6/9/12, no augmentation; foreground_slice_fraction 0: slices are already cropped to the "
                 "body mask's slice range, so uniform sampling sees body on every slice"}

    return {"plans_name": PLANS_NAME, "plans_version": PLANS_VERSION, "dataset_name": dataset_name,
            "task": fingerprint["task"], "source_modality": fingerprint["modality"], "ct_normalization": ct_norm,
            "source_normalization": plan_source_normalization(fingerprint),
            "body_mask": plan_body_mask(fingerprint),
            "source_signature": plan_source_signature(fingerprint),
            "configurations": {CONFIGURATION_2D: grid, CONFIGURATION_25D: plan_slab_configuration(overrides),
                               CONFIGURATION_3D: plan_3d_fullres(fingerprint, grid["orientation"], grid["slice_axis"],
                                                                 PLANS_NAME, overrides, grid["interpolation"])},
            "network": network.to_dict(), "training": training,
            "overrides": {k: overrides[k] for k in OVERRIDES if k in overrides},
            "fingerprint_signature": fingerprint["input_signature"]}


def preprocessing_signature_fields(plans: dict, configuration: str = CONFIGURATION_2D) -> dict:
    """The parts of the plans that change one configuration's preprocessed arrays (not network or training
    settings, not the notes for people)."""
    def strip(d: dict) -> dict:
        return {k: v for k, v in d.items() if k != "derived_from"}

    return {"ct_normalization": strip(plans["ct_normalization"]),
            "source_normalization": strip(plans["source_normalization"]),
            "configuration": configuration_plans(plans, configuration).grid_fields()}
