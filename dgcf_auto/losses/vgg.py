"""`vgg`: the VGG perceptual loss of Table 1's "DGCN + L_VGG" row, as the authors' released code computes it.

    L_VGG = mean | V(Y') - V(Y) |        V = torchvision VGG-19 `features` (all 16 convs with ReLU and the
                                          5 max-pools: B x 512 x H/32 x W/32), frozen, eval mode

Input as theirs (code_network/tools/loss/perceptual.py): the [-1, 1] slice repeated to 3 channels, no
ImageNet normalisation. Their reduction is L1 (mean) per sample over the first four samples of the batch,
averaged (their layer flags zip over the batch dimension of the single feature tensor); with their batch
size of 4, as here by default, that equals the plain mean above. We average over the whole batch.

Weights are ImageNet VGG-19 from torchvision (`vgg19-dcbb9e9d.pth`), read from a local file only: the
`--vgg-weights` path, $DGCF_VGG_WEIGHTS, or the torch hub cache (<torch hub dir>/checkpoints/). Never
downloaded; a missing file is one line saying where to put it.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from dgcf_auto.errors import DGCFError

VGG_WEIGHTS_ENV = "DGCF_VGG_WEIGHTS"
VGG19_FILE = "vgg19-dcbb9e9d.pth"  # torchvision's IMAGENET1K_V1 file name (what vgg19(pretrained=True) loads)


def hub_cache_file() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE


def resolve_vgg_weights(given: str | None) -> Path:
    for path, origin in ((given, "--vgg-weights"), (os.environ.get(VGG_WEIGHTS_ENV), VGG_WEIGHTS_ENV)):
        if path:
            path = Path(path).expanduser()
            if not path.is_file():
                raise DGCFError(f"VGG-19 weights file {path} (from {origin}) does not exist")
            return path
    cached = hub_cache_file()
    if cached.is_file():
        return cached
    raise DGCFError(f"the vgg loss needs torchvision's ImageNet VGG-19 weights ({VGG19_FILE}, never downloaded "
                    f"here): put the file at {cached}, or pass --vgg-weights FILE, or set {VGG_WEIGHTS_ENV}=FILE")


def load_vgg19_features(path: Path) -> nn.Module:
    """torchvision's vgg19().features with the file's weights (strict), frozen and in eval mode."""
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["E"], batch_norm=False)  # == vgg19().features, without the 120M-weight head
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DGCFError(f"VGG-19 weights file {path} is corrupt or not a PyTorch state_dict "
                        f"({type(exc).__name__})") from None
    if not isinstance(state, dict):
        raise DGCFError(f"VGG-19 weights file {path} is not a state_dict")
    wanted = {k[len("features."):]: v for k, v in state.items() if isinstance(k, str) and k.startswith("features.")}
    try:
        features.load_state_dict(wanted, strict=True)
    except RuntimeError as exc:
        raise DGCFError(f"VGG-19 weights file {path} does not fit torchvision's vgg19 features: "
                        f"{str(exc).splitlines()[0][:160]}") from None
    features.requires_grad_(False)
    return features.eval()


class VGGPerceptualLoss(nn.Module):
    """forward(pred, target) -> mean |V(pred) - V(target)|; gradient reaches pred, never VGG."""

    def __init__(self, features: nn.Module):
        super().__init__()
        self.features = features
        self.features.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "VGGPerceptualLoss":
        return super().train(False)  # frozen feature extractor: always eval

    @staticmethod
    def _rgb(x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target_features = self.features(self._rgb(target))
        return F.l1_loss(self.features(self._rgb(pred)).float(), target_features.float())
