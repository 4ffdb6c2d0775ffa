"""The loss registry: every term a plans file may name in `training.loss = {"l1": 1.0, "mldp": 1.0}`.

A term is one module under `dgcf_auto/losses/` that defines an nn.Module with `forward(pred, target) ->
scalar` (pred and target B x 1 x H x W in [-1, 1], pred carrying the graph) and registers its builder:

    @register_loss("ssim", description="1 - SSIM")
    def build_ssim(ctx: LossContext) -> nn.Module: ...

plus one import line in `dgcf_auto/losses/__init__.py` (or, from another installed package, an entry point of the
group `dgcf_auto.losses` naming the module: see dgcf_auto/registry.py). `CompositeLoss` sums the weighted terms; the
trainer, logger and checkpoint iterate over whatever terms the plans name. A term registered with
`needs_mask=True` is called `term(pred, target, mask)` with the body mask (B x 1 x ... in {0, 1}); the
trainer passes `mask=` to `CompositeLoss` (the 3D trainer does; a 2D run naming such a term is one error).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from dgcf_auto.errors import DGCFError
from dgcf_auto.registry import Registry

if TYPE_CHECKING:
    from dgcf_auto.network.dinov3 import FrozenDINOv3


@dataclass
class LossContext:
    dinov3: FrozenDINOv3 | None = None   # the generator's own frozen ViT instance, when one is built
    options: dict = field(default_factory=dict)   # training.loss_options[name]
    weights: dict = field(default_factory=dict)   # user-given weight files, e.g. {"vgg": "/path/vgg19.pth"}

    def check_options(self, term: str, known: set[str]) -> None:
        """A misspelt option must not be silently ignored: one line naming it."""
        unknown = set(self.options) - known
        if unknown:
            raise DGCFError(f"loss_options.{term}: unknown option(s) {', '.join(sorted(unknown))}; "
                            f"known: {', '.join(sorted(known))}")


LossBuilder = Callable[[LossContext], nn.Module]


@dataclass(frozen=True)
class LossSpec:
    name: str
    builder: LossBuilder
    needs_dinov3: bool
    description: str
    needs_mask: bool = False


LOSSES: Registry[LossSpec] = Registry("loss term", "dgcf_auto.losses")


def register_loss(name: str, *, needs_dinov3: bool = False, description: str,
                  needs_mask: bool = False) -> Callable[[LossBuilder], LossBuilder]:
    def add(builder: LossBuilder) -> LossBuilder:
        LOSSES.register(name, LossSpec(name, builder, needs_dinov3, description, needs_mask), description=description)
        return builder
    return add


def get_loss_spec(name: str) -> LossSpec:
    spec = LOSSES.get(name)
    if not isinstance(spec, LossSpec):  # an entry point naming a function rather than the registering module
        raise DGCFError(f"loss term {name!r} was registered without @register_loss; a plugin's entry point must "
                        f"name the module that registers it")
    return spec


def active_terms(terms: dict[str, float]) -> dict[str, float]:
    """The terms with a positive weight (a zero weight switches a term off: it is not even built)."""
    for name, weight in terms.items():
        get_loss_spec(name)
        if not float(weight) >= 0:
            raise DGCFError(f"loss term {name!r} has weight {weight}; weights must be >= 0")
    return {name: float(weight) for name, weight in terms.items() if float(weight) > 0}


def loss_needs_dinov3(terms: dict[str, float]) -> bool:
    return any(get_loss_spec(name).needs_dinov3 for name in active_terms(terms))


class CompositeLoss(nn.Module):
    """sum_k weight_k * term_k(pred, target); `forward -> (total, {name: detached value})`.

    Terms needing DINOv3 get the generator's own instance, so only one ViT lives in memory.
    """

    def __init__(self, terms: dict[str, float], dinov3: FrozenDINOv3 | None = None,
                 options: dict[str, dict] | None = None, weights: dict[str, str | None] | None = None):
        super().__init__()
        self.weights = active_terms(terms)
        if not self.weights:
            raise DGCFError(f"the loss {terms} has no term with a positive weight")
        options, files = options or {}, weights or {}
        modules = {}
        for name in self.weights:
            spec = get_loss_spec(name)
            if spec.needs_dinov3 and dinov3 is None:
                raise DGCFError(f"loss term {name!r} needs the DINOv3 encoder, but none was built")
            modules[name] = spec.builder(LossContext(dinov3 if spec.needs_dinov3 else None,
                                                     dict(options.get(name, {})), files))
        self.terms = nn.ModuleDict(modules)
        self.masked = {name for name in self.weights if get_loss_spec(name).needs_mask}

    @property
    def names(self) -> list[str]:
        return list(self.weights)

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        if self.masked and mask is None:
            raise DGCFError(f"loss term(s) {', '.join(sorted(self.masked))} need the body mask, which this trainer "
                            f"does not pass")
        parts = {name: term(pred, target, mask) if name in self.masked else term(pred, target)
                 for name, term in self.terms.items()}
        total = sum(self.weights[name] * value for name, value in parts.items())
        return total, {name: value.detach() for name, value in parts.items()}

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={weight:g}" for name, weight in self.weights.items())
