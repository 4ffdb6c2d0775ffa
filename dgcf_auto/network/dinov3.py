"""The frozen DINOv3 ViT-B/16 encoder shared by the generator (DGCN) and the MLDP loss.

`FrozenDINOv3` wraps timm's `vit_base_patch16_dinov3` (an `Eva` model: 12 blocks, width 768, patch 16,
1 class + 4 register tokens, RoPE, any input size that is a multiple of 16). It returns the patch-token
maps after the configured blocks (1-based; the paper's 3, 6, 9, 12) as B x 768 x H/16 x W/16.

Frozen means: no parameter ever requires grad, the module stays in eval mode even inside a parent put in
train mode, and passes that need no gradient run under `torch.no_grad()`. Gradients can still flow to the
INPUT (`grad=True`), which the MLDP loss needs for phi(Y').

`forward(..., rope_train_mode=True)` reproduces one quirk of the authors' MLDP loss (`loss_options.mldp.vit_mode:
"train"`): their DINOv3 adapter is never put in eval mode, so Meta's RoPE coordinate augmentation is on. For
dinov3_vitb16 (Meta's hub `pos_embed_rope_rescale_coords=2`, no shift, no jitter) that is one log-uniform
factor in [1/2, 2] scaling the patch coordinates, drawn anew before EVERY block (Meta's
`_get_intermediate_layers_not_chunked` calls `rope_embed(H=H, W=W)` inside its block loop). timm's
`RotaryEmbeddingDinoV3` implements the same draw (`rescale_coords`, active in train mode) but timm's Eva
computes the embedding once per forward; here the blocks are run one by one with a fresh timm draw each.

Weights are resolved by `dgcf_auto.network.dinov3_weights` (explicit path, $DGCF_DINOV3_WEIGHTS, the local
Hugging Face cache; never a download). Random weights only when asked for, with a loud warning.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict
from typing import Protocol, runtime_checkable

import torch
import torch.nn as nn

from dgcf_auto.errors import DGCFError
from dgcf_auto.log import get_logger, quiet_known_warnings
from dgcf_auto.plans import DINOV3_INPUT_MODES, DinoV3Plans

with warnings.catch_warnings():  # also for Python API users, who have no command_session
    quiet_known_warnings()
    import timm
    from timm.layers import PatchEmbed
    from timm.layers.pos_embed_sincos import RotaryEmbeddingDinoV3
    from timm.models.eva import Eva

log = get_logger(__name__)
# One text wherever random weights show up (the encoder, the trainer, the demo, a predictor loading such a
# model), so the once-per-command filter prints it once.
RANDOM_DINOV3_WARNING = ("DINOv3 is RANDOMLY INITIALISED (--dinov3_random, or the demo without --dinov3_weights): "
                         "its features are meaningless and results do not reproduce the paper; for tests and demos "
                         "only")

DEFAULT_DINOV3_CFG = asdict(DinoV3Plans())

# DINOv3's LVD-1689M web-image models were trained on RGB in [0, 1] normalised with the ImageNet statistics
# (Meta's make_transform and timm's pretrained_cfg both use these values).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Meta's dinov3_vitb16 (hub/backbones.py): pos_embed_rope_rescale_coords=2, active only in train mode.
RELEASE_ROPE_RESCALE = 2.0


@runtime_checkable
class TimmViT(Protocol):
    """What FrozenDINOv3 uses of a timm ViT (timm's Eva, the class of every DINOv3 model, has all of it)."""

    @property
    def blocks(self) -> nn.ModuleList | nn.Sequential: ...

    @property
    def embed_dim(self) -> int: ...

    @property
    def patch_embed(self) -> PatchEmbed: ...

    def forward_intermediates(self, x: torch.Tensor, indices: list[int], *, intermediates_only: bool, norm: bool,
                              stop_early: bool,
                              output_fmt: str) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]: ...


class FrozenDINOv3(nn.Module):
    """Frozen timm DINOv3 ViT returning patch-token maps after `layers` (1-based block numbers).

    `forward(x, layers=None, grad=False)`: x is B x 1 x H x W in [-1, 1] (a normalised CT/MR/CBCT slice)
    or B x 3 x H x W in the same range; H and W multiples of 16. Returns a list (one per layer, in order)
    of B x C x H/16 x W/16 maps. `grad=False` runs under no_grad; `grad=True` keeps the graph so the loss
    can back-propagate to x (the ViT's own parameters still never receive a gradient).
    """
    mean: torch.Tensor  # buffers (ImageNet statistics)
    std: torch.Tensor

    def __init__(self, vit: nn.Module, layers: Sequence[int] = (3, 6, 9, 12), norm: bool = True,
                 weights_source: str = "random", input_mode: str = "imagenet"):
        super().__init__()
        if not isinstance(vit, TimmViT):
            raise DGCFError(f"DINOv3 model {type(vit).__name__}: not a timm ViT (blocks, embed_dim, patch_embed, "
                            f"forward_intermediates)")
        self.vit = vit
        self.depth = len(vit.blocks)
        self.embed_dim = int(vit.embed_dim)
        self.patch_size = int(vit.patch_embed.patch_size[0])
        self.layers = self._check_layers(layers)
        # norm=True applies the ViT's final LayerNorm to each intermediate map, as DINOv3's own
        # get_intermediate_layers does by default (and as the authors' released code calls it).
        self.norm = bool(norm)
        if input_mode not in DINOV3_INPUT_MODES:
            raise DGCFError(f"DINOv3 input_mode {input_mode!r} is not one of {', '.join(DINOV3_INPUT_MODES)}")
        self.input_mode = input_mode
        self.weights_source = weights_source
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.vit.requires_grad_(False)
        super().train(False)

    def _check_layers(self, layers: Sequence[int]) -> tuple[int, ...]:
        layers = tuple(int(layer) for layer in layers)
        if not layers or any(layer < 1 or layer > self.depth for layer in layers):
            raise DGCFError(f"DINOv3 layers {list(layers)} are invalid: blocks are numbered 1..{self.depth}")
        return layers

    def train(self, mode: bool = True) -> FrozenDINOv3:
        # Frozen means eval forever: a parent's model.train() must not switch us (dropout/drop-path off).
        return super().train(False)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] slice -> the ViT's 3-channel input (input_mode "imagenet": ImageNet-normalised, as DINOv3
        was trained; "release": the slice as given, repeated to 3 channels, as the authors' code does)."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"FrozenDINOv3 expects B x 1|3 x H x W, got {tuple(x.shape)}")
        if x.shape[-2] % self.patch_size or x.shape[-1] % self.patch_size:
            raise ValueError(f"FrozenDINOv3 input size {tuple(x.shape[-2:])} is not a multiple of "
                             f"{self.patch_size}")
        if self.input_mode == "release":
            # The authors' released code: the slice as given, grey repeated to 3 channels, no normalisation
            # (their feature_prepare.py and perceptual.py).
            return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        x = (x + 1.0) * 0.5  # [-1, 1] -> [0, 1], the range before DINOv3's normalisation
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grey -> RGB with equal channels (a grey photo)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: torch.Tensor, layers: Sequence[int] | None = None,
                grad: bool = False, rope_train_mode: bool = False) -> list[torch.Tensor]:
        """`rope_train_mode`: the RoPE rescale augmentation of a DINOv3 left in train mode, redrawn before every
        block (the authors' MLDP extractor; see the module docstring). Everything else stays in eval."""
        layers = self.layers if layers is None else self._check_layers(layers)
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            x = self.prepare_input(x)
            # timm wants 0-based indices; stop_early skips blocks after the last needed one.
            wanted = sorted(set(layer - 1 for layer in layers))
            if rope_train_mode:
                maps = self._intermediates_rope_redrawn(x, wanted)
            else:
                intermediates = self.vit.forward_intermediates(x, indices=wanted, intermediates_only=True,
                                                               norm=self.norm, stop_early=True, output_fmt="NCHW")
                assert isinstance(intermediates, list)  # intermediates_only: the maps alone
                maps = intermediates
            by_index = dict(zip(wanted, maps))
            return [by_index[layer - 1] for layer in layers]

    def _intermediates_rope_redrawn(self, x: torch.Tensor, wanted: list[int]) -> list[torch.Tensor]:
        """timm Eva's forward_intermediates (NCHW, prefix tokens dropped) with a new RoPE draw per block."""
        vit = self.vit
        rope = vit.rope if isinstance(vit, Eva) else None
        if not isinstance(vit, Eva) or not isinstance(rope, RotaryEmbeddingDinoV3):  # Meta's RoPE augmentation
            raise DGCFError(f"mldp vit_mode 'train' needs a DINOv3 RoPE ViT; {type(vit).__name__} has none")
        batch, _, height, width = x.shape
        grid = tuple(vit.patch_embed.dynamic_feat_size((height, width)))
        tokens, _ = vit._pos_embed(vit.patch_embed(x))  # its (eval, unaugmented) RoPE is not used
        tokens = vit.norm_pre(tokens)
        maps = []
        with _rope_augmentation(rope, RELEASE_ROPE_RESCALE):
            for index, block in enumerate(vit.blocks[:max(wanted) + 1]):
                tokens = block(tokens, rope=rope.get_embed(shape=grid))
                if index in wanted:
                    out = (vit.norm(tokens) if self.norm else tokens)[:, vit.num_prefix_tokens:]
                    maps.append(out.reshape(batch, *grid, -1).permute(0, 3, 1, 2).contiguous())
        return maps

    def extra_repr(self) -> str:
        return (f"layers={list(self.layers)}, norm={self.norm}, input_mode={self.input_mode!r}, "
                f"weights_source={self.weights_source!r}")


@contextmanager
def _rope_augmentation(rope: RotaryEmbeddingDinoV3, rescale: float):
    """timm's RotaryEmbeddingDinoV3 in train mode with Meta's rescale factor only (no shift, no jitter)."""
    saved = (rope.training, rope.shift_coords, rope.jitter_coords, rope.rescale_coords, rope.aug_active)
    rope.training, rope.shift_coords, rope.jitter_coords = True, None, None
    rope.rescale_coords, rope.aug_active = rescale, True
    try:
        yield
    finally:
        (rope.training, rope.shift_coords, rope.jitter_coords, rope.rescale_coords, rope.aug_active) = saved


def _as_cfg(dinov3_cfg: dict | DinoV3Plans | None) -> dict:
    if isinstance(dinov3_cfg, DinoV3Plans):
        return asdict(dinov3_cfg)
    return {**DEFAULT_DINOV3_CFG, **(dinov3_cfg or {})}


def create_vit(dinov3_cfg: dict | DinoV3Plans) -> nn.Module:
    """The bare timm model described by `dinov3_cfg`, randomly initialised, nothing downloaded."""
    cfg = _as_cfg(dinov3_cfg)
    name = cfg["model"]
    kwargs = dict(cfg.get("model_kwargs") or {})
    try:
        return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise DGCFError(f"cannot create DINOv3 model {name!r} with {kwargs}: {exc}") from exc


def empty_dinov3(dinov3_cfg: dict | DinoV3Plans | None, weights_source: str) -> FrozenDINOv3:
    """A frozen encoder of the right shape with random weights, to be filled by a checkpoint's state dict."""
    cfg = _as_cfg(dinov3_cfg)
    return FrozenDINOv3(create_vit(cfg), cfg["layers"], norm=cfg["norm"], weights_source=weights_source,
                        input_mode=cfg["input_mode"])


def build_dinov3(dinov3_cfg: dict | DinoV3Plans | None = None, weights: str | None = None,
                 random: bool = False) -> FrozenDINOv3:
    """Build the frozen encoder. Weights: `weights` path, else $DGCF_DINOV3_WEIGHTS, else the local HF cache.

    `random=True` skips loading (tests, the demo) and warns loudly; `weights_source` records what was used
    ("random", the file path, or "hf-cache:<path>") so trainers can store it in checkpoint metadata.
    """
    from dgcf_auto.network.dinov3_weights import load_weights_into, resolve_weights

    cfg = _as_cfg(dinov3_cfg)
    vit = create_vit(cfg)
    if random:
        if weights:
            raise DGCFError(f"both DINOv3 weights ({weights}) and --dinov3_random given: choose one")
        log.warning(RANDOM_DINOV3_WARNING)
        source = "random"
    else:
        path, source = resolve_weights(cfg["model"], weights, getattr(vit, "pretrained_cfg", {}))
        load_weights_into(vit, path)
    return FrozenDINOv3(vit, cfg["layers"], norm=cfg["norm"], weights_source=source, input_mode=cfg["input_mode"])
