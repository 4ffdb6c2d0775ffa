"""The `3d_fullres` configuration, planned by nnU-Net v2's rules (ExperimentPlanner and its ResEnc planners).

From the fingerprint's per-case spacing and body bounding box (in the canonical orientation, numpy order
(slice, row, column), the body crop playing the role of nnU-Net's crop to non-zero):
1. target spacing (`target_spacing`): the median spacing per axis; when the coarsest axis is more than
   ANISOTROPY_THRESHOLD (3) times coarser than the finest other axis AND has fewer than a third of the voxels
   of the smallest other axis, that axis takes the 10th percentile of its spacings instead (kept just above the
   other axes' largest spacing) - nnU-Net's determine_fullres_target_spacing;
2. median shape: each case's body box resampled to the target spacing (round(size x spacing / target)),
   median over cases; the dataset's voxel count = prod(median shape) x cases;
3. patch and topology (`plan_patch_and_batch`): an initial patch with the target spacing's aspect ratio and
   256^3 voxels, clipped to the median shape; `pool_and_conv_props` (nnU-Net's get_pool_and_conv_props) pools
   each axis while its feature map stays >= 2 x 4 voxels and its spacing is within a factor 2 of the finest,
   and pads the patch to a multiple of 2^pools per axis; kernel 3 on an axis once its spacing is within a
   factor 2 of the finest (1 before, so a thick-slice axis is not convolved across early);
4. memory: the network's `compute_conv_feature_map_size(patch)` (dynamic-network-architectures, as nnU-Net's
   static_estimate_VRAM_usage) must stay below the preset's reference value x budget / reference budget;
   while it does not, the axis largest relative to the median shape shrinks by one divisibility step;
5. batch size: round(reference / estimate x 2), capped so that one batch covers at most the preset's share of
   the dataset's voxels (5 % plain, 100 % ResEnc), never below 2.

Presets (`PRESETS`) are nnU-Net's: the plain U-Net (nnUNetPlans, 8 GB) and ResEnc M (8 GB) and L (24 GB);
each gets its own patch, batch and topology in `extra["presets"]`, all from the same preprocessed arrays (as
nnU-Net's ResEnc plans share nnUNetPlans_3d_fullres). `memory_budget_gb` (a plans override) replaces every
preset's budget.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dgcf_auto.errors import DGCFError
from dgcf_auto.plans import CONFIGURATION_3D, KIND_VOLUME, NetworkPlans

ANISOTROPY_THRESHOLD = 3.0
ANISOTROPIC_PERCENTILE = 10.0
INITIAL_PATCH_VOXELS = 256 ** 3
BASE_FEATURES, MAX_FEATURES = 32, 320
MIN_FEATURE_MAP_EDGE = 4
REFERENCE_BATCH, MIN_BATCH = 2, 2
# nnU-Net's SGD + PolyLR (nnUNetTrainer: lr 1e-2, momentum 0.99, Nesterov, weight decay 3e-5, poly 0.9;
# 1000 epochs x 250 iterations), nnsyn's default too. Read by training/trainer_3d.py.
# The loss names the 2d terms with weight 0: a configuration's training section is merged key by key over the
# top-level one, and a zero weight switches a term off.
TRAINING_3D = {"optimizer": "sgd", "learning_rate": 1e-2, "lr_scheduler": {"name": "poly", "exponent": 0.9},
               "epochs": 1000, "iterations_per_epoch": 250, "loss": {"l1": 0.0, "mldp": 0.0, "masked_l1": 1.0},
               "augmentation": False, "foreground_slice_fraction": 0.33}


@dataclass(frozen=True)
class Preset:
    network: str                      # a registered 3D network (network/unet3d.py)
    blocks_encoder: tuple[int, ...]   # per stage (convs for the plain U-Net, residual blocks for ResEnc)
    blocks_decoder: tuple[int, ...]
    reference_value: float            # compute_conv_feature_map_size that fits reference_gb at batch 2
    reference_gb: float
    max_dataset_covered: float        # one batch sees at most this share of the dataset's voxels
    source: str


_RESENC_ENCODER = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)
PRESETS: dict[str, Preset] = {p.network: p for p in (
    Preset("plain_unet_3d", (2,) * 14, (2,) * 13, 560e6, 8.0, 0.05, "nnU-Net v2 ExperimentPlanner (nnUNetPlans)"),
    Preset("resenc_unet_3d_m", _RESENC_ENCODER, (1,) * 12, 680e6, 8.0, 1.0, "nnU-Net v2 nnUNetPlannerResEncM"),
    Preset("resenc_unet_3d_l", _RESENC_ENCODER, (1,) * 12, 2100e6, 24.0, 1.0,
           "nnU-Net v2 nnUNetPlannerResEncL (nnsyn's SynthRAD2025 recipe)"),
)}
DEFAULT_PRESET = "plain_unet_3d"

_LPS_AXIS = {"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}


def numpy_lps_axes(orientation: str) -> list[int]:
    """The LPS axis of each numpy axis (slice, row, column) of an array in `orientation` (e.g. LPS -> [2, 1, 0])."""
    return [_LPS_AXIS[letter] for letter in reversed(orientation.upper())]


def target_spacing(spacings: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Rule 1 of the module docstring. `spacings`, `sizes`: (cases, 3) in numpy axis order."""
    spacings, sizes = np.asarray(spacings, float), np.asarray(sizes, float)
    target = np.percentile(spacings, 50, axis=0)
    median_size = np.percentile(sizes, 50, axis=0)
    coarse = int(np.argmax(target))
    others = [a for a in range(3) if a != coarse]
    max_other_spacing = max(target[a] for a in others)
    anisotropic_spacing = target[coarse] > ANISOTROPY_THRESHOLD * max_other_spacing
    few_voxels = median_size[coarse] * ANISOTROPY_THRESHOLD < min(median_size[a] for a in others)
    if anisotropic_spacing and few_voxels:
        value = float(np.percentile(spacings[:, coarse], ANISOTROPIC_PERCENTILE))
        if value < max_other_spacing:  # never finer than the other axes
            value = max(max_other_spacing, value) + 1e-5
        target[coarse] = value
    return target


def resampled_shape(size, spacing, new_spacing) -> np.ndarray:
    return np.array([int(round(s * a / b)) for s, a, b in zip(size, spacing, new_spacing)])


def _pad_to_multiple(shape, multiple) -> list[int]:
    return [int(math.ceil(s / m) * m) for s, m in zip(shape, multiple)]


def pool_and_conv_props(spacing, patch, min_edge: int = MIN_FEATURE_MAP_EDGE):
    """Rule 3: (pools per axis, pooling strides per stage, conv kernels per stage, padded patch, divisor)."""
    dims = len(spacing)
    current_spacing, current_size = [float(s) for s in spacing], [float(p) for p in patch]
    strides, kernels = [[1] * dims], []
    pools, kernel = [0] * dims, [1] * dims
    while True:
        poolable = [a for a in range(dims) if current_size[a] >= 2 * min_edge]
        if not poolable:
            break
        finest = min(current_spacing[a] for a in poolable)
        poolable = [a for a in poolable if current_spacing[a] / finest < 2]
        # a lone poolable axis needs room for one more halving above the minimum edge
        if not poolable or (len(poolable) == 1 and current_size[poolable[0]] < 3 * min_edge):
            break
        for a in range(dims):
            if kernel[a] != 3 and current_spacing[a] / min(current_spacing) < 2:
                kernel[a] = 3
        stride = [1] * dims
        for a in poolable:
            stride[a] = 2
            pools[a] += 1
            current_spacing[a] *= 2
            current_size[a] = math.ceil(current_size[a] / 2)
        strides.append(stride)
        kernels.append(list(kernel))
    kernels.append([3] * dims)  # the bottleneck
    divisor = [2 ** p for p in pools]
    return pools, strides, kernels, _pad_to_multiple(patch, divisor), divisor


def topology(preset: Preset, strides, kernels) -> tuple[list[int], dict]:
    """(features per stage, network.options) of `preset` for this pooling."""
    stages = len(strides)
    features = [min(MAX_FEATURES, BASE_FEATURES * 2 ** i) for i in range(stages)]
    options = {"kernel_sizes": [list(k) for k in kernels], "strides": [list(s) for s in strides],
               "n_blocks_per_stage": list(preset.blocks_encoder[:stages]),
               "n_conv_per_stage_decoder": list(preset.blocks_decoder[:stages - 1])}
    return features, options


def feature_map_size(preset: Preset, features, options, patch) -> int:
    """What nnU-Net's static_estimate_VRAM_usage returns: the network's compute_conv_feature_map_size(patch)."""
    import torch

    from dgcf_auto.network import build_network

    plans = NetworkPlans(architecture=preset.network, features=list(features), options=copy.deepcopy(options))
    with torch.device("meta"):  # the count is arithmetic on the layers: no weights need to exist
        network = build_network(plans, None, for_checkpoint=True)
    count: Any = network.compute_conv_feature_map_size  # dynamic-network-architectures' own estimate
    return int(count(tuple(int(p) for p in patch)))


def plan_patch_and_batch(spacing, median_shape, dataset_voxels: float, preset: Preset,
                         budget_gb: float | None = None) -> dict:
    """Rules 3-5 for one preset: patch size, batch size, topology and the memory figures behind them."""
    spacing = [float(s) for s in spacing]
    median_shape = [float(s) for s in median_shape]
    budget_gb = float(budget_gb if budget_gb is not None else preset.reference_gb)
    inverse = 1.0 / np.array(spacing)
    initial = [round(v) for v in inverse * (INITIAL_PATCH_VOXELS / np.prod(inverse)) ** (1 / 3)]
    initial = [min(i, m) for i, m in zip(initial, median_shape)]
    _, strides, kernels, patch, divisor = pool_and_conv_props(spacing, initial)
    cache: dict[str, int] = {}

    def estimate(patch, strides, kernels):
        key = f"{patch}_{strides}"
        if key not in cache:
            features, options = topology(preset, strides, kernels)
            cache[key] = feature_map_size(preset, features, options, patch)
        return cache[key]

    reference = preset.reference_value * (budget_gb / preset.reference_gb)
    value = estimate(patch, strides, kernels)
    while value > reference:
        axis = int(np.argsort([p / m for p, m in zip(patch, median_shape)])[-1])
        # step by the divisor of the patch one step smaller, so no valid size is skipped (224 between 256/192)
        smaller = list(patch)
        smaller[axis] -= divisor[axis]
        step = pool_and_conv_props(spacing, smaller)[4][axis]
        patch = list(patch)
        patch[axis] -= step
        _, strides, kernels, patch, divisor = pool_and_conv_props(spacing, patch)
        value = estimate(patch, strides, kernels)
    batch = round(reference / value * REFERENCE_BATCH)
    batch_cap = round(dataset_voxels * preset.max_dataset_covered / np.prod(patch, dtype=np.float64))
    batch = int(max(min(batch, batch_cap), MIN_BATCH))
    features, options = topology(preset, strides, kernels)
    return {"patch_size": [int(p) for p in patch], "batch_size": batch, "features": features, "options": options,
            "memory_budget_gb": budget_gb, "feature_map_size": int(value), "reference_value": float(reference),
            "source": preset.source}


def case_geometry(fingerprint: dict, orientation: str) -> tuple[np.ndarray, np.ndarray]:
    """(spacings, body-box sizes), (cases, 3) in numpy axis order of `orientation`."""
    axes = numpy_lps_axes(orientation)
    spacings = np.array([[c["lps"]["spacing"][a] for a in axes] for c in fingerprint["cases"]], float)
    sizes = np.array([[c["mask_bbox_voxels_lps"][a] for a in axes] for c in fingerprint["cases"]], float)
    return spacings, sizes


def plan_3d_fullres(fingerprint: dict, orientation: str, slice_axis: str, plans_name: str,
                    overrides: dict | None = None, interpolation: str = "bspline") -> dict:
    """The `3d_fullres` configuration section (see the module docstring for each rule)."""
    overrides = overrides or {}
    if not fingerprint.get("cases"):
        raise DGCFError("planning 3d_fullres needs a fingerprint with cases")
    spacings, sizes = case_geometry(fingerprint, orientation)
    if "spacing_3d" in overrides:
        spacing = np.array([float(v) for v in overrides["spacing_3d"]])
        spacing_note = "override"
    else:
        spacing = target_spacing(spacings, sizes)
        spacing_note = (f"median spacing per axis; the coarsest axis takes the p{ANISOTROPIC_PERCENTILE:g} of its "
                        f"spacings when it is > {ANISOTROPY_THRESHOLD:g}x coarser and has < 1/{ANISOTROPY_THRESHOLD:g} "
                        f"of the voxels of the other axes (nnU-Net's determine_fullres_target_spacing)")
    shapes = np.array([resampled_shape(s, sp, spacing) for s, sp in zip(sizes, spacings)])
    median_shape = np.median(shapes, axis=0)
    dataset_voxels = float(np.prod(median_shape, dtype=np.float64) * len(shapes))
    budget = overrides.get("memory_budget_gb")
    presets = {name: plan_patch_and_batch(spacing, median_shape, dataset_voxels, preset, budget)
               for name, preset in PRESETS.items()}
    default = presets[DEFAULT_PRESET]
    return {
        "kind": KIND_VOLUME, "data_identifier": f"{plans_name}_{CONFIGURATION_3D}",
        "slice_axis": slice_axis, "orientation": orientation, "spacing": [float(s) for s in spacing],
        "inplane_spacing": [float(s) for s in spacing[1:]], "patch_size": default["patch_size"],
        "interpolation": interpolation, "grid": "resample", "batch_size": default["batch_size"],
        "network": {"architecture": DEFAULT_PRESET, "features": default["features"],
                    "options": copy.deepcopy(default["options"])},
        "training": copy.deepcopy(TRAINING_3D),
        "extra": {"presets": presets, "median_shape": [float(v) for v in median_shape],
                  "dataset_voxels": dataset_voxels, "memory_budget_gb": budget},
        "derived_from": {
            "spacing": spacing_note,
            "median_shape": "median over cases of the body bounding box resampled to the target spacing",
            "patch_size": "nnU-Net's get_plans_for_configuration: 256^3-voxel patch at the target spacing's aspect "
                          "ratio, clipped to the median shape, shrunk until the network's feature-map size fits "
                          "the memory budget; padded to 2^pools per axis",
            "batch_size": "round(reference / estimate x 2), at most the preset's share of the dataset's voxels "
                          "per batch, at least 2",
            "memory_budget_gb": "override" if budget is not None else "each preset's nnU-Net reference budget",
            "training": "nnU-Net's SGD (lr 1e-2, momentum 0.99, Nesterov), PolyLR 0.9, 1000 x 250 iterations; "
                        "masked L1 (nnsyn)"},
    }


def volume_patch_size(plans: dict) -> list[int]:
    """The patch the resolved plans' 3D network was planned (and trained) with: its preset's."""
    from dgcf_auto.plans import configuration_plans, network_plans

    return apply_preset(plans, configuration_plans(plans), network_plans(plans).architecture)[1]


def apply_preset(plans: dict, configuration, architecture: str) -> tuple[dict, list[int]]:
    """(a copy of `plans` whose network section is `architecture`'s planned topology and whose training batch
    size is that preset's, the preset's patch size). A network without a 3D plan is one clear error."""
    extra = configuration.extra if hasattr(configuration, "extra") else configuration.get("extra", {})
    presets = extra.get("presets", {})
    if architecture not in presets:
        raise DGCFError(f"network {architecture!r} has no 3d_fullres plan (planned presets: "
                        f"{', '.join(sorted(presets)) or 'none'}); 3d_fullres trains a 3D network")
    preset = presets[architecture]
    result = copy.deepcopy(plans)
    result["network"].update(architecture=architecture, features=list(preset["features"]),
                             options=copy.deepcopy(preset["options"]))
    result["training"]["batch_size"] = int(preset["batch_size"])
    return result, list(preset["patch_size"])
