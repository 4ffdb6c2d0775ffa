"""Optimisers and learning-rate schedulers by the names a plans file gives them.

`training.optimizer` names an entry of `OPTIMIZERS` ("adam": the paper's; "sgd": nnU-Net v2's), with
`training.optimizer_options` overriding that entry's defaults; `training.lr_scheduler` (None: a constant
rate) names an entry of `SCHEDULERS` ("step": the authors' StepLR; "poly": nnU-Net v2's PolyLR). Both are
stepped per epoch. An unknown name is one DGCFError naming the plans field and the known names.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from dgcf_auto.errors import DGCFError
from dgcf_auto.plans import TrainingPlans
from dgcf_auto.registry import Registry


def _builder(registry: Registry, field: str, name: str) -> Callable:
    """The builder registered as `name`; an unknown name is one DGCFError naming the plans field."""
    if name not in registry.names():
        raise DGCFError(f"{field} {name!r} is not a known {registry.kind}; known: {', '.join(registry.names())}")
    return registry.get(name)


# A lab's own optimiser or scheduler: an entry point of the group dgcf_auto.optimizers / dgcf_auto.schedulers
# naming a module whose builders register here (registry.py).
OPTIMIZERS: Registry[Callable] = Registry("optimiser", "dgcf_auto.optimizers")
SCHEDULERS: Registry[Callable] = Registry("learning-rate scheduler", "dgcf_auto.schedulers")


@OPTIMIZERS.register("adam")
def adam(parameters: Iterable, training: TrainingPlans, **options) -> torch.optim.Optimizer:
    """Adam with the plans' learning_rate and adam_betas (the paper's, section 3.1)."""
    beta1, beta2 = training.adam_betas
    return torch.optim.Adam(parameters, lr=training.learning_rate, betas=(beta1, beta2), **options)


# nnU-Net v2's nnUNetTrainer.configure_optimizers: SGD, momentum 0.99, Nesterov, weight decay 3e-5 (its initial
# learning rate, 1e-2, is the plans' learning_rate here).
SGD_DEFAULTS = {"momentum": 0.99, "nesterov": True, "weight_decay": 3e-5}


@OPTIMIZERS.register("sgd")
def sgd(parameters: Iterable, training: TrainingPlans, **options) -> torch.optim.Optimizer:
    """SGD as nnU-Net v2: momentum 0.99, Nesterov, weight decay 3e-5; the plans' learning_rate."""
    return torch.optim.SGD(parameters, lr=training.learning_rate, **{**SGD_DEFAULTS, **options})


@SCHEDULERS.register("step")
def step(optimizer: torch.optim.Optimizer, config: dict, epochs: int):
    """StepLR: the rate times gamma every step_size epochs (the authors' 'step' lr_policy)."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(config["step_size"]),
                                           gamma=float(config["gamma"]))


@SCHEDULERS.register("poly")
def poly(optimizer: torch.optim.Optimizer, config: dict, epochs: int):
    """PolyLR as nnU-Net v2: lr0 * (1 - epoch / epochs) ** exponent (exponent 0.9 by default)."""
    return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=epochs,
                                                 power=float(config.get("exponent", 0.9)))


def build_optimizer(parameters: Iterable, training: TrainingPlans) -> torch.optim.Optimizer:
    builder = _builder(OPTIMIZERS, "training.optimizer", training.optimizer)
    try:
        return builder(parameters, training, **training.optimizer_options)
    except TypeError as exc:
        raise DGCFError(f"training.optimizer_options {training.optimizer_options} do not fit optimiser "
                        f"{training.optimizer!r} ({exc})") from None


def build_scheduler(optimizer: torch.optim.Optimizer, training: TrainingPlans, epochs: int):
    """None (a constant learning rate) or the plans' per-epoch scheduler over `epochs` epochs."""
    config = training.lr_scheduler
    if config is None:
        return None
    if not isinstance(config, dict) or "name" not in config:
        raise DGCFError(f"training.lr_scheduler {config!r}: give null or {{'name': one of "
                        f"{', '.join(SCHEDULERS.names())}, ...}}")
    try:
        return _builder(SCHEDULERS, "training.lr_scheduler", config["name"])(optimizer, config, epochs)
    except (KeyError, TypeError, ValueError) as exc:
        raise DGCFError(f"training.lr_scheduler {config}: {type(exc).__name__}: {exc}") from None
