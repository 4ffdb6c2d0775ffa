"""dgcf_predict / dgcf_evaluate --split and dgcf_compare on the example data, as reproducing_the_paper.md runs them."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from dgcf_auto.atomic import torch_save
from model_fixtures import TINY_DINOV3_CFG, TINY_FEATURES, data_folders, run_cli

PAPER_ID, KFOLD_ID = 996, 995
TRAINERS = ("DGCFTrainer", "DGCFTrainer_L1")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A --split paper dataset (10 cases: 2 test) with two 'trained' models, and a 5-fold dataset."""
    root = tmp_path_factory.mktemp("split")
    with data_folders(root):
        from dgcf_auto.dataset.example import write_example_dataset
        from dgcf_auto.network import build_dinov3, build_network
        from dgcf_auto.preprocessing.run import plan_and_preprocess

        raw = write_example_dataset(PAPER_ID, "mr2ct", n=10, seed=5)
        plans = plan_and_preprocess(PAPER_ID, num_processes=1, split="paper", preprocess=False, progress=False,
                                    overrides={"patch_size": [32, 32], "features": TINY_FEATURES})["plans"]
        plans["network"]["dinov3"] = TINY_DINOV3_CFG
        for seed, trainer in enumerate(TRAINERS):
            torch.manual_seed(seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                network = build_network(plans["network"], build_dinov3(TINY_DINOV3_CFG, random=True))
            torch_save({"network_weights": network.state_dict(), "plans": plans, "epoch": 1, "trainer_name": trainer,
                        "dinov3_source": "random", "optimizer_state": {}},
                       root / "DGCF_results" / raw.name / f"{trainer}__DGCFPlans__2d" / "fold_0" / "checkpoint_final.pth")
        write_example_dataset(KFOLD_ID, "mr2ct", n=3, seed=1)
        plan_and_preprocess(KFOLD_ID, num_processes=1, preprocess=False, progress=False,
                            overrides={"patch_size": [32, 32], "features": TINY_FEATURES})
        splits = json.loads((root / "DGCF_preprocessed" / raw.name / "splits_final.json").read_text())
        yield {"root": root, "raw": raw, "test": splits[0]["test"], "val": splits[0]["val"]}


run = run_cli


def test_split_cases_is_shared_and_reads_the_raw_dataset(data):
    from dgcf_auto.planning.splits import split_cases

    raw, cases = split_cases(PAPER_ID, "test", 0)
    assert raw == data["raw"] and [c.name for c in cases] == data["test"] and len(cases) == 2
    assert all(c.ct is not None and c.mask is not None and c.modality == "mr" for c in cases)


def test_predict_evaluate_compare_without_hand_written_python(data, capsys):
    results = data["root"] / "DGCF_results" / data["raw"].name
    for trainer in TRAINERS:
        code, out, err = run("predict", ["-d", str(PAPER_ID), "-f", "0", "--split", "test", "-tr", trainer,
                                         "-device", "cpu", "--disable_tta"], capsys)
        assert code == 0, err
        folder = results / f"{trainer}__DGCFPlans__2d" / "fold_0" / "test"
        assert sorted(p.name for p in folder.glob("*.nii.gz")) == sorted(f"{c}.nii.gz" for c in data["test"])
    dropped = data["test"][1]
    (results / f"{TRAINERS[1]}__DGCFPlans__2d" / "fold_0" / "test" / f"{dropped}.nii.gz").unlink()
    code, out, err = run("evaluate", ["-d", str(PAPER_ID), "--split", "test", "--profile", "dgcf-paper"], capsys)
    assert code == 0, err
    first = json.loads((results / f"{TRAINERS[0]}__DGCFPlans__2d/fold_0/test/summary_dgcf-paper.json").read_text())
    second = json.loads((results / f"{TRAINERS[1]}__DGCFPlans__2d/fold_0/test/summary_dgcf-paper.json").read_text())
    assert first["trainer"] == TRAINERS[0] and first["split"] == "test" and first["task"] == "mr2ct"
    assert first["missing_predictions"] == [] and first["n"]["psnr_full"] == 2
    assert second["missing_predictions"] == [dropped] and second["n"]["psnr_full"] == 1
    assert [r["case"] for r in first["metric_per_case"]] == data["test"]
    assert first["metric_per_case"][0]["mask_file"].endswith("mask.nii.gz")
    code, out, err = run("compare", ["-o", str(data["root"] / "table"), "--profile", "dgcf-paper"], capsys)
    assert code == 0, err
    table = (data["root"] / "table" / "table.md").read_text().splitlines()
    assert table[0] == "| method | MRI→CT: ms_ssim_body (%) | MRI→CT: psnr_body (dB) |"
    assert sorted(line.split(" | ")[0] for line in table[2:4]) == sorted(f"| {t}" for t in TRAINERS)
    assert any(f"{TRAINERS[1]} lacks 1 case(s)" in line for line in table)
    assert (data["root"] / "table" / "table.tex").is_file()


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_split_test_without_test_set_names_split_paper(data, capsys, command):
    argv = ["-d", str(KFOLD_ID), "--split", "test"] + (["-f", "0"] if command == "predict" else [])
    code, _, err = run(command, argv, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "records no test cases" in err and "--split paper" in err and "Traceback" not in err
