"""Across configurations: dgcf_find_best_configuration -c 2d 2.5d (models, ensembles, instructions that
reproduce the winner's files when run) and dgcf_ensemble of models on different grids (averaged in HU on the
input grid)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from model_fixtures import TINY_FEATURES, data_folders, run_cli, save_tiny_folds
from test_find_best_configuration import _run_instructions, assert_instructions_reproduce

torch.set_num_threads(1)
DATASET_ID = 991
TRAINER = "DGCFTrainer_cnnOnly_L1"
CONFIGURATIONS = ("2d", "2.5d")
TINY = {"epochs": 1, "iterations_per_epoch": 2, "device": "cpu", "num_workers": 0, "precision": "fp32"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Example MR dataset (6 cases) at 32 x 32; one trainer in 2d and in 2.5d (3-slice slabs), folds 0 and 1,
    with the final validation's float predictions (--npz)."""
    from dgcf_auto.dataset.example import write_example_dataset
    from dgcf_auto.preprocessing.run import plan_and_preprocess
    from dgcf_auto.training.run import run_training

    root = tmp_path_factory.mktemp("compared")
    with data_folders(root):
        raw = write_example_dataset(DATASET_ID, "mr2ct", n=6, seed=11, size_scale=0.5)
        plan_and_preprocess(DATASET_ID, 1, False, "5fold",
                            {"patch_size": [32, 32], "features": TINY_FEATURES, "slab_size": 3}, progress=False)
        for configuration in CONFIGURATIONS:
            for fold in (0, 1):
                run_training(DATASET_ID, configuration, fold, trainer_name=TRAINER, seed=fold,
                             save_probabilities=True, **TINY)
        yield {"root": root, "raw": raw, "results": root / "DGCF_results" / raw.name}


@pytest.fixture(scope="module")
def best(trained):
    from dgcf_auto.cli.find_best_configuration import main

    with data_folders(trained["root"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["-d", str(DATASET_ID), "-c", *CONFIGURATIONS, "-tr", TRAINER, "-f", "0", "1",
                  "--disable_progress_bar"])
    assert exit_info.value.code == 0
    return json.loads((trained["results"] / "inference_information.json").read_text())


def _model(configuration):
    return f"{TRAINER}__DGCFPlans__{configuration}"


def test_models_are_trainer_by_configuration_and_their_ensemble(trained, best):
    ensemble = f"ensemble___{_model('2d')}___{_model('2.5d')}___0_1"
    assert list(best["all_results"]) == [_model("2d"), _model("2.5d"), ensemble]
    assert [m["configuration"] for m in best["considered_models"]] == list(CONFIGURATIONS)
    for configuration in CONFIGURATIONS:
        summary = json.loads((trained["results"] / _model(configuration) / "crossval_results_folds_0_1" /
                              "summary.json").read_text())
        assert summary["configuration"] == configuration
        assert best["all_results"][_model(configuration)] == summary["mean"]["mae"]
    ranked = sorted(best["all_results"], key=best["all_results"].get)
    assert best["best_model_or_ensemble"]["identifier"] == ranked[0]
    ensemble_summary = json.loads((trained["results"] / "ensembles" / ensemble / "summary.json").read_text())
    assert ensemble_summary["configuration"] == "2d+2.5d"


def test_2d_and_25d_ensemble_is_the_mean_of_the_two_on_their_shared_grid(trained, best):
    ensemble = trained["results"] / "ensembles" / f"ensemble___{_model('2d')}___{_model('2.5d')}___0_1"
    members = [trained["results"] / _model(c) / "crossval_results_folds_0_1" for c in CONFIGURATIONS]
    record = json.loads((ensemble / "ensemble_information.json").read_text())
    assert record["averaged"].startswith("normalised")  # 2.5d's slabs are 2d's slices: one grid
    images = sorted(ensemble.glob("*.nii.gz"))
    assert len(images) == 3
    for image in images:
        hu = [sitk.GetArrayFromImage(sitk.ReadImage(str(m / image.name))).astype(float) for m in members]
        mine = sitk.GetArrayFromImage(sitk.ReadImage(str(image))).astype(float)
        assert np.abs(hu[0] - hu[1]).max() > 50  # two different models
        assert np.abs(mine - (hu[0] + hu[1]) / 2).max() <= 1.0 + 1e-6


@pytest.mark.parametrize("winner", ["chosen", "2.5d", "ensemble"])
def test_running_the_instructions_reproduces_the_winners_files(trained, best, tmp_path, capsys, winner):
    """The instructions, run as written, give the files of the winner predicted directly (2.5d alone, and the
    2d + 2.5d ensemble, whichever won on these random models)."""
    from dgcf_auto.evaluation.best_configuration import inference_commands

    information = json.loads(json.dumps(best))
    if winner != "chosen":
        chosen = ["2.5d"] if winner == "2.5d" else list(CONFIGURATIONS)
        information["best_model_or_ensemble"]["selected_model_or_models"] = [
            {"trainer": TRAINER, "plans_identifier": "DGCFPlans", "configuration": c} for c in chosen]
        information["commands"] = inference_commands(information)
    selected = information["best_model_or_ensemble"]["selected_model_or_models"]
    assert all(f"-c {m['configuration']}" in information["commands"][i] for i, m in enumerate(selected))
    reproduce_the_winner(information, trained, DATASET_ID, tmp_path, capsys)


def reproduce_the_winner(information: dict, trained: dict, dataset_id: int, tmp_path, capsys) -> None:
    """Two of the raw cases through the instructions as written and through each selected model directly: the
    instructions' files are the winner's."""
    from dgcf_auto.inference.api import predict

    cases = sorted(p.name for p in trained["raw"].iterdir() if p.is_dir())[:2]
    for case in cases:
        shutil.copytree(trained["raw"] / case, tmp_path / "input" / case)
    with data_folders(trained["root"]):
        outputs = _run_instructions(information["commands"], tmp_path / "input", tmp_path, capsys)
        direct = []
        for index, model in enumerate(information["best_model_or_ensemble"]["selected_model_or_models"]):
            direct.append(tmp_path / f"direct{index}")
            predict(tmp_path / "input", direct[-1], model=dataset_id, folds=[0, 1], trainer=model["trainer"],
                    configuration=model["configuration"], device="cpu", progress=False)
    assert_instructions_reproduce(outputs["OUTPUT_FOLDER"], direct, tmp_path / "input", cases)


def test_a_configuration_without_a_trained_model_is_one_line(trained, capsys):
    with data_folders(trained["root"]):
        # the slice trainer has no 3d_fullres model by design (left out); the 3D trainer's was never trained
        code, _, err = run_cli("find_best_configuration", ["-d", str(DATASET_ID), "-c", "2d", "3d_fullres", "-tr",
                                                           TRAINER, "DGCFTrainer3d", "-f", "0", "1"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "trainer DGCFTrainer3d (3d_fullres): no trained model" in err and f"dgcf_train {DATASET_ID} 3d_fullres" in err


# ------------------------------------------------------------------ dgcf_ensemble across grids
@pytest.fixture(scope="module")
def two_grids(tmp_path_factory):
    """Two 'models' of one dataset whose predictions lie on different grids (another in-plane spacing and
    slice size, as 2d and 3d_fullres do), predicted with --save_probabilities."""
    root = tmp_path_factory.mktemp("two_grids")
    with data_folders(root):
        from dgcf_auto.dataset.example import write_example_dataset
        from dgcf_auto.inference.api import predict
        from dgcf_auto.preprocessing.run import plan_and_preprocess

        raw = write_example_dataset(990, "mr2ct", n=2, seed=5)
        plans = plan_and_preprocess(990, num_processes=1, preprocess=False, progress=False,
                                    overrides={"patch_size": [32, 32], "features": TINY_FEATURES})["plans"]
        coarse = json.loads(json.dumps(plans))
        grid = coarse["configurations"]["2d"]
        grid["inplane_spacing"] = [s * 1.5 for s in grid["inplane_spacing"]]
        grid["patch_size"] = [48, 48]
        outputs = {}
        for fold, (name, model_plans) in enumerate((("fine", plans), ("coarse", coarse))):  # other weights too
            folder = root / "DGCF_results" / raw.name / f"Model{name}__DGCFPlans__2d"
            save_tiny_folds(folder, model_plans, folds=(fold,))
            outputs[name] = root / f"pred_{name}"
            predict(raw, outputs[name], model=folder, folds=[fold], device="cpu", tta=False, precision="fp32",
                    save_probabilities=True, progress=False)
        yield {"raw": raw, "out": outputs, "cases": sorted(p.name for p in raw.iterdir() if p.is_dir())}


def test_ensemble_of_different_grids_is_the_mean_in_hu_on_the_input_grid(two_grids, tmp_path, capsys):
    fine, coarse = two_grids["out"]["fine"], two_grids["out"]["coarse"]
    code, _, err = run_cli("ensemble", ["-i", str(fine), str(coarse), "-o", str(tmp_path / "mixed")], capsys)
    assert code == 0, err
    record = json.loads((tmp_path / "mixed" / "ensemble_information.json").read_text())
    assert record["averaged"].startswith("HU on each case's original grid")
    for case in two_grids["cases"]:
        with np.load(fine / f"{case}.npz") as a, np.load(coarse / f"{case}.npz") as b:
            assert a["sct"].shape != b["sct"].shape  # no slice-by-slice average exists
        source = sitk.ReadImage(str(two_grids["raw"] / case / "mr.nii.gz"))
        hu = [sitk.GetArrayFromImage(sitk.ReadImage(str(f / f"{case}.nii.gz"))).astype(float) for f in (fine, coarse)]
        out = sitk.ReadImage(str(tmp_path / "mixed" / f"{case}.nii.gz"))
        assert out.GetPixelID() == sitk.sitkInt16 and out.GetSize() == source.GetSize()
        assert out.GetOrigin() == source.GetOrigin() and out.GetDirection() == source.GetDirection()
        mine = sitk.GetArrayFromImage(out).astype(float)
        # each member's int16 sCT is its float HU rounded (<= 0.5 HU), so the mean of the floats, rounded once,
        # lies within 1 HU of the mean of the two sCTs, while the two models differ widely
        assert np.abs(hu[0] - hu[1]).max() > 50
        assert np.abs(mine - (hu[0] + hu[1]) / 2).max() <= 1.0 + 1e-6
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(two_grids["raw"] / case / "mask.nii.gz")))
        assert np.all(mine[mask == 0] == -1000)


def test_different_grids_cannot_keep_averaged_floats_and_need_the_same_input_grid(two_grids, tmp_path, capsys):
    fine, coarse = two_grids["out"]["fine"], two_grids["out"]["coarse"]
    code, _, err = run_cli("ensemble", ["-i", str(fine), str(coarse), "-o", str(tmp_path / "kept"),
                                        "--save_probabilities"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "different grids" in err
    assert not (tmp_path / "kept").exists()
    moved = shutil.copytree(coarse, tmp_path / "moved")
    case = two_grids["cases"][0]
    record = json.loads((moved / f"{case}.json").read_text())
    record["properties"]["original_geometry"]["origin"][0] += 1.0  # another input image
    (moved / f"{case}.json").write_text(json.dumps(record))
    code, _, err = run_cli("ensemble", ["-i", str(fine), str(moved), "-o", str(tmp_path / "bad")], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert f"case {case}: {moved / (case + '.json')}: its original geometry differs" in err
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
