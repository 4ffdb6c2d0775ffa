"""The Multi-Level DINOv3 Perceptual loss, eq. (4) of the paper:

    L_MLDP = reduce_i || phi_i(Y') - phi_i(Y) ||_1        i in layers (the paper's 3, 6, 9, 12)

Each ||.||_1 is a mean absolute error over the layer's feature map. `reduction` "sum" adds the layer terms
as eq. (4) writes; "mean" averages them as the authors' released code does (an effective lambda of 1/4
for four layers). phi(Y) is computed without gradient; phi(Y') keeps its graph so the gradient reaches Y'
through the frozen ViT, whose own parameters never receive one.

`vit_mode` "train" reproduces a quirk of the authors' code, off by default: their extractor is never put in
eval mode, so Meta's RoPE rescale augmentation is drawn anew in every block of both phi(Y') and phi(Y), and
MLDP(Y, Y) is not 0 (0.007 to 0.013 with the real weights). See FrozenDINOv3 and documentation/model.md.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from dgcf_auto.errors import DGCFError
from dgcf_auto.losses.registry import LossContext, register_loss
from dgcf_auto.network.dinov3 import FrozenDINOv3

REDUCTIONS = ("sum", "mean")
VIT_MODES = ("eval", "train")


class MLDPLoss(nn.Module):
    def __init__(self, dinov3: FrozenDINOv3, layers: Sequence[int] = (3, 6, 9, 12), reduction: str = "sum",
                 vit_mode: str = "eval"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise DGCFError(f"MLDP reduction {reduction!r} is not one of {', '.join(REDUCTIONS)}")
        if vit_mode not in VIT_MODES:
            raise DGCFError(f"MLDP vit_mode {vit_mode!r} is not one of {', '.join(VIT_MODES)}")
        self.rope_train_mode = vit_mode == "train"
        self.dinov3 = dinov3
        self.layers = dinov3._check_layers(layers)
        self.reduction = reduction

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target_features = self.dinov3(target, self.layers, grad=False, rope_train_mode=self.rope_train_mode)
        pred_features = self.dinov3(pred, self.layers, grad=True, rope_train_mode=self.rope_train_mode)
        terms = torch.stack([F.l1_loss(p.float(), t.float()) for p, t in zip(pred_features, target_features)])
        return terms.sum() if self.reduction == "sum" else terms.mean()

    def extra_repr(self) -> str:
        return (f"layers={list(self.layers)}, reduction={self.reduction!r}, "
                f"vit_mode={'train' if self.rope_train_mode else 'eval'!r}")


@register_loss("mldp", needs_dinov3=True,
               description="eq. (4): L1 between DINOv3 feature maps of sCT and CT at several blocks")
def build_mldp(ctx: LossContext) -> nn.Module:
    ctx.check_options("mldp", {"layers", "reduction", "vit_mode"})
    assert ctx.dinov3 is not None, "needs_dinov3: CompositeLoss passes the generator's ViT"
    return MLDPLoss(ctx.dinov3, ctx.options.get("layers", (3, 6, 9, 12)), ctx.options.get("reduction", "sum"),
                    ctx.options.get("vit_mode", "eval"))
