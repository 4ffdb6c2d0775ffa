"""Trainer variants for `-tr`: each is one row of the paper's Table 1 / Table 2 we can reproduce.

A variant only fixes the network architecture and the loss weights; everything else (optimiser, schedule,
data) comes from the plans, so the rows differ in exactly what the paper varies.
"""
from __future__ import annotations

from dataclasses import dataclass

from dgcf_auto.errors import DGCFError


@dataclass(frozen=True)
class TrainerVariant:
    name: str
    architecture: str           # a key of dgcf_auto.network's registry
    l1_weight: float | None     # None: take plans["training"]["l1_weight"]
    mldp_weight: float | None   # None: take plans["training"]["mldp_weight"]; 0 switches MLDP off
    paper_row: str


TRAINERS: dict[str, TrainerVariant] = {v.name: v for v in (
    TrainerVariant("DGCFTrainer", "cross_fusion", None, None, "Table 1: DGCN + L_MLDP (the paper's method)"),
    TrainerVariant("DGCFTrainer_L1", "cross_fusion", 1.0, 0.0,
                   "Table 1: DGCN, L1 / Table 2: DGCN (cross fusion)"),
    TrainerVariant("DGCFTrainer_concat_L1", "concat", 1.0, 0.0, "Table 2: DGCN (concat)"),
    TrainerVariant("DGCFTrainer_cnnOnly_L1", "cnn_only", 1.0, 0.0, "Table 2: CNN only (Table 1: UNet, L1)"),
    TrainerVariant("DGCFTrainer_vitOnly_L1", "vit_only", 1.0, 0.0, "Table 2: ViT-B/16 only"),
)}
# Not provided: DGCN + L_VGG (needs ImageNet VGG weights, which we never download) and the other Table 1
# baselines (ResUNet, UNet++, TransUNet, I2I-Mamba), which are other papers' networks.


def get_trainer_variant(name: str) -> TrainerVariant:
    if name not in TRAINERS:
        raise DGCFError(f"unknown trainer '{name}' (-tr); available: {', '.join(TRAINERS)}")
    return TRAINERS[name]


def effective_plans(plans: dict, variant: TrainerVariant, overrides: dict) -> dict:
    """A copy of the plans as this run uses them: the variant's architecture and loss weights, and the
    command-line overrides (epochs, batch size, iterations) written into plans["training"]."""
    import copy

    result = copy.deepcopy(plans)
    result["network"]["architecture"] = variant.architecture
    training = result["training"]
    if variant.l1_weight is not None:
        training["l1_weight"] = variant.l1_weight
    if variant.mldp_weight is not None:
        training["mldp_weight"] = variant.mldp_weight
    for key, value in overrides.items():
        if value is not None:
            training[key] = value
    return result
