"""ResUNet, Table 1's [17] (Zhang et al. 2018, "Road extraction by deep residual U-Net"), as the DGCF authors ran it.

The layout is the widely used rishikksh20/ResUnet design that HiLab-git/DGCF `code_network/resunet` follows:
pre-activation residual units (BN -> ReLU -> 3x3 conv, twice, plus a 3x3 conv + BN shortcut), downsampling by
the first conv's stride 2 instead of pooling, a bridge unit at H/8, 2x2 transposed-conv upsampling, and a 1x1
conv + tanh head. `features` are the four widths of the full-resolution level, the two encoder units and the
bridge ([64, 128, 256, 512]: 13,040,705 parameters with 1 input and 1 output channel, as the authors' class).
Input sizes must be multiples of 2 ** (len(features) - 1) = 8.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from dgcf_auto.network.registry import register_network
from dgcf_auto.plans import NetworkPlans


class ResidualUnit(nn.Module):
    """Pre-activation residual unit: (BN -> ReLU -> 3x3 conv) x 2, first conv strided; conv + BN shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_channels), nn.ReLU(),
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
            nn.BatchNorm2d(out_channels), nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
                                      nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class ResUNet(nn.Module):
    """B x in_channels x H x W -> B x out_channels x H x W in (-1, 1); H, W multiples of 2**(levels-1)."""

    def __init__(self, features: Sequence[int] = (64, 128, 256, 512), in_channels: int = 1, out_channels: int = 1):
        super().__init__()
        f = [int(c) for c in features]
        if len(f) < 2:
            raise ValueError(f"ResUNet needs at least 2 feature widths, got {list(features)}")
        self.size_multiple = 2 ** (len(f) - 1)
        # Level 0 has no pre-activation (its input is the image): conv -> BN -> ReLU -> conv, plus a conv skip.
        self.stem = nn.Sequential(nn.Conv2d(in_channels, f[0], 3, padding=1), nn.BatchNorm2d(f[0]), nn.ReLU(),
                                  nn.Conv2d(f[0], f[0], 3, padding=1))
        self.stem_skip = nn.Conv2d(in_channels, f[0], 3, padding=1)
        # Encoder units and the bridge (the last one) all halve the resolution.
        self.down = nn.ModuleList(ResidualUnit(f[i], f[i + 1], stride=2) for i in range(len(f) - 1))
        self.up = nn.ModuleList(nn.ConvTranspose2d(f[i + 1], f[i + 1], 2, stride=2)
                                for i in reversed(range(len(f) - 1)))
        self.decode = nn.ModuleList(ResidualUnit(f[i + 1] + f[i], f[i], stride=1)
                                    for i in reversed(range(len(f) - 1)))
        self.head = nn.Sequential(nn.Conv2d(f[0], out_channels, 1), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % self.size_multiple or x.shape[-1] % self.size_multiple:
            raise ValueError(f"ResUNet input size {tuple(x.shape[-2:])} must be a multiple of {self.size_multiple}")
        skips = [self.stem(x) + self.stem_skip(x)]
        for unit in self.down:
            skips.append(unit(skips[-1]))
        x = skips.pop()
        for up, unit in zip(self.up, self.decode):
            x = unit(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


@register_network("resunet", needs_dinov3=False, size_multiple=lambda plans: 2 ** (len(plans.features) - 1),
                  description="ResUNet [17] as the DGCF authors ran it (Table 1); features = the 4 level widths")
def build_resunet(plans: NetworkPlans, dinov3: None) -> ResUNet:
    return ResUNet(plans.features, plans.in_channels, plans.out_channels, **plans.options)
