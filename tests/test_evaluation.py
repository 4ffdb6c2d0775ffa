"""Evaluation: SynthRAD metrics, SegScore (injected segmenter), PNG report, dgcf_evaluate / dgcf_visualize."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from skimage.metrics import structural_similarity  # installed with batchgenerators; an independent SSIM

from dgcf_auto import figures
from dgcf_auto.cli import evaluate as evaluate_cli
from dgcf_auto.cli import visualize as visualize_cli
from dgcf_auto.errors import DGCFError
from dgcf_auto.evaluation import metrics, segscore
from dgcf_auto.evaluation.evaluate import EvalCase, evaluate_folders
from evaluation_fixtures import FLIP_Y, SPACING, fake_segmenter, smooth_pair, write


# ---------------------------------------------------------------- metrics

def test_mae_psnr_by_hand_on_three_voxel_mask():
    ct = np.full((8, 8, 8), -1000.0)
    sct = ct.copy()
    mask = np.zeros(ct.shape, bool)
    voxels = [(1, 1, 1), (4, 5, 6), (7, 0, 3)]
    for v, (c, s) in zip(voxels, [(100.0, 110.0), (3500.0, 2900.0), (-2000.0, -1000.0)]):
        ct[v], sct[v], mask[v] = c, s, True
    sct[0, 0, 0] = 500.0  # outside the mask: ignored
    assert metrics.mae(ct, sct, mask) == pytest.approx((10 + 600 + 1000) / 3)  # MAE is not clipped
    # PSNR clips to [-1024, 3000]: errors 10, 3000-2900=100, -1024-(-1000)=-24
    mse = (10 ** 2 + 100 ** 2 + 24 ** 2) / 3
    assert metrics.psnr(ct, sct, mask) == pytest.approx(10 * math.log10(4024 ** 2 / mse))


def test_tissue_mae_classes_follow_reference_ct():
    ct = np.array([-800.0, -250.0, 0.0, 250.0, 251.0, 1000.0, 40.0]).reshape(1, 1, 7)
    sct = ct + np.array([10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 999.0]).reshape(1, 1, 7)
    mask = np.array([1, 1, 1, 1, 1, 1, 0]).reshape(1, 1, 7)
    result = metrics.tissue_mae(ct, sct, mask)
    assert result == pytest.approx({"mae_air": 10.0, "mae_soft_tissue": 30.0, "mae_bone": 55.0})
    no_bone = metrics.tissue_mae(ct[..., :4], sct[..., :4], mask[..., :4])
    assert math.isnan(no_bone["mae_bone"])


def test_ssim_matches_skimage_with_official_masking():
    ct, sct, mask = smooth_pair()
    # SynthRAD2023 recipe written out with skimage: clip, background -> -1024, shift, SSIM map, masked mean
    m = mask > 0
    prep = [np.where(m, np.clip(a, -1024, 3000), -1024).astype(np.float32) + 1024 for a in (ct, sct)]
    _, ssim_full_map = structural_similarity(prep[0], prep[1], data_range=4024, full=True)
    expected = ssim_full_map[3:-3, 3:-3, 3:-3][m[3:-3, 3:-3, 3:-3]].mean()
    assert metrics.ssim(ct, sct, mask) == pytest.approx(expected, abs=1e-6)
    assert metrics.ssim(ct, sct, mask) < 0.99  # the perturbation is visible
    unmasked = structural_similarity(np.clip(ct, -1024, 3000) + 1024, np.clip(sct, -1024, 3000) + 1024,
                                     data_range=4024)
    assert metrics.ssim(ct, sct, None) == pytest.approx(unmasked, abs=1e-6)


def test_metrics_pinned_to_official_code_values():
    """Values produced by the official code (SynthRAD2023 image_metrics.py, SynthRAD2025 image_metrics.py,
    transcribed in a scratch script, not shipped) on this exact pair."""
    ct, sct, mask = smooth_pair()
    result = metrics.evaluate_pair(ct, sct, mask)
    assert result["mae"] == pytest.approx(58.97987328756656, abs=1e-4)
    assert result["psnr"] == pytest.approx(35.98110574783561, abs=1e-4)
    assert result["ssim"] == pytest.approx(0.9616828525761663, abs=1e-4)
    assert result["ms_ssim"] == pytest.approx(0.9912739111766282, abs=1e-4)


def test_ms_ssim_drops_with_distortion_and_ignores_outside_mask():
    ct, sct, mask = smooth_pair()
    mild = metrics.ms_ssim(ct, sct, mask)
    strong = metrics.ms_ssim(ct, ct + 3 * (sct - ct), mask)
    assert 0 < strong < mild < 1
    outside_changed = np.where(mask > 0, sct, 2000.0).astype(np.float32)
    assert metrics.ms_ssim(ct, outside_changed, mask) == pytest.approx(mild, abs=1e-12)


def test_case_against_itself():
    ct, _, mask = smooth_pair()
    result = metrics.evaluate_pair(ct, ct.copy(), mask)
    assert result["mae"] == 0.0 and result["psnr"] == math.inf
    assert result["ssim"] == pytest.approx(1.0, abs=1e-7)
    assert result["ms_ssim"] == pytest.approx(1.0, abs=1e-7)
    assert set(result) == set(metrics.METRIC_NAMES)


def test_metric_input_errors():
    ct, sct, mask = smooth_pair()
    with pytest.raises(ValueError, match="at least 7 voxels"):
        metrics.evaluate_pair(ct[:5], sct[:5], mask[:5])
    with pytest.raises(ValueError, match="mask is empty"):
        metrics.evaluate_pair(ct, sct, np.zeros_like(mask))
    with pytest.raises(ValueError, match="shape"):
        metrics.evaluate_pair(ct, sct[:, :30], mask)


def test_summarize_mean_std_skips_non_finite():
    per_case = {"a": {"mae": 10.0, "mae_bone": math.nan, "psnr": math.inf},
                "b": {"mae": 20.0, "mae_bone": 4.0, "psnr": 30.0}, "c": {"mae": 30.0, "psnr": 36.0}}
    out = metrics.summarize(per_case)
    assert out["mean"]["mae"] == 20.0 and out["std"]["mae"] == pytest.approx(math.sqrt(200 / 3))
    assert out["mean"]["mae_bone"] == 4.0 and out["n"]["mae_bone"] == 1
    assert out["mean"]["psnr"] == 33.0 and out["std"]["psnr"] == 3.0 and out["n"]["psnr"] == 2


# ---------------------------------------------------------------- SegScore


def test_segscore_dice_and_structure_selection():
    ct = np.full((4, 10, 10), -1000, np.int16)
    ct[:, :2] = 1000          # sacrum, 80 voxels
    ct[:, 5:7] = 0            # bladder, 80 voxels
    ct[:, 8:] = 300           # liver
    sct = ct.copy()
    sct[:, 0] = -1000         # sacrum: 40 of 80 found -> Dice 2*40/(80+40)
    sct[:, 4] = 0             # bladder grows to 120 voxels -> Dice 2*80/(80+120)
    sct[:, 3] = 1000          # sacrum elsewhere: 40 more predicted voxels
    sct[0, 9, 9] = 20         # a bladder voxel in the liver region... still bladder label
    images = [sitk.GetImageFromArray(a) for a in (ct, sct)]
    class_map = segscore.totalseg_class_map()
    result = segscore.segscore(*images, segmenter=fake_segmenter, class_map=class_map)
    assert result["dice_sacrum"] == pytest.approx(2 * 40 / (80 + 80))
    assert result["dice_urinary_bladder"] == pytest.approx(2 * 80 / (80 + 121))
    assert set(result) == {"segscore", "segscore_hd95", "dice_sacrum", "dice_urinary_bladder", "hd95_sacrum",
                           "hd95_urinary_bladder"}  # liver/absent ones excluded
    assert result["segscore"] == pytest.approx((result["dice_sacrum"] + result["dice_urinary_bladder"]) / 2)
    assert result["segscore_hd95"] == pytest.approx((result["hd95_sacrum"] + result["hd95_urinary_bladder"]) / 2)
    assert {"urinary_bladder", "prostate", "sacrum", "femur_left", "gluteus_maximus_right", "iliopsoas_left",
            "colon", "hip_right"} <= set(segscore.scored_structures(class_map))


def _surface_points(mask, spacing):
    """Surface voxels written out: in the mask with a face neighbour outside it (or on the array border)."""
    padded = np.pad(mask, 1)
    inner = np.ones_like(mask)
    for axis in range(3):
        for step in (-1, 1):
            inner &= np.roll(padded, step, axis)[1:-1, 1:-1, 1:-1]
    return np.argwhere(mask & ~inner) * np.asarray(spacing)


def test_hd95_against_brute_force_surface_distances():
    spacing = (2.5, 1.0, 0.5)
    ref = np.zeros((12, 14, 16), bool)
    ref[3:8, 4:9, 5:12] = True
    pred = np.roll(ref, 3, axis=2)
    pred[3, 4:7, 8:10] = False
    pred[9:11, 1:4, 1:6] = True  # an island far away pulls one directed percentile
    a, b = _surface_points(ref, spacing), _surface_points(pred, spacing)
    distances = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    directed = np.percentile(distances.min(axis=0), 95), np.percentile(distances.min(axis=1), 95)
    assert abs(directed[0] - directed[1]) > 1.0  # so the test tells max from min
    expected = max(directed)
    assert segscore.hd95(ref, pred, spacing) == pytest.approx(expected, abs=1e-9)
    assert segscore.hd95(ref, ref, spacing) == 0.0
    assert math.isnan(segscore.hd95(ref, np.zeros_like(ref), spacing))


def test_reference_segmentation_cached_per_case_model_and_version(folders):
    calls = []

    def counting(image):
        calls.append(image.GetSize())
        return fake_segmenter(image)

    counting.settings = {"model": "fake", "version": "1.0"}
    cache = folders / "cache"
    evaluate_folders(folders / "ref", folders / "pred", folders / "a.json", segscore=True, segmenter=counting,
                     segscore_cache=cache)
    assert len(calls) == 4  # CT and sCT of two cases
    summary = evaluate_folders(folders / "ref", folders / "pred", folders / "b.json", segscore=True,
                               segmenter=counting, segscore_cache=cache)
    assert len(calls) == 6  # only the two sCTs again
    assert summary["segscore"]["model"] == "fake" and "iliopsoas_left" in summary["segscore"]["structures"]
    assert sorted(p.name.split("_")[0] for p in (cache / "fake_totalsegmentator-1.0").iterdir()) == ["case1", "case2"]
    counting.settings = {"model": "fake", "version": "2.0"}
    evaluate_folders(folders / "ref", folders / "pred", folders / "c.json", segscore=True, segmenter=counting,
                     segscore_cache=cache)
    assert len(calls) == 10  # another version: reference segmented again


def test_segscore_missing_weights_is_a_clear_error_without_download(tmp_path, monkeypatch):
    home = tmp_path / "totalseg_home"
    home.mkdir()
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(home))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    import totalsegmentator.libs

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(totalsegmentator.libs, "download_pretrained_weights", no_download)
    with pytest.raises(DGCFError, match=r"weights not found.*Dataset291.*totalseg_download_weights -t total"):
        segscore.TotalSegmentatorSegmenter()
    assert list(home.iterdir()) == []  # nothing created, nothing fetched


def test_usage_statistics_switched_off(tmp_path, monkeypatch):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"totalseg_id": "x", "send_usage_stats": True}))
    segscore.disable_usage_statistics()
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["send_usage_stats"] is False and config["totalseg_id"] == "x"


# ---------------------------------------------------------------- files, CLI


def run_cli(module, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_evaluate_cli_end_to_end(folders, capsys):
    out = folders / "summary.json"
    code, stdout, _ = run_cli(evaluate_cli, ["-ref", str(folders / "ref"), "-pred", str(folders / "pred"),
                                             "-o", str(out), "--png", str(folders / "png"), "-np", "2"], capsys)
    assert code == 0 and "case1" in stdout and "mean" in stdout
    summary = json.loads(out.read_text())
    rows = {row["case"]: row["metrics"] for row in summary["metric_per_case"]}
    ct, sct, mask = smooth_pair()
    expected = metrics.evaluate_pair(ct.astype(np.int16).astype(np.float32),
                                     sct.astype(np.int16).astype(np.float32), mask)
    for key in ("mae", "psnr", "mae_bone"):
        assert rows["case1"][key] == pytest.approx(expected[key], abs=1e-9)
    assert rows["case1"]["ssim"] == pytest.approx(expected["ssim"], abs=1e-6)  # fast float64 vs float32 reference
    assert "ms_ssim" not in rows["case1"] and summary["profile"]["name"] == "synthrad2023"
    assert summary["profile"]["metrics"]["psnr"]["range"] == "[-1024, 3000]"
    assert rows["case2"]["mae"] > rows["case1"]["mae"]
    assert summary["mean"]["mae"] == pytest.approx((rows["case1"]["mae"] + rows["case2"]["mae"]) / 2)
    assert summary["std"]["mae"] == pytest.approx(abs(rows["case1"]["mae"] - rows["case2"]["mae"]) / 2)
    assert sorted(p.name for p in (folders / "png").iterdir()) == ["case1.png", "case2.png"]


def test_evaluate_flat_files_mask_folder_and_missing_prediction(folders, capsys):
    ct, sct, mask = smooth_pair()
    for name in ("a", "b"):
        write(ct, folders / "flat_ref" / f"{name}.nii.gz")
        write(mask, folders / "masks" / f"{name}.nii.gz", dtype=np.uint8)
    write(sct, folders / "flat_pred" / "a.nii.gz")
    out = folders / "s.json"
    code, _, err = run_cli(evaluate_cli, ["-ref", str(folders / "flat_ref"), "-pred", str(folders / "flat_pred"),
                                          "-mask", str(folders / "masks"), "-o", str(out)], capsys)
    assert code == 0 and "without prediction" in err and "b" in err
    summary = json.loads(out.read_text())
    assert [r["case"] for r in summary["metric_per_case"]] == ["a"]
    assert summary["metric_per_case"][0]["mask_file"].endswith("masks/a.nii.gz")
    assert summary["metric_per_case"][0]["metrics"]["ssim"] < 1


def test_evaluate_self_gives_perfect_scores_and_null_psnr(folders):
    (folders / "self_pred").mkdir()
    (folders / "self_pred" / "case2.nii.gz").write_bytes((folders / "ref" / "case2" / "ct.nii.gz").read_bytes())
    summary = evaluate_folders(folders / "ref", folders / "self_pred", folders / "self.json")
    row = summary["metric_per_case"][0]["metrics"]
    assert row["mae"] == 0 and row["psnr"] is None and row["ssim"] == pytest.approx(1)
    assert summary["missing_predictions"] == ["case1"] and summary["n"]["mae"] == 1 and summary["n"]["psnr"] == 0
    row = evaluate_folders(folders / "ref", folders / "self_pred", folders / "s25.json",
                           profile="synthrad2025")["metric_per_case"][0]["metrics"]
    assert set(row) == {"mae", "psnr", "ms_ssim"} and row["ms_ssim"] == pytest.approx(1)
    assert json.loads((folders / "self.json").read_text())["metric_per_case"][0]["metrics"]["psnr"] is None


@pytest.mark.parametrize("problem, message", [
    ("empty_ref", "no CT images"),
    ("mask_grid", "case1: file mask.nii.gz: not on the grid of ct.nii.gz (spacing"),
    ("no_match", "no case in"),
])
def test_evaluate_bad_input_clear_error_no_summary(folders, capsys, problem, message):
    ref, pred = folders / "ref", folders / "pred"
    if problem == "empty_ref":
        ref = folders / "empty"
        ref.mkdir()
        (ref / "notes.txt").write_text("no images here")
    elif problem == "mask_grid":
        write(smooth_pair()[2], ref / "case1" / "mask.nii.gz", FLIP_Y, spacing=(1.0, 1.0, 1.0), dtype=np.uint8)
    elif problem == "no_match":
        (pred / "case1.nii.gz").rename(pred / "other.nii.gz")
        (pred / "case2.nii.gz").unlink()
    out = folders / "summary.json"
    code, _, err = run_cli(evaluate_cli, ["-ref", str(ref), "-pred", str(pred), "-o", str(out)], capsys)
    assert code == 1 and message in err and "Traceback" not in err
    assert err.startswith("dgcf_evaluate: error: ")
    assert not out.exists() and not list(folders.glob(".summary.json*"))


@pytest.mark.parametrize("problem, message", [
    ("pred_grid", "case2: file case2.nii.gz: not on the grid of ct.nii.gz (size"),
    ("unreadable", "case2: file case2.nii.gz: cannot be read as an image"),
    ("truncated", "case2: file case2.nii.gz: is truncated or corrupt"),
    ("nan", "case2: file case2.nii.gz: 1 NaN/inf voxels"),
])
def test_evaluate_scores_no_bad_prediction_and_records_it(folders, capsys, problem, message):
    """Predictions get the input checks; a bad one is recorded, never scored; exit 1."""
    ref, pred = folders / "ref", folders / "pred"
    target = pred / "case2.nii.gz"
    if problem == "pred_grid":
        write(smooth_pair()[1][:, :30], target)
    elif problem == "unreadable":
        target.write_bytes(b"not a nifti at all")
    elif problem == "truncated":  # SimpleITK would read this file without complaint
        target.write_bytes(target.read_bytes()[:-200])
    else:
        image = sitk.ReadImage(str(target), sitk.sitkFloat32)
        array = sitk.GetArrayFromImage(image)
        array[1, 2, 3] = np.nan
        nan_image = sitk.GetImageFromArray(array)
        nan_image.CopyInformation(image)
        sitk.WriteImage(nan_image, str(target))
    out = folders / "summary.json"
    code, _, err = run_cli(evaluate_cli, ["-ref", str(ref), "-pred", str(pred), "-o", str(out)], capsys)
    assert code == 1 and message in err and "Traceback" not in err
    summary = json.loads(out.read_text())
    assert [r["case"] for r in summary["metric_per_case"]] == ["case1"] and summary["n"]["mae"] == 1
    assert summary["not_evaluated"] == [{"case": "case2", "reason": next(
        line for line in err.splitlines() if message in line).split("error: ", 1)[1]}]


def test_evaluate_segscore_missing_weights_fails_before_work(folders, capsys, monkeypatch):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(folders / "no_weights"))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    out = folders / "summary.json"
    code, _, err = run_cli(evaluate_cli, ["-ref", str(folders / "ref"), "-pred", str(folders / "pred"),
                                          "-o", str(out), "--segscore"], capsys)
    assert code == 1 and "totalseg_download_weights" in err and not out.exists()


def test_evaluate_folders_with_injected_segmenter(folders):
    summary = evaluate_folders(folders / "ref", folders / "pred", folders / "s.json", segscore=True,
                               segmenter=fake_segmenter)
    row = summary["metric_per_case"][0]["metrics"]
    assert 0 < row["segscore"] <= 1 and "dice_sacrum" in row and summary["n"]["segscore"] == 2


# ---------------------------------------------------------------- report

def test_canonical_views_do_not_depend_on_file_direction():
    volume = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    plain = sitk.GetImageFromArray(volume)
    flipped = sitk.GetImageFromArray(volume[:, ::-1].copy())   # same anatomy stored with y reversed
    flipped.SetDirection(FLIP_Y)
    flipped.SetOrigin((0.0, 4.0, 0.0))
    np.testing.assert_array_equal(figures._canonical(plain)[0], figures._canonical(flipped)[0])
    mask = np.zeros((4, 5, 6), bool)
    mask[1:4, 0:3, 2:5] = True
    assert figures.view_centre(mask, mask.shape) == (2, 1, 3)
    assert figures.cut(volume, (2, 1, 3), "coronal").shape == (4, 6)
    assert figures.cut(volume, (2, 1, 3), "coronal")[0, 0] == volume[3, 1, 0]  # superior row on top
    assert figures.view_aspect((0.5, 1.0, 3.0), "sagittal") == 3.0


def test_save_case_figure_and_visualize_cli(folders, capsys):
    ct = sitk.ReadImage(str(folders / "ref" / "case1" / "ct.nii.gz"))
    path = figures.save_case_figure(None, ct, None, None, folders / "fig" / "only_sct.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, stdout, _ = run_cli(visualize_cli, ["-i", str(folders / "ref" / "case1"), "-sct",
                                              str(folders / "pred" / "case1.nii.gz"), "-o",
                                              str(folders / "one.png")], capsys)
    assert code == 0 and (folders / "one.png").stat().st_size > 10_000
    code, _, _ = run_cli(visualize_cli, ["-i", str(folders / "ref"), "-sct", str(folders / "pred"),
                                         "-o", str(folders / "many")], capsys)
    assert code == 0 and sorted(p.name for p in (folders / "many").iterdir()) == ["case1.png", "case2.png"]
    code, _, err = run_cli(visualize_cli, ["-i", str(folders / "ref" / "case1"), "-sct",
                                           str(folders / "pred"), "-o", str(folders / "x.png")], capsys)
    assert code == 1 and "not a file" in err and not (folders / "x.png").exists()


def test_totalsegmentator_segmenter_round_trip_keeps_grid(tmp_path, monkeypatch):
    """The real segmenter's plumbing (sitk -> NIfTI -> TotalSegmentator API -> sitk) with a stand-in model."""
    import nibabel as nib
    import totalsegmentator.python_api

    calls = []

    def fake_totalsegmentator(input, output, **kwargs):
        calls.append(kwargs)
        image = nib.load(str(input))
        return nib.Nifti1Image((np.asarray(image.dataobj) > 500).astype(np.uint8) * 25, image.affine)

    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path))
    monkeypatch.setattr(segscore, "check_weights", lambda fast=False: None)
    monkeypatch.setattr(totalsegmentator.python_api, "totalsegmentator", fake_totalsegmentator)
    ct = np.full((6, 7, 8), -1000, np.int16)
    ct[1:3, 2:6, 0:3] = 1000
    image = sitk.GetImageFromArray(ct)
    image.SetDirection(FLIP_Y)
    image.SetSpacing(SPACING)
    labels = segscore.TotalSegmentatorSegmenter(device="cpu")(image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), (ct > 500) * 25)
    assert labels.GetDirection() == image.GetDirection()
    assert calls[0]["task"] == "total" and calls[0]["ml"] is True and calls[0]["device"] == "cpu"
    assert json.loads((tmp_path / "config.json").read_text())["send_usage_stats"] is False


def test_an_evaluation_case_without_its_prediction_is_a_one_line_error():
    case = EvalCase("1PA003", Path("ref/1PA003/ct.nii.gz"))
    with pytest.raises(DGCFError, match=r"^case 1PA003: no prediction$"):
        _ = case.sct_path
    case.sct = Path("pred/1PA003.nii.gz")
    assert case.sct_path == Path("pred/1PA003.nii.gz")
