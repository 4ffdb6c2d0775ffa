"""The authors' weight initialisation, `network.init: "release"` in the plans.

HiLab-git/DGCF `code_network/__init__.py` `define_network` builds every generator of their framework (UNet,
UNet++, ResUNet, TransUNet, the Mamba UNet) and, in the training phase, calls `init_weights(net,
init_type, init_gain)` with `file_config/base.json` `network.init_type: "normal"`, `init_gain: 0.02`.
`init_weights` is pix2pix's: for every module whose class name contains "Conv" or "Linear" and that has a
`weight`, the weight is drawn from N(0, 0.02) and the bias (if any) set to 0; for every module whose class
name contains "BatchNorm2d", the weight is drawn from N(1, 0.02) and the bias set to 0. Every other module
(GroupNorm, LayerNorm, InstanceNorm, BatchNorm1d, bare parameters such as position embeddings) keeps what
its constructor gave it. Their DGCN (`dinov3Net_model`) is not built by `define_network`; its trainers keep
"pytorch".

Their `code_network/tools/initialization.py` is not in the public snapshot; the rule above is the one in
the same framework's copies (HiLab-git/RAFM and intelland/GLFC, identical `init_weights`), which
`define_network` calls with exactly these arguments.

A network whose building blocks start differently from the authors' classes *outside* this rule (timm's
TransUNet encoder zero-initialises its last GroupNorm per bottleneck and draws its position embedding;
theirs keeps GroupNorm at 1 / 0 and the embedding at zeros) defines `reset_to_authors_constructor_init()`,
called first, so the result is what `define_network` leaves in their class.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from dgcf_auto.errors import DGCFError

RELEASE_INIT_GAIN = 0.02  # file_config/base.json network.init_gain


def authors_normal_init(net: nn.Module, gain: float = RELEASE_INIT_GAIN) -> nn.Module:
    """pix2pix's `init_weights(net, "normal", gain)` by class name, as their define_network applies it."""
    reset = getattr(net, "reset_to_authors_constructor_init", None)
    if callable(reset):
        reset()

    @torch.no_grad()
    def init(module: nn.Module) -> None:
        name = type(module).__name__
        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
        if isinstance(weight, torch.Tensor) and not weight.requires_grad:
            return  # a frozen layer (a held DINOv3) is never re-drawn (their framework's later copy skips these too)
        if weight is not None and ("Conv" in name or "Linear" in name):
            nn.init.normal_(weight, 0.0, gain)
            if bias is not None:
                nn.init.zeros_(bias)
        elif "BatchNorm2d" in name and weight is not None and bias is not None:  # affine=False: nothing to draw
            nn.init.normal_(weight, 1.0, gain)
            nn.init.zeros_(bias)

    net.apply(init)
    return net


def initialise(net: nn.Module, init: str) -> nn.Module:
    """Apply the plans' `network.init` to a freshly built network."""
    if init == "pytorch":
        return net
    if init == "release":
        return authors_normal_init(net)
    raise DGCFError(f"network.init {init!r} is not one of pytorch, release")
