"""dgcf_predict --save_probabilities and dgcf_ensemble: exact self-ensemble, the mean of two models, checks."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from model_fixtures import TINY_FEATURES, data_folders, run_cli, save_tiny_folds

pytestmark = pytest.mark.filterwarnings("ignore:DINOv3 is RANDOMLY INITIALISED")
DATASET_ID = 993


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    """Two tiny 'models' (fold 0 and fold 1 of one folder) predicted with --save_probabilities; their plans
    have a non-default CT window, which the way back to HU must take from the folder's plans.json."""
    root = tmp_path_factory.mktemp("ensemble")
    with data_folders(root):
        from dgcf_auto.dataset.example import write_example_dataset
        from dgcf_auto.inference.api import predict
        from dgcf_auto.preprocessing.run import plan_and_preprocess

        raw = write_example_dataset(DATASET_ID, "mr2ct", n=3, seed=4)
        plans = plan_and_preprocess(DATASET_ID, num_processes=1, preprocess=False, progress=False,
                                    overrides={"patch_size": [32, 32], "features": TINY_FEATURES})["plans"]
        plans["ct_normalization"] = {**plans["ct_normalization"], "clip_low": -1000, "clip_high": 1500}
        folder = root / "DGCF_results" / raw.name / "DGCFTrainer__DGCFPlans__2d"
        save_tiny_folds(folder, plans, folds=(0, 1))
        outputs = {}
        for fold in (0, 1):
            outputs[fold] = root / f"pred_fold{fold}"
            predict(raw, outputs[fold], model=folder, folds=[fold], device="cpu", tta=False, precision="fp32",
                    save_probabilities=True, progress=False)
        yield {"root": root, "raw": raw, "out": outputs, "cases": sorted(p.name for p in raw.iterdir() if p.is_dir())}


def _run(argv, capsys):
    return run_cli("ensemble", argv, capsys)


def _array(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_saved_prediction_is_the_float_sct_before_rounding(predicted):
    out, case = predicted["out"][0], predicted["cases"][0]
    assert (out / "plans.json").is_file() and (out / f"{case}.json").is_file()
    with np.load(out / f"{case}.npz", allow_pickle=False) as data:
        normalised, mask = data["sct"], data["background_mask"]
    properties = json.loads((out / f"{case}.json").read_text())["properties"]
    assert normalised.dtype == np.float32 and list(normalised.shape) == properties["shape"]
    sct = sitk.ReadImage(str(out / f"{case}.nii.gz"))
    assert mask.shape == sitk.GetArrayFromImage(sct).shape
    assert np.all(_array(out / f"{case}.nii.gz")[mask == 0] == -1000)
    record = json.loads((out / "prediction_provenance.json").read_text())["cases"][case]
    from dgcf_auto.inference.provenance import file_sha256

    assert record["probabilities_sha256"] == file_sha256(out / f"{case}.npz")


def test_ensemble_of_a_folder_with_itself_is_that_folder(predicted, tmp_path, capsys):
    out = predicted["out"][0]
    code, stdout, err = _run(["-i", str(out), str(out), "-o", str(tmp_path / "self"), "-np", "2"], capsys)
    assert code == 0, err
    for case in predicted["cases"]:
        mine, theirs = sitk.ReadImage(str(tmp_path / "self" / f"{case}.nii.gz")), sitk.ReadImage(str(out / f"{case}.nii.gz"))
        assert mine.GetPixelID() == sitk.sitkInt16
        assert np.array_equal(sitk.GetArrayFromImage(mine), sitk.GetArrayFromImage(theirs))
        assert (mine.GetSize(), mine.GetSpacing(), mine.GetOrigin(), mine.GetDirection()) == \
               (theirs.GetSize(), theirs.GetSpacing(), theirs.GetOrigin(), theirs.GetDirection())


def test_ensemble_of_two_models_is_their_mean(predicted, tmp_path, capsys):
    a, b = predicted["out"][0], predicted["out"][1]
    code, _, err = _run(["-i", str(a), str(b), "-o", str(tmp_path / "ab"), "--save_probabilities"], capsys)
    assert code == 0, err
    for case in predicted["cases"]:
        with np.load(a / f"{case}.npz") as da, np.load(b / f"{case}.npz") as db, \
                np.load(tmp_path / "ab" / f"{case}.npz") as dab:
            expected = ((da["sct"].astype(np.float64) + db["sct"].astype(np.float64)) / 2).astype(np.float32)
            assert np.array_equal(dab["sct"], expected)
        # In HU: the way back is linear (window, B-spline resampling), so the ensemble lies within 1 HU of the
        # mean of the two int16 sCTs (each rounded by at most 0.5 HU), while the two models differ widely.
        hu_a, hu_b = _array(a / f"{case}.nii.gz").astype(float), _array(b / f"{case}.nii.gz").astype(float)
        hu_ab = _array(tmp_path / "ab" / f"{case}.nii.gz").astype(float)
        assert np.abs(hu_a - hu_b).max() > 50
        assert np.abs(hu_ab - (hu_a + hu_b) / 2).max() <= 1.0 + 1e-6
    record = json.loads((tmp_path / "ab" / "ensemble_information.json").read_text())
    assert [m["model"]["folds"][0]["fold"] for m in record["members"]] == ["fold_0", "fold_1"]


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("fault", ["original_grid", "missing_case", "grid", "mask", "truncated"])
def test_folders_that_do_not_agree_are_one_line_and_nothing_written(predicted, tmp_path, capsys, fault):
    a = predicted["out"][0]
    b = _copy(predicted["out"][1], tmp_path / "b")
    case = predicted["cases"][1]
    expected = {"original_grid": f"case {case}: {b / (case + '.json')}: its original geometry differs",
                "missing_case": f"case {case}: no saved prediction in {b}",
                "grid": f"case {case}: {b / (case + '.json')}: its slice grid differs",
                "mask": f"case {case}: {b / (case + '.npz')}: its body mask differs",
                "truncated": f"case {case}: {case}.npz in {b} is unreadable"}[fault]
    if fault == "original_grid":  # another input image (plans with another grid are averaged in HU instead)
        record = json.loads((b / f"{case}.json").read_text())
        record["properties"]["original_geometry"]["spacing"][0] *= 1.01
        (b / f"{case}.json").write_text(json.dumps(record))
    elif fault == "missing_case":
        (b / f"{case}.json").unlink()
    elif fault == "grid":
        record = json.loads((b / f"{case}.json").read_text())
        record["properties"]["slice_grid"]["origin"][0] += 1.0
        (b / f"{case}.json").write_text(json.dumps(record))
    elif fault == "mask":
        with np.load(b / f"{case}.npz") as data:
            arrays = {k: data[k].copy() for k in data.files}
        arrays["background_mask"][0, 0, 0] ^= 1
        np.savez_compressed(b / f"{case}.npz", **arrays)
    else:
        (b / f"{case}.npz").write_bytes((b / f"{case}.npz").read_bytes()[:100])
    code, _, err = _run(["-i", str(a), str(b), "-o", str(tmp_path / "out")], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert expected in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_continue_prediction_redoes_a_case_whose_saved_floats_are_gone(predicted, tmp_path, caplog):
    from dgcf_auto.inference.api import predict

    caplog.set_level("INFO", logger="dgcf_auto")

    out = _copy(predicted["out"][0], tmp_path / "again")
    case = predicted["cases"][2]
    (out / f"{case}.npz").unlink()
    with data_folders(predicted["root"]):
        predict(predicted["raw"], out, model=predicted["root"] / "DGCF_results" / predicted["raw"].name /
                "DGCFTrainer__DGCFPlans__2d", folds=[0], device="cpu", tta=False, precision="fp32",
                save_probabilities=True, continue_prediction=True, progress=False)
    assert "2 case(s) already predicted by this model, skipped; 1 to predict (1 without saved probabilities)" in \
        caplog.text  # the Python API: through logging
    with np.load(out / f"{case}.npz") as again, np.load(predicted["out"][0] / f"{case}.npz") as before:
        assert np.array_equal(again["sct"], before["sct"])


def test_save_probabilities_needs_an_output_folder(predicted):
    from dgcf_auto.errors import DGCFError
    from dgcf_auto.inference.api import predict

    with pytest.raises(DGCFError, match="save_probabilities needs an output folder"):
        predict(predicted["raw"], None, save_probabilities=True)
