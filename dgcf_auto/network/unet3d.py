"""3D U-Nets of the `3d_fullres` configuration, from `dynamic-network-architectures` (the package nnU-Net builds
its own networks with): `PlainConvUNet` (nnU-Net's default plans) and `ResidualEncoderUNet` (nnU-Net's ResEnc
plans, presets M and L; L is nnsyn's SynthRAD2025 recipe). We never write our own 3D U-Net.

The topology (stages, kernel sizes, strides, blocks per stage, features per stage) is planned per dataset by
`planning/plan_3d.py` and reaches the builder as `network.options` (see `unet_kwargs`). The conv, norm and
nonlinearity choices are nnU-Net's: Conv3d with bias, InstanceNorm3d(eps 1e-5, affine), LeakyReLU. One
output channel, linear (the sCT in normalised units), no deep supervision: the loss compares full-resolution
output only (nnsyn's masked L1 needs no per-scale masks).

The three registered names are the planning presets (`plan_3d.PRESETS`): M and L build the same class and
differ in the memory budget their patch and batch were planned for.
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

from dgcf_auto.errors import DGCFError
from dgcf_auto.network.registry import register_network
from dgcf_auto.plans import NetworkPlans

TOPOLOGY_KEYS = ("kernel_sizes", "strides", "n_blocks_per_stage", "n_conv_per_stage_decoder")


def unet_kwargs(plans: NetworkPlans, residual: bool) -> dict:
    """Keyword arguments of PlainConvUNet / ResidualEncoderUNet from the network plans."""
    options = plans.options
    missing = [k for k in TOPOLOGY_KEYS if k not in options]
    if missing:
        raise DGCFError(f"network {plans.architecture!r} needs its planned topology in network.options "
                        f"({', '.join(missing)} missing); plan the 3d_fullres configuration first")
    unknown = set(options) - set(TOPOLOGY_KEYS)
    if unknown:
        raise DGCFError(f"network.options: unknown option(s) {', '.join(sorted(unknown))} for {plans.architecture!r}; "
                        f"known: {', '.join(TOPOLOGY_KEYS)}")
    strides = [list(s) for s in options["strides"]]
    if len(plans.features) != len(strides):
        raise DGCFError(f"network.features has {len(plans.features)} stages, network.options.strides {len(strides)}")
    kwargs = dict(input_channels=plans.in_channels, n_stages=len(strides), features_per_stage=list(plans.features),
                  conv_op=nn.Conv3d, kernel_sizes=[list(k) for k in options["kernel_sizes"]], strides=strides,
                  num_classes=plans.out_channels, n_conv_per_stage_decoder=list(options["n_conv_per_stage_decoder"]),
                  conv_bias=True, norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                  dropout_op=None, dropout_op_kwargs=None, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
                  deep_supervision=False)
    kwargs["n_blocks_per_stage" if residual else "n_conv_per_stage"] = list(options["n_blocks_per_stage"])
    return kwargs


# size_multiple 1: the 2d slice-size rule does not apply; each 3D patch axis divides by its own 2^pools,
# which planning/plan_3d.py guarantees (pool_and_conv_props pads the patch).
_3D: dict[str, Any] = dict(needs_dinov3=False, size_multiple=1, spatial_dims=3)


@register_network("plain_unet_3d", **_3D,
                  description="3D PlainConvUNet (dynamic-network-architectures), nnU-Net's default 3d_fullres plans")
def build_plain_unet_3d(plans: NetworkPlans, dinov3) -> nn.Module:
    return PlainConvUNet(**unet_kwargs(plans, residual=False))


@register_network("resenc_unet_3d_m", **_3D,
                  description="3D ResidualEncoderUNet, nnU-Net ResEnc M plans (8 GB reference budget)")
def build_resenc_unet_3d_m(plans: NetworkPlans, dinov3) -> nn.Module:
    return ResidualEncoderUNet(**unet_kwargs(plans, residual=True))


@register_network("resenc_unet_3d_l", **_3D,
                  description="3D ResidualEncoderUNet, nnU-Net ResEnc L plans (24 GB reference budget; nnsyn's recipe)")
def build_resenc_unet_3d_l(plans: NetworkPlans, dinov3) -> nn.Module:
    return ResidualEncoderUNet(**unet_kwargs(plans, residual=True))
