"""dgcf_find_best_configuration over two tiny trained trainers x 2 folds, its instructions run as written,
and dgcf_train -pretrained_weights."""
from __future__ import annotations

import hashlib
import json
import shlex
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from model_fixtures import data_folders, run_cli

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:DINOv3 is RANDOMLY INITIALISED")
DATASET_ID = 992
DATASET = "Dataset992_ExampleMR"
TRAINERS = ("DGCFTrainer_L1", "DGCFTrainer_cnnOnly_L1")
TINY = {"epochs": 1, "iterations_per_epoch": 2, "dinov3_random": True, "device": "cpu", "num_workers": 0,
        "precision": "fp32"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Example MR dataset (6 cases, 5 folds) at 32 x 32 with a tiny ViT; two trainers x folds 0 and 1, with
    the final validation's float predictions kept (--npz)."""
    from dgcf_auto.dataset.example import write_example_dataset
    from dgcf_auto.preprocessing.run import plan_and_preprocess
    from dgcf_auto.training.run import run_training

    root = tmp_path_factory.mktemp("best")
    with data_folders(root):
        raw = write_example_dataset(DATASET_ID, "mr2ct", n=6, seed=7, size_scale=0.5)
        plan_and_preprocess(DATASET_ID, 1, False, "5fold", {"patch_size": [32, 32], "features": [8, 16, 32, 64]},
                            progress=False)
        plans_file = root / "DGCF_preprocessed" / raw.name / "DGCFPlans.json"
        plans = json.loads(plans_file.read_text())
        plans["network"]["dinov3"].update(layers=[1, 2, 3, 4],
                                          model_kwargs={"embed_dim": 48, "depth": 4, "num_heads": 2})
        plans["training"]["loss_options"]["mldp"]["layers"] = [1, 2, 3, 4]
        plans_file.write_text(json.dumps(plans))
        for trainer in TRAINERS:
            for fold in (0, 1):
                run_training(DATASET_ID, "2d", fold, trainer_name=trainer, seed=fold, save_probabilities=True, **TINY)
        yield {"root": root, "raw": raw, "results": root / "DGCF_results" / raw.name}


run = run_cli


@pytest.fixture(scope="module")
def best(trained):
    """dgcf_find_best_configuration -d 992 -tr A B -f 0 1 (run once for the module)."""
    from dgcf_auto.cli.find_best_configuration import main

    with data_folders(trained["root"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["-d", str(DATASET_ID), "-tr", *TRAINERS, "-f", "0", "1", "--disable_progress_bar"])
    assert exit_info.value.code == 0
    return json.loads((trained["results"] / "inference_information.json").read_text())


def _per_case(summary_file, metric="mae"):
    rows = json.loads(summary_file.read_text())["metric_per_case"]
    return {row["case"]: row["metrics"][metric] for row in rows}


def test_crossval_summary_pools_the_folds_final_validation(trained, best):
    for trainer in TRAINERS:
        model = trained["results"] / f"{trainer}__DGCFPlans__2d"
        pooled = model / "crossval_results_folds_0_1" / "summary.json"
        per_fold = {}
        for fold in (0, 1):
            per_fold.update(_per_case(model / f"fold_{fold}" / "validation" / "summary.json"))
        merged = _per_case(pooled)
        splits = json.loads((trained["root"] / "DGCF_preprocessed" / DATASET / "splits_final.json").read_text())
        assert sorted(merged) == sorted(splits[0]["val"] + splits[1]["val"])
        assert merged == pytest.approx(per_fold, rel=1e-12)  # the fold summaries, scored independently
        summary = json.loads(pooled.read_text())
        assert summary["mean"]["mae"] == pytest.approx(np.mean(list(per_fold.values())), rel=1e-12)
        assert summary["folds"] == [0, 1] and summary["trainer"] == trainer
        assert best["all_results"][f"{trainer}__DGCFPlans__2d"] == summary["mean"]["mae"]


def test_best_is_the_lowest_mae_and_tested_against_the_runner_up(trained, best):
    from scipy import stats

    ensemble = "ensemble___DGCFTrainer_L1__DGCFPlans__2d___DGCFTrainer_cnnOnly_L1__DGCFPlans__2d___0_1"
    assert set(best["all_results"]) == {f"{t}__DGCFPlans__2d" for t in TRAINERS} | {ensemble}
    ranked = sorted(best["all_results"], key=best["all_results"].get)
    assert best["best_model_or_ensemble"]["identifier"] == ranked[0] and best["higher_is_better"] is False
    assert best["runner_up"]["identifier"] == ranked[1]
    a, b = (_per_case(trained["root"] / "DGCF_results" / DATASET / _where(k) / "summary.json") for k in ranked[:2])
    cases = sorted(a)
    expected = stats.ttest_rel([a[c] for c in cases], [b[c] for c in cases]).pvalue
    assert best["runner_up"]["paired_test"]["n"] == len(cases) == 3
    assert best["runner_up"]["paired_test"]["p_value"] == pytest.approx(expected, rel=1e-12)
    text = (trained["results"] / "inference_instructions.txt").read_text()
    assert all(command in text for command in best["commands"])


def _where(identifier):
    return f"ensembles/{identifier}" if identifier.startswith("ensemble___") else \
        f"{identifier}/crossval_results_folds_0_1"


def test_ensemble_summary_scores_the_mean_of_the_members(trained, best):
    ensemble = next(k for k in best["all_results"] if k.startswith("ensemble___"))
    folder = trained["results"] / "ensembles" / ensemble
    members = [trained["results"] / f"{t}__DGCFPlans__2d" / "crossval_results_folds_0_1" for t in TRAINERS]
    for image in sorted(folder.glob("*.nii.gz")):
        hu = [sitk.GetArrayFromImage(sitk.ReadImage(str(m / image.name))).astype(float) for m in members]
        mine = sitk.GetArrayFromImage(sitk.ReadImage(str(image))).astype(float)
        assert np.abs(mine - (hu[0] + hu[1]) / 2).max() <= 1.0 + 1e-6


def _run_instructions(commands, input_folder, tmp_path, capsys):
    """Run each command of the instructions as a user would, with the placeholders filled in."""
    outputs = {}
    for command in commands:
        words = shlex.split(command)
        for i, word in enumerate(words):
            if word == "INPUT_FOLDER":
                words[i] = str(input_folder)
            elif word.startswith("OUTPUT_FOLDER"):
                words[i] = outputs.setdefault(word, str(tmp_path / word))
        code, _, err = run(words[0].removeprefix("dgcf_"), words[1:], capsys)
        assert code == 0, f"{command}: {err}"
    return {k: tmp_path / k for k in outputs}


@pytest.mark.parametrize("winner", ["chosen", "ensemble", "single"])
def test_running_the_instructions_writes_the_files_they_name(trained, best, tmp_path, capsys, winner):
    from dgcf_auto.evaluation.best_configuration import inference_commands
    from dgcf_auto.inference.api import predict

    information = json.loads(json.dumps(best))
    if winner != "chosen":  # both branches of the instructions, whichever won on these random models
        selected = [{"trainer": t, "plans_identifier": "DGCFPlans", "configuration": "2d"} for t in TRAINERS]
        information["best_model_or_ensemble"]["selected_model_or_models"] = selected[:2 if winner == "ensemble" else 1]
        information["commands"] = inference_commands(information)
    cases = sorted(p.name for p in trained["raw"].iterdir() if p.is_dir())[:2]
    for case in cases:
        shutil.copytree(trained["raw"] / case, tmp_path / "input" / case)
    with data_folders(trained["root"]):
        outputs = _run_instructions(information["commands"], tmp_path / "input", tmp_path, capsys)
        selected = information["best_model_or_ensemble"]["selected_model_or_models"]
        direct = []
        for index, model in enumerate(selected):
            direct.append(tmp_path / f"direct{index}")
            predict(tmp_path / "input", direct[-1], model=DATASET_ID, folds=[0, 1], trainer=model["trainer"],
                    device="cpu", progress=False)
    assert_instructions_reproduce(outputs["OUTPUT_FOLDER"], direct, tmp_path / "input", cases)


def assert_instructions_reproduce(output, direct: list, input_folder, cases: list[str]) -> None:
    """The instructions' output: int16 on each input's grid, equal to the single model predicted directly, or
    within 1 HU of the mean of the (widely different) members predicted directly."""
    for case in cases:
        out = sitk.ReadImage(str(output / f"{case}.nii.gz"))
        source = sitk.ReadImage(str(input_folder / case / "mr.nii.gz"))
        assert out.GetPixelID() == sitk.sitkInt16 and out.GetSize() == source.GetSize()
        assert out.GetOrigin() == source.GetOrigin() and out.GetSpacing() == source.GetSpacing()
        assert out.GetDirection() == source.GetDirection()
        hu = [sitk.GetArrayFromImage(sitk.ReadImage(str(d / f"{case}.nii.gz"))).astype(float) for d in direct]
        mine = sitk.GetArrayFromImage(out).astype(float)
        if len(hu) == 1:
            assert np.array_equal(mine, hu[0])
        else:
            assert np.abs(hu[0] - hu[1]).max() > 50 and np.abs(mine - (hu[0] + hu[1]) / 2).max() <= 1.0 + 1e-6


def test_ensembles_need_saved_predictions_and_bad_metric_is_one_line(trained, best, capsys, tmp_path):
    folder = trained["results"] / "DGCFTrainer_L1__DGCFPlans__2d" / "fold_1" / "validation"
    case = sorted(folder.glob("*.npz"))[0]
    moved = tmp_path / case.name
    shutil.move(case, moved)
    try:
        with data_folders(trained["root"]):
            code, _, err = run("find_best_configuration", ["-d", str(DATASET_ID), "-tr", *TRAINERS, "-f", "0", "1"],
                               capsys)
            assert code == 1 and len(err.strip().splitlines()) == 1
            assert f"trainer DGCFTrainer_L1 (2d) fold 1: {folder} has no saved float prediction (case {case.stem})" in err
            assert "--val --npz" in err and "--disable_ensembling" in err
            shutil.copy2(moved, case)  # back, then stale: floats that are not those of the sCT beside them
            with np.load(case) as data:
                arrays = {k: data[k] for k in data.files}
            arrays["sct"] = arrays["sct"] * np.float32(0.5)
            np.savez_compressed(case, **arrays)
            code, _, err = run("find_best_configuration", ["-d", str(DATASET_ID), "-tr", *TRAINERS, "-f", "0", "1"],
                               capsys)
            assert code == 1 and len(err.strip().splitlines()) == 1
            assert f"case {case.stem}: {case} is not the float prediction of the sCT beside it" in err
            code, out, err = run("find_best_configuration", ["-d", str(DATASET_ID), "-tr", *TRAINERS, "-f", "0", "1",
                                                             "--disable_ensembling", "--metric", "psnr",
                                                             "--disable_progress_bar"], capsys)
            assert code == 0, err
            info = json.loads((trained["results"] / "inference_information.json").read_text())
            assert info["higher_is_better"] is True and len(info["all_results"]) == 2
            assert info["best_model_or_ensemble"]["identifier"] == max(info["all_results"], key=info["all_results"].get)
            code, _, err = run("find_best_configuration", ["-d", str(DATASET_ID), "-tr", TRAINERS[0], "-f", "0", "3"],
                               capsys)
            assert code == 1 and len(err.strip().splitlines()) == 1 and "fold 3" in err and "--val" in err
            code, _, err = run("find_best_configuration", ["-d", str(DATASET_ID), "-tr", TRAINERS[0], "--metric", "x"],
                               capsys)
            assert code == 1 and "--metric x: not a metric of profile synthrad2023" in err
    finally:
        shutil.move(moved, case)
        (trained["results"] / "inference_information.json").write_text(json.dumps(best))


# ------------------------------------------------------------------ -pretrained_weights

def test_pretrained_weights_flag_is_not_an_abbreviation_of_p():
    from dgcf_auto.cli.train import build_parser

    args = build_parser().parse_args(["1", "2d", "0", "-pretrained_weights", "x.pth"])
    assert args.pretrained_weights == "x.pth" and args.p == "DGCFPlans"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["1", "2d", "0", "-pretrained", "x.pth"])


def test_pretrained_weights_start_the_network_and_are_recorded(trained, capsys):
    from dgcf_auto.network import build_dinov3, build_network
    from dgcf_auto.plans import network_plans
    from dgcf_auto.training.pretrained import load_pretrained_weights

    source = trained["results"] / "DGCFTrainer_L1__DGCFPlans__2d" / "fold_0" / "checkpoint_final.pth"
    weights = torch.load(source, map_location="cpu", weights_only=True)
    plans = dict(weights["plans"], network={**weights["plans"]["network"]})
    torch.manual_seed(123)
    network = build_network(network_plans(plans), build_dinov3(plans["network"]["dinov3"], random=True))
    vit_before = {k: v.clone() for k, v in network.state_dict().items() if k.startswith("dinov3.")}
    copied = load_pretrained_weights(network, source)
    state = network.state_dict()
    trainable = [k for k in state if not k.startswith("dinov3.")]
    assert copied == len(trainable) > 10
    assert all(torch.equal(state[k], weights["network_weights"][k]) for k in trainable)
    assert all(torch.equal(state[k], v) for k, v in vit_before.items())  # the frozen ViT is not taken over

    with data_folders(trained["root"]):
        code, _, err = run("train", [str(DATASET_ID), "2d", "2", "-tr", "DGCFTrainer", "-pretrained_weights",
                                     str(source), "--epochs", "1", "--iterations-per-epoch", "1", "-device", "cpu",
                                     "--dinov3-random", "--num-workers", "0", "--no-final-validation"], capsys)
    assert code == 0, err
    config = json.loads((trained["results"] / "DGCFTrainer__DGCFPlans__2d" / "fold_2" /
                         "training_config.json").read_text())
    assert config["settings"]["pretrained_weights"] == str(source.resolve())
    assert config["settings"]["pretrained_weights_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()


def test_pretrained_weights_of_another_architecture_is_one_line(trained, capsys):
    source = trained["results"] / "DGCFTrainer_cnnOnly_L1__DGCFPlans__2d" / "fold_0" / "checkpoint_final.pth"
    with data_folders(trained["root"]):
        code, _, err = run("train", [str(DATASET_ID), "2d", "3", "-tr", "DGCFTrainer_L1", "-pretrained_weights",
                                     str(source), "--epochs", "1", "-device", "cpu", "--dinov3-random",
                                     "--num-workers", "0"], capsys)
        errors = [line for line in err.splitlines() if not line.startswith("WARNING: DINOv3 is RANDOMLY")]
        assert code == 1 and len(errors) == 1 and "Traceback" not in err
        assert f"-pretrained_weights {source}: does not fit this network (checkpoint architecture cnn_only)" in err
        assert "key(s) missing in the checkpoint" in err
        code, _, err = run("train", [str(DATASET_ID), "2d", "3", "-pretrained_weights", str(source), "--c"], capsys)
        assert code == 1 and "give only one of them" in err
