"""The network registry: every generator the trainer and predictor can build, by name.

A network is one module under `dgcf_auto/network/` that defines its nn.Module and registers a builder:

    @register_network("resunet", needs_dinov3=False, size_multiple=8, description="...")
    def build_resunet(plans: NetworkPlans, dinov3: FrozenDINOv3 | None) -> nn.Module: ...

plus one import line in `dgcf_auto/network/__init__.py` (or, from another installed package, an entry point of
the group `dgcf_auto.networks` naming the module: see dgcf_auto/registry.py). The registration declares what
the rest of the pipeline must know without building the network: whether it runs the frozen DINOv3 (the trainer and
predictor build the ViT only then, or when a loss term needs it) and the multiple the slice size must be
(the planner plans the patch size from it, so a planned size can never fail the first forward pass).
"""
from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch.nn as nn

from dgcf_auto.errors import DGCFError
from dgcf_auto.plans import NetworkPlans, network_plans
from dgcf_auto.registry import Registry

if TYPE_CHECKING:
    from dgcf_auto.network.dinov3 import FrozenDINOv3

# (plans, the frozen DINOv3 or None): a builder that needs no ViT may annotate its second argument None
NetworkBuilder = Callable[[NetworkPlans, Any], nn.Module]
SizeMultiple = int | Callable[[NetworkPlans], int]


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    builder: NetworkBuilder
    needs_dinov3: bool
    multiple: SizeMultiple
    description: str
    spatial_dims: int = 2   # 2: slices (the 2d planner sizes slices for it); 3: patches (planning/plan_3d.py)

    def size_multiple(self, plans: NetworkPlans) -> int:
        """H and W of the network's input must be multiples of this (for these plans' depth)."""
        return int(self.multiple(plans) if callable(self.multiple) else self.multiple)


NETWORKS: Registry[NetworkSpec] = Registry("network architecture", "dgcf_auto.networks")
# True while a network is built only to receive a checkpoint's weights: builders that would otherwise look
# for pretrained weights (TransUNet's ImageNet encoder) skip that search and its warning.
_FOR_CHECKPOINT = contextvars.ContextVar("dgcf_for_checkpoint", default=False)


def weights_come_from_checkpoint() -> bool:
    return _FOR_CHECKPOINT.get()


def register_network(name: str, *, needs_dinov3: bool, size_multiple: SizeMultiple,
                     description: str, spatial_dims: int = 2) -> Callable[[NetworkBuilder], NetworkBuilder]:
    def add(builder: NetworkBuilder) -> NetworkBuilder:
        NETWORKS.register(name, NetworkSpec(name, builder, needs_dinov3, size_multiple, description, spatial_dims),
                          description=description)
        return builder
    return add


def get_network_spec(name: str) -> NetworkSpec:
    spec = NETWORKS.get(name)
    if not isinstance(spec, NetworkSpec):  # an entry point naming a function rather than the registering module
        raise DGCFError(f"network architecture {name!r} was registered without @register_network (its needs and "
                        f"size multiple are unknown); a plugin's entry point must name the module that registers it")
    return spec


def network_size_multiple(plans: dict | NetworkPlans) -> int:
    plans = network_plans(plans)
    return get_network_spec(plans.architecture).size_multiple(plans)


def network_needs_dinov3(plans: dict | NetworkPlans) -> bool:
    """Whether the generator itself runs the frozen ViT (a loss term may need it regardless)."""
    return get_network_spec(network_plans(plans).architecture).needs_dinov3


def build_network(plans: dict | NetworkPlans, dinov3: FrozenDINOv3 | None, for_checkpoint: bool = False) -> nn.Module:
    """The generator the network plans name, initialised as `plans.init` says. It holds the very `dinov3`
    passed in (not a copy) when it needs one; plans problems raise DGCFError. `for_checkpoint`: a
    checkpoint's weights are loaded next, so no pretrained weights are looked for and no init is drawn."""
    plans = network_plans(plans)
    spec = get_network_spec(plans.architecture)
    if spec.needs_dinov3 and dinov3 is None:
        raise DGCFError(f"network architecture {spec.name!r} needs the DINOv3 encoder, but none was built")
    token = _FOR_CHECKPOINT.set(for_checkpoint)
    try:
        net = spec.builder(plans, dinov3 if spec.needs_dinov3 else None)
    except (ValueError, TypeError) as exc:
        raise DGCFError(f"cannot build network {spec.name!r}: {exc}") from exc
    finally:
        _FOR_CHECKPOINT.reset(token)
    if for_checkpoint:  # the checkpoint's weights replace whatever the start was
        return net
    from dgcf_auto.network.initialization import initialise

    return initialise(net, plans.init)
