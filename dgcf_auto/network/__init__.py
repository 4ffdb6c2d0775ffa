"""The generator networks and the frozen DINOv3 encoder they may share with the losses.

Every network registers itself with `dgcf_auto.network.registry` from its own module; importing this
package imports each of those modules once (one line each below), so `NETWORKS` lists them all.
`build_network(plans["network"], dinov3)` builds by name: every table row is a plans setting, not a code edit.
"""
from __future__ import annotations

import importlib

from dgcf_auto.network.dinov3 import DEFAULT_DINOV3_CFG, FrozenDINOv3, build_dinov3
from dgcf_auto.network.registry import (
    NETWORKS,
    NetworkSpec,
    build_network,
    get_network_spec,
    network_needs_dinov3,
    network_size_multiple,
    register_network,
)

# One line per network module (each registers its builders when imported).
_REGISTERED_MODULES = (
    "dgcf_auto.network.dgcn",
    "dgcf_auto.network.dgcn_release",
    "dgcf_auto.network.resunet",
    "dgcf_auto.network.unetpp",
    "dgcf_auto.network.unetpp_resnet34",
    "dgcf_auto.network.transunet",
    "dgcf_auto.network.i2i_mamba",
    "dgcf_auto.network.unet3d",
)
for _module in _REGISTERED_MODULES:
    importlib.import_module(_module)

from dgcf_auto.network.dgcn import DGCN  # noqa: E402  (after the registrations, for callers' convenience)

__all__ = ["NETWORKS", "DGCN", "FrozenDINOv3", "DEFAULT_DINOV3_CFG", "NetworkSpec", "build_dinov3", "build_network",
           "get_network_spec", "network_needs_dinov3", "network_size_multiple", "register_network"]
