"""3d_fullres end to end on the example data (tiny sizes): plan, preprocess onto the volume grid, train one
tiny epoch with DGCFTrainer3d, predict on the exact input grid, evaluate, export; geometry and bad inputs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from dgcf_auto.errors import DGCFError
from dgcf_auto.plans import configuration_plans
from dgcf_auto.plans_schema import load_plans
from model_fixtures import planned_example

torch.set_num_threads(1)
TINY = {"epochs": 1, "iterations_per_epoch": 2, "device": "cpu", "num_workers": 0, "batch_size": 2}
TINY_FEATURES = [4, 8, 8, 8, 8, 8, 8, 8]


@pytest.fixture(scope="module")
def env3d(tmp_path_factory):
    """Example MR dataset 998 planned with 2d and 3d_fullres; the 3D presets shrunk to 4..8 features."""
    root = tmp_path_factory.mktemp("data3d")
    mp = pytest.MonkeyPatch()
    _, summary, plans_file = planned_example(root, 998, mp, configurations=["3d_fullres"])
    plans = json.loads(plans_file.read_text())
    for preset in plans["configurations"]["3d_fullres"]["extra"]["presets"].values():
        preset["features"] = TINY_FEATURES[:len(preset["features"])]
    plans_file.write_text(json.dumps(plans))
    yield root, summary
    mp.undo()


def test_volumes_are_on_the_planned_spacing_and_cover_the_body(env3d):
    root, summary = env3d
    plans = load_plans(root / "pre" / "Dataset998_Example" / "DGCFPlans.json")
    cfg = configuration_plans(plans, "3d_fullres")
    assert cfg.kind == "volume" and cfg.data_identifier == "DGCFPlans_3d_fullres"
    folder = root / "pre" / "Dataset998_Example" / "DGCFPlans_3d_fullres"
    assert len(summary["preprocessed"]["done"]) == 4 and not (root / "pre" / "Dataset998_Example" / "DGCFPlans_2d").exists()
    from dgcf_auto.planning.splits import split_cases

    _, cases = split_cases(998, "val", 0)
    for case in cases:
        properties = json.loads((folder / f"{case.name}.json").read_text())
        grid = properties["slice_grid"]
        # sitk order (col, row, slice) is the plans' numpy (slice, row, col) reversed
        np.testing.assert_allclose(grid["spacing"], cfg.spacing[::-1], rtol=1e-9)
        source = np.load(folder / f"{case.name}_source.npy")
        assert list(source.shape) == properties["shape"] == list(reversed(grid["size"]))
        # every body voxel of the original mask lies inside the grid (bounding box + margin)
        mask = sitk.ReadImage(str(case.mask))
        ones = sitk.Image([int(v) for v in grid["size"]], sitk.sitkUInt8) + 1
        ones.SetSpacing(grid["spacing"])
        ones.SetOrigin(grid["origin"])
        ones.SetDirection(grid["direction"])
        covered = sitk.Resample(ones, mask, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        body = sitk.GetArrayFromImage(mask) > 0
        assert np.all(sitk.GetArrayFromImage(covered)[body] == 1)
        # the CT window and normalisation are the 2d ones: values in [-1, 1], air outside at -1
        ct = np.load(folder / f"{case.name}_ct.npy")
        assert ct.min() >= -1.0 and ct.max() <= 1.0


@pytest.fixture(scope="module")
def trained3d(env3d):
    from dgcf_auto.training.run import run_training

    return run_training(998, "3d_fullres", "0", trainer_name="DGCFTrainer3d", seed=1, **TINY)


def test_trains_predicts_on_the_input_grid_evaluates_and_exports(env3d, trained3d, tmp_path):
    from dgcf_auto.inference.api import predict
    from dgcf_auto.planning.splits import split_cases

    root, _ = env3d
    config = json.loads((trained3d / "training_config.json").read_text())
    assert config["plans"]["configuration"] == "3d_fullres"
    assert config["plans"]["training"]["optimizer"] == "sgd"
    assert config["loss"] == {"masked_l1": 1.0}
    state = torch.load(trained3d / "checkpoint_final.pth", weights_only=True, map_location="cpu")
    assert state["plans"]["network"]["architecture"] == "plain_unet_3d"
    # final validation: sCT on the validation cases' own grids, int16, -1000 outside the body
    validation = trained3d / "validation"
    _, cases = split_cases(998, "val", 0)
    for case in cases:
        sct = sitk.ReadImage(str(validation / f"{case.name}.nii.gz"))
        source = sitk.ReadImage(str(case.source))
        assert sct.GetSize() == source.GetSize() and sct.GetOrigin() == source.GetOrigin()
        assert sct.GetDirection() == source.GetDirection() and sct.GetPixelID() == sitk.sitkInt16
        body = sitk.GetArrayFromImage(sitk.ReadImage(str(case.mask))) > 0
        assert np.all(sitk.GetArrayFromImage(sct)[~body] == -1000)
    summary = json.loads((validation / "summary.json").read_text())
    assert {c["case"] for c in summary["metric_per_case"]} == {c.name for c in cases}
    # predicting as another configuration is one error; as 3d_fullres it works from the model folder
    with pytest.raises(DGCFError, match="configuration"):
        predict(cases[0].source, tmp_path / "x.nii.gz", model=trained3d.parent, folds=[0], device="cpu",
                configuration="2d")
    # export: the zip holds the fold's checkpoint
    from dgcf_auto.cli.export_model_to_zip import main as export_main

    with pytest.raises(SystemExit) as done:
        export_main(["-d", "998", "-c", "3d_fullres", "-tr", "DGCFTrainer3d", "-f", "0", "-o",
                     str(tmp_path / "m.zip"), "--disable_progress_bar"])
    assert done.value.code == 0
    import zipfile

    names = zipfile.ZipFile(tmp_path / "m.zip").namelist()
    assert any(n.endswith("fold_0/checkpoint_final.pth") for n in names)


def _oriented_copy(image: sitk.Image, flip_axes, permute=None, spacing=None) -> sitk.Image:
    """The same physical image stored differently: axes flipped/permuted (voxels move, the world does not)."""
    out = sitk.Flip(image, flip_axes)
    if permute is not None:
        out = sitk.PermuteAxes(out, permute)
    return out


def test_flipped_or_permuted_storage_gives_the_same_sct_in_physical_space(env3d, trained3d):
    from dgcf_auto.inference.predictor import SCTPredictor
    from dgcf_auto.planning.splits import split_cases

    _, cases = split_cases(998, "val", 0)
    source = sitk.ReadImage(str(cases[0].source), sitk.sitkFloat32)
    mask = sitk.ReadImage(str(cases[0].mask))
    predictor = SCTPredictor([trained3d / "checkpoint_final.pth"], "cpu", use_tta=False, progress=False)
    reference = predictor.predict_volume(source, mask)[0]
    for flips, permute in (([True, False, False], None), ([False, True, True], [1, 0, 2]),
                           ([False, False, False], [2, 1, 0])):
        moved_source, moved_mask = (_oriented_copy(im, flips, permute) for im in (source, mask))
        sct = predictor.predict_volume(moved_source, moved_mask)[0]
        back = sitk.Resample(sct, reference, sitk.Transform(), sitk.sitkNearestNeighbor, -2000)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(reference))


def test_a_case_smaller_than_the_patch_is_padded_not_refused(env3d, trained3d):
    from dgcf_auto.inference.predictor import SCTPredictor
    from dgcf_auto.planning.splits import split_cases

    _, cases = split_cases(998, "val", 0)
    source = sitk.ReadImage(str(cases[0].source), sitk.sitkFloat32)
    small = source[:, :, source.GetSize()[2] // 2 - 1: source.GetSize()[2] // 2 + 2]  # 3 slices only
    predictor = SCTPredictor([trained3d / "checkpoint_final.pth"], "cpu", use_tta=True, progress=False)
    sct = predictor.predict_volume(small, None)[0]
    assert sct.GetSize() == small.GetSize() and sct.GetOrigin() == small.GetOrigin()


def test_a_2d_trainer_on_3d_fullres_is_one_error(env3d):
    from dgcf_auto.training.run import run_training

    with pytest.raises(DGCFError, match="trains slices or slabs configurations, not '3d_fullres'"):
        run_training(998, "3d_fullres", "1", trainer_name="DGCFTrainer_resunet_L1", **TINY)


def test_tta_mirrors_the_left_right_axis_of_the_volume(env3d, trained3d):
    """The 2D TTA flips columns (right-left); the 3D TTA mirrors the same axis: the volume's last."""
    from dgcf_auto.inference.predictor import SCTPredictor
    from dgcf_auto.inference.sliding_window import predict_sliding_window

    predictor = SCTPredictor([trained3d / "checkpoint_final.pth"], "cpu", use_tta=True, progress=False,
                             precision="fp32")
    volume = np.random.default_rng(3).uniform(-1, 1, (10, 30, 28)).astype(np.float32)
    got, _ = predictor._predict_slices(volume, "x", False)
    patch, net = predictor.volume_patch, predictor.networks
    class LeftRight(torch.nn.Module):  # each window seen mirrored along its last axis, mirrored back
        def forward(self, x):
            return torch.flip(net[0](torch.flip(x, (4,))), (4,))

    plain = predict_sliding_window(net, volume, patch, "cpu")[0]
    mirrored = predict_sliding_window([LeftRight()], volume, patch, "cpu")[0]
    assert np.abs(plain - mirrored).max() > 1e-3  # the mirroring changes something
    np.testing.assert_allclose(got, 0.5 * (plain + mirrored), rtol=0, atol=1e-5)
