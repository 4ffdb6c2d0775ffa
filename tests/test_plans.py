"""plans.py's typed sections: defaults defined once, old plans files still read, named schedules."""
from __future__ import annotations

import pytest

from dgcf_auto.errors import DGCFError
from dgcf_auto.plans import SCHEDULES, NetworkPlans, TrainingPlans, apply_schedule, network_plans, training_plans


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


def test_named_schedules_write_their_values():
    training = TrainingPlans().to_dict()
    for name, values in SCHEDULES.items():
        apply_schedule(training, name)
        assert training_plans({"training": training}).schedule == name
        assert training["epochs"] == values["epochs"] and training["lr_scheduler"] == values["lr_scheduler"]
    with pytest.raises(DGCFError, match="unknown schedule 'fast'"):
        apply_schedule(training, "fast")
