"""UNet++ with a ResNet-34 encoder, from `segmentation-models-pytorch` (smp): the network of IMPACT-Synth's
SynthRAD2025 recipe (third in both tasks; a 2.5D UNet++ / ResNet-34), run here in any configuration.

The model is smp's own `UnetPlusPlus(encoder_name="resnet34", encoder_depth=5, decoder_channels=(256, 128,
64, 32, 16))` with `in_channels` input channels (k for a 2.5d slab of k slices, 1 for 2d) and one output
channel; its head is a 3x3 convolution without activation (as DGCN's: the predictor clips the HU). The
encoder pools 5 times, so inputs are padded (replicating the edge pixels) to the next multiple of 32 and the
output cropped back: every planned slice size runs, and the planner's patch size is not changed by this
network's registration.

Encoder weights are never downloaded (smp's `encoder_weights=None`): they come from a local file in
torchvision's / timm's ResNet-34 layout (`conv1.weight`, `layer1.0.conv1.weight`, ...; `fc.*` dropped),
named by `options.encoder_weights` in the plans, else `$DGCF_RESNET34_WEIGHTS`; for in_channels != 3 the
first convolution is adapted as timm and smp do (summed for 1 channel, RGB repeated and scaled by 3/k for k).
Without a file the encoder starts random, with one WARNING line.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from dgcf_auto.network.registry import register_network, weights_come_from_checkpoint
from dgcf_auto.plans import NetworkPlans

WEIGHTS_ENV = "DGCF_RESNET34_WEIGHTS"
ENCODER_DEPTH = 5
SIZE_MULTIPLE = 2 ** ENCODER_DEPTH
OPTIONS = ("encoder_weights",)
WHERE_TO_GET = (f"give a ResNet-34 state dict in torchvision's layout (e.g. torchvision's resnet34-b627a593.pth, "
                f"copied by hand) as options.encoder_weights in the plans or {WEIGHTS_ENV}=<file>")


class UNetPlusPlusResNet34(nn.Module):
    """B x in_channels x H x W -> B x out_channels x H x W (normalised CT), any H, W."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1):
        super().__init__()
        import segmentation_models_pytorch as smp

        self.model = smp.UnetPlusPlus(encoder_name="resnet34", encoder_depth=ENCODER_DEPTH, encoder_weights=None,
                                      in_channels=int(in_channels), classes=int(out_channels), activation=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % SIZE_MULTIPLE, -width % SIZE_MULTIPLE
        if pad_h or pad_w:  # split evenly, so the slice stays centred in what the encoder sees
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), mode="replicate")
        out = self.model(x)
        return out[..., pad_h // 2:pad_h // 2 + height, pad_w // 2:pad_w // 2 + width]

    def load_encoder_weights(self, path: Path) -> None:
        """A torchvision/timm-layout ResNet-34 state dict into the encoder; every key and shape must fit."""
        from dgcf_auto.network.dinov3_weights import load_encoder_state, read_state_dict

        state = {k: v for k, v in read_state_dict(path, label="ResNet-34 encoder weights").items()
                 if not k.startswith("fc.")}
        load_encoder_state(self.model.encoder, state, path, "ResNet-34 encoder weights",
                           "smp's ResNet-34 encoder", stem="conv1.weight", hint=f"; {WHERE_TO_GET}")


def resolve_encoder_weights(explicit: str | None) -> Path | None:
    """The encoder weight file (plans option, then the environment), or None; a named file must exist."""
    from dgcf_auto.network.dinov3_weights import given_weight_file

    return given_weight_file(((explicit, "options.encoder_weights"), (os.environ.get(WEIGHTS_ENV), WEIGHTS_ENV)),
                             "ResNet-34 encoder weights", WHERE_TO_GET)


@register_network("unetpp_resnet34", needs_dinov3=False, size_multiple=1,
                  description="UNet++ with a ResNet-34 encoder (segmentation-models-pytorch), IMPACT-Synth's "
                              "SynthRAD2025 network; options: encoder_weights (a local ResNet-34 file)")
def build_unetpp_resnet34(plans: NetworkPlans, dinov3: None) -> UNetPlusPlusResNet34:
    unknown = sorted(set(plans.options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown network option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
    net = UNetPlusPlusResNet34(plans.in_channels, plans.out_channels)
    if weights_come_from_checkpoint():
        return net
    path = resolve_encoder_weights(plans.options.get("encoder_weights"))
    from dgcf_auto.network.dinov3_weights import load_encoder_or_warn

    load_encoder_or_warn(net, path, f"UNet++'s ResNet-34 encoder is RANDOMLY INITIALISED (no weight file; "
                                    f"{WHERE_TO_GET})")
    return net
