"""The pixel L1 term: mean absolute error between sCT and CT in normalised units (eq. 5's L_L1)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dgcf_auto.losses.registry import LossContext, register_loss


class L1Loss(nn.Module):
    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(pred.float(), target.float())


@register_loss("l1", description="mean |Y' - Y| over pixels, eq. (5)'s L_L1")
def build_l1(ctx: LossContext) -> nn.Module:
    return L1Loss()
