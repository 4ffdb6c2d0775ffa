"""I2I-Mamba, Table 1's [20] (Atli et al. 2024, "I2I-Mamba: multi-modal medical image synthesis via selective
state space modeling"), following the original icon-lab/I2I-Mamba generator (the DGCF repository's copy is
incomplete).

    encoder   7x7 conv (reflect pad) -> BN -> ReLU at H; two stride-2 3x3 conv -> BN -> ReLU (H/2, H/4)
    bottleneck at H/4, nine blocks: cmMamba, 3 x ResNet block, cmMamba, 3 x ResNet block, cmMamba
    decoder   two stride-2 3x3 transposed convs, each fed [previous, encoder map of that size];
              7x7 conv + tanh on [decoder output, first encoder map]

A cmMamba block (channel-mixed Mamba) runs an SSM over the H/4 x H/4 pixels as a sequence, concatenates the
result with its input and mixes channels with a residual "channel compression" unit (2C -> C), then a
ResNet block. Its SSM layer is the original's latest form: one shared LayerNorm, one Mamba along a clockwise
spiral from the top-left pixel and a second Mamba along the reversed spiral, fused by a 1x1 conv.

`features[:3]` are the three encoder widths ([64, 128, 256] at the paper's width, the default plans' first
three). The original also builds a 12-block ViT-B encoder it never calls (a ResViT leftover, 85,056,000
parameters); ours omits it: 20,470,977 parameters instead of 105,526,977, with identical computation.

The selective scan is pure PyTorch (runs on CPU); on CUDA with the optional `mamba-ssm` package installed, its
fused `selective_scan_fn` kernel is used instead (same arguments, same result; documentation/model.md).
Input sizes must be multiples of 4.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from dgcf_auto.network.registry import register_network
from dgcf_auto.plans import NetworkPlans


# ---------------------------------------------------------------------------------------------------------
# Selective scan: h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t,  y_t = C_t h_t + D u_t,  y *= silu(z)
# ---------------------------------------------------------------------------------------------------------
def linear_recurrence(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """All h_t of h_t = a_t * h_{t-1} + b_t (h_{-1} = 0) along dim -2.

    On CPU a step-by-step loop is the least work; on a GPU, where each step would be a kernel launch, the
    same values come from `parallel_linear_recurrence` in O(log L) tensor operations.
    """
    return parallel_linear_recurrence(a, b) if a.is_cuda else sequential_linear_recurrence(a, b)


def sequential_linear_recurrence(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # unbind, not indexing per step: its backward is one stack instead of L zero-filled full-size gradients
    h, states = torch.zeros_like(b[..., 0, :]), []
    for a_t, b_t in zip(a.unbind(-2), b.unbind(-2)):
        h = a_t * h + b_t
        states.append(h)
    return torch.stack(states, dim=-2)


def parallel_linear_recurrence(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Odd/even pairs are composed into one step of a half-length recurrence, solved recursively; the even
    states then follow from the odd ones. Only products of the a_t are formed (no division, no log), so
    it is as stable as the sequential loop."""
    length = a.shape[-2]
    if length == 1:
        return b
    if length % 2:  # one identity step (a = 1, b = 0) at the end, trimmed afterwards
        a = F.pad(a, (0, 0, 0, 1), value=1.0)
        b = F.pad(b, (0, 0, 0, 1), value=0.0)
    # unbind of a (pairs x 2) view, not strided slices: its backward is one stack, not zero-fill + copy
    a_even, a_odd = a.unflatten(-2, (-1, 2)).unbind(-2)
    b_even, b_odd = b.unflatten(-2, (-1, 2)).unbind(-2)
    h_odd = parallel_linear_recurrence(a_odd * a_even, a_odd * b_even + b_odd)   # h_1, h_3, ...
    h_even = a_even * F.pad(h_odd[..., :-1, :], (0, 0, 1, 0)) + b_even           # h_0, h_2, ...
    return torch.stack([h_even, h_odd], dim=-2).flatten(-3, -2)[..., :length, :]


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Pure-PyTorch selective scan with mamba_ssm's `selective_scan_fn` signature and semantics.

    u, delta, z: batch x E x L; A: E x N; B, C: batch x N x L; D, delta_bias: E. Computed in float32,
    returned in u's dtype.
    """
    dtype = u.dtype
    u, delta, A, B, C = u.float(), delta.float(), A.float(), B.float(), C.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    decay = torch.exp(delta.unsqueeze(-1) * A[:, None, :])                  # batch x E x L x N
    drive = (delta * u).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(1)      # batch x E x L x N
    h = linear_recurrence(decay, drive)
    y = torch.einsum("beln,bnl->bel", h, C)
    if D is not None:
        y = y + u * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype)


@functools.lru_cache(maxsize=1)
def _cuda_selective_scan():
    """mamba_ssm's fused kernel, or None when the package is not installed (the usual case)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        return None
    return selective_scan_fn


class Mamba(nn.Module):
    """Mamba block (Gu & Dao 2023), parameter names and initialisation as mamba_ssm's `Mamba` (state dicts
    load either way). B x L x d_model -> B x L x d_model."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4):
        super().__init__()
        d_inner = expand * d_model
        self.d_state, self.dt_rank = d_state, math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        # S4D-real A = -(1..N), time steps log-uniform in [dt_min, dt_max] through softplus^-1 of the bias.
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def _causal_depthwise_conv(self, u: torch.Tensor) -> torch.Tensor:
        """self.conv1d(u)[..., :L] as a sum of shifted taps (CPU depthwise conv1d backward is very slow)."""
        weight, taps, bias = self.conv1d.weight[:, 0, :], self.conv1d.weight.shape[-1], self.conv1d.bias
        assert bias is not None, "conv1d is built with a bias"
        padded = F.pad(u, (taps - 1, 0))
        out = bias[:, None] + weight[:, 0, None] * padded[..., :u.shape[-1]]
        for k in range(1, taps):
            out = out + weight[:, k, None] * padded[..., k:k + u.shape[-1]]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, z = self.in_proj(x).transpose(1, 2).chunk(2, dim=1)             # B x E x L each
        u = F.silu(self._causal_depthwise_conv(u))
        dt, B, C = torch.split(self.x_proj(u.transpose(1, 2)), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = (dt @ self.dt_proj.weight.t()).transpose(1, 2)              # bias is added inside the scan
        scan = _cuda_selective_scan() if u.is_cuda else None
        y = (scan or selective_scan)(u.contiguous(), delta.contiguous(), -torch.exp(self.A_log.float()),
                                     B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(),
                                     self.D.float(), z=z.contiguous(), delta_bias=self.dt_proj.bias.float(),
                                     delta_softplus=True)
        return self.out_proj(y.transpose(1, 2).to(x.dtype))


@functools.lru_cache(maxsize=16)
def spiral_order(height: int, width: int) -> torch.Tensor:
    """Raster indices of an H x W grid visited clockwise from the top-left corner, inwards."""
    order, top, bottom, left, right = [], 0, height - 1, 0, width - 1
    while top <= bottom and left <= right:
        order += [top * width + c for c in range(left, right + 1)]
        order += [r * width + right for r in range(top + 1, bottom + 1)]
        if top < bottom:
            order += [bottom * width + c for c in range(right - 1, left - 1, -1)]
        if left < right:
            order += [r * width + left for r in range(bottom - 1, top, -1)]
        top, bottom, left, right = top + 1, bottom - 1, left + 1, right - 1
    return torch.tensor(order, dtype=torch.long)


class SpiralMamba(nn.Module):
    """The cmMamba SSM layer: Mamba along the spiral and along the reversed spiral, fused by a 1x1 conv."""

    def __init__(self, channels: int, d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.forward_scan = Mamba(channels, d_state, d_conv, expand)
        self.reverse_scan = Mamba(channels, d_state, d_conv, expand)
        self.fuse = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        order = spiral_order(h, w).to(x.device)
        sequence = self.norm(x.flatten(2)[:, :, order].transpose(1, 2))      # B x L x C in spiral order
        along = self.forward_scan(sequence)
        against = self.reverse_scan(sequence.flip(1)).flip(1)
        to_grid = torch.empty_like(order)
        to_grid[order] = torch.arange(order.numel(), device=x.device)       # inverse permutation
        maps = [s.transpose(1, 2)[:, :, to_grid].reshape(b, c, h, w) for s in (along, against)]
        return self.fuse(torch.cat(maps, dim=1))


class ResnetBlock(nn.Module):
    """x + (reflect-pad 3x3 conv -> BN -> ReLU -> reflect-pad 3x3 conv -> BN), bias-free convs."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=False), nn.BatchNorm2d(channels),
            nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ChannelCompression(nn.Module):
    """ReLU((3x3 conv -> BN -> ReLU -> 3x3 conv -> BN)(x) + (1x1 conv -> BN)(x)): mixes 2C channels into C."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels))
        self.skip = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


class CmMambaBlock(nn.Module):
    def __init__(self, channels: int, d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        self.ssm = SpiralMamba(channels, d_state, d_conv, expand)
        self.compress = ChannelCompression(2 * channels, channels)
        self.resnet = ResnetBlock(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnet(self.compress(torch.cat([x, self.ssm(x)], dim=1)))


def _conv_bn_relu(in_channels: int, out_channels: int, **conv) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, bias=False, **conv), nn.BatchNorm2d(out_channels),
                         nn.ReLU(True))


def _up_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1,
                                            bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(True))


class I2IMamba(nn.Module):
    """B x in_channels x H x W -> B x out_channels x H x W in (-1, 1); H, W multiples of 4."""

    size_multiple = 4
    CMMAMBA_AT = (0, 4, 8)  # of the nine bottleneck blocks; the others are ResNet blocks

    def __init__(self, features: Sequence[int] = (64, 128, 256), in_channels: int = 1, out_channels: int = 1,
                 d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        if len(features) < 3:
            raise ValueError(f"I2I-Mamba needs three encoder widths, got {list(features)}")
        f0, f1, f2 = (int(c) for c in features[:3])
        self.encoder = nn.ModuleList([
            nn.Sequential(nn.ReflectionPad2d(3), *_conv_bn_relu(in_channels, f0, kernel_size=7)),
            _conv_bn_relu(f0, f1, kernel_size=3, stride=2, padding=1),
            _conv_bn_relu(f1, f2, kernel_size=3, stride=2, padding=1)])
        self.bottleneck = nn.Sequential(*(CmMambaBlock(f2, d_state, d_conv, expand) if i in self.CMMAMBA_AT
                                          else ResnetBlock(f2) for i in range(9)))
        self.decoder = nn.ModuleList([_up_bn_relu(2 * f2, f1), _up_bn_relu(2 * f1, f0)])
        self.head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(2 * f0, out_channels, 7), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % self.size_multiple or x.shape[-1] % self.size_multiple:
            raise ValueError(f"I2I-Mamba input size {tuple(x.shape[-2:])} must be a multiple of {self.size_multiple}")
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = self.bottleneck(x)
        for up in self.decoder:
            x = up(torch.cat([x, skips.pop()], dim=1))
        return self.head(torch.cat([x, skips.pop()], dim=1))


@register_network("i2i_mamba", needs_dinov3=False, size_multiple=I2IMamba.size_multiple,
                  description="I2I-Mamba [20] after Atli et al.'s code (Table 1); features[:3]; options: "
                              "d_state, d_conv, expand")
def build_i2i_mamba(plans: NetworkPlans, dinov3: None) -> I2IMamba:
    return I2IMamba(plans.features, plans.in_channels, plans.out_channels, **plans.options)
