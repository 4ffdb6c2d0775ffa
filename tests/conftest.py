"""Fixtures shared across test modules (pytest finds them by name: no imports, no `# noqa`).

One factory makes every tiny model: `model_fixtures.example_model` (an example MR dataset planned at 32 x 32
with tiny features, and random tiny folds saved as training saves them). `example_dataset`, `tiny_plans` and
`tiny_model` are that factory's result, built once per session in their own data folders: tests that only
read them share one copy. A test that changes what it reads builds its own (module fixtures below, or the
factory directly).
"""
from __future__ import annotations

import json
import warnings

import numpy as np

import pytest

from evaluation_fixtures import FLIP_Y, smooth_pair, write
from model_fixtures import (TINY_DINOV3_CFG, TINY_FEATURES, data_folders, example_model, planned_example,
                            write_vgg19_features)

EXAMPLE_DATASET_ID = 990
TINY_MODEL = "DGCFTrainer__DGCFPlans__2d"


@pytest.fixture(scope="session")
def _tiny_model_session(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_model")
    with data_folders(root):
        raw, folder, files = example_model(root, EXAMPLE_DATASET_ID, TINY_MODEL, n=3, seed=7, folds=(0, 1))
    import torch

    plans = torch.load(files[0], map_location="cpu", weights_only=True)["plans"]
    return {"root": root, "raw": raw, "folder": folder, "files": files, "plans": plans}


@pytest.fixture(scope="session")
def example_dataset(_tiny_model_session):
    """$DGCF_raw/Dataset990_ExampleMR: 3 example MR cases (read only)."""
    return _tiny_model_session["raw"]


@pytest.fixture(scope="session")
def tiny_plans(_tiny_model_session):
    """The plans the tiny model was trained with (a copy per test: change it freely)."""
    import copy

    return copy.deepcopy(_tiny_model_session["plans"])


@pytest.fixture
def tiny_model(_tiny_model_session, monkeypatch):
    """The tiny model's folder (folds 0, 1 and all) with DGCF_raw/_preprocessed/_results pointing at its data
    folders for the test (read only)."""
    root = _tiny_model_session["root"]
    for key in ("DGCF_raw", "DGCF_preprocessed", "DGCF_results"):
        monkeypatch.setenv(key, str(root / key))
    return _tiny_model_session["folder"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An example dataset (998), its plans, and two 'trained' folds (random tiny networks) in DGCF_results:
    one per module that asks (test_prediction, test_sources, test_faults, ... write beside it)."""
    root = tmp_path_factory.mktemp("predict")
    with data_folders(root):
        from dgcf_auto.atomic import torch_save
        from dgcf_auto.dataset.example import write_example_dataset
        from dgcf_auto.network import build_dinov3, build_network
        from dgcf_auto.preprocessing.run import plan_and_preprocess

        import torch

        raw = write_example_dataset(998, "mr2ct", n=4, seed=3)
        summary = plan_and_preprocess(998, num_processes=1, preprocess=False, progress=False,
                                      overrides={"patch_size": [32, 32], "features": TINY_FEATURES})
        plans = summary["plans"]
        plans["network"]["dinov3"] = TINY_DINOV3_CFG
        model_folder = root / "DGCF_results" / raw.name / "DGCFTrainer__DGCFPlans__2d"
        for fold in (0, 1):
            torch.manual_seed(fold)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                network = build_network(plans["network"], build_dinov3(TINY_DINOV3_CFG, random=True))
            torch_save({"network_weights": network.state_dict(), "plans": plans, "epoch": 1,
                        "trainer_name": "DGCFTrainer", "dinov3_source": "random", "optimizer_state": {}},
                       model_folder / f"fold_{fold}" / "checkpoint_final.pth")
        yield {"root": root, "raw": raw, "model_folder": model_folder, "plans": plans}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny 3-fold model of dataset 996 exported to model.zip (test_model_zip, test_atomic, ...)."""
    root = tmp_path_factory.mktemp("zip")
    with data_folders(root):
        raw, folder, files = example_model(root, 996, TINY_MODEL, n=3, seed=5, folds=(0, 1, 2))
        zip_path = root / "model.zip"
        from dgcf_auto.cli.export_model_to_zip import main

        with pytest.raises(SystemExit) as info:
            main(["-d", "996", "-o", str(zip_path)])
        assert info.value.code == 0
        yield {"root": root, "raw": raw, "folder": folder, "files": files, "zip": zip_path}


# The slow tier (`pytest -m "not slow"` leaves it out; CI runs everything). A test is slow when it starts
# processes (subprocess, worker pools, SIGKILL/SIGTERM), runs gloo, checks DICOM with dciodvfy, trains, or runs
# the pipeline end to end on files (it asks for a fixture that builds a dataset and a model, or a full-size
# network); the modules below do one of these in their module fixtures or in nearly every test. An explicit
# `@pytest.mark.slow` works too. What is left is the inner loop: `pytest -m "not slow"`.
SLOW_MODULES = {"test_training", "test_baselines", "test_release_training", "test_find_best_configuration",
                "test_split_evaluation", "test_demo", "test_workers", "test_plugins", "test_dose", "test_dicom",
                "test_faults", "test_prediction_clinic", "test_reference_import",
                # pyRadPlan dose plans; nnunetv2's own planners as the 3D planner's oracle; end-to-end trainings
                "test_dose_definitions", "test_plan_3d", "test_plans_validation", "test_configuration_25d",
                "test_configurations_compared", "test_configurations_3d_compared", "test_3d_fullres",
                "test_replaced_outputs"}
SLOW_FIXTURES = {"trained", "model", "predicted", "tiny_model", "example_dataset", "tiny_plans", "data_env",
                 "vgg_file", "vit_b16"}
SLOW_WORDS = ("subprocess", "SIGKILL", "SIGTERM", "gloo", "dciodvfy", "assert_valid_dicom", "run_training(",
              "train_main(", "Popen", "get_context(", "num_processes=2", '"-np", "2"')


def pytest_collection_modifyitems(config, items):
    import inspect

    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if getattr(item, "module", None) else ""
        try:
            source = inspect.getsource(item.function)
        except (AttributeError, OSError, TypeError):
            source = ""
        if (module in SLOW_MODULES or SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))
                or any(word in source for word in SLOW_WORDS)):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def data_env(tmp_path_factory):
    """(root, env): example MR dataset 999, planned and preprocessed at 32 x 32, plans edited to a tiny ViT."""
    root = tmp_path_factory.mktemp("train_data")
    mp = pytest.MonkeyPatch()
    env, _, plans_file = planned_example(root, 999, mp)
    plans = json.loads(plans_file.read_text())
    plans["network"]["dinov3"].update(layers=[1, 2, 3, 4],
                                      model_kwargs={"embed_dim": 48, "depth": 4, "num_heads": 2})
    plans["training"]["loss_options"]["mldp"]["layers"] = [1, 2, 3, 4]
    plans_file.write_text(json.dumps(plans))
    write_vgg19_features(root / "vgg19.pth")  # for the DGCN + L_VGG trainer
    mp.setenv("DGCF_VGG_WEIGHTS", str(root / "vgg19.pth"))
    yield root, env
    mp.undo()


@pytest.fixture
def folders(tmp_path):
    """ref/<case>/{ct,mask,mr}.nii.gz for case1 (flipped direction) and case2, pred/<case>.nii.gz, from
    evaluation_fixtures' images."""
    ct, sct, mask = smooth_pair()
    for name, direction, shift in (("case1", FLIP_Y, 0.0), ("case2", None, 50.0)):
        write(ct, tmp_path / "ref" / name / "ct.nii.gz", direction)
        write(mask, tmp_path / "ref" / name / "mask.nii.gz", direction, dtype=np.uint8)
        write(ct / 10 + 100, tmp_path / "ref" / name / "mr.nii.gz", direction, dtype=np.float32)
        write(sct + shift, tmp_path / "pred" / f"{name}.nii.gz", direction)
    return tmp_path
