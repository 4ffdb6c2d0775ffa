"""dgcf_find_best_configuration -c 2d 3d_fullres: a slice trainer and a 3D trainer, each in the configuration it
trains, scored on the cross-validation with their ensemble (two grids: averaged in HU on each case's own grid),
and the instructions, run as written, give the winner's files."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from model_fixtures import TINY_FEATURES, data_folders
from test_configurations_compared import reproduce_the_winner

torch.set_num_threads(1)
DATASET_ID = 992
SLICES, VOLUMES = "DGCFTrainer_cnnOnly_L1", "DGCFTrainer3d"
TINY = {"epochs": 1, "iterations_per_epoch": 2, "device": "cpu", "num_workers": 0, "precision": "fp32"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Example MR dataset (5 cases) planned 2d (32 x 32) and 3d_fullres (presets shrunk to 4..8 features); the
    slice trainer in 2d and the 3D trainer in 3d_fullres, folds 0 and 1, with their float predictions."""
    from dgcf_auto.dataset.example import write_example_dataset
    from dgcf_auto.preprocessing.run import plan_and_preprocess
    from dgcf_auto.training.run import run_training

    root = tmp_path_factory.mktemp("compared3d")
    with data_folders(root):
        raw = write_example_dataset(DATASET_ID, "mr2ct", n=5, seed=5, size_scale=0.5)
        summary = plan_and_preprocess(DATASET_ID, 1, False, "5fold", {"patch_size": [32, 32],
                                                                       "features": TINY_FEATURES},
                                      progress=False, configurations=["2d", "3d_fullres"])
        plans_file = root / "DGCF_preprocessed" / raw.name / "DGCFPlans.json"
        plans = json.loads(plans_file.read_text())
        for preset in plans["configurations"]["3d_fullres"]["extra"]["presets"].values():
            preset["features"] = [4, 8, 8, 8, 8, 8, 8][:len(preset["features"])]
        plans_file.write_text(json.dumps(plans))
        for trainer, configuration in ((SLICES, "2d"), (VOLUMES, "3d_fullres")):
            for fold in (0, 1):
                run_training(DATASET_ID, configuration, fold, trainer_name=trainer, seed=fold,
                             save_probabilities=True, **TINY)
        yield {"root": root, "raw": raw, "results": root / "DGCF_results" / raw.name, "summary": summary}


@pytest.fixture(scope="module")
def best(trained):
    from dgcf_auto.cli.find_best_configuration import main

    with data_folders(trained["root"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["-d", str(DATASET_ID), "-c", "2d", "3d_fullres", "-tr", SLICES, VOLUMES, "-f", "0", "1",
                  "--disable_progress_bar"])
    assert exit_info.value.code == 0
    return json.loads((trained["results"] / "inference_information.json").read_text())


def _model(trainer, configuration):
    return f"{trainer}__DGCFPlans__{configuration}"


def test_each_trainer_is_compared_in_the_configuration_it_trains(best):
    """Four trainer x configuration pairs asked for; the two a trainer cannot train are left out, not refused."""
    ensemble = f"ensemble___{_model(SLICES, '2d')}___{_model(VOLUMES, '3d_fullres')}___0_1"
    assert list(best["all_results"]) == [_model(SLICES, "2d"), _model(VOLUMES, "3d_fullres"), ensemble]
    ranked = sorted(best["all_results"], key=best["all_results"].get)
    assert best["best_model_or_ensemble"]["identifier"] == ranked[0]


def test_the_2d_and_3d_ensemble_is_the_mean_in_hu_on_each_cases_grid(trained, best):
    ensemble = trained["results"] / "ensembles" / \
        f"ensemble___{_model(SLICES, '2d')}___{_model(VOLUMES, '3d_fullres')}___0_1"
    members = [trained["results"] / _model(SLICES, "2d") / "crossval_results_folds_0_1",
               trained["results"] / _model(VOLUMES, "3d_fullres") / "crossval_results_folds_0_1"]
    images = sorted(ensemble.glob("*.nii.gz"))
    assert images
    for image in images:
        hu = [sitk.GetArrayFromImage(sitk.ReadImage(str(m / image.name))).astype(float) for m in members]
        mine = sitk.ReadImage(str(image))
        reference = sitk.ReadImage(str(trained["raw"] / image.name.replace(".nii.gz", "") / "mr.nii.gz"))
        assert mine.GetSize() == reference.GetSize() and mine.GetSpacing() == reference.GetSpacing()
        assert np.abs(hu[0] - hu[1]).max() > 50  # two different models on two grids
        # each member rounded to int16 once, the mean of their floats rounded once more: within 1 HU
        assert np.abs(sitk.GetArrayFromImage(mine) - (hu[0] + hu[1]) / 2).max() <= 1.0 + 1e-6


@pytest.mark.parametrize("winner", ["3d_fullres", "ensemble"])
def test_running_the_instructions_reproduces_the_winners_files(trained, best, tmp_path, capsys, winner):
    from dgcf_auto.evaluation.best_configuration import inference_commands

    information = json.loads(json.dumps(best))
    chosen = [(VOLUMES, "3d_fullres")] if winner == "3d_fullres" else [(SLICES, "2d"), (VOLUMES, "3d_fullres")]
    information["best_model_or_ensemble"]["selected_model_or_models"] = [
        {"trainer": t, "plans_identifier": "DGCFPlans", "configuration": c} for t, c in chosen]
    information["commands"] = inference_commands(information)
    assert "-c 3d_fullres" in " ".join(information["commands"])
    reproduce_the_winner(information, trained, DATASET_ID, tmp_path, capsys)
