"""UNet++, Table 1's [16] (Zhou et al. 2018, "UNet++: a nested U-Net architecture"), as the DGCF authors ran it.

Nodes X(i, j): level i (resolution H / 2**i), column j. Column 0 is the encoder; every other node sees all
earlier nodes of its level plus the 2x upsampled node X(i+1, j-1) below (dense nested skips):

    X(i, 0) = Conv(pool(X(i-1, 0)))                                      post-norm double conv
    X(i, j) = Conv'(cat[Up(X(i+1, j-1)), X(i, 0), ..., X(i, j-1)])     pre-norm double conv, j >= 1

Up is a 4x4 stride-2 transposed convolution (one per node), Conv = (3x3 conv -> BN -> ReLU) x 2 and
Conv' = (BN -> ReLU -> 3x3 conv) x 2, all convs with bias, as in HiLab-git/DGCF `code_network/unet.py`.
`features` are the widths of levels 0..L-1 and the deepest level has twice the last (DGCN's convention), so
the default [64, 128, 256, 512] gives the authors' 64..1024.

Heads are BN -> ReLU -> 3x3 conv -> tanh on X(0, j). Without deep supervision only X(0, L) has one
(47,187,457 parameters at the paper's width). With `deep_supervision` there is one on every X(0, j), j = 1..L
(47,189,572 parameters: the authors' class, which builds all four heads even when it uses one), and the
output is their mean: the generator contract is one image out, so the heads are trained through their
average (UNet++'s "accurate mode" at inference), not by one loss term per head.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from dgcf_auto.network.registry import register_network
from dgcf_auto.plans import NetworkPlans


def double_conv(in_channels: int, out_channels: int, pre_norm: bool) -> nn.Sequential:
    if pre_norm:  # decoder nodes: their input is a concat of already-activated maps
        return nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1),
                             nn.BatchNorm2d(out_channels), nn.ReLU(),
                             nn.Conv2d(out_channels, out_channels, 3, padding=1))
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(),
                         nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU())


class UNetPlusPlus(nn.Module):
    """B x in_channels x H x W -> B x out_channels x H x W in (-1, 1); H, W multiples of 2**len(features)."""

    def __init__(self, features: Sequence[int] = (64, 128, 256, 512), in_channels: int = 1, out_channels: int = 1,
                 deep_supervision: bool = False):
        super().__init__()
        widths = [int(c) for c in features]
        widths.append(2 * widths[-1])
        self.depth = len(widths) - 1           # L: levels with a nested decoder
        self.size_multiple = 2 ** self.depth
        self.deep_supervision = bool(deep_supervision)
        self.pool = nn.MaxPool2d(2)
        self.encoder = nn.ModuleList(double_conv(in_channels if i == 0 else widths[i - 1], widths[i], pre_norm=False)
                                     for i in range(self.depth + 1))
        # Node (i, j), j >= 1, exists for i + j <= L; keys "i_j".
        self.up = nn.ModuleDict()
        self.nodes = nn.ModuleDict()
        for j in range(1, self.depth + 1):
            for i in range(self.depth + 1 - j):
                self.up[f"{i}_{j}"] = nn.ConvTranspose2d(widths[i + 1], widths[i], 4, stride=2, padding=1)
                self.nodes[f"{i}_{j}"] = double_conv((j + 1) * widths[i], widths[i], pre_norm=True)
        head_columns = range(1, self.depth + 1) if self.deep_supervision else [self.depth]
        self.heads = nn.ModuleDict({str(j): nn.Sequential(nn.BatchNorm2d(widths[0]), nn.ReLU(),
                                                          nn.Conv2d(widths[0], out_channels, 3, padding=1), nn.Tanh())
                                    for j in head_columns})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % self.size_multiple or x.shape[-1] % self.size_multiple:
            raise ValueError(f"UNet++ input size {tuple(x.shape[-2:])} must be a multiple of {self.size_multiple}")
        grid: list[list[torch.Tensor]] = []  # grid[i][j] = X(i, j)
        for i, block in enumerate(self.encoder):
            grid.append([block(x if i == 0 else self.pool(grid[i - 1][0]))])
        for j in range(1, self.depth + 1):
            for i in range(self.depth + 1 - j):
                key = f"{i}_{j}"
                grid[i].append(self.nodes[key](torch.cat([self.up[key](grid[i + 1][j - 1]), *grid[i]], dim=1)))
        outputs = [head(grid[0][int(j)]) for j, head in self.heads.items()]
        return outputs[0] if len(outputs) == 1 else torch.stack(outputs).mean(dim=0)


@register_network("unetpp", needs_dinov3=False, size_multiple=lambda plans: 2 ** len(plans.features),
                  description="UNet++ [16] as the DGCF authors ran it (Table 1); options: deep_supervision")
def build_unetpp(plans: NetworkPlans, dinov3: None) -> UNetPlusPlus:
    return UNetPlusPlus(plans.features, plans.in_channels, plans.out_channels, **plans.options)
