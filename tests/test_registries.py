"""Typed plans (defaults defined once, old plans files still read) and the network registry."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from dgcf_auto.errors import DGCFError
from dgcf_auto.network import NETWORKS, build_network, network_needs_dinov3, network_size_multiple, register_network
from dgcf_auto.network import registry as network_registry
from dgcf_auto.plans import (SCHEDULES, NetworkPlans, TrainingPlans, apply_schedule, network_plans,
                             training_plans)
from dgcf_auto.training.variants import TRAINERS, effective_plans


def test_plans_defaults_are_the_papers_settings():
    net, training = NetworkPlans(), TrainingPlans()
    assert net.architecture == "cross_fusion" and net.features == [64, 128, 256, 512]
    assert net.dinov3.model == "vit_base_patch16_dinov3" and net.dinov3.layers == [3, 6, 9, 12]
    assert net.dinov3.input_mode == "imagenet"
    assert (training.batch_size, training.learning_rate, training.epochs) == (4, 2e-4, 100)
    assert training.loss == {"l1": 1.0, "mldp": 1.0} and training.lr_scheduler is None
    assert training.loss_options["mldp"] == {"layers": [3, 6, 9, 12], "reduction": "sum"}
    # mutable defaults are not shared between instances
    TrainingPlans().loss["l1"] = 5.0
    assert TrainingPlans().loss["l1"] == 1.0


def test_missing_fields_take_the_defaults_and_unknown_fields_are_errors():
    plans = {"network": {"architecture": "cnn_only"}, "training": {"epochs": 3, "derived_from": {}}}
    assert network_plans(plans).features == [64, 128, 256, 512]
    assert network_plans(plans).dinov3.layers == [3, 6, 9, 12]
    assert training_plans(plans).epochs == 3 and training_plans(plans).batch_size == 4
    with pytest.raises(DGCFError, match="plans section 'training' has unknown field"):
        training_plans({"training": {"epoch": 3}})
    with pytest.raises(DGCFError, match="input_mode 'rgb'"):
        network_plans({"network": {"dinov3": {"input_mode": "rgb"}}})


def test_plans_written_before_the_loss_registry_read_as_loss_terms():
    old = {"training": {"l1_weight": 1.0, "mldp_weight": 0.0, "mldp_layers": [1, 2, 3, 4], "epochs": 2}}
    training = training_plans(old)
    assert training.loss == {"l1": 1.0}
    assert training.loss_options == {"mldp": {"layers": [1, 2, 3, 4], "reduction": "sum"}}
    assert training_plans({"training": {"l1_weight": 1.0, "mldp_weight": 0.5}}).loss == {"l1": 1.0, "mldp": 0.5}


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


def test_named_schedules_write_their_values():
    training = TrainingPlans().to_dict()
    for name, values in SCHEDULES.items():
        apply_schedule(training, name)
        assert training_plans({"training": training}).schedule == name
        assert training["epochs"] == values["epochs"] and training["lr_scheduler"] == values["lr_scheduler"]
    with pytest.raises(DGCFError, match="unknown schedule 'fast'"):
        apply_schedule(training, "fast")
