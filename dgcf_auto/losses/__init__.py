"""Training loss terms, by name (`training.loss` in the plans), and `CompositeLoss` that sums them.

Each term registers itself from its own module; one import line per module below.
"""
from __future__ import annotations

import importlib

from dgcf_auto.losses.registry import (
    LOSSES,
    CompositeLoss,
    LossContext,
    LossSpec,
    get_loss_spec,
    loss_needs_dinov3,
    register_loss,
)

_REGISTERED_MODULES = (
    "dgcf_auto.losses.l1",
    "dgcf_auto.losses.masked_l1",
    "dgcf_auto.losses.mldp",
    "dgcf_auto.losses.ssim",
    "dgcf_auto.losses.vgg",
)
for _module in _REGISTERED_MODULES:
    importlib.import_module(_module)

__all__ = ["LOSSES", "CompositeLoss", "LossContext", "LossSpec", "get_loss_spec", "loss_needs_dinov3",
           "register_loss"]
