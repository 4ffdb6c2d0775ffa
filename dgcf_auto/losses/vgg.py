"""The VGG perceptual loss of Table 1's "DGCN + L_VGG" row, as the authors' released code computes it.

Their `PerceptualLoss(feature_extractor="vgg")` runs torchvision's ImageNet VGG19 `features` (all 37
modules, ending with the fifth max-pool: 512 x H/32 x W/32) on the slices repeated to 3 channels, with no
ImageNet normalisation (the [-1, 1] values go in as they are), and takes the L1 (mean absolute error)
between the two feature maps. Defaults reproduce that; `layers` (indices into `features` whose outputs are
compared, averaged) and `input_mode: "imagenet"` give the classic multi-layer variant.

Known difference, not copied: `features` returns one tensor, so their loop over "layers" actually runs over
the first four *samples* of the batch; at their batch size of 4 that equals the L1 over the whole batch,
which is what we compute for any batch size.

Weights are never downloaded: a file given by `--vgg_weights`, else $DGCF_VGG_WEIGHTS, else torchvision's
own download cache ($TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth). Either a full torchvision VGG19 state
dict or just its `features.*` entries.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from dgcf_auto.errors import DGCFError
from dgcf_auto.losses.registry import LossContext, register_loss

TORCHVISION_FILE = "vgg19-dcbb9e9d.pth"  # torchvision's VGG19_Weights.IMAGENET1K_V1
VGG19_LAST = 36                          # index of the final max-pool in vgg19().features
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_MODES = ("release", "imagenet")


def torch_hub_checkpoint() -> Path:
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch")
    return Path(home) / "hub" / "checkpoints" / TORCHVISION_FILE


def resolve_vgg_weights(path: str | None) -> Path:
    candidates = [("--vgg_weights", path), ("DGCF_VGG_WEIGHTS", os.environ.get("DGCF_VGG_WEIGHTS"))]
    for origin, value in candidates:
        if value:
            if not Path(value).is_file():
                raise DGCFError(f"VGG weights {value} (from {origin}) do not exist")
            return Path(value)
    cached = torch_hub_checkpoint()
    if cached.is_file():
        return cached
    raise DGCFError(f"the vgg loss term needs torchvision's ImageNet VGG19 weights ({TORCHVISION_FILE}), "
                    f"which are never downloaded: put the file at {cached}, or pass --vgg_weights FILE "
                    f"or set DGCF_VGG_WEIGHTS")


def load_vgg19_features(path: Path) -> nn.Sequential:
    from torchvision.models import vgg19

    features = vgg19(weights=None).features
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DGCFError(f"VGG weights {path} are corrupt or not a state dict ({type(exc).__name__})") from None
    if not isinstance(state, dict):
        raise DGCFError(f"VGG weights {path} are not a state dict")
    state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    try:
        features.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise DGCFError(f"VGG weights {path} do not fit torchvision's VGG19 features: "
                        f"{str(exc).splitlines()[0][:160]}") from None
    return features


class VGGPerceptualLoss(nn.Module):
    mean: torch.Tensor  # buffers (ImageNet statistics)
    std: torch.Tensor

    def __init__(self, features: nn.Sequential, layers: Sequence[int] = (VGG19_LAST,), input_mode: str = "release"):
        super().__init__()
        layers = sorted(int(i) for i in layers)
        if not layers or layers[0] < 0 or layers[-1] >= len(features):
            raise DGCFError(f"loss_options.vgg.layers {layers}: indices must lie in 0..{len(features) - 1}")
        if input_mode not in INPUT_MODES:
            raise DGCFError(f"loss_options.vgg.input_mode {input_mode!r} is not one of {', '.join(INPUT_MODES)}")
        self.features = features[:layers[-1] + 1].requires_grad_(False)
        self.layers, self.input_mode = layers, input_mode
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        super().train(False)

    def train(self, mode: bool = True) -> VGGPerceptualLoss:
        return super().train(False)  # frozen: eval forever

    def _maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x.float().expand(-1, 3, -1, -1)
        if self.input_mode == "imagenet":
            x = ((x + 1) / 2 - self.mean) / self.std
        maps = []
        for index, module in enumerate(self.features):
            x = module(x)
            if index in self.layers:
                maps.append(x)
        return maps

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target_maps = self._maps(target)
        terms = [F.l1_loss(p, t) for p, t in zip(self._maps(pred), target_maps)]
        return torch.stack(terms).mean()

    def extra_repr(self) -> str:
        return f"layers={self.layers}, input_mode={self.input_mode!r}"


@register_loss("vgg", description="L1 between ImageNet VGG19 feature maps of sCT and CT (Table 1, + L_VGG)")
def build_vgg(ctx: LossContext) -> nn.Module:
    ctx.check_options("vgg", {"layers", "input_mode"})
    features = load_vgg19_features(resolve_vgg_weights(ctx.weights.get("vgg")))
    return VGGPerceptualLoss(features, ctx.options.get("layers", (VGG19_LAST,)),
                             ctx.options.get("input_mode", "release"))
