"""The generator networks: the frozen DINOv3 encoder and the DGCN with its ablation variants.

`build_network(network_plans, dinov3)` builds by name from the `NETWORKS` registry, so every row of the
paper's Table 2 is a plans setting (`plans["network"]["architecture"]`), not a code edit.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from dgcf_auto.errors import DGCFError
from dgcf_auto.network.dgcn import ARCHITECTURES, DGCN
from dgcf_auto.network.dinov3 import DEFAULT_DINOV3_CFG, FrozenDINOv3, build_dinov3

NetworkBuilder = Callable[[dict, "FrozenDINOv3 | None"], nn.Module]
NETWORKS: dict[str, NetworkBuilder] = {}


def register_network(name: str) -> Callable[[NetworkBuilder], NetworkBuilder]:
    """Decorator adding a builder `(network_plans, dinov3) -> nn.Module` to NETWORKS under `name`."""
    def add(builder: NetworkBuilder) -> NetworkBuilder:
        NETWORKS[name] = builder
        return builder
    return add


def needs_dinov3(network_plans: dict) -> bool:
    """Whether the generator itself runs the ViT (the MLDP loss may need it regardless)."""
    return network_plans.get("architecture", "cross_fusion") != "cnn_only"


def _dgcn_builder(architecture: str) -> NetworkBuilder:
    def build(network_plans: dict, dinov3: FrozenDINOv3 | None) -> nn.Module:
        features = network_plans.get("features", [64, 128, 256, 512])
        return DGCN(architecture, features, dinov3 if architecture != "cnn_only" else None,
                    in_channels=int(network_plans.get("in_channels", 1)),
                    out_channels=int(network_plans.get("out_channels", 1)))
    build.__name__ = f"build_{architecture}"
    return build


for _name in ARCHITECTURES:
    register_network(_name)(_dgcn_builder(_name))


def build_network(network_plans: dict, dinov3: FrozenDINOv3 | None) -> nn.Module:
    """The generator named by `network_plans["architecture"]` (default "cross_fusion").

    The returned module holds the very `dinov3` instance passed in (not a copy), except `cnn_only`,
    which holds none. Plans problems raise DGCFError.
    """
    name = network_plans.get("architecture", "cross_fusion")
    if name not in NETWORKS:
        raise DGCFError(f"unknown network architecture {name!r} in plans; known: {', '.join(sorted(NETWORKS))}")
    if needs_dinov3(network_plans) and dinov3 is None:
        raise DGCFError(f"network architecture {name!r} needs the DINOv3 encoder, but none was built")
    try:
        return NETWORKS[name](network_plans, dinov3)
    except ValueError as exc:
        raise DGCFError(f"cannot build network {name!r}: {exc}") from exc


__all__ = ["NETWORKS", "DGCN", "FrozenDINOv3", "DEFAULT_DINOV3_CFG", "build_dinov3", "build_network",
           "needs_dinov3", "register_network"]
