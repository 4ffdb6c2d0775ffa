"""The training objective of the paper, eq. (4)-(5): pixel L1 plus the Multi-Level DINOv3 Perceptual loss.

    L_MLDP = sum_i || phi_i(Y') - phi_i(Y) ||_1        i in {3, 6, 9, 12}  (eq. 4)
    L      = l1_weight * ||Y' - Y||_1 + lambda * L_MLDP  lambda = mldp_weight = 1  (eq. 5)

Every ||.||_1 is a mean absolute error (per image term and per layer term), the layer terms are summed as
eq. (4) writes (the authors' released code averages them instead, i.e. an effective lambda of 1/4).
phi(Y) is computed without gradient; phi(Y') keeps its graph so the gradient reaches Y' through the frozen
ViT, whose own parameters never receive one. mldp_weight = 0 gives the L1-only setting (no ViT pass).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from dgcf_auto.errors import DGCFError
from dgcf_auto.network.dinov3 import FrozenDINOv3


class SynthesisLoss(nn.Module):
    """`forward(pred, target) -> (total, {"l1": ..., "mldp": ...})`; pred/target B x 1 x H x W in [-1, 1].

    The parts are detached scalars for logging; `total` carries the graph. Holds the same FrozenDINOv3
    instance as the generator (pass `network.dinov3`), so only one ViT lives in memory.
    """

    def __init__(self, dinov3: FrozenDINOv3 | None, l1_weight: float = 1.0, mldp_weight: float = 1.0,
                 layers: Sequence[int] = (3, 6, 9, 12)):
        super().__init__()
        self.l1_weight = float(l1_weight)
        self.mldp_weight = float(mldp_weight)
        self.layers = tuple(int(layer) for layer in layers)
        if self.mldp_weight < 0 or self.l1_weight < 0:
            raise DGCFError(f"loss weights must be >= 0 (l1_weight={l1_weight}, mldp_weight={mldp_weight})")
        if self.mldp_weight > 0:
            if dinov3 is None:
                raise DGCFError("mldp_weight > 0 needs the DINOv3 encoder (build it, or set mldp_weight 0)")
            dinov3._check_layers(self.layers)
        self.dinov3 = dinov3 if self.mldp_weight > 0 else None

    def mldp(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Eq. (4): sum over layers of the mean absolute feature difference."""
        with torch.no_grad():
            target_features = self.dinov3(target, self.layers, grad=False)
        pred_features = self.dinov3(pred, self.layers, grad=True)
        terms = [F.l1_loss(p.float(), t.float()) for p, t in zip(pred_features, target_features)]
        return torch.stack(terms).sum()

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        l1 = F.l1_loss(pred.float(), target.float())
        if self.mldp_weight > 0:
            mldp = self.mldp(pred, target)
        else:
            mldp = torch.zeros((), device=pred.device)
        total = self.l1_weight * l1 + self.mldp_weight * mldp
        return total, {"l1": l1.detach(), "mldp": mldp.detach()}

    def extra_repr(self) -> str:
        return f"l1_weight={self.l1_weight}, mldp_weight={self.mldp_weight}, layers={list(self.layers)}"
