"""The 2.5d configuration end to end: planned beside 2d on 2d's arrays, one tiny training epoch, prediction on
the exact input grid, and an sCT that is right in physical space on a rotated, z-flipped, anisotropic case."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from dgcf_auto.errors import DGCFError
from dgcf_auto.plans import configuration_plans, network_plans, resolve_configuration
from model_fixtures import TINY_FEATURES, data_folders

DATASET_ID = 995
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """The example MR dataset planned (2d and 2.5d) and preprocessed at 32 x 32, features 8..64."""
    root = tmp_path_factory.mktemp("config25d")
    with data_folders(root):
        from dgcf_auto.dataset.example import write_example_dataset
        from dgcf_auto.preprocessing.run import plan_and_preprocess

        raw = write_example_dataset(DATASET_ID, "mr2ct", n=4, seed=3)
        summary = plan_and_preprocess(DATASET_ID, num_processes=1, progress=False,
                                      overrides={"patch_size": [32, 32], "features": TINY_FEATURES, "slab_size": 3})
        yield {"root": root, "raw": raw, "plans": summary["plans"], "summary": summary}


def test_25d_is_planned_on_2ds_grid_and_arrays(planned):
    plans = planned["plans"]
    two_d, slabs = configuration_plans(plans, "2d"), configuration_plans(plans, "2.5d")
    assert (slabs.kind, slabs.slab_size, slabs.inherits_from) == ("slabs", 3, "2d")
    assert slabs.grid_fields() == {**two_d.grid_fields(), "kind": "slabs", "slab_size": 3}
    assert slabs.data_identifier == two_d.data_identifier
    # 2.5d owns no array folder of its own: only 2d's (and 3d_fullres's volumes) are preprocessed
    assert "2.5d" not in planned["summary"]["preprocessed"]["configurations"]
    assert "2d" in planned["summary"]["preprocessed"]["configurations"]
    assert network_plans(resolve_configuration(plans, "2.5d")).in_channels == 3
    assert network_plans(resolve_configuration(plans, "2d")).in_channels == 1


def test_default_slab_size_is_five_and_an_even_one_is_refused(planned):
    from dgcf_auto.planning.planner import check_overrides, plan_slab_configuration

    assert plan_slab_configuration({})["slab_size"] == 5
    with pytest.raises(DGCFError, match="slab_size 4: a 2.5d slab is an odd number of slices"):
        check_overrides({"slab_size": 4})
    plans = json.loads(json.dumps(planned["plans"]))
    plans["configurations"]["2.5d"]["slab_size"] = 2
    with pytest.raises(DGCFError, match=r"configurations\.2\.5d\.slab_size 2"):
        configuration_plans(plans, "2.5d")


def test_plan_and_preprocess_cli_refuses_an_even_slab_size_before_writing(tmp_path, capsys):
    from dgcf_auto.cli.plan_and_preprocess import main

    with data_folders(tmp_path):
        from dgcf_auto.dataset.example import write_example_dataset

        write_example_dataset(994, "mr2ct", n=2, seed=1)
        with pytest.raises(SystemExit) as exit_info:
            main(["-d", "994", "--slab_size", "4"])
        assert exit_info.value.code == 1
        assert not (tmp_path / "DGCF_preprocessed").exists() or not any((tmp_path / "DGCF_preprocessed").rglob("*.json"))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "slab_size 4" in err[0]


@pytest.mark.parametrize("trainer", ["DGCFTrainer_cnnOnly_L1", "DGCFTrainer_unetppResNet34_L1"])
def test_25d_trains_one_epoch_and_predicts_on_the_exact_input_grid(planned, trainer, tmp_path, capsys, monkeypatch):
    from dgcf_auto.cli.predict import main as predict_main
    from dgcf_auto.training.run import run_training

    monkeypatch.delenv("DGCF_RESNET34_WEIGHTS", raising=False)
    with data_folders(planned["root"]):
        output = run_training(DATASET_ID, "2.5d", "0", trainer_name=trainer, epochs=1, iterations_per_epoch=2,
                              device="cpu", num_workers=0, validation="none")
        state = torch.load(output / "checkpoint_final.pth", map_location="cpu", weights_only=True)
        assert output.parent.name == f"{trainer}__DGCFPlans__2.5d"
        assert state["plans"]["configuration"] == "2.5d" and state["plans"]["network"]["in_channels"] == 3
        first_conv = next(v for k, v in state["network_weights"].items() if k.endswith("weight") and v.ndim == 4)
        assert first_conv.shape[1] == 3  # the network was trained on 3-slice slabs
        assert np.isfinite(state["logger"]["history"]["train_loss"][0])
        capsys.readouterr()
        out = tmp_path / "out"
        with pytest.raises(SystemExit) as exit_info:
            predict_main(["-i", str(planned["raw"]), "-o", str(out), "-d", str(DATASET_ID), "-tr", trainer,
                          "-c", "2.5d", "-f", "0", "-device", "cpu", "--disable_tta"])
        assert exit_info.value.code == 0, capsys.readouterr().err
        for case_dir in sorted(d for d in planned["raw"].iterdir() if d.is_dir()):
            source = sitk.ReadImage(str(case_dir / "mr.nii.gz"))
            sct = sitk.ReadImage(str(out / f"{case_dir.name}.nii.gz"))
            assert sct.GetSize() == source.GetSize() and sct.GetSpacing() == source.GetSpacing()
            assert sct.GetOrigin() == source.GetOrigin() and sct.GetDirection() == source.GetDirection()
            assert sct.GetPixelID() == sitk.sitkInt16
        # the same model asked for as 2d is one line
        with pytest.raises(SystemExit) as exit_info:
            predict_main(["-i", str(planned["raw"]), "-o", str(tmp_path / "wrong"), "-m", str(output.parent),
                          "-c", "2d", "-f", "0", "-device", "cpu"])
        assert exit_info.value.code == 1
        assert "trained on configuration '2.5d'" in capsys.readouterr().err


# ------------------------------------------------------------------ physical space
class PreviousSliceMean(torch.nn.Module):
    """Output = (centre slice + the previous slice of the slab) / 2: an answer that depends on which way the
    slab's channels run through the body, so a slab built in file order instead of the canonical grid shows."""

    def forward(self, x, features=None):
        centre = x.shape[1] // 2
        return 0.5 * (x[:, centre:centre + 1] + x[:, centre - 1:centre])


def _predictor(planned, configuration: str, tmp_path):
    from dgcf_auto.atomic import torch_save
    from dgcf_auto.inference.predictor import SCTPredictor
    from dgcf_auto.network import build_network

    plans = resolve_configuration(planned["plans"], configuration)
    plans["network"]["architecture"] = "cnn_only"
    file = tmp_path / configuration / "fold_0" / "checkpoint_final.pth"
    torch_save({"network_weights": build_network(plans["network"], None).state_dict(), "plans": plans, "epoch": 1,
                "trainer_name": "DGCFTrainer_cnnOnly_L1", "dinov3_source": "none", "optimizer_state": {}}, file)
    return SCTPredictor([file], use_tta=True, precision="fp32", configuration=configuration)


def test_25d_sct_is_right_in_physical_space_on_a_rotated_flipped_anisotropic_case(planned, tmp_path):
    """The ramp case of test_faults (7 degree in-plane rotation, z stored head-first (direction z = -1),
    spacing 0.83 x 1.27 x 3.1 mm, intensity linear in world x, y, z). The slab's previous slice is the one
    3.1 mm further inferior (-z in LPS world coordinates, the canonical grid's slice order) whatever the file's
    order, so the expected sCT is the 2d one of the source lowered by half of 3.1 mm x 4.0 / mm; the most
    inferior slice of the body has no neighbour below it and is replicated."""
    from scipy import ndimage

    from test_faults import _ramp_case

    source, mask, array, mask_array = _ramp_case()
    slabs = _predictor(planned, "2.5d", tmp_path)
    assert configuration_plans(slabs.plans).slab_size == 3
    slabs.networks, slabs.shared_encoder = [PreviousSliceMean()], None
    hu = sitk.GetArrayFromImage(slabs.predict_volume(source, mask, "RAMP")[0]).astype(np.float64)

    low, high = (slabs.plans["ct_normalization"][k] for k in ("clip_low", "clip_high"))
    p99 = np.percentile(array[mask_array > 0], 99)
    step = 3.1 * 4.0  # the previous slice, inferior: z spacing x the ramp's world z gradient
    last_body_slice = int(np.flatnonzero(mask_array.any(axis=(1, 2)))[-1])  # file order: most inferior last
    shift = np.full(array.shape[0], -step / 2)
    shift[last_body_slice] = 0.0  # replicated edge: its own value twice
    expected = low + np.clip((array + shift[:, None, None]) / p99, 0, 1) * (high - low)
    core = ndimage.binary_erosion(mask_array, np.ones((1, 3, 3), bool)) & (array < 0.85 * p99)
    assert core.sum() > 1000 and core[last_body_slice].sum() > 50
    assert np.abs(hu[core] - expected[core]).max() <= 2.0
    # a slab built in file order would add the step on the other side: well outside the tolerance
    assert (step / p99) * (high - low) > 20

    # the same network seeing only the centre slice (slab of 1) is 2d's answer, computed by 2d's predictor
    two_d = _predictor(planned, "2d", tmp_path)
    two_d.networks, two_d.shared_encoder = [lambda x, features=None: x], None
    hu_2d = sitk.GetArrayFromImage(two_d.predict_volume(source, mask, "RAMP")[0]).astype(np.float64)
    plain = low + np.clip(array / p99, 0, 1) * (high - low)
    assert np.abs(hu_2d[core] - plain[core]).max() <= 2.0


def test_25d_gives_the_same_sct_for_a_z_flipped_copy_of_the_file(planned, tmp_path):
    """The same anatomy stored with the slice order reversed (direction's z column negated, origin at the
    other end) is the same image in physical space; 2.5d's sCT must be too, voxel for voxel."""
    from test_faults import _ramp_case

    source, mask, _, _ = _ramp_case()

    def z_flipped(image):
        flipped = sitk.Flip(image, [False, False, True])  # keeps physical space: origin and direction follow
        return flipped

    predictor = _predictor(planned, "2.5d", tmp_path)
    predictor.networks, predictor.shared_encoder = [PreviousSliceMean()], None
    sct = sitk.GetArrayFromImage(predictor.predict_volume(source, mask, "RAMP")[0])
    flipped_source, flipped_mask = z_flipped(source), z_flipped(mask)
    assert flipped_source.GetDirection() != source.GetDirection()
    sct_flipped = predictor.predict_volume(flipped_source, flipped_mask, "RAMP")[0]
    back = sitk.GetArrayFromImage(z_flipped(sct_flipped))
    assert np.abs(back.astype(int) - sct.astype(int)).max() <= 1  # float resampling order only
