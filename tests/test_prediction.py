"""dgcf_predict: geometry exactness, HU range, masking, ensembles/TTA, uncertainty, skipping, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from dgcf_auto.errors import DGCFError

DATASET_ID = 998


def _predict(argv):
    from dgcf_auto.cli.predict import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


def _assert_same_grid(a: sitk.Image, b: sitk.Image):
    assert a.GetSize() == b.GetSize()
    assert a.GetSpacing() == b.GetSpacing()
    assert a.GetOrigin() == b.GetOrigin()
    assert a.GetDirection() == b.GetDirection()


def test_case_folders_give_int16_hu_on_the_input_grid(trained, tmp_path, capsys):
    out = tmp_path / "out"
    assert _predict(["-i", str(trained["raw"]), "-o", str(out), "-device", "cpu", "--png", str(tmp_path / "png")]) == 0
    assert "outside the planned slice grid" not in capsys.readouterr().err  # planned to fit these bodies
    case_dirs = sorted(d for d in trained["raw"].iterdir() if d.is_dir())
    directions = set()
    for case_dir in case_dirs:
        source = sitk.ReadImage(str(case_dir / "mr.nii.gz"))
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(case_dir / "mask.nii.gz")))
        sct = sitk.ReadImage(str(out / f"{case_dir.name}.nii.gz"))
        _assert_same_grid(sct, source)
        directions.add(np.round(source.GetDirection(), 6).tobytes())
        values = sitk.GetArrayFromImage(sct)
        assert values.dtype == np.int16
        assert values.min() >= -1024 and values.max() <= 3071
        assert np.all(values[mask == 0] == -1000)
        assert (tmp_path / "png" / f"{case_dir.name}.png").stat().st_size > 10_000
    assert len(directions) > 1  # the example set holds non-identity and differing directions


def test_odd_anisotropic_rotated_file_keeps_its_geometry(trained, tmp_path):
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.uniform(0, 400, (9, 41, 37)).astype(np.float32))
    image.SetSpacing((0.83, 1.27, 3.1))
    image.SetOrigin((-12.5, 40.25, 7.0))
    angle = np.deg2rad(7)
    image.SetDirection((np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle), 0, 0, 0, -1))
    sitk.WriteImage(image, str(tmp_path / "odd.mha"))
    out = tmp_path / "out"
    assert _predict(["-i", str(tmp_path / "odd.mha"), "-o", str(out), "-device", "cpu", "-f", "0",
                     "--output-format", "same", "--disable_tta"]) == 0
    sct = sitk.ReadImage(str(out / "odd.mha"))
    _assert_same_grid(sct, image)
    assert sct.GetPixelID() == sitk.sitkInt16


def test_body_outside_the_planned_field_of_view_is_reported(trained, tmp_path, caplog):
    from dgcf_auto.inference.predictor import SCTPredictor

    fold = sorted(trained["model_folder"].glob("fold_*/checkpoint_final.pth"))[:1]
    predictor = SCTPredictor(fold, use_tta=False)
    wide = sitk.GetImageFromArray(np.full((4, 120, 160), 300.0, np.float32))
    wide.SetSpacing((2.0, 2.0, 3.0))  # a 32 x 24 cm body, far wider than the phantoms' planned grid
    mask = sitk.GetImageFromArray(np.ones((4, 120, 160), np.uint8))
    mask.CopyInformation(wide)
    sct, _ = predictor.predict_volume(wide, mask, "WIDE")
    (warning,) = [r for r in caplog.records if r.getMessage().startswith("case WIDE:")]
    assert warning.levelname == "WARNING" and "of the body mask lies outside the planned slice grid" in warning.getMessage()
    assert sitk.GetArrayViewFromImage(sct)[2, 0, 0] == -1024  # body, but never predicted


def test_ensemble_is_the_mean_of_folds_and_tta_doubles_passes(trained):
    from dgcf_auto.inference.predictor import SCTPredictor

    folds = sorted(trained["model_folder"].glob("fold_*/checkpoint_final.pth"))
    slices = np.random.default_rng(1).uniform(-1, 1, (3, 32, 32)).astype(np.float32)
    single = [SCTPredictor([f], use_tta=False, precision="fp32")._predict_slices(slices, "", False)[0]
              for f in folds]
    both = SCTPredictor(folds, use_tta=False, precision="fp32")
    mean, std = both._predict_slices(slices, "", True)
    np.testing.assert_allclose(mean, (single[0] + single[1]) / 2, atol=1e-5)
    np.testing.assert_allclose(std, np.abs(single[0] - single[1]) / 2, atol=1e-4)
    assert both.passes_per_slice == 2 and SCTPredictor(folds, use_tta=True).passes_per_slice == 4
    tta = SCTPredictor(folds[:1], use_tta=True, precision="fp32")._predict_slices(slices, "", False)[0]
    network = SCTPredictor(folds[:1]).networks[0]
    with torch.no_grad():
        plain = network(torch.from_numpy(slices)[:, None])[:, 0].numpy()
        mirrored = torch.flip(network(torch.flip(torch.from_numpy(slices)[:, None], (-1,))), (-1,))[:, 0].numpy()
    np.testing.assert_allclose(tta, (plain + mirrored) / 2, atol=1e-5)


def test_precision_choice(monkeypatch):
    from dgcf_auto.network import execution as predictor

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert predictor.autocast_dtype(cpu, "fp32") is None and predictor.autocast_dtype(cuda, "fp32") is None
    assert predictor.autocast_dtype(cpu, "bf16") is torch.bfloat16
    assert predictor.autocast_dtype(cuda, "auto") is torch.bfloat16
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert predictor.autocast_dtype(cpu, "auto") is None  # emulated bf16 would be slower than fp32
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert predictor.autocast_dtype(cpu, "auto") is torch.bfloat16
    with pytest.raises(DGCFError, match="precision must be one of"):
        predictor.autocast_dtype(cpu, "fp16")


def test_bf16_prediction_stays_close_to_fp32(trained):
    from dgcf_auto.inference.predictor import SCTPredictor

    fold = sorted(trained["model_folder"].glob("fold_*/checkpoint_final.pth"))[:1]
    slices = np.random.default_rng(2).uniform(-1, 1, (4, 32, 32)).astype(np.float32)
    fp32 = SCTPredictor(fold, use_tta=False, precision="fp32")._predict_slices(slices, "", False)[0]
    bf16 = SCTPredictor(fold, use_tta=False, precision="bf16")._predict_slices(slices, "", False)[0]
    hu_scale = (2000 + 1024) / 2
    assert 0 < np.abs(bf16 - fp32).mean() * hu_scale < 20  # bf16 really ran, and differs by a few HU


def test_uncertainty_map_and_skipping_existing_outputs(trained, tmp_path):
    out = tmp_path / "out"
    args = ["-i", str(trained["raw"]), "-o", str(out), "-device", "cpu", "--save-uncertainty", "--disable_tta"]
    assert _predict(args) == 0
    case = sorted(d.name for d in trained["raw"].iterdir() if d.is_dir())[0]
    uncertainty = sitk.ReadImage(str(out / f"{case}_uncertainty.nii.gz"))
    _assert_same_grid(uncertainty, sitk.ReadImage(str(trained["raw"] / case / "mr.nii.gz")))
    values = sitk.GetArrayFromImage(uncertainty)
    assert values.min() >= 0 and values.max() > 0  # two different folds disagree somewhere
    stamp = (out / f"{case}.nii.gz").stat().st_mtime_ns
    assert _predict(args + ["--continue-prediction"]) == 0
    assert (out / f"{case}.nii.gz").stat().st_mtime_ns == stamp  # skipped: this model wrote it
    assert _predict(args) == 0
    assert (out / f"{case}.nii.gz").stat().st_mtime_ns != stamp  # nnU-Net's default: overwrite


def _error_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_bad_inputs_write_nothing(trained, tmp_path, capsys):
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _predict(["-i", str(empty), "-o", str(out), "-device", "cpu"]) == 1
    assert "no images found" in _error_line(capsys)

    cases = tmp_path / "cases"
    case_dir = trained["raw"] / sorted(d.name for d in trained["raw"].iterdir() if d.is_dir())[0]
    (cases / "A").mkdir(parents=True)
    (cases / "B").mkdir()
    source = sitk.ReadImage(str(case_dir / "mr.nii.gz"))
    sitk.WriteImage(source, str(cases / "A" / "mr.nii.gz"))
    small = sitk.Image([s - 1 for s in source.GetSize()], sitk.sitkUInt8) + 1
    sitk.WriteImage(small, str(cases / "A" / "mask.nii.gz"))
    (cases / "B" / "mr.nii.gz").write_bytes(b"not a nifti file at all")
    (cases / "C").mkdir()
    with_nan = sitk.GetArrayFromImage(source)
    with_nan[2, 3, 4] = np.nan  # SimpleITK would read this NaN as 0; validation looks at the raw bytes
    nan_image = sitk.GetImageFromArray(with_nan)
    nan_image.CopyInformation(source)
    sitk.WriteImage(nan_image, str(cases / "C" / "mr.nii.gz"))
    (cases / "D").mkdir()
    sitk.WriteImage(source, str(cases / "D" / "cbct.nii.gz"))
    assert _predict(["-i", str(cases), "-o", str(out), "-device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "case A: file mask.nii.gz: grid does not match mr.nii.gz: size" in err
    assert "case B: file mr.nii.gz: cannot be read" in err
    assert "case C: file mr.nii.gz: 1 NaN/inf voxels" in err
    assert "case D: file cbct.nii.gz: a cbct source, but the model was trained on mr" in err
    assert not out.exists() or not any(out.iterdir())


def test_missing_model_is_a_clear_error(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DGCF_results", str(tmp_path / "nothing_trained"))
    assert _predict(["-i", str(trained["raw"]), "-o", str(tmp_path / "out"), "-device", "cpu"]) == 1
    assert "-d is required: 0 trained datasets" in _error_line(capsys)
    monkeypatch.setenv("DGCF_results", str(trained["root"] / "DGCF_results"))
    assert _predict(["-i", str(trained["raw"]), "-o", str(tmp_path / "out"), "-d", str(DATASET_ID),
                     "-tr", "DGCFTrainer_L1", "-device", "cpu"]) == 1
    assert "no trained model DGCFTrainer_L1__DGCFPlans__2d" in _error_line(capsys)
    assert _predict(["-i", str(trained["raw"]), "-o", str(tmp_path / "out"), "-d", str(DATASET_ID),
                     "-f", "3", "-device", "cpu"]) == 1
    assert "fold 3:" in _error_line(capsys)
    broken = tmp_path / "results" / trained["raw"].name / "DGCFTrainer__DGCFPlans__2d" / "fold_0"
    broken.mkdir(parents=True)
    (broken / "checkpoint_final.pth").write_bytes(b"\x80\x02 truncated")
    monkeypatch.setenv("DGCF_results", str(tmp_path / "results"))
    assert _predict(["-i", str(trained["raw"]), "-o", str(tmp_path / "out"), "-device", "cpu"]) == 1
    assert "checkpoint_final.pth is corrupt" in _error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_python_api_warns_like_the_cli_through_logging(trained, caplog):
    """dgcf_auto.predict on an image: the derived-mask and random-weights warnings reach logging, as on the CLI;
    passing mask= (the README's example) derives nothing and gives the masked result the CLI gives."""
    import dgcf_auto

    case = sorted(p for p in trained["raw"].iterdir() if p.is_dir())[0]
    source, mask = sitk.ReadImage(str(case / "mr.nii.gz")), sitk.ReadImage(str(case / "mask.nii.gz"))
    caplog.set_level("WARNING", logger="dgcf_auto")
    unmasked = dgcf_auto.predict(source, model=trained["model_folder"], folds=[0], device="cpu", tta=False)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "no body mask given for 1 case(s): masks derived from the source (plans); see " \
           "documentation/prediction.md" in warned
    assert sum(m.startswith("DINOv3 is RANDOMLY INITIALISED") for m in warned) == 1
    caplog.clear()
    masked = dgcf_auto.predict(source, model=trained["model_folder"], folds=[0], device="cpu", tta=False, mask=mask)
    assert not [r for r in caplog.records if "no body mask" in r.getMessage()]
    outside = sitk.GetArrayViewFromImage(mask) == 0
    assert (sitk.GetArrayViewFromImage(masked)[outside] == -1000).all() and unmasked.GetSize() == masked.GetSize()


class _Identity(torch.nn.Module):
    def forward(self, x, features=None):
        return x


class _Constant(torch.nn.Module):
    """A stand-in fold whose normalised output is one constant everywhere."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x, features=None):
        return torch.full_like(x, self.value)


def _predictor(trained, networks, plans_update=None, use_tta=False):
    from dgcf_auto.inference.predictor import SCTPredictor

    predictor = SCTPredictor(sorted(trained["model_folder"].glob("fold_*/checkpoint_final.pth"))[:1],
                             use_tta=use_tta, precision="fp32", progress=False)
    predictor.networks = list(networks)
    predictor.shared_encoder = None
    if plans_update:
        predictor.plans = {**predictor.plans, **plans_update}
    return predictor


def _mr_case(seed: int = 7, index: int = 1):
    from dgcf_auto.dataset.example import make_example_case

    return make_example_case(np.random.default_rng([seed, index]), "mr2ct", case_index=index)


# Hand mutation this catches: restore_ct ignoring the planned CT window: every other test plans the default [-1024, 2000].
def test_identity_network_hu_follow_a_non_default_ct_window(trained):
    """CBCT phantom, identity network, source window [-1024, 2000], CT window [-1000, 1500], slice grid at the
    case's own spacing (resampling copies voxels): sCT = 250 + 1250 * (clip(CBCT, -1024, 2000) - 488) / 1512."""
    from dgcf_auto.dataset.example import make_example_case

    case = make_example_case(np.random.default_rng([5, 3]), "cbct2ct", case_index=3)
    source, mask = case["source"], case["mask"]
    grid = dict(trained["plans"]["configurations"]["2d"], inplane_spacing=[source.GetSpacing()[1]] * 2,
                patch_size=[128, 128])
    predictor = _predictor(trained, [_Identity()], {
        "configurations": {"2d": grid},
        "source_normalization": {"scheme": "window", "clip_low": -1024.0, "clip_high": 2000.0},
        "ct_normalization": {"clip_low": -1000.0, "clip_high": 1500.0}})
    sct, _ = predictor.predict_volume(source, mask, "W")
    hu = sitk.GetArrayFromImage(sct).astype(np.float64)
    body = sitk.GetArrayFromImage(mask) > 0
    cbct = sitk.GetArrayFromImage(source).astype(np.float64)
    expected = 250.0 + 1250.0 * (np.clip(cbct, -1024, 2000) - 488.0) / 1512.0
    assert np.abs(hu[body] - expected[body]).max() <= 1.0
    assert np.ptp(expected[body]) > 1000  # air, soft tissue and bone: a wrong window cannot pass


# Hand mutation this catches: no hole filling in the derived body mask: dark cortical bone and gas fell outside, Dice still > 0.95.
def test_derived_body_mask_covers_the_body_and_every_dark_tissue_inside_it(trained):
    from dgcf_auto.dataset.example import CORTEX, GAS
    from dgcf_auto.inference.body_mask import derive_body_mask

    predictor = _predictor(trained, [_Identity()])
    for index in (0, 1, 2):
        case = _mr_case(7, index)
        labels = sitk.GetArrayFromImage(case["labels"])
        body = labels > 0
        found = sitk.GetArrayFromImage(derive_body_mask(case["source"], predictor.plans, case="P")) > 0
        assert np.count_nonzero(found & body) / body.sum() >= 0.995
        # MR-dark tissues inside the body (holes of the threshold); without hole filling 46-71 % are found.
        dark = np.isin(labels, (CORTEX, GAS))
        assert dark.sum() > 100 and found[dark].mean() >= 0.98
    sct, _ = predictor.predict_volume(case["source"], None, "P")  # no mask given: the derived one is used
    assert np.mean(sitk.GetArrayFromImage(sct)[labels == CORTEX] == -1000) <= 0.02  # bone is not set to air


# Hand mutation this catches: the uncertainty map scaled x2 (or by the default window instead of the planned one).
def test_uncertainty_of_two_constant_folds_is_their_known_spread_in_hu(trained):
    low, high = -1000.0, 1500.0
    predictor = _predictor(trained, [_Constant(0.2), _Constant(-0.1)],
                           {"ct_normalization": {"clip_low": low, "clip_high": high}})
    case = _mr_case(7, 0)
    sct, uncertainty = predictor.predict_volume(case["source"], case["mask"], "U", with_uncertainty=True)
    body = sitk.GetArrayFromImage(case["mask"]) > 0
    core = ndimage.binary_erosion(body, np.ones((1, 5, 5), bool))
    # Population std of {0.2, -0.1} is 0.15 normalised units; one unit is (high - low) / 2 HU.
    expected_std = 0.15 * (high - low) / 2
    np.testing.assert_allclose(sitk.GetArrayFromImage(uncertainty)[core], expected_std, rtol=0, atol=0.05)
    mean_hu = low + (0.05 + 1) / 2 * (high - low)  # the fold average 0.05, through the planned window
    assert np.all(np.abs(sitk.GetArrayFromImage(sct)[core] - mean_hu) <= 0.5)
