"""Trainer variants for `-tr`: each is one row of the paper's Table 1 / Table 2.

A variant names a registered network, the loss terms with their weights, and any other plans values its
row needs (`plans_overrides`, merged into the plans); everything else comes from the plans, so the rows
differ in exactly what the paper varies.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

from dgcf_auto.errors import DGCFError
from dgcf_auto.paths import DEFAULT_TRAINER
from dgcf_auto.plans import apply_schedule, deep_update
from dgcf_auto.registry import Registry


@dataclass(frozen=True)
class TrainerVariant:
    name: str
    network: str                       # a key of dgcf_auto.network.registry.NETWORKS
    loss: dict[str, float] | None      # term -> weight; None keeps plans["training"]["loss"]
    paper_row: str
    plans_overrides: dict = field(default_factory=dict)   # nested plans values this row fixes
    # nested plans values that depend on plans["source_modality"] ("mr" | "cbct"), merged after plans_overrides
    modality_overrides: dict = field(default_factory=dict)
    # which validation value picks checkpoint_best.pth unless --best_metric says otherwise (BEST_METRICS)
    best_metric: str = "mae"
    # the configuration kinds (plans.CONFIGURATION_KINDS values) it trains: slice networks take slices and slabs
    kinds: tuple[str, ...] = ("slices", "slabs")


# "mae": lowest validation MAE (HU, body mask); "ssim": highest mean 2D validation SSIM of the normalised
# slices, the authors' choice (train.json record.save_model.best_metric; training/validation.py).
BEST_METRICS = ("mae", "ssim")


L1_ONLY = {"l1": 1.0}
VOLUME = ("volume",)  # trainers of 3d_fullres (training/trainer_3d.py)

# The authors' released code (documentation/model.md): their DGCN, the ViT fed the raw slice repeated to 3
# channels (MR scaled to [0, 2] as their feature_prepare.py does), MLDP averaged over layers, their optimiser
# and schedule.
RELEASE = {"network": {"dinov3": {"input_mode": "release"}},
           "training": {"schedule": "release",
                        "loss_options": {"mldp": {"reduction": "mean"}}}}  # layers stay the plans'
RELEASE_BY_MODALITY = {"mr": {"network": {"options": {"vit_input_offset": 1.0}}},
                       "cbct": {"network": {"options": {"vit_input_offset": 0.0}}}}
RELEASE_CNN_ONLY = {"training": RELEASE["training"]}  # no ViT in the network; its options would be unknown


def _release(name: str, network: str, loss: dict[str, float] | None, row: str) -> TrainerVariant:
    uses_vit = network != "dgcn_release_cnn_only"
    return TrainerVariant(name, network, loss, row, RELEASE if uses_vit else RELEASE_CNN_ONLY,
                          RELEASE_BY_MODALITY if uses_vit else {}, best_metric="ssim")


# The authors' baselines as they trained them: every experiment uses file_config/train.json (the "release"
# schedule) and their define_network re-draws the weights N(0, 0.02) (network.init "release"; TransUNet
# therefore starts from random weights). L1 only (vanillaSL_model: criterionL1 x lambda_L1 1).
RELEASE_BASELINE = {"network": {"init": "release"}, "training": {"schedule": "release"}}


def _release_baseline(name: str, network: str, row: str, options: dict | None = None) -> TrainerVariant:
    overrides = {"network": {**RELEASE_BASELINE["network"], "options": dict(options or {})},
                 "training": RELEASE_BASELINE["training"]}
    return TrainerVariant(name, network, L1_ONLY, row, overrides, best_metric="ssim")


# A lab's own variant: an entry point of the group `dgcf_auto.trainers` naming a TrainerVariant (registry.py).
TRAINERS: Registry[TrainerVariant] = Registry("trainer", "dgcf_auto.trainers")
for _variant in (
    TrainerVariant(DEFAULT_TRAINER, "cross_fusion", None, "Table 1: DGCN + L_MLDP (the paper's method)"),
    TrainerVariant("DGCFTrainer_L1", "cross_fusion", L1_ONLY, "Table 1: DGCN, L1 / Table 2: DGCN (cross fusion)"),
    TrainerVariant("DGCFTrainer_VGG", "cross_fusion", {"l1": 1.0, "vgg": 1.0},
                   "Table 1: DGCN + L_VGG (needs torchvision VGG19 weights: --vgg_weights)"),
    TrainerVariant("DGCFTrainer_SSIM", "cross_fusion", {"l1": 1.0, "ssim": 1.0},
                   "not in the paper: DGCN, L1 + SSIM (the pixel-level alternative the paper names)"),
    TrainerVariant("DGCFTrainer_concat_L1", "concat", L1_ONLY, "Table 2: DGCN (concat)"),
    TrainerVariant("DGCFTrainer_cnnOnly_L1", "cnn_only", L1_ONLY, "Table 2: CNN only (Table 1: UNet, L1)"),
    TrainerVariant("DGCFTrainer_vitOnly_L1", "vit_only", L1_ONLY, "Table 2: ViT-B/16 only"),
    _release("DGCFTrainer_release", "dgcn_release", {"l1": 1.0, "mldp": 1.0},
             "released code, Table 1: DGCN + L_MLDP"),
    _release("DGCFTrainer_release_L1", "dgcn_release", L1_ONLY,
             "released code, Table 1: DGCN, L1 / Table 2: DGCN (cross fusion)"),
    _release("DGCFTrainer_release_VGG", "dgcn_release", {"l1": 1.0, "vgg": 1.0},
             "released code, Table 1: DGCN + L_VGG (needs torchvision VGG19 weights: --vgg_weights)"),
    _release("DGCFTrainer_release_cnnOnly_L1", "dgcn_release_cnn_only", L1_ONLY,
             "released code, Table 2: CNN only (DGCN with its four DINO inputs off)"),
    _release("DGCFTrainer_release_vitOnly_L1", "dgcn_release_vit_only", L1_ONLY,
             "released code, Table 2: ViT-B/16 only (use_cnn=False)"),
    TrainerVariant("DGCFTrainer_resunet_L1", "resunet", L1_ONLY, "Table 1: ResUNet [17], L1"),
    TrainerVariant("DGCFTrainer_unetpp_L1", "unetpp", L1_ONLY, "Table 1: UNet++ [16], L1"),
    TrainerVariant("DGCFTrainer_unetppDS_L1", "unetpp", L1_ONLY,
                   "not in the paper: UNet++ with deep supervision (mean of its four heads), L1",
                   {"network": {"options": {"deep_supervision": True}}}),
    TrainerVariant("DGCFTrainer_unetppResNet34_L1", "unetpp_resnet34", L1_ONLY,
                   "beyond Table 1: UNet++ with a ResNet-34 encoder (smp), IMPACT-Synth's SynthRAD2025 network, L1; "
                   "their recipe runs it as 2.5d"),
    TrainerVariant("DGCFTrainer_transunet_L1", "transunet", L1_ONLY, "Table 1: TransUNet [19] (R50-ViT-B/16), L1"),
    TrainerVariant("DGCFTrainer_i2imamba_L1", "i2i_mamba", L1_ONLY, "Table 1: I2I-Mamba [20], L1"),
    _release_baseline("DGCFTrainer_unet_release", "cnn_only",
                      "released code, Table 1: UNet, L1 (their unet.py: tanh head)", {"tanh_head": True}),
    _release_baseline("DGCFTrainer_resunet_release", "resunet", "released code, Table 1: ResUNet [17], L1"),
    _release_baseline("DGCFTrainer_unetpp_release", "unetpp", "released code, Table 1: UNet++ [16], L1"),
    _release_baseline("DGCFTrainer_transunet_release", "transunet",
                      "released code, Table 1: TransUNet [19], L1, random start (their load_from is never called)"),
    _release_baseline("DGCFTrainer_i2imamba_release", "i2i_mamba",
                      "released code, Table 1: I2I-Mamba [20], L1 (their mambaunet code is missing; ours)"),
    # 3d_fullres (training/trainer_3d.py): the plans' 3D loss (masked L1) and optimiser (nnU-Net's SGD + PolyLR)
    TrainerVariant("DGCFTrainer3d", "plain_unet_3d", None,
                   "beyond Table 1: 3d_fullres, nnU-Net's plain 3D U-Net, masked L1", kinds=VOLUME),
    TrainerVariant("DGCFTrainer3d_resencM", "resenc_unet_3d_m", None,
                   "beyond Table 1: 3d_fullres, nnU-Net ResEnc M, masked L1", kinds=VOLUME),
    TrainerVariant("DGCFTrainer3d_nnsyn", "resenc_unet_3d_l", {"masked_l1": 1.0},
                   "beyond Table 1: nnsyn's SynthRAD2025 task 1 recipe: 3d_fullres, ResEnc L, masked L1, SGD",
                   kinds=VOLUME),
):
    TRAINERS.register(_variant.name, _variant, description=_variant.paper_row)


def get_trainer_variant(name: str) -> TrainerVariant:
    return TRAINERS.get(name)


def effective_plans(plans: dict, variant: TrainerVariant, overrides: dict) -> dict:
    """A copy of the plans as this run uses them: the variant's network, loss and plans values (a named
    schedule first, so the row's own values win), then the command-line overrides (epochs, batch size,
    iterations) written into plans["training"]."""
    result = copy.deepcopy(plans)
    result["network"]["architecture"] = variant.network
    training = result["training"]
    schedule = variant.plans_overrides.get("training", {}).get("schedule")
    if schedule is not None:
        apply_schedule(training, schedule)
    deep_update(result, variant.plans_overrides)
    modality = result.get("source_modality")  # absent only in hand-made plans: the networks' defaults apply
    if variant.modality_overrides and modality is not None:
        if modality not in variant.modality_overrides:
            raise DGCFError(f"trainer {variant.name} needs plans['source_modality'] to be one of "
                            f"{', '.join(variant.modality_overrides)} (got {modality!r}); re-run planning")
        deep_update(result, variant.modality_overrides[modality])
    if variant.loss is not None:
        training["loss"] = dict(variant.loss)
        for key in ("l1_weight", "mldp_weight"):  # plans written before the loss registry
            training.pop(key, None)
    for key, value in overrides.items():
        if value is not None:
            training[key] = value
    return result
