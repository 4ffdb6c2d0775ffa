"""TransUNet, Table 1's [19] (Chen et al. 2021), in the R50-ViT-B/16 configuration the DGCF authors ran.

    encoder  ResNet-50 v2 hybrid stem (StdConv + GroupNorm, stages of 3, 4, 9 bottlenecks, H/16 x 1024)
             -> 1x1 patch embedding to 768 -> + learned position embedding -> 12 ViT-B blocks -> LayerNorm
    decoder  "cascaded upsampler": 3x3 conv 768 -> 512, then four (2x bilinear up, concat skip,
             (3x3 conv -> BN -> ReLU) x 2) blocks to 256, 128, 64, 16 channels; skips are the ResNet maps at
             H/8 (512), H/4 (256) and H/2 (64); the last block has none. 3x3 conv head + tanh.

The encoder is timm's own R50+ViT-B/16 hybrid (the `vit_base_r50_s16_*` models), built without weights and
without class token or classifier, so timm's state-dict layout loads directly. A grey input is repeated to
the three channels the ImageNet stem expects, as in the authors' code. The position embedding is a learned
grid for `img_size` (256: 16 x 16 tokens) and is resampled bilinearly for other sizes, so any multiple of 16
runs. At the paper's width this is 105,322,001 parameters, exactly the authors' class at 256 x 256 (105.28 M
at TransUNet's 224). Differences from the authors' code, none changing a parameter: TF "same" padding in the
stem (timm's, the layout the ImageNet weights were trained with) instead of a zero-padded 63 x 63 map, and
dropout 0.1 also after the attention projection (timm applies one rate to both).

ImageNet weights (R50+ViT-B/16, the way TransUNet trains) come only from a local file, never a download:
options["pretrained_weights"], else $DGCF_TRANSUNET_WEIGHTS, else timm's Hugging Face cache entry; in timm's
layout (.safetensors / .bin / .pth). Without one the encoder starts random, with one WARNING line.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from dgcf_auto.errors import DGCFError
from dgcf_auto.network.registry import register_network, weights_come_from_checkpoint
from dgcf_auto.plans import NetworkPlans

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

WEIGHTS_ENV = "DGCF_TRANSUNET_WEIGHTS"
# timm's copies of Google's R50+ViT-B/16: ImageNet-21k (TransUNet's choice) first, then the 1k fine-tune.
HF_CACHE_REPOS = ("timm/vit_base_r50_s16_224.orig_in21k", "timm/vit_base_r50_s16_384.orig_in21k_ft_in1k")
WHERE_TO_GET = ("get timm's model.safetensors of 'timm/vit_base_r50_s16_224.orig_in21k' from Hugging Face (or "
                "convert Google's R50+ViT-B_16.npz with timm), then set options.pretrained_weights in the plans "
                f"or {WEIGHTS_ENV}=<file>")
PAPER_ENCODER = {"embed_dim": 768, "depth": 12, "num_heads": 12, "resnet_layers": (3, 4, 9), "resnet_width": 64}


def _compared(value: object) -> object:
    """A plans value as compared with PAPER_ENCODER: a list (JSON) equals the tuple it spells."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.convs = nn.Sequential(conv_bn_relu(in_channels + skip_channels, out_channels),
                                   conv_bn_relu(out_channels, out_channels))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.convs(x if skip is None else torch.cat([x, skip], dim=1))


def hybrid_vit(img_size: int, in_chans: int, embed_dim: int, depth: int, num_heads: int,
               resnet_layers: Sequence[int], resnet_width: int, gn_groups: int, dropout: float) -> VisionTransformer:
    """timm's R50+ViT hybrid (random weights) without class token, pooling or head."""
    from timm.layers import GroupNormAct, HybridEmbed, StdConv2dSame
    from timm.models.resnetv2 import ResNetV2
    from timm.models.vision_transformer import VisionTransformer

    widths = tuple(resnet_width * 4 * 2 ** i for i in range(len(resnet_layers)))
    backbone = ResNetV2(layers=list(resnet_layers), channels=widths, stem_chs=resnet_width, num_classes=0,
                        global_pool="", in_chans=in_chans, preact=False, stem_type="same",
                        conv_layer=partial(StdConv2dSame, eps=1e-8),
                        norm_layer=partial(GroupNormAct, num_groups=gn_groups))
    embed = partial(HybridEmbed, backbone=backbone)   # finds the feature grid with one dummy forward
    return VisionTransformer(img_size=img_size, patch_size=1, in_chans=in_chans, embed_layer=embed,
                             embed_dim=embed_dim, depth=depth, num_heads=num_heads, num_classes=0, global_pool="",
                             class_token=False, pos_drop_rate=dropout, proj_drop_rate=dropout)


class TransUNet(nn.Module):
    """B x in_channels x H x W -> B x out_channels x H x W in (-1, 1); H, W multiples of 16."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, img_size: int = 256, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, resnet_layers: Sequence[int] = (3, 4, 9),
                 resnet_width: int = 64, gn_groups: int = 32, decoder_channels: Sequence[int] = (256, 128, 64, 16),
                 head_channels: int = 512, n_skip: int = 3, dropout: float = 0.1):
        super().__init__()
        if len(resnet_layers) != 3 or len(decoder_channels) != 4 or not 0 <= n_skip <= 3:
            raise ValueError("TransUNet needs 3 ResNet stages, 4 decoder widths and n_skip in 0..3")
        self.size_multiple = 16
        if img_size % self.size_multiple:
            raise ValueError(f"TransUNet img_size {img_size} must be a multiple of 16")
        self.repeat_grey = in_channels == 1   # the ImageNet stem takes RGB
        self.encoder = hybrid_vit(img_size, 3 if self.repeat_grey else in_channels, embed_dim, depth, num_heads,
                                  resnet_layers, resnet_width, gn_groups, dropout)
        self.grid = (img_size // 16, img_size // 16)
        self.conv_more = conv_bn_relu(embed_dim, head_channels)
        skip_channels = [resnet_width * 8, resnet_width * 4, resnet_width, 0][:n_skip] + [0] * (4 - n_skip)
        inputs = [head_channels, *decoder_channels[:-1]]
        self.decoder = nn.ModuleList(DecoderBlock(i, s, o) for i, s, o in zip(inputs, skip_channels, decoder_channels))
        self.n_skip = n_skip
        self.head = nn.Sequential(nn.Conv2d(decoder_channels[-1], out_channels, 3, padding=1), nn.Tanh())

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """ViT tokens as a B x D x H/16 x W/16 map, and the ResNet skips at H/8, H/4, H/2."""
        backbone, vit = self.encoder.patch_embed.backbone, self.encoder
        x = backbone.stem.norm(backbone.stem.conv(x))
        skips = [x]
        x = backbone.stem.pool(x)
        for stage in backbone.stages[:-1]:
            x = stage(x)
            skips.append(x)
        x = vit.patch_embed.proj(backbone.stages[-1](x))
        b, d, h, w = x.shape
        pos = vit.pos_embed
        assert pos is not None  # hybrid_vit keeps timm's absolute position embedding
        if (h, w) != self.grid:
            from timm.layers import resample_abs_pos_embed
            pos = resample_abs_pos_embed(pos, (h, w), old_size=self.grid, num_prefix_tokens=0, interpolation="bilinear")
        tokens = vit.pos_drop(x.flatten(2).transpose(1, 2) + pos)
        tokens = vit.norm(vit.blocks(tokens))
        return tokens.transpose(1, 2).reshape(b, d, h, w), skips[::-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % self.size_multiple or x.shape[-1] % self.size_multiple:
            raise ValueError(f"TransUNet input size {tuple(x.shape[-2:])} must be a multiple of 16")
        if self.repeat_grey:
            x = x.expand(-1, 3, -1, -1)
        x, skips = self.encode(x)
        x = self.conv_more(x)
        for i, block in enumerate(self.decoder):
            x = block(x, skips[i] if i < self.n_skip else None)
        return self.head(x)

    @torch.no_grad()
    def reset_to_authors_constructor_init(self) -> None:
        """What the authors' TransUnet constructor leaves where their init_weights does not reach
        (network/initialization.py): GroupNorm weight 1 and bias 0 (timm zeroes each bottleneck's last
        GroupNorm weight), position embedding zeros (`nn.Parameter(torch.zeros(...))`; timm draws it)."""
        for module in self.encoder.modules():
            if isinstance(module, nn.GroupNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        assert self.encoder.pos_embed is not None  # hybrid_vit keeps timm's absolute position embedding
        nn.init.zeros_(self.encoder.pos_embed)

    # ------------------------------------------------------------------ ImageNet weights
    def load_encoder_weights(self, path: Path) -> None:
        """Load a timm-layout R50+ViT hybrid state dict into the encoder (class token and head dropped,
        position embedding resampled to this grid). Every remaining key and shape must fit."""
        from timm.layers import resample_abs_pos_embed

        from dgcf_auto.network.dinov3_weights import load_encoder_state, read_state_dict

        state = {k: v for k, v in read_state_dict(path, label="TransUNet encoder weights").items()
                 if not k.startswith(("head.", "fc_norm.", "pre_logits.")) and k != "cls_token"}
        pos = state.get("pos_embed")
        if pos is not None and pos.ndim == 3:
            side = int(round((pos.shape[1] - 1) ** 0.5))
            prefix = 1 if side * side == pos.shape[1] - 1 else 0   # the class token's entry, unused here
            side = int(round((pos.shape[1] - prefix) ** 0.5))
            state["pos_embed"] = resample_abs_pos_embed(pos, self.grid, old_size=(side, side),
                                                        num_prefix_tokens=prefix)[:, prefix:]
        load_encoder_state(self.encoder, state, path, "TransUNet encoder weights", "the R50+ViT encoder of the plans",
                           stem="patch_embed.backbone.stem.conv.weight")


def resolve_encoder_weights(explicit: str | None, paper_encoder: bool) -> Path | None:
    """The ImageNet weights file to start from, or None. An explicit file (plans option, then the
    environment) must exist; the Hugging Face cache is only searched for the paper's R50+ViT-B/16."""
    from dgcf_auto.network.dinov3_weights import find_in_hf_cache, given_weight_file

    path = given_weight_file(((explicit, "options.pretrained_weights"), (os.environ.get(WEIGHTS_ENV), WEIGHTS_ENV)),
                             "TransUNet encoder weights", WHERE_TO_GET)
    if path is not None:
        return path
    if paper_encoder:
        for repo in HF_CACHE_REPOS:
            found = find_in_hf_cache(repo)
            if found is not None:
                return found
    return None


def build_transunet(in_channels: int, out_channels: int, options: dict, init: str = "pytorch") -> TransUNet:
    """TransUNet from plans options (keyword arguments of TransUNet, plus `pretrained_weights`). With
    `init` "release" (the authors' training) the encoder starts from random weights as theirs does: their
    `load_from` is defined but never called, and their define_network re-draws every Conv/Linear anyway."""
    options = dict(options)
    explicit = options.pop("pretrained_weights", None)
    net = TransUNet(in_channels, out_channels, **options)
    if weights_come_from_checkpoint():
        return net
    if init == "release":
        if explicit:
            raise DGCFError(f"TransUNet: network.init 'release' starts from random weights as the authors' code "
                            f"does; remove options.pretrained_weights ({explicit}) or use init 'pytorch' "
                            f"(the ImageNet start, the paper's reading)")
        return net
    settings = {k: options.get(k, v) for k, v in PAPER_ENCODER.items()}
    paper = all(_compared(v) == _compared(PAPER_ENCODER[k]) for k, v in settings.items())
    path = resolve_encoder_weights(explicit, paper)
    from dgcf_auto.network.dinov3_weights import load_encoder_or_warn

    load_encoder_or_warn(net, path, f"TransUNet's R50+ViT-B/16 encoder is RANDOMLY INITIALISED (no ImageNet "
                                    f"weights found; {WHERE_TO_GET})")
    return net


@register_network("transunet", needs_dinov3=False, size_multiple=16,
                  description="TransUNet [19], R50-ViT-B/16 (Table 1); features unused; options: TransUNet "
                              "keyword arguments and pretrained_weights")
def build_transunet_network(plans: NetworkPlans, dinov3: None) -> TransUNet:
    return build_transunet(plans.in_channels, plans.out_channels, plans.options, plans.init)
