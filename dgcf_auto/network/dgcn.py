"""DGCN, the DINOv3-Guided Cross-Fusion Network (paper section 2.2), and its Table 2 ablation variants.

One UNet-shaped generator, four ways of feeding decoder level i (i = 1..L, full resolution first):

    cross_fusion  CrossFusion(F_CNN^i, F_DINO^i)   eq. (1)-(3), the paper's DGCN
    concat        F_CNN^i (+) Bilinear(F_DINO^i)   raw 768-channel DINOv3 map resized and concatenated,
                                                   no projection ("simply concatenates", Table 2)
    cnn_only      F_CNN^i                          the plain UNet (no ViT at all)
    vit_only      Bilinear(Conv1x1(F_DINO^i))      eq. (1) only, no CNN encoder; the bottleneck is a
                                                   ConvBlock on the last DINOv3 map (H/16)

F_CNN^i is the output of the i-th encoder ConvBlock (before max-pooling); F_DINO^i the patch-token map after
DINOv3 block 3i (the FrozenDINOv3's configured layers, in order). The CNN encoder has L levels (C = 64, 128,
256, 512 in the paper), max-pooling between them, and a UNet bottleneck of 2 x C_L channels at H/16; the
symmetric decoder upsamples with 2x2 transposed convolutions. The head is a plain 1x1 convolution (no tanh):
targets are CT in [-1, 1] with much air at exactly -1, which tanh could only reach with unbounded
pre-activations; the predictor clips the de-normalised HU instead. Option `tanh_head: true` puts tanh after
it, as the authors' Table 1 UNet (`code_network/unet.py` `Unet(activate=True)`: `OutConv` then `nn.Tanh()`);
tanh has no parameters, so both heads hold the same state dict.

2.5D (our extension, not the paper's; documentation/model.md): with in_channels k > 1 the input is a slab of k
adjacent slices (`dgcf_auto.slabs`). The CNN encoder sees all k; the frozen ViT sees only the centre slice
(channel k // 2, the slice being predicted), as a 1-channel slice exactly as in 2D, so its maps are what
DINOv3 computes for that slice and the fusion weights keep their meaning.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from dgcf_auto.network.blocks import ConvBlock, CrossFusion, DinoProjection, UpBlock, resize_to
from dgcf_auto.network.dinov3 import FrozenDINOv3
from dgcf_auto.network.registry import register_network
from dgcf_auto.plans import NetworkPlans
from dgcf_auto.slabs import centre_slice

VIT_PATCH_SIZE = 16

ARCHITECTURES = ("cross_fusion", "concat", "cnn_only", "vit_only")


class DGCN(nn.Module):
    """Generator f_theta: B x in_channels x H x W (normalised source) -> B x 1 x H x W (normalised CT).

    H and W must be multiples of 2**len(features) (16 for the paper's 4 levels; also the ViT's patch size).
    `dinov3` is held, not copied: the same instance can serve the MLDP loss. It is always run without
    gradient here (the source image needs none), so only CNN/fusion/decoder weights are trained.
    """
    # submodules that some architectures lack
    dinov3: FrozenDINOv3 | None
    encoder: nn.ModuleList | None
    fusions: nn.ModuleList | None

    def __init__(self, architecture: str = "cross_fusion", features: Sequence[int] = (64, 128, 256, 512),
                 dinov3: FrozenDINOv3 | None = None, in_channels: int = 1, out_channels: int = 1,
                 tanh_head: bool = False):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
        self.architecture = architecture
        self.in_channels = int(in_channels)
        self.features = [int(c) for c in features]
        self.uses_cnn = architecture != "vit_only"
        self.uses_vit = architecture != "cnn_only"
        levels = len(self.features)
        if self.uses_vit:
            if dinov3 is None:
                raise ValueError(f"architecture {architecture!r} needs a FrozenDINOv3 (got None)")
            if len(dinov3.layers) != levels:
                raise ValueError(f"{architecture!r} fuses one DINOv3 layer per level: {levels} levels but "
                                 f"DINOv3 layers {list(dinov3.layers)}")
        self.dinov3 = dinov3 if self.uses_vit else None
        dino_ch = self.dinov3.embed_dim if self.dinov3 is not None else 0
        bottleneck_ch = 2 * self.features[-1]

        if self.uses_cnn:
            ins = [in_channels] + self.features[:-1]
            self.encoder = nn.ModuleList(ConvBlock(i, o) for i, o in zip(ins, self.features))
            self.bottleneck = ConvBlock(self.features[-1], bottleneck_ch)
        else:
            self.encoder = None
            self.bottleneck = ConvBlock(dino_ch, bottleneck_ch)

        if architecture == "cross_fusion":
            self.fusions = nn.ModuleList(CrossFusion(c, dino_ch) for c in self.features)
            skip_channels = list(self.features)
        elif architecture == "vit_only":
            self.fusions = nn.ModuleList(DinoProjection(dino_ch, c) for c in self.features)
            skip_channels = list(self.features)
        elif architecture == "concat":
            self.fusions = None
            skip_channels = [c + dino_ch for c in self.features]
        else:  # cnn_only
            self.fusions = None
            skip_channels = list(self.features)

        below = self.features[1:] + [bottleneck_ch]  # channels arriving from the level below
        self.decoder = nn.ModuleList(UpBlock(b, s, c) for b, s, c in zip(below, skip_channels, self.features))
        self.head = nn.Conv2d(self.features[0], out_channels, kernel_size=1)
        self.tanh_head = bool(tanh_head)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Everything but the frozen ViT (the optimiser's parameter list)."""
        return [p for p in self.parameters() if p.requires_grad]

    def _check_size(self, x: torch.Tensor) -> None:
        multiple = 2 ** len(self.features)
        if self.dinov3 is not None:  # uses_vit
            multiple = max(multiple, self.dinov3.patch_size)
        if x.shape[-2] % multiple or x.shape[-1] % multiple:
            raise ValueError(f"DGCN input size {tuple(x.shape[-2:])} must be a multiple of {multiple}")

    def _skip_inputs(self, cnn: list, dino: list | None, sizes: list) -> list[torch.Tensor]:
        if dino is None:  # cnn_only
            return cnn
        if self.architecture == "concat":
            return [torch.cat([f, resize_to(d, size).to(f.dtype)], dim=1) for f, d, size in zip(cnn, dino, sizes)]
        assert self.fusions is not None  # cross_fusion and vit_only have their fusion modules
        if self.architecture == "cross_fusion":
            return [fuse(f, d) for fuse, f, d in zip(self.fusions, cnn, dino)]
        return [project(d, size) for project, d, size in zip(self.fusions, dino, sizes)]  # vit_only

    def encode_dino(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The frozen ViT's maps of `x` exactly as `forward` would compute them (no graph through the ViT):
        of its centre slice only (the whole input in 2D, channel k // 2 of a 2.5D slab)."""
        if self.dinov3 is None:
            raise ValueError("a cnn_only DGCN holds no ViT")
        return self.dinov3(centre_slice(x), grad=False)

    def forward(self, x: torch.Tensor, dino_features: list[torch.Tensor] | None = None) -> torch.Tensor:
        """`dino_features`: `encode_dino(x)` computed once and shared by an ensemble of networks holding the
        same ViT (inference); by default the network runs its own ViT."""
        self._check_size(x)
        height, width = x.shape[-2:]
        sizes = [(height >> i, width >> i) for i in range(len(self.features))]
        dino = None
        if self.uses_vit:  # frozen: no graph through the ViT
            dino = dino_features if dino_features is not None else self.encode_dino(x)

        cnn: list[torch.Tensor] = []
        if self.encoder is not None:  # uses_cnn
            h = x
            for level, block in enumerate(self.encoder):
                h = block(h if level == 0 else F.max_pool2d(h, 2))
                cnn.append(h)
            h = self.bottleneck(F.max_pool2d(h, 2))
        else:
            assert dino is not None  # vit_only
            deepest = (height >> len(self.features), width >> len(self.features))  # H/16 for 4 levels
            h = self.bottleneck(resize_to(dino[-1], deepest))

        skips = self._skip_inputs(cnn, dino, sizes)
        for level in reversed(range(len(self.features))):
            h = self.decoder[level](h, skips[level])
        out = self.head(h)
        return torch.tanh(out) if self.tanh_head else out

    def extra_repr(self) -> str:
        return f"architecture={self.architecture!r}, features={self.features}, tanh_head={self.tanh_head}"


def _dgcn_multiple(plans: NetworkPlans) -> int:
    """2**L for the L max-poolings down to the bottleneck; the ViT's patch (16) too when it is used."""
    multiple = 2 ** len(plans.features)
    return multiple if plans.architecture == "cnn_only" else math.lcm(multiple, VIT_PATCH_SIZE)


def _register(architecture: str, description: str) -> None:
    def build(plans: NetworkPlans, dinov3: FrozenDINOv3 | None) -> nn.Module:
        return DGCN(architecture, plans.features, dinov3, in_channels=plans.in_channels,
                    out_channels=plans.out_channels, **plans.options)
    build.__name__ = f"build_{architecture}"
    register_network(architecture, needs_dinov3=architecture != "cnn_only", size_multiple=_dgcn_multiple,
                     description=description)(build)


_register("cross_fusion", "DGCN as the paper's text writes it: eq. (1)-(3) Cross Fusion at every level")
_register("concat", "Table 2 DGCN (concat): raw DINOv3 maps resized and concatenated to the skips")
_register("cnn_only", "the UNet of the paper-literal DGCN without the ViT (Table 1 UNet, 31.0 M); "
                      "options: tanh_head (the authors' UNet head)")
_register("vit_only", "Table 2 ViT-B/16 only: projected DINOv3 maps feed the decoder, no CNN encoder")
