"""Wrong results that no test saw. Each test here was written against a hand mutation that
survived the suite (named in its docstring) and goes red on it; values are computed independently."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage, stats

from test_prediction import _predict


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


# (a) restore_ct ignoring the planned CT window: every other test plans the default [-1024, 2000].
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


# (b) no hole filling in the derived body mask: dark cortical bone and gas fell outside, Dice still > 0.95.
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


def _summary(path, trainer, values: dict[str, dict[str, float]], profile="synthrad2023"):
    from dgcf_auto.evaluation.profiles import get_profile

    rows = [{"case": case, "reference_file": f"/raw/{case}/ct.nii.gz", "prediction_file": f"/p/{case}.nii.gz",
             "metrics": metrics} for case, metrics in values.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"metric_per_case": rows, "profile": get_profile(profile).describe(),
                                "dataset": "Dataset001_X", "task": "mr2ct", "trainer": trainer}))
    return str(path)


# (c) paired tests pairing rows by position instead of by case name.
def test_paired_test_pairs_cases_by_name_with_a_missing_middle_case_and_shuffled_rows(tmp_path):
    from dgcf_auto.evaluation import compare

    cases = [f"c{i}" for i in range(1, 9)]
    a = dict(zip(cases, [70.0, 82.0, 64.0, 91.0, 77.0, 68.0, 85.0, 73.0]))
    b = dict(zip(cases, [75.0, 80.0, 71.0, 99.0, 79.0, 75.0, 90.0, 74.0]))
    del b["c4"]  # a middle case the second method lacks
    shuffled = list(b)
    random.Random(3).shuffle(shuffled)
    paths = [_summary(tmp_path / "A" / "s.json", "A", {c: {"mae": v} for c, v in a.items()}),
             _summary(tmp_path / "B" / "s.json", "B", {c: {"mae": b[c]} for c in shuffled})]
    methods, columns, cells, notes = compare.build_table([compare.load_summary(p) for p in paths], ["mae"])
    common = sorted(b)
    expected = stats.ttest_rel([a[c] for c in common], [b[c] for c in common]).pvalue
    assert cells["A", "MRI→CT", "mae"].p_value == pytest.approx(expected, rel=1e-12)
    assert cells["B", "MRI→CT", "mae"].n == 7 and any("B lacks 1 case(s)" in note for note in notes)


# (d) lower-is-better ignored when bolding and starring: MAE and HD95 columns.
def test_lowest_mae_is_bold_and_starred_and_the_highest_is_not(tmp_path):
    from dgcf_auto.evaluation import compare

    cases = [f"c{i}" for i in range(1, 9)]
    low = [50.0, 52.0, 49.0, 55.0, 51.0, 53.0, 50.5, 54.0]
    high = [v + d for v, d in zip(low, [20.0, 22.0, 19.0, 25.0, 21.0, 18.0, 23.0, 20.0])]
    paths = [_summary(tmp_path / "low" / "s.json", "low", {c: {"mae": v} for c, v in zip(cases, low)}),
             _summary(tmp_path / "high" / "s.json", "high", {c: {"mae": v} for c, v in zip(cases, high)})]
    markdown = compare.compare([(None, p) for p in paths], tmp_path / "table", ["mae"])
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in markdown.splitlines()[2:4]}
    assert rows["low"] == f"**{np.mean(low):.2f} ± {np.std(low):.2f}**\\*".replace("\\", "")
    assert rows["high"] == f"{np.mean(high):.2f} ± {np.std(high):.2f}"
    assert stats.ttest_rel(low, high).pvalue < 0.05  # the star is deserved


# (e) the uncertainty map scaled x2 (or by the default window instead of the planned one).
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


# (f) --continue-prediction trusting a same-size output of another case (or one with a flipped byte).
def test_continue_prediction_redoes_swapped_and_corrupted_outputs(trained, tmp_path):
    import dgcf_auto

    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    case = sorted(d for d in trained["raw"].iterdir() if d.is_dir())[0]
    source = sitk.ReadImage(str(case / "mr.nii.gz"))
    sitk.WriteImage(source, str(inputs / "A.nii.gz"))
    mirrored = sitk.GetImageFromArray(sitk.GetArrayFromImage(source)[:, :, ::-1].copy())
    mirrored.CopyInformation(source)
    sitk.WriteImage(mirrored, str(inputs / "B.nii.gz"))  # same grid, another (mirrored) MR

    def run():
        return dgcf_auto.predict(str(inputs), str(out), model=trained["model_folder"], folds=[0], device="cpu",
                                 tta=False, output_format=".nii", continue_prediction=True, progress=False)

    run()
    first = {name: (out / f"{name}.nii").read_bytes() for name in "AB"}
    assert len(first["A"]) == len(first["B"]) and first["A"] != first["B"]
    (out / "A.nii").write_bytes(first["B"])  # the two outputs swapped: sizes and headers still fit
    (out / "B.nii").write_bytes(first["A"])
    run()
    assert {name: (out / f"{name}.nii").read_bytes() for name in "AB"} == first
    corrupted = bytearray(first["A"])
    corrupted[-7] ^= 0xFF  # one voxel byte
    (out / "A.nii").write_bytes(bytes(corrupted))
    run()
    assert (out / "A.nii").read_bytes() == first["A"]


# (g) DICOM PixelSpacing written (or read) as [x, y]: every other test pixel is square.
def test_dicom_round_trip_keeps_non_square_pixels(tmp_path):
    from dgcf_auto import dicomio

    array = (np.arange(5 * 30 * 40).reshape(5, 30, 40) % 2000 - 1000).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 1.2, 3.0))  # x (columns), y (rows), z
    image.SetOrigin((-10.0, 20.0, 5.0))
    dicomio.write_ct_series(image, tmp_path / "ct")
    files = sorted((tmp_path / "ct").glob("*.dcm"))
    first = pydicom.dcmread(files[0])
    # DICOM PixelSpacing is (row spacing, column spacing) = (y, x).
    assert [float(v) for v in first.PixelSpacing] == [1.2, 0.8]
    assert (first.Rows, first.Columns) == (30, 40)
    reader = sitk.ImageSeriesReader()  # GDCM's reading, independent of ours
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "ct")))
    gdcm = reader.Execute()
    np.testing.assert_allclose(gdcm.GetSpacing(), (0.8, 1.2, 3.0), atol=1e-6)
    ours = dicomio.read_series(tmp_path / "ct")
    np.testing.assert_allclose(ours.GetSpacing(), (0.8, 1.2, 3.0), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), array)
    np.testing.assert_allclose(dicomio.SeriesHeader(dicomio.open_series(tmp_path / "ct")).GetSpacing(),
                               (0.8, 1.2, 3.0), atol=1e-6)


# (h) the CT outside its field of view filled with 0 HU instead of -1024 in training targets.
def test_training_target_is_air_where_the_slice_grid_extends_past_the_ct(trained):
    from dgcf_auto.preprocessing.pipeline import preprocess_case

    def image(value, pixel=sitk.sitkFloat32):
        img = sitk.Image([12, 10, 3], pixel) + value
        img.SetSpacing((1.0, 1.0, 2.0))
        return img

    grid = dict(trained["plans"]["configurations"]["2d"], inplane_spacing=[1.0, 1.0], patch_size=[32, 32],
                interpolation="linear")
    plans = {**trained["plans"], "configurations": {"2d": grid},
             "ct_normalization": {"clip_low": -1000.0, "clip_high": 1500.0}}
    case = preprocess_case(image(100.0), image(40.0), image(1, sitk.sitkUInt8), plans, "FOV")
    inside = (40.0 - 250.0) / 1250.0  # 40 HU through the [-1000, 1500] window
    for target in case.ct:
        np.testing.assert_allclose(np.sort(np.unique(target)), [-1.0, inside], atol=1e-6)
        assert np.count_nonzero(target == -1.0) == 32 * 32 - 12 * 10  # every grid node past the CT is air


# (i) write_npy's read-back check always passing: a short write must never become the target.
@pytest.mark.parametrize("cut", [1, 64])
def test_write_npy_refuses_a_short_write(tmp_path, monkeypatch, cut):
    from dgcf_auto import atomic
    from dgcf_auto.errors import DGCFError

    real_save = np.save

    def short_save(path, array):  # as a full disk or a dying NFS server would leave it: the tail missing
        real_save(path, array)
        with open(path, "r+b") as handle:
            handle.truncate(max(0, handle.seek(0, 2) - cut))

    monkeypatch.setattr(atomic.np, "save", short_save)
    target = tmp_path / "case_ct.npy"
    with pytest.raises(DGCFError, match=r"^cannot write .*case_ct\.npy: "):
        atomic.write_npy(np.arange(1000, dtype=np.float32).reshape(10, 100), target)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temp file


def _panel_grey(png, rows: slice, value: int):
    """Bounding box (top, bottom, left, right) of the pixels of grey `value` (+-1) in a band of the PNG."""
    from matplotlib.image import imread

    rgb = np.round(imread(png)[..., :3] * 255).astype(int)[rows]
    grey = (np.abs(rgb - value) <= 1).all(-1)
    ys, xs = np.flatnonzero(grey.sum(1) > 50), np.flatnonzero(grey.sum(0) > 50)  # not anti-aliased text
    return rgb, grey, (ys.min(), ys.max(), xs.min(), xs.max())


# Figure tests that looked only at the file: the slice, the window and the orientation drawn, from pixels.
def test_case_figure_draws_the_mask_centre_slice_in_the_ct_window_radiologically(tmp_path):
    from dgcf_auto import figures

    # LPS volume (identity direction); slice z holds -1000 + 250 z HU, so each axial slice has its own grey.
    shape = (10, 40, 40)
    volume = (-1000.0 + 250.0 * np.arange(shape[0]))[:, None, None] * np.ones(shape)
    volume[4, :8, :8] = 1500.0  # a marker on the centre slice: anterior (low y) and patient right (low x)
    sct = sitk.GetImageFromArray(volume.astype(np.float32))
    sct.SetSpacing((0.8, 1.6, 3.0))  # rows (y) twice as far apart as columns (x)
    mask_array = np.zeros(shape, np.uint8)
    mask_array[2:7, 5:35, 5:35] = 1  # bounding box centre z = 4, not the image centre 5
    mask = sitk.GetImageFromArray(mask_array)
    mask.CopyInformation(sct)
    path = figures.save_case_figure(None, sct, None, mask, tmp_path / "f.png")
    low, high = figures.CT_WINDOW_HU
    assert (low, high) == (-1000.0, 1500.0)
    expected = int(255 * (0.0 - low) / (high - low))  # slice 4 is 0 HU -> grey 102 in the CT window
    from matplotlib.image import imread

    third = imread(path).shape[0] // 3  # the axial row (coronal and sagittal rows show every slice)
    rgb, grey, (top, bottom, left, right) = _panel_grey(path, slice(0, third), expected)
    assert (bottom - top) > 100 and (right - left) > 50 and grey.sum() > 0.8 * (bottom - top) * (right - left)
    assert (bottom - top) / (right - left) == pytest.approx(2.0, rel=0.1)  # physical aspect (pixel snapping)
    quarter_y, quarter_x = (bottom - top) // 8, (right - left) // 8  # the marker spans 1/5 of the panel
    marker = rgb[top + 2:top + quarter_y, left + 2:left + quarter_x]
    assert (marker >= 254).all()  # the marker is drawn white, top left: anterior up, patient right on the left
    assert not (rgb[top + 2:top + quarter_y, right - quarter_x:right - 1] >= 254).all()


# Mutation testing (benchmarks/mutation.py) of preprocessing/pipeline.py: survivors that were real gaps.
def test_preprocessing_normalises_inside_the_given_mask_and_keeps_the_mask_off_the_field_of_view(trained):
    from dgcf_auto.preprocessing.pipeline import preprocess_case

    rng = np.random.default_rng(4)
    array = rng.uniform(0, 50, (3, 10, 12)).astype(np.float32)
    array[:, 2:8, 3:9] = rng.uniform(200, 400, (3, 6, 6))  # the body: much brighter than the background
    mask_array = np.zeros(array.shape, np.uint8)
    mask_array[:, 2:8, 3:9] = 7  # any non-zero label is body
    source, mask = sitk.GetImageFromArray(array), sitk.GetImageFromArray(mask_array)
    grid = dict(trained["plans"]["configurations"]["2d"], inplane_spacing=[1.0, 1.0], patch_size=[32, 32],
                interpolation="linear")
    plans = {**trained["plans"], "configurations": {"2d": grid},
             "source_normalization": {"scheme": "percentile", "percentile": 99.0}}
    case = preprocess_case(source, None, mask, plans, "M")
    assert case.properties["source_normalization"]["value"] == pytest.approx(
        np.percentile(array[mask_array > 0], 99), rel=1e-6)
    assert case.mask.sum() == np.count_nonzero(mask_array) and set(np.unique(case.mask)) == {0, 1}
    without = preprocess_case(source, None, None, plans, "M")  # no mask: the source's field of view, not more
    assert without.mask.sum() == array.size


@pytest.mark.parametrize("size", [(8, 9), (4, 5, 6, 2)])
def test_preprocessing_refuses_a_source_that_is_not_3d(trained, size):
    from dgcf_auto.errors import DGCFError
    from dgcf_auto.preprocessing.pipeline import preprocess_case

    with pytest.raises(DGCFError, match=rf"case X: source must be a 3D image, got {len(size)}D"):
        preprocess_case(sitk.Image(list(size), sitk.sitkFloat32), None, None, trained["plans"], "X")


def test_plans_without_clip_output_keep_the_sct_in_the_ct_window_and_record_no_ct(trained):
    """Plans written before `clip_output` existed clip network outputs beyond [-1, 1] to the CT window."""
    from dgcf_auto.preprocessing.pipeline import preprocess_case, restore_ct

    source = sitk.Image([12, 10, 3], sitk.sitkFloat32) + 100.0
    grid = dict(trained["plans"]["configurations"]["2d"], inplane_spacing=[1.0, 1.0], patch_size=[16, 16],
                interpolation="linear")
    plans = {**trained["plans"], "configurations": {"2d": grid},
             "ct_normalization": {"clip_low": -1000.0, "clip_high": 1500.0}}
    assert "clip_output" not in plans["ct_normalization"]
    case = preprocess_case(source, None, None, plans, "C")
    assert case.properties["has_ct"] is False
    sct = sitk.GetArrayFromImage(restore_ct(np.full(case.source.shape, 1.3, np.float32), case.properties, plans))
    assert sct.max() == 1500.0 and sct.min() == 1500.0  # 1.3 clipped to 1 -> clip_high, not 1.3 x 1250 + 250
