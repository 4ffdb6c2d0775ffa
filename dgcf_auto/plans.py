"""Typed access to the network and training sections of a plans file, with every default defined once.

The planner writes `NetworkPlans().to_dict()` / `TrainingPlans().to_dict()` (plus its derived values);
everything that reads those sections (trainer, predictor, network and loss builders) goes through
`network_plans(plans)` / `training_plans(plans)`, so a field added here reaches old plans files as its
default. Plans files written before the loss registry (with `l1_weight` / `mldp_weight` / `mldp_layers`)
read as the equivalent `loss` / `loss_options`.

Named optimiser schedules (`TrainingPlans.schedule`) exist because the paper's text and the authors'
released configuration disagree; `SCHEDULES` holds each reading's values, and the plans record which one
a run used.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from dgcf_auto.errors import DGCFError
from dgcf_auto.registry import Registry

DINOV3_INPUT_MODES = ("imagenet", "release")
# How a freshly built network's weights start: "pytorch" (each layer's own default) or "release" (the
# authors' define_network: N(0, 0.02) for every Conv*/Linear weight, zero bias, BatchNorm2d N(1, 0.02) / 0;
# see dgcf_auto/network/initialization.py).
NETWORK_INITS = ("pytorch", "release")

# Named optimiser/schedule readings. "paper": section 3.1 (Adam 2e-4, 100 epochs, no schedule named, so
# constant). Other readings (the authors' released configuration) are added beside it.
SCHEDULES: Registry[dict[str, Any]] = Registry.from_dict("schedule", {
    "paper": {"learning_rate": 2e-4, "adam_betas": [0.9, 0.999], "epochs": 100, "lr_scheduler": None,
              "source": "paper section 3.1: Adam, learning rate 2e-4, batch 4, 100 epochs (no schedule named)"},
    "release": {"learning_rate": 2e-4, "adam_betas": [0.99, 0.999], "epochs": 20,
                "lr_scheduler": {"name": "step", "step_size": 5, "gamma": 0.1},
                "source": "the authors' file_config/train.json: network.lr 2e-4, network.beta1 0.99, "
                          "model.lr_policy 'step', model.n_epochs 20, model.lr_decay_epoch 5 (StepLR, gamma 0.1, "
                          "per epoch)"},
})


@dataclass
class DinoV3Plans:
    model: str = "vit_base_patch16_dinov3"
    layers: list[int] = field(default_factory=lambda: [3, 6, 9, 12])  # 1-based blocks, one per level
    model_kwargs: dict = field(default_factory=dict)                  # timm kwargs (tests: a tiny ViT)
    norm: bool = True             # the ViT's final LayerNorm on each intermediate map
    input_mode: str = "imagenet"  # how a [-1, 1] slice becomes the ViT's RGB input; see FrozenDINOv3


@dataclass
class NetworkPlans:
    architecture: str = "cross_fusion"   # a key of dgcf_auto.network.registry.NETWORKS
    features: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    in_channels: int = 1
    out_channels: int = 1
    dinov3: DinoV3Plans = field(default_factory=DinoV3Plans)
    options: dict = field(default_factory=dict)   # network-specific keyword arguments
    init: str = "pytorch"                         # a NETWORK_INITS value

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainingPlans:
    batch_size: int = 4
    optimizer: str = "adam"
    learning_rate: float = 2e-4
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    epochs: int = 100
    iterations_per_epoch: int | None = None   # None: one pass over the fold's training slices
    schedule: str = "paper"                   # a key of SCHEDULES: which reading the values came from
    lr_scheduler: dict | None = None          # None | {"name": "step", "step_size": epochs, "gamma": g}
    loss: dict[str, float] = field(default_factory=lambda: {"l1": 1.0, "mldp": 1.0})  # term -> weight
    loss_options: dict[str, dict] = field(
        default_factory=lambda: {"mldp": {"layers": [3, 6, 9, 12], "reduction": "sum"}})
    augmentation: bool = False
    foreground_slice_fraction: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _from_dict(cls, values: dict, section: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise DGCFError(f"plans section {section!r} has unknown field(s) {', '.join(unknown)}; "
                        f"known: {', '.join(sorted(known))}")
    return cls(**copy.deepcopy(values))


def network_plans(plans: dict | NetworkPlans) -> NetworkPlans:
    """`plans["network"]` (or a bare network section) as NetworkPlans, defaults filled in."""
    if isinstance(plans, NetworkPlans):
        return plans
    section = dict(plans["network"] if "network" in plans else plans)
    dinov3 = _from_dict(DinoV3Plans, section.pop("dinov3", None) or {}, "network.dinov3")
    if dinov3.input_mode not in DINOV3_INPUT_MODES:
        raise DGCFError(f"network.dinov3.input_mode {dinov3.input_mode!r} is not one of "
                        f"{', '.join(DINOV3_INPUT_MODES)}")
    result = _from_dict(NetworkPlans, section, "network")
    if result.init not in NETWORK_INITS:
        raise DGCFError(f"network.init {result.init!r} is not one of {', '.join(NETWORK_INITS)}")
    result.dinov3 = dinov3
    return result


_LEGACY_LOSS_FIELDS = ("l1_weight", "mldp_weight", "mldp_layers")


def training_plans(plans: dict | TrainingPlans) -> TrainingPlans:
    """`plans["training"]` as TrainingPlans; fields the planner adds for people (derived_from) are skipped."""
    if isinstance(plans, TrainingPlans):
        return plans
    section = {k: v for k, v in plans["training"].items() if k != "derived_from"}
    if any(k in section for k in _LEGACY_LOSS_FIELDS):  # plans written before the loss registry
        loss = {"l1": float(section.pop("l1_weight", 1.0)), "mldp": float(section.pop("mldp_weight", 1.0))}
        layers = section.pop("mldp_layers", [3, 6, 9, 12])
        section.setdefault("loss", {k: v for k, v in loss.items() if v > 0} or {"l1": 0.0})
        section.setdefault("loss_options", {"mldp": {"layers": layers, "reduction": "sum"}})
    result = _from_dict(TrainingPlans, section, "training")
    if result.schedule not in SCHEDULES:
        raise DGCFError(f"training.schedule {result.schedule!r} is not one of {', '.join(SCHEDULES)}")
    return result


def apply_schedule(training: dict, name: str) -> None:
    """Write the named schedule's optimiser values into a plans training section (in place)."""
    values = SCHEDULES.get(name)
    training.update(schedule=name, learning_rate=values["learning_rate"], adam_betas=list(values["adam_betas"]),
                    epochs=values["epochs"], lr_scheduler=copy.deepcopy(values["lr_scheduler"]))


def deep_update(base: dict, updates: dict) -> dict:
    """Merge nested `updates` into `base` in place (dicts merge key by key, everything else replaces)."""
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def source_signature(plans: dict) -> dict:
    """What the model's sources looked like (`dataset.source_checks`). Plans written before the signature
    existed give what their modality and planned spacing imply (the modality's defaults, in-plane spacing)."""
    if plans.get("source_signature"):
        return plans["source_signature"]
    grids = [c.get("inplane_spacing") for c in (plans.get("configurations") or {}).values() if c.get("inplane_spacing")]
    spacing = [float(min(min(g) for g in grids)), float(max(max(g) for g in grids))] if grids else None
    return {"modality": plans.get("source_modality"), "spacing_mm": spacing}
