"""The Multi-Level DINOv3 Perceptual loss, eq. (4) of the paper:

    L_MLDP = reduce_i || phi_i(Y') - phi_i(Y) ||_1        i in layers (the paper's 3, 6, 9, 12)

Each ||.||_1 is a mean absolute error over the layer's feature map. `reduction` "sum" adds the layer terms
as eq. (4) writes; "mean" averages them as the authors' released code does (an effective lambda of 1/4
for four layers). phi(Y) is computed without gradient; phi(Y') keeps its graph so the gradient reaches Y'
through the frozen ViT, whose own parameters never receive one.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from dgcf_auto.errors import DGCFError
from dgcf_auto.losses.registry import LossContext, register_loss
from dgcf_auto.network.dinov3 import FrozenDINOv3

REDUCTIONS = ("sum", "mean")


class MLDPLoss(nn.Module):
    def __init__(self, dinov3: FrozenDINOv3, layers: Sequence[int] = (3, 6, 9, 12), reduction: str = "sum"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise DGCFError(f"MLDP reduction {reduction!r} is not one of {', '.join(REDUCTIONS)}")
        self.dinov3 = dinov3
        self.layers = dinov3._check_layers(layers)
        self.reduction = reduction

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target_features = self.dinov3(target, self.layers, grad=False)
        pred_features = self.dinov3(pred, self.layers, grad=True)
        terms = torch.stack([F.l1_loss(p.float(), t.float()) for p, t in zip(pred_features, target_features)])
        return terms.sum() if self.reduction == "sum" else terms.mean()

    def extra_repr(self) -> str:
        return f"layers={list(self.layers)}, reduction={self.reduction!r}"


@register_loss("mldp", needs_dinov3=True,
               description="eq. (4): L1 between DINOv3 feature maps of sCT and CT at several blocks")
def build_mldp(ctx: LossContext) -> nn.Module:
    ctx.check_options("mldp", {"layers", "reduction"})
    return MLDPLoss(ctx.dinov3, ctx.options.get("layers", (3, 6, 9, 12)), ctx.options.get("reduction", "sum"))
