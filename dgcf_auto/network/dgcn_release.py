"""The released DGCN: the generator of the authors' public code, reimplemented layer for layer.

This is `DINOGuidedGenerator(fusion_type="cnn")` of HiLab-git/DGCF
(`code_network/dinov3/dinoparallelencoderplusdecoder.py`), the network behind the paper's tables. It differs
from the paper's text (dgcf_auto/network/dgcn.py); documentation/model.md lists every difference.

    ConvBNGELU(a, b, k)  = GELU(BN(Conv k x k, stride 1, padding k//2, no bias))   exact GELU, BN eps 1e-5
    Residual(c)          = x + BN(Conv3x3(GELU(BN(Conv3x3(x)))))                  no activation after the sum
    encoder level 1      = Residual(ConvBNGELU(in, C1)(x))                         full resolution
    encoder level i>1    = Residual(ConvBNGELU(C_{i-1}, C_i)(MaxPool2(e_{i-1})))   3 poolings: H/8 at level 4
    DINO input p_i       = Bilinear(ConvBNGELU(768, C_i)(F_DINO^{block 3i}), size H/2^(i-1))
    fusion (level i)     = Residual(GELU(BN(Conv1x1(ConvBNGELU(C,C)(e_i) (+) ConvBNGELU(C,C)(p_i)))))
    decoder              = d4 = fused e4; d_{i} = Residual(ConvBNGELU(C_{i+1}, C_i)(Up2(d_{i+1}))) + e_i
    head                 = tanh(Conv3x3 with bias(ConvBNGELU(C1, C1/2)(d1)))
Up2 is bilinear x2 with align_corners=False, the skips are ADDED, and the fused deepest level starts the
decoder. Their Table 2 siblings are switches of the same class: `dino_levels` (which DINO inputs are used;
all off = "CNN only") and `use_cnn=False` ("ViT only": p_1..p_4 replace e_1..e_4). Unused
modules of their class (the fusion blocks when use_cnn=False) are not built here.

The DINO maps are the ViT's final-LayerNorm'ed patch tokens after blocks 3, 6, 9, 12 (their
`get_intermediate_layers(x, n=[2, 5, 8, 11])`), computed by the shared FrozenDINOv3. The released feature
extraction feeds the ViT the normalised slice repeated to 3 channels with no ImageNet normalisation (the
FrozenDINOv3 input_mode "release"); for MR it scaled the slice to [0, 2] instead of [-1, 1], which is
`vit_input_offset=1.0` here (added to the [-1, 1] source before the ViT; 0 for CBCT).

`reference_key_map()` gives, for every tensor of this module's state dict except the frozen ViT, the name
the same tensor has in the authors' `DINOGuidedGenerator.state_dict()`; the checkpoint importer
(dgcf_auto/reference_import.py) uses it to load their trained weights strictly.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from dgcf_auto.network.dinov3 import FrozenDINOv3
from dgcf_auto.network.registry import register_network
from dgcf_auto.plans import NetworkPlans
from dgcf_auto.slabs import centre_slice

LEVELS = 4  # their class is fixed at 4 levels (3 poolings) and 4 DINO layers


class ConvBNGELU(nn.Module):
    """Conv (no bias, 'same' padding) -> BatchNorm -> exact GELU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    # (their key suffix inside `block`, our attribute)
    REFERENCE_PARTS = (("block.0", "conv"), ("block.1", "bn"))


class ResidualBlock(nn.Module):
    """x + BN(Conv3x3(GELU(BN(Conv3x3(x))))), bias-free convs, no activation after the addition."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))

    REFERENCE_PARTS = (("block.0", "conv1"), ("block.1", "bn1"), ("block.3", "conv2"), ("block.4", "bn2"))


class ConvStage(nn.Module):
    """ConvBNGELU then ResidualBlock: one encoder level (after its pooling) or one decoder level."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = ConvBNGELU(in_channels, out_channels)
        self.residual = ResidualBlock(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(self.conv(x))


class ReleaseCrossFusion(nn.Module):
    """Their CrossFusion(fusion_type="cnn"): project both inputs, concat, 1x1 ConvBNGELU, ResidualBlock."""

    def __init__(self, channels: int):
        super().__init__()
        self.project_cnn = ConvBNGELU(channels, channels)
        self.project_dino = ConvBNGELU(channels, channels)
        self.merge = ConvBNGELU(2 * channels, channels, kernel_size=1)
        self.residual = ResidualBlock(channels)

    def forward(self, f_cnn: torch.Tensor, f_dino: torch.Tensor) -> torch.Tensor:
        both = torch.cat([self.project_cnn(f_cnn), self.project_dino(f_dino)], dim=1)  # CNN first, as theirs
        return self.residual(self.merge(both))


class DGCNRelease(nn.Module):
    """Generator: B x in_channels x H x W (normalised source, [-1, 1]) -> B x out_channels x H x W, tanh.

    H and W must be multiples of 16 when any DINO input is used (the ViT patch), else of 8 (3 poolings).
    `dinov3` is held, not copied (the MLDP loss shares it) and always run without gradient.
    """
    dinov3: FrozenDINOv3 | None  # None without DINO inputs
    encoder: nn.ModuleList | None  # None without the CNN branch (ViT only)

    def __init__(self, dinov3: FrozenDINOv3 | None, base_channels: int = 64, in_channels: int = 1,
                 out_channels: int = 1, dino_levels: Sequence[bool] = (True,) * LEVELS, use_cnn: bool = True,
                 vit_input_offset: float = 0.0):
        super().__init__()
        dino_levels = tuple(bool(d) for d in dino_levels)
        if len(dino_levels) != LEVELS:
            raise ValueError(f"dino_levels needs {LEVELS} flags, got {list(dino_levels)}")
        if not use_cnn and not all(dino_levels):
            raise ValueError("use_cnn=False (ViT only) needs all four DINO inputs")
        self.uses_vit = any(dino_levels)
        if self.uses_vit:
            if dinov3 is None:
                raise ValueError("the released DGCN with DINO inputs needs a FrozenDINOv3 (got None)")
            if len(dinov3.layers) != LEVELS:
                raise ValueError(f"one DINOv3 layer per level: {LEVELS} levels but DINOv3 layers "
                                 f"{list(dinov3.layers)}")
        self.dinov3 = dinov3 if self.uses_vit else None
        self.dino_levels = dino_levels
        self.use_cnn = bool(use_cnn)
        self.vit_input_offset = float(vit_input_offset)
        self.channels = [base_channels * 2 ** i for i in range(LEVELS)]
        c = self.channels

        if self.use_cnn:
            self.encoder = nn.ModuleList([ConvStage(in_channels, c[0])] +
                                         [ConvStage(c[i - 1], c[i]) for i in range(1, LEVELS)])
        else:
            self.encoder = None
        dino_ch = self.dinov3.embed_dim if self.dinov3 is not None else 0
        # Keyed by level number (1..4): off levels simply have no entry.
        self.dino_projections = nn.ModuleDict({str(i + 1): ConvBNGELU(dino_ch, c[i])
                                               for i in range(LEVELS) if dino_levels[i]})
        self.fusions = nn.ModuleDict({str(i + 1): ReleaseCrossFusion(c[i])
                                      for i in range(LEVELS) if dino_levels[i] and self.use_cnn})
        # decoder[i] takes level i+2 up to level i+1 (decoder[0]: 2 -> 1).
        self.decoder = nn.ModuleList(ConvStage(c[i + 1], c[i]) for i in range(LEVELS - 1))
        self.head = ConvBNGELU(c[0], c[0] // 2)
        self.out = nn.Conv2d(c[0] // 2, out_channels, 3, padding=1)

    def size_multiple(self) -> int:
        return 16 if self.uses_vit else 2 ** (LEVELS - 1)

    def encode_dino(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The frozen ViT's maps of `x` exactly as `forward` computes them (their per-modality input offset;
        no graph through the ViT). An ensemble computes them once and passes them to every fold. A 2.5D slab
        (in_channels k > 1, our extension): the ViT sees its centre slice only, as in dgcn.py."""
        if self.dinov3 is None:
            raise ValueError("a released DGCN without DINO inputs holds no ViT")
        return self.dinov3(centre_slice(x) + self.vit_input_offset, grad=False)

    def _dino_inputs(self, x: torch.Tensor, maps: list[torch.Tensor] | None) -> dict[int, torch.Tensor]:
        height, width = x.shape[-2:]
        maps = maps if maps is not None else self.encode_dino(x)
        inputs = {}
        for i in range(LEVELS):
            if self.dino_levels[i]:
                projected = self.dino_projections[str(i + 1)](maps[i].to(x.dtype))
                inputs[i] = F.interpolate(projected, size=(height >> i, width >> i), mode="bilinear",
                                          align_corners=False)
        return inputs

    def forward(self, x: torch.Tensor, dino_features: list[torch.Tensor] | None = None) -> torch.Tensor:
        multiple = self.size_multiple()
        if x.shape[-2] % multiple or x.shape[-1] % multiple:
            raise ValueError(f"released DGCN input size {tuple(x.shape[-2:])} must be a multiple of {multiple}")
        dino = self._dino_inputs(x, dino_features) if self.uses_vit else {}
        if self.encoder is not None:  # use_cnn
            skips = []
            h = x
            for level, stage in enumerate(self.encoder):
                h = stage(h if level == 0 else F.max_pool2d(h, 2))
                skips.append(h)
            for i in dino:
                skips[i] = self.fusions[str(i + 1)](skips[i], dino[i])
        else:
            skips = [dino[i] for i in range(LEVELS)]
        h = skips[-1]
        for i in reversed(range(LEVELS - 1)):
            up = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
            h = self.decoder[i](up) + skips[i]
        return torch.tanh(self.out(self.head(h)))

    def reference_key_map(self) -> dict[str, str]:
        """{our state-dict key: the authors' DINOGuidedGenerator key} for every tensor but the frozen ViT."""
        prefixes: list[tuple[nn.Module, str, str]] = []  # (leaf block, our prefix, their prefix)
        if self.encoder is not None:  # use_cnn
            for i, stage in enumerate(self.encoder):
                assert isinstance(stage, ConvStage)
                at = 0 if i == 0 else 1  # their enc2..4 start with an nn.MaxPool2d at index 0
                prefixes += [(stage.conv, f"encoder.{i}.conv", f"encoder.enc{i + 1}.{at}"),
                             (stage.residual, f"encoder.{i}.residual", f"encoder.enc{i + 1}.{at + 1}")]
        for name, proj in self.dino_projections.items():
            prefixes.append((proj, f"dino_projections.{name}", f"proj_f{3 * int(name)}"))
        for name, fusion in self.fusions.items():
            assert isinstance(fusion, ReleaseCrossFusion)
            ours, theirs = f"fusions.{name}", f"fuse{name}"
            prefixes += [(fusion.project_cnn, f"{ours}.project_cnn", f"{theirs}.proj_img"),
                         (fusion.project_dino, f"{ours}.project_dino", f"{theirs}.proj_dino"),
                         (fusion.residual, f"{ours}.residual", f"{theirs}.merge.3")]
            # merge is an nn.Sequential(conv, bn, gelu, residual) in theirs, flat indices.
            prefixes += [(fusion.merge.conv, f"{ours}.merge.conv", f"{theirs}.merge.0"),
                         (fusion.merge.bn, f"{ours}.merge.bn", f"{theirs}.merge.1")]
        for i, stage in enumerate(self.decoder):
            assert isinstance(stage, ConvStage)
            up = LEVELS - 1 - i  # decoder[2] is their up1 (H/8 -> H/4), decoder[0] their up3
            prefixes += [(stage.conv, f"decoder.{i}.conv", f"decoder.up{up}.1"),
                         (stage.residual, f"decoder.{i}.residual", f"decoder.up{up}.2")]
        prefixes += [(self.head, "head", "decoder.out.0"), (self.out, "out", "decoder.out.1")]

        mapping: dict[str, str] = {}
        for module, ours, theirs in prefixes:
            parts = getattr(module, "REFERENCE_PARTS", (("", ""),))
            for their_part, our_part in parts:
                sub = module.get_submodule(our_part) if our_part else module
                for key in list(sub.state_dict().keys()):
                    our_key = ".".join(p for p in (ours, our_part, key) if p)
                    their_key = ".".join(p for p in (theirs, their_part, key) if p)
                    mapping[our_key] = their_key
        own = [k for k in self.state_dict() if not k.startswith("dinov3.")]
        assert sorted(mapping) == sorted(own), "reference_key_map does not cover this module exactly"
        return mapping

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, dino_levels={list(self.dino_levels)}, use_cnn={self.use_cnn}, "
                f"vit_input_offset={self.vit_input_offset}")


OPTIONS = ("vit_input_offset",)


def _build(plans: NetworkPlans, dinov3: FrozenDINOv3 | None, dino_levels: Sequence[bool],
           use_cnn: bool) -> DGCNRelease:
    base = int(plans.features[0])
    if list(plans.features) != [base * 2 ** i for i in range(LEVELS)]:
        raise ValueError(f"features {list(plans.features)}: the released DGCN has 4 levels doubling from the "
                         f"base width, e.g. [64, 128, 256, 512]")
    unknown = sorted(set(plans.options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown network option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
    return DGCNRelease(dinov3, base, plans.in_channels, plans.out_channels, dino_levels, use_cnn,
                       float(plans.options.get("vit_input_offset", 0.0)))


@register_network("dgcn_release", needs_dinov3=True, size_multiple=16,
                  description="the authors' released DGCN (DINOGuidedGenerator, fusion 'cnn'): 30,816,673 at 64")
def build_dgcn_release(plans: NetworkPlans, dinov3: FrozenDINOv3 | None) -> nn.Module:
    return _build(plans, dinov3, (True,) * LEVELS, use_cnn=True)


@register_network("dgcn_release_cnn_only", needs_dinov3=False, size_multiple=2 ** (LEVELS - 1),
                  description="Table 2 CNN only as released: dgcn_release with all four DINO inputs off")
def build_dgcn_release_cnn_only(plans: NetworkPlans, dinov3: FrozenDINOv3 | None) -> nn.Module:
    return _build(plans, None, (False,) * LEVELS, use_cnn=True)


@register_network("dgcn_release_vit_only", needs_dinov3=True, size_multiple=16,
                  description="Table 2 ViT-B/16 only as released: dgcn_release with use_cnn=False")
def build_dgcn_release_vit_only(plans: NetworkPlans, dinov3: FrozenDINOv3 | None) -> nn.Module:
    return _build(plans, dinov3, (True,) * LEVELS, use_cnn=False)
