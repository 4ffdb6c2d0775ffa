"""An SSIM loss, 1 - (MS-)SSIM(Y', Y), through pytorch-msssim (differentiable, Gaussian window).

The paper names SSIM-based losses as the usual pixel-level alternative to L1. Images are mapped from
[-1, 1] to [0, 1] (data_range 1), so the SSIM constants match the CT window the slices were normalised
with. `multiscale` uses MS-SSIM, which needs slices larger than (win_size - 1) * 16 pixels per side
(161 for the default 11-pixel window).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from pytorch_msssim import ms_ssim, ssim

from dgcf_auto.errors import DGCFError
from dgcf_auto.losses.registry import LossContext, register_loss


class SSIMLoss(nn.Module):
    def __init__(self, multiscale: bool = False, win_size: int = 11):
        super().__init__()
        if win_size < 3 or win_size % 2 == 0:
            raise DGCFError(f"loss_options.ssim.win_size must be odd and >= 3, got {win_size}")
        self.multiscale, self.win_size = bool(multiscale), int(win_size)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x, y = (pred.float() + 1) / 2, (target.float() + 1) / 2
        if self.multiscale:
            smallest = (self.win_size - 1) * 2 ** 4
            if min(x.shape[-2:]) <= smallest:
                raise DGCFError(f"MS-SSIM loss needs slices larger than {smallest} pixels per side, got "
                                f"{tuple(x.shape[-2:])}; use multiscale false or a smaller win_size")
            return 1 - ms_ssim(x, y, data_range=1.0, win_size=self.win_size)
        return 1 - ssim(x, y, data_range=1.0, win_size=self.win_size)

    def extra_repr(self) -> str:
        return f"multiscale={self.multiscale}, win_size={self.win_size}"


@register_loss("ssim", description="1 - SSIM (or MS-SSIM) on slices mapped to [0, 1], pytorch-msssim")
def build_ssim(ctx: LossContext) -> nn.Module:
    ctx.check_options("ssim", {"multiscale", "win_size"})
    return SSIMLoss(ctx.options.get("multiscale", False), ctx.options.get("win_size", 11))
