"""Masked L1 (nnsyn's SynthRAD2025 loss): mean |sCT - CT| over the voxels inside the body mask only.

Outside the body the CT is air (or couch, or nothing the planning system uses); nnsyn leaves it out of the loss
so the network spends its capacity on the patient. An all-background patch contributes 0 (no voxel counted).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from dgcf_auto.losses.registry import LossContext, register_loss


class MaskedL1Loss(nn.Module):
    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if mask.shape != pred.shape:
            raise ValueError(f"mask {tuple(mask.shape)} and prediction {tuple(pred.shape)} differ in shape")
        inside = (mask > 0).to(torch.float32)
        error = (pred.float() - target.float()).abs() * inside
        return error.sum() / inside.sum().clamp_min(1.0)


@register_loss("masked_l1", needs_mask=True,
               description="mean |Y' - Y| over the body-mask voxels only (nnsyn's masked L1)")
def build_masked_l1(ctx: LossContext) -> nn.Module:
    ctx.check_options("masked_l1", set())
    return MaskedL1Loss()
