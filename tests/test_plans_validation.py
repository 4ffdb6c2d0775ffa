"""Plans edited by hand: every field checked on load, one line naming the file and the field, nothing
written; names the code cannot honour refused; a valid edit saved under a new name preprocesses, trains and
predicts."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from dgcf_auto.errors import DGCFError
from dgcf_auto.plans import TrainingPlans
from dgcf_auto.plans_schema import load_plans
from dgcf_auto.plans_schema import FIELDS, check_plans, fields_markdown

pytestmark = pytest.mark.filterwarnings("ignore:DINOv3 is RANDOMLY INITIALISED")
ROOT = Path(__file__).resolve().parents[1]
TINY_VIT = {"layers": [1, 2, 3, 4], "model_kwargs": {"embed_dim": 48, "depth": 4, "num_heads": 2}}


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """Example MR dataset 31, planned and preprocessed at 32 x 32 with tiny features and a tiny ViT."""
    from dgcf_auto.dataset.example import make_example_dataset
    from dgcf_auto.preprocessing.run import plan_and_preprocess

    root = tmp_path_factory.mktemp("plans_edit")
    mp = pytest.MonkeyPatch()
    for key in ("DGCF_raw", "DGCF_preprocessed", "DGCF_results"):
        mp.setenv(key, str(root / key))
    make_example_dataset(root / "DGCF_raw" / "Dataset031_Edit", "mr2ct", n=4, seed=0, size_scale=0.5)
    plan_and_preprocess(31, 1, False, "5fold", {"patch_size": [32, 32], "features": [8, 16, 32, 64]},
                        progress=False)
    folder = root / "DGCF_preprocessed" / "Dataset031_Edit"
    plans = json.loads((folder / "DGCFPlans.json").read_text())
    plans["network"]["dinov3"].update(TINY_VIT)
    plans["training"]["loss_options"]["mldp"]["layers"] = [1, 2, 3, 4]
    (folder / "DGCFPlans.json").write_text(json.dumps(plans))
    yield root, folder, plans
    mp.undo()


def _exit(main, argv) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


def _one_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


def _edited_copy(folder: Path, name: str, edit) -> Path:
    plans = json.loads((folder / "DGCFPlans.json").read_text())
    edit(plans)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(plans))
    return path


def _train(argv_tail: list[str]) -> list[str]:
    return ["31", "2d", "0", "--dinov3_random", "-device", "cpu", "--epochs", "1", "--iterations_per_epoch", "1",
            "--num_workers", "0", "--no_final_validation"] + argv_tail


BAD_EDITS = [
    ("truncated", None, "not valid JSON"),
    ("patch_text", lambda p: p["configurations"]["2d"].update(patch_size=["s", 32]),
     "field configurations.2d.patch_size[0]: expected an integer, got a string ('s')"),
    ("window_inverted", lambda p: p["ct_normalization"].update(clip_low=2000.0, clip_high=-1000.0),
     "field ct_normalization.clip_high: -1000 must exceed clip_low 2000"),
    ("patch_multiple", lambda p: p["configurations"]["2d"].update(patch_size=[40, 32]),
     "field configurations.2d.patch_size: [40, 32]: every edge must be a multiple of size_multiple 16"),
    ("unknown_field", lambda p: p["training"].update(learnig_rate=1e-3),
     "field training: Additional properties are not allowed ('learnig_rate' was unexpected)"),
    ("batch_zero", lambda p: p["training"].update(batch_size=0), "field training.batch_size: 0 is less than the minimum of 1"),
    ("slab_even", lambda p: p["configurations"]["2.5d"].update(slab_size=4),
     "field configurations.2.5d.slab_size: slab_size 4: a 2.5d slab is an odd number of slices"),
    ("bool_as_number", lambda p: p["training"].update(learning_rate=True),
     "field training.learning_rate: expected a number, got a boolean (true)"),
]


@pytest.mark.parametrize("name, edit, message", BAD_EDITS, ids=[b[0] for b in BAD_EDITS])
def test_a_bad_plans_file_is_one_line_naming_file_and_field_and_trains_nothing(planned, capsys, name, edit, message):
    from dgcf_auto.cli.train import main as train_main

    root, folder, _ = planned
    plans_name = f"DGCFPlans_{name}"
    if edit is None:
        path = folder / f"{plans_name}.json"
        path.write_text((folder / "DGCFPlans.json").read_text()[:-57])
    else:
        path = _edited_copy(folder, plans_name, edit)
    assert _exit(train_main, _train(["-p", plans_name])) == 1
    line = _one_line(capsys)
    assert line.startswith(f"dgcf_train: error: plans file {path}: ") and message in line, line
    assert not (root / "DGCF_results" / "Dataset031_Edit" / f"DGCFTrainer__{plans_name}__2d").exists()


def test_plan_and_preprocess_refuses_a_broken_plans_file_before_writing(planned, capsys):
    from dgcf_auto.cli.plan_and_preprocess import main

    _, folder, _ = planned
    original = (folder / "DGCFPlans.json").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    try:
        (folder / "DGCFPlans.json").write_text(original[:-30])
        assert _exit(main, ["-d", "31", "--no_pp"]) == 1
        assert "DGCFPlans.json: not valid JSON" in _one_line(capsys)
        changed = [p for p, t in stamps.items() if p.name != "DGCFPlans.json" and not p.name.startswith(".")
                   and p.stat().st_mtime_ns != t]
        assert changed == []
    finally:
        (folder / "DGCFPlans.json").write_text(original)


@pytest.mark.parametrize("field, value, message", [
    ("architecture", "cross_fusoin", "field network.architecture: 'cross_fusoin' is not offered (known: "),
    ("optimizer", "adamw_typo", "field training.optimizer: 'adamw_typo' is not offered (known: "),
    ("loss", {"l1": 1.0, "perceptual_typo": 1.0}, "field training.loss.perceptual_typo: 'perceptual_typo' is not "
                                                  "offered (known: "),
    ("lr_scheduler", {"name": "cosine_typo"}, "field training.lr_scheduler.name: 'cosine_typo' is not offered"),
])
def test_names_the_code_cannot_honour_are_refused(planned, capsys, field, value, message):
    """Before: an unknown architecture trained the variant's network and an unknown optimiser trained with Adam."""
    from dgcf_auto.cli.train import main as train_main

    root, folder, _ = planned
    section = "network" if field == "architecture" else "training"
    path = folder / "DGCFPlans.json"
    original = path.read_text()
    plans = json.loads(original)
    plans[section][field] = value
    try:
        path.write_text(json.dumps(plans))
        assert _exit(train_main, _train([])) == 1
    finally:
        path.write_text(original)
    line = _one_line(capsys)
    assert line.startswith(f"dgcf_train: error: plans file {path}: {message}"), line
    assert not (root / "DGCF_results" / "Dataset031_Edit" / "DGCFTrainer__DGCFPlans__2d").exists()


def test_a_valid_hand_edit_under_a_new_name_preprocesses_trains_and_predicts(planned, capsys):
    """nnU-Net's way: copy DGCFPlans.json, rename it (plans_name and data identifier), edit the patch size and
    the network width, preprocess with -p, train and predict with -p; the variant's own choices are recorded."""
    import numpy as np
    import SimpleITK as sitk

    from dgcf_auto.cli.plan_and_preprocess import main as plan_main
    from dgcf_auto.cli.predict import main as predict_main
    from dgcf_auto.cli.train import main as train_main

    root, folder, _ = planned

    def edit(plans):
        plans["plans_name"] = "DGCFPlans_wide"
        for name, section in plans["configurations"].items():  # each array folder renamed with the plans
            if "data_identifier" in section:
                section["data_identifier"] = f"DGCFPlans_wide_{name}"
        plans["configurations"]["2d"]["patch_size"] = [48, 32]
        plans["network"]["features"] = [4, 8, 16, 32]
        plans["network"]["architecture"] = "resunet"   # DGCFTrainer trains its own network: said and recorded
    _edited_copy(folder, "DGCFPlans_wide", edit)
    assert _exit(plan_main, ["-d", "31", "-p", "DGCFPlans_wide", "-c", "2d", "-np", "1",
                             "--disable_progress_bar"]) in (0, None)
    arrays = sorted((folder / "DGCFPlans_wide_2d").glob("*_source.npy"))
    assert len(arrays) == 4 and all(np.load(a, mmap_mode="r").shape[1:] == (48, 32) for a in arrays)
    assert json.loads((folder / "DGCFPlans_wide.json").read_text())["network"]["features"] == [4, 8, 16, 32]

    assert _exit(train_main, _train(["-p", "DGCFPlans_wide"])) in (0, None)
    model = root / "DGCF_results" / "Dataset031_Edit" / "DGCFTrainer__DGCFPlans_wide__2d"
    config = json.loads((model / "fold_0" / "training_config.json").read_text())
    assert config["trainer_sets"]["network.architecture"] == {"plans": "resunet", "trainer": "cross_fusion"}
    checkpoint_plans = __import__("torch").load(model / "fold_0" / "checkpoint_final.pth", weights_only=True)["plans"]
    assert checkpoint_plans["network"]["features"] == [4, 8, 16, 32]  # the edit reached the network

    case = next(p for p in (root / "DGCF_raw" / "Dataset031_Edit").iterdir() if p.is_dir())
    out = root / "wide_out"
    assert _exit(predict_main, ["-i", str(case / "mr.nii.gz"), "-o", str(out), "-d", "31", "-p", "DGCFPlans_wide",
                                "-f", "0", "-device", "cpu", "--disable_progress_bar"]) in (0, None)
    sct = sitk.ReadImage(str(next(out.glob("*.nii.gz"))))
    source = sitk.ReadImage(str(case / "mr.nii.gz"))
    assert sct.GetSize() == source.GetSize() and sct.GetSpacing() == source.GetSpacing()


def test_an_edited_copy_must_keep_its_arrays_apart(planned, capsys):
    from dgcf_auto.cli.plan_and_preprocess import main as plan_main

    _, folder, _ = planned
    _edited_copy(folder, "DGCFPlans_shared", lambda p: p.update(plans_name="DGCFPlans_shared"))
    assert _exit(plan_main, ["-d", "31", "-p", "DGCFPlans_shared"]) == 1
    assert "field configurations.2d.data_identifier: 'DGCFPlans_2d' must start with 'DGCFPlans_shared_'" in \
        _one_line(capsys)


def test_checkpoint_plans_are_checked_too(tmp_path):
    """A checkpoint whose plans were edited (a window inverted) is refused when read, naming the field."""
    import torch

    from dgcf_auto.checkpoint import load_checkpoint

    plans = {"configurations": {"2d": {"patch_size": [32, 32], "inplane_spacing": [1.0, 1.0], "orientation": "LPS"}},
             "ct_normalization": {"clip_low": 100.0, "clip_high": 100.0}}
    path = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": {}, "plans": plans}, path)
    with pytest.raises(DGCFError, match=re.escape(f"checkpoint {path}: plans: field ct_normalization.clip_high: 100 "
                                                  f"must exceed clip_low 100")):
        load_checkpoint(path, required=("network_weights", "plans"))


def test_every_typed_field_has_a_schema_row_and_the_reference_is_current():
    from dataclasses import fields

    from dgcf_auto.plans import ConfigurationPlans, DinoV3Plans, NetworkPlans

    sections = {"network": NetworkPlans, "network.dinov3": DinoV3Plans, "training": TrainingPlans,
                "configurations.*": ConfigurationPlans}
    for section, cls in sections.items():
        missing = [f.name for f in fields(cls) if f.name != "name" and (section, f.name) not in FIELDS]
        assert missing == [], f"{cls.__name__} fields without a row in plans_schema.FIELDS: {missing}"
    page = (ROOT / "documentation" / "plans.md").read_text()
    assert fields_markdown() in page, "plans.md's field reference is stale: paste plans_schema.fields_markdown()"


def test_planned_plans_pass_their_own_schema(planned):
    _, folder, plans = planned
    assert load_plans(folder / "DGCFPlans.json")["configurations"]["2d"]["patch_size"] == [32, 32]
    broken = copy.deepcopy(plans)
    broken["source_normalization"]["percentile"] = 0
    with pytest.raises(DGCFError, match=r"field source_normalization.percentile: 0 is less than or equal to the "
                                        r"minimum of 0"):
        check_plans(broken, "x")
