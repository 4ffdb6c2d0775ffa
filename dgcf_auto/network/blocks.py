"""Building blocks of the DGCN: UNet conv block, transposed-conv up block, and the Cross Fusion module.

Cross Fusion is eq. (1)-(3) of the paper, one module per resolution level i:
    (1) F'_DINO = Bilinear(Conv1x1(F_DINO))                 768 -> C channels, H/16 -> the level's size
    (2) F~      = GELU(BN(Conv3x3(F_CNN (+) F'_DINO)))       concat then fuse 2C -> C
    (3) F~~     = F~ + Conv3x3(F~)                           residual refinement
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvBlock(nn.Sequential):
    """UNet's double convolution: (3x3 conv -> BN -> ReLU) x 2. Bias-free convs: BN supplies the shift."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """Decoder level: 2x transposed-conv upsampling, concat with the level's skip input, ConvBlock."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = ConvBlock(out_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


def resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (align_corners=False) to `size`; a no-op when already there."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class DinoProjection(nn.Module):
    """Eq. (1): 1x1 conv of a DINOv3 map to C channels, then bilinear resize to the target level."""

    def __init__(self, dino_channels: int, channels: int):
        super().__init__()
        self.proj = nn.Conv2d(dino_channels, channels, kernel_size=1)

    def forward(self, f_dino: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        # 1x1 conv first, at H/16: cheaper than resizing 768 channels, and the paper's order.
        return resize_to(self.proj(f_dino), size)


class CrossFusion(nn.Module):
    """Eq. (1)-(3): fuse CNN level-i features (C channels) with DINOv3 block-3i features (768 channels)."""

    def __init__(self, channels: int, dino_channels: int = 768):
        super().__init__()
        self.align = DinoProjection(dino_channels, channels)                        # eq. (1)
        self.fuse = nn.Sequential(                                                   # eq. (2)
            nn.Conv2d(2 * channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.GELU(),
        )
        self.refine = nn.Conv2d(channels, channels, 3, padding=1)                    # eq. (3)

    def forward(self, f_cnn: torch.Tensor, f_dino: torch.Tensor) -> torch.Tensor:
        f_dino = self.align(f_dino, f_cnn.shape[-2:]).to(f_cnn.dtype)
        fused = self.fuse(torch.cat([f_cnn, f_dino], dim=1))
        return fused + self.refine(fused)
