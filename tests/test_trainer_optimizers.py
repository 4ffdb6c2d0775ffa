"""training/optimizers.py and the trainer's seams: the plans' optimiser and scheduler are the ones that train."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dgcf_auto.errors import DGCFError
from dgcf_auto.plans import TrainingPlans
from dgcf_auto.training.dataloading import open_case
from dgcf_auto.training.optimizers import OPTIMIZERS, SCHEDULERS, build_optimizer, build_scheduler
from dgcf_auto.training.run import load_preprocessed, run_training
from dgcf_auto.training.variants import TRAINERS, effective_plans

pytestmark = pytest.mark.filterwarnings("ignore:DINOv3 is RANDOMLY INITIALISED")


def test_registries_name_nnunets_sgd_and_polylr():
    assert OPTIMIZERS.names() == ["adam", "sgd"] and SCHEDULERS.names() == ["step", "poly"]
    parameter = torch.nn.Parameter(torch.zeros(3))
    training = TrainingPlans(optimizer="sgd", learning_rate=1e-2, lr_scheduler={"name": "poly"})
    optimizer = build_optimizer([parameter], training)
    assert type(optimizer) is torch.optim.SGD
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (1e-2, 0.99, True, 3e-5)
    tuned = build_optimizer([parameter], TrainingPlans(optimizer="sgd", optimizer_options={"momentum": 0.9}))
    assert tuned.param_groups[0]["momentum"] == 0.9 and tuned.param_groups[0]["nesterov"] is True
    scheduler = build_scheduler(optimizer, training, epochs=7)
    rates = []
    for _ in range(7):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([1e-2 * (1 - e / 7) ** 0.9 for e in range(7)], rel=1e-9)


@pytest.mark.parametrize("section, message", [
    ({"optimizer": "rmsprop"}, "training.optimizer 'rmsprop' is not a known optimiser; known: adam, sgd"),
    ({"lr_scheduler": {"name": "cosine"}},
     "training.lr_scheduler 'cosine' is not a known learning-rate scheduler; known: step, poly"),
    ({"optimizer": "sgd", "optimizer_options": {"betas": [0.9, 0.99]}},
     "training.optimizer_options {'betas': [0.9, 0.99]} do not fit optimiser 'sgd'"),
])
def test_unknown_names_are_one_error_naming_the_field(section, message):
    training = TrainingPlans(**section)
    with pytest.raises(DGCFError) as error:
        build_scheduler(build_optimizer([torch.nn.Parameter(torch.zeros(1))], training), training, 3)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_plans_file_saying_sgd_and_poly_trains_with_them(data_env, tmp_path):
    from dgcf_auto.training.trainer import DGCFTrainer, TrainingSettings

    _, plans, splits, data_folder = load_preprocessed(999, "DGCFPlans")
    variant = TRAINERS["DGCFTrainer_cnnOnly_L1"]
    run_plans = effective_plans(plans, variant, {})
    run_plans["training"].update(optimizer="sgd", learning_rate=1e-2, lr_scheduler={"name": "poly", "exponent": 0.9})
    cases = [open_case(data_folder, n) for n in splits[0]["train"]]
    settings = TrainingSettings(epochs=4, batch_size=2, iterations_per_epoch=1, num_workers=0)
    trainer = DGCFTrainer(variant, run_plans, settings, cases, [], tmp_path / "out", torch.device("cpu"))
    trainer.initialize()
    assert type(trainer.optimizer) is torch.optim.SGD
    group = trainer.optimizer.param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.99, True, 3e-5)
    trainer.run()
    history = torch.load(tmp_path / "out" / "checkpoint_final.pth", weights_only=True)["logger"]["history"]
    assert history["lr"] == pytest.approx([1e-2 * (1 - e / 4) ** 0.9 for e in range(4)], rel=1e-9)


def test_an_unknown_optimiser_in_the_plans_stops_dgcf_train_before_training(data_env, tmp_path):
    plans_file = data_env[0] / "pre" / "Dataset999_Example" / "DGCFPlans.json"
    original = plans_file.read_text()
    plans = json.loads(original)
    plans["training"]["optimizer"] = "adamw_typo"
    plans_file.write_text(json.dumps(plans))
    try:
        with pytest.raises(DGCFError, match=r"DGCFPlans.json: field training.optimizer: 'adamw_typo' is not offered "
                                            r"\(known: adam, sgd\)"):
            run_training(999, "2d", "1", epochs=1, iterations_per_epoch=1, device="cpu", num_workers=0,
                         dinov3_random=True, validation="none")
    finally:
        plans_file.write_text(original)
    assert not list((data_env[0] / "res").rglob("fold_1/*.pth"))


def test_training_settings_carry_every_dgcf_train_flag(monkeypatch):
    """The command line fills TrainingSettings by field name (nnU-Net's --c and --npz renamed); run_training
    takes the object, or its fields as keywords."""
    import inspect

    from dgcf_auto.cli.train import build_parser, main
    from dgcf_auto.training import run as run_module
    from dgcf_auto.training.trainer import TrainingSettings

    seen = {}
    monkeypatch.setattr(run_module, "run_training", lambda *args, **kwargs: seen.update(args=args, **kwargs))
    with pytest.raises(SystemExit):
        main(["7", "2d", "fold1", "-tr", "DGCFTrainer_resunet_L1", "-device", "cpu", "--c", "--npz", "--epochs", "5",
              "--batch_size", "6", "--iterations_per_epoch", "9", "--seed", "11", "--num_workers", "0",
              "--val_every", "2", "--compile", "--dinov3_random", "--precision", "fp32", "--vgg_weights", "v.pth",
              "--best_metric", "ssim", "--tensorboard", "--no_final_validation", "--dinov3_weights", "d.pth"])
    assert seen["args"] == ("7", "2d", "fold1") and seen["trainer_name"] == "DGCFTrainer_resunet_L1"
    assert seen["settings"] == TrainingSettings(
        epochs=5, batch_size=6, iterations_per_epoch=9, seed=11, num_workers=0, val_every=2, compile=True,
        dinov3_weights="d.pth", dinov3_random=True, precision="fp32", vgg_weights="v.pth", best_metric="ssim",
        tensorboard=True, device="cpu", continue_training=True, save_probabilities=True, validation="none")
    dests = {action.dest for action in build_parser()._actions}
    renamed = {"continue_training", "save_probabilities", "validation", "pretrained_weights_sha256"}
    fields = set(inspect.signature(TrainingSettings).parameters)
    assert fields - renamed <= dests  # every other field is a flag of its own name
    with pytest.raises(TypeError, match="unexpected keyword argument 'epoch'"):
        run_training(999, "2d", 0, epoch=3)


def test_fold_cases_takes_parsed_folds_only():
    from dgcf_auto.training.run import fold_cases

    splits = [{"train": ["a", "b"], "val": ["c"]}, {"train": ["a", "c"], "val": ["b"]}]
    assert fold_cases(splits, 1, Path("splits_final.json")) == (["a", "c"], ["b"])
    assert fold_cases(splits, "all", Path("splits_final.json")) == (["a", "b", "c"], [])
    for fold in (2, -1, "1"):  # "1" is parse_fold's input, not its output
        with pytest.raises(DGCFError, match=f"fold {fold} does not exist: splits_final.json has 2 folds"):
            fold_cases(splits, fold, Path("splits_final.json"))


@pytest.mark.parametrize("unresolved", ["epochs", "batch_size", "iterations_per_epoch"])
def test_a_trainer_refuses_settings_run_training_did_not_resolve(unresolved, tmp_path):
    from dgcf_auto.training.trainer import DGCFTrainer, TrainingSettings
    from dgcf_auto.training.variants import TRAINERS

    resolved = {"epochs": 2, "batch_size": 2, "iterations_per_epoch": 3}
    settings = TrainingSettings(**{**resolved, unresolved: None})
    with pytest.raises(ValueError, match=f"TrainingSettings.{unresolved} is None"):
        DGCFTrainer(TRAINERS["DGCFTrainer"], {}, settings, [], [], tmp_path / "out", torch.device("cpu"))
    assert not (tmp_path / "out").exists()  # refused before the log folder is made
