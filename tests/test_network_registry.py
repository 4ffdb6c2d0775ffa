"""network/registry.py: every network declares its needs, a new one is one registration, and the trainer
variants name registered networks."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from dgcf_auto.network import NETWORKS, build_network, network_needs_dinov3, network_size_multiple, register_network
from dgcf_auto.network import registry as network_registry
from dgcf_auto.plans import NetworkPlans, TrainingPlans, network_plans, training_plans
from dgcf_auto.training.variants import TRAINERS, effective_plans


def test_every_network_declares_its_needs():
    for name, spec in NETWORKS.items():
        assert spec.description, name
        assert spec.size_multiple(NetworkPlans(architecture=name)) >= 1
    assert network_needs_dinov3({"architecture": "cross_fusion"}) and not network_needs_dinov3({"architecture": "cnn_only"})
    # the DGCN pools once per level: 2**L, and the ViT patch 16 when the ViT is used
    assert network_size_multiple({"architecture": "cross_fusion", "features": [8, 16, 32, 64, 128]}) == 32
    assert network_size_multiple({"architecture": "cnn_only", "features": [8, 16, 32]}) == 8
    assert network_size_multiple({"architecture": "vit_only", "features": [8, 16, 32]}) == 16


def test_a_new_network_is_one_registration(monkeypatch):
    monkeypatch.setattr(network_registry, "NETWORKS", NETWORKS.copy())

    @register_network("identity_net", needs_dinov3=False, size_multiple=1, description="returns its input")
    def build(plans: NetworkPlans, dinov3) -> nn.Module:
        return nn.Identity()

    net = build_network({"architecture": "identity_net"}, None)
    x = torch.rand(1, 1, 5, 7)
    assert torch.equal(net(x), x)
    with pytest.raises(ValueError, match="registered twice"):
        register_network("identity_net", needs_dinov3=False, size_multiple=1, description="")(lambda p, d: None)


def test_variants_name_registered_networks_and_set_their_loss():
    plans = {"network": NetworkPlans().to_dict(), "training": TrainingPlans().to_dict()}
    for name, variant in TRAINERS.items():
        assert variant.network in NETWORKS, name
        run = effective_plans(plans, variant, {"epochs": 7})
        assert network_plans(run).architecture == variant.network
        assert training_plans(run).epochs == 7
        if variant.loss is not None:
            assert training_plans(run).loss == variant.loss
    assert training_plans(effective_plans(plans, TRAINERS["DGCFTrainer_L1"], {})).loss == {"l1": 1.0}
