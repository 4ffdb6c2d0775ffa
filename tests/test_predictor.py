"""dgcf_auto/inference/predictor.py, specified: loading folds, the configuration check, ViT sharing, precision,
TTA and the fold ensemble, the way back to int16 HU on the source's grid, the field-of-view warning.

Quick tier and cheap on purpose (benchmarks/mutation.py runs this file per mutant): hand-written plans with a
non-default CT window ([-1000, 1500]) and a CBCT-style source window, tiny folds written here once per module,
stand-in networks whose output is known. Expected values are computed here from the formulas, never read back
from the module under test.
"""
from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from dgcf_auto.errors import DGCFError
from dgcf_auto.inference import predictor as predictor_module
from dgcf_auto.inference.predictor import (BACKGROUND_HU, CasePrediction, SCTPredictor, _as_int16_image,
                                           _warn_if_body_outside_grid, same_grid_and_normalisation,
                                           same_output_grid, sct_from_hu, sct_from_normalised)
from model_fixtures import TINY_DINOV3_CFG, tiny_dinov3

CT_LOW, CT_HIGH = -1000.0, 1500.0        # the CT window of these plans (the default is [-1024, 2000])
SRC_LOW, SRC_HIGH = -1024.0, 2000.0      # the source window (scheme "window", as for CBCT)
RANDOM_NOTE = "DINOv3 is RANDOMLY INITIALISED"

PLANS = {
    "plans_name": "DGCFPlans", "plans_version": 2, "dataset_name": "Dataset991_Predictor", "task": "cbct2ct",
    "source_modality": "cbct",
    "ct_normalization": {"clip_low": CT_LOW, "clip_high": CT_HIGH, "target_range": [-1.0, 1.0]},
    "source_normalization": {"scheme": "window", "clip_low": SRC_LOW, "clip_high": SRC_HIGH},
    "body_mask": {"method": "threshold", "units": "relative_to_p99", "threshold": 0.3},
    "configurations": {
        "2d": {"kind": "slices", "slice_axis": "axial", "orientation": "LPS", "inplane_spacing": [1.0, 1.0],
               "patch_size": [32, 32], "size_multiple": 16, "slice_spacing": "native", "interpolation": "linear"},
        "2.5d": {"kind": "slabs", "inherits_from": "2d", "slab_size": 3},
        "3d_fullres": {"kind": "volume", "slice_axis": "axial", "orientation": "LPS", "spacing": [2.0, 1.0, 1.0],
                       "inplane_spacing": [1.0, 1.0], "patch_size": [4, 8, 8], "interpolation": "linear",
                       "grid": "resample"},
    },
    "network": {"architecture": "cross_fusion", "features": [8, 16, 32, 64], "in_channels": 1, "out_channels": 1,
                "dinov3": TINY_DINOV3_CFG, "options": {}, "init": "pytorch"},
    "training": {},
    "configuration": "2d",
}
UNET_3D = {"features": [4, 8], "options": {"kernel_sizes": [[3, 3, 3], [3, 3, 3]], "strides": [[1, 1, 1], [2, 2, 2]],
                                           "n_blocks_per_stage": [1, 1], "n_conv_per_stage_decoder": [1]}}


def _save(path, plans, network, **extra):
    from dgcf_auto.atomic import torch_save

    torch_save({"network_weights": network.state_dict(), "plans": plans, "epoch": 1, "trainer_name": "DGCFTrainer",
                **extra}, path)
    return path


@pytest.fixture(scope="module")
def folds(tmp_path_factory):
    """Checkpoints of tiny folds: 0 and 1 share their ViT weights; 2 has other ViT weights; `window` other CT
    plans; `narrow` other network plans (same grid, same ViT); `timm`/`unknown` other weight sources; `3d` a
    3d_fullres fold. Few networks are built: folds that differ in their record only reuse weights."""
    from dgcf_auto.network import build_network

    root = tmp_path_factory.mktemp("predictor") / "Dataset991_Predictor" / "DGCFTrainer__DGCFPlans__2d"
    vit = tiny_dinov3(0)
    torch.manual_seed(0)
    first = build_network(PLANS["network"], vit)
    torch.manual_seed(1)
    second = build_network(PLANS["network"], vit)
    narrow = copy.deepcopy(PLANS)
    narrow["network"]["features"] = [4, 8, 16, 32]
    window = copy.deepcopy(PLANS)
    window["ct_normalization"]["clip_high"] = 2000.0
    files = {"0": _save(root / "fold_0" / "checkpoint_final.pth", PLANS, first, dinov3_source="random"),
             "1": _save(root / "fold_1" / "checkpoint_final.pth", PLANS, second, dinov3_source="random"),
             "2": _save(root / "fold_2" / "checkpoint_final.pth", PLANS,
                        build_network(PLANS["network"], tiny_dinov3(1)), dinov3_source="random"),
             "window": _save(root / "fold_w" / "checkpoint_final.pth", window, first, dinov3_source="random"),
             "narrow": _save(root / "fold_n" / "checkpoint_final.pth", narrow, build_network(narrow["network"], vit),
                             dinov3_source="random"),
             "timm": _save(root / "fold_t" / "checkpoint_final.pth", PLANS, first, dinov3_source="timm"),
             "unknown": _save(root / "fold_u" / "checkpoint_final.pth", PLANS, second),
             # the same network plans written in another key order (another writer, a JSON round trip)
             "reordered": _save(root / "fold_r" / "checkpoint_final.pth",
                                {**PLANS, "network": dict(reversed(list(PLANS["network"].items())))}, second,
                                dinov3_source="random")}
    plans_3d = copy.deepcopy(PLANS)
    plans_3d["configuration"] = "3d_fullres"
    plans_3d["configurations"]["3d_fullres"]["extra"] = {"presets": {"plain_unet_3d": {
        "patch_size": [4, 8, 12], "batch_size": 1, **UNET_3D}}}
    plans_3d["network"] = {"architecture": "plain_unet_3d", "in_channels": 1, "out_channels": 1, **UNET_3D}
    files["3d"] = _save(root.parent / "DGCFTrainer__DGCFPlans__3d_fullres" / "fold_0" / "checkpoint_final.pth",
                        plans_3d, build_network(plans_3d["network"], None))
    return files


# ------------------------------------------------------------------ stand-in networks with known outputs
class _Identity(torch.nn.Module):
    def forward(self, x, features=None):
        return x


class _Constant(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x, features=None):
        return torch.full_like(x, self.value)


class _ColumnScale(torch.nn.Module):
    """x * w[column]: not mirror symmetric, so a left-right TTA changes the result."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.as_tensor(w, dtype=torch.float32)

    def forward(self, x, features=None):
        return x * self.w


class _ColumnShift(_ColumnScale):
    def forward(self, x, features=None):
        return x + self.w


def _predictor(folds, networks=None, **kwargs):
    kwargs = {"precision": "fp32", "progress": False, **kwargs}
    predictor = SCTPredictor([folds["0"]], **kwargs)
    if networks is not None:
        predictor.networks = list(networks)
        predictor.shared_encoder = None
    return predictor


def _messages(caplog, level=logging.INFO):
    return [r.getMessage() for r in caplog.records if r.levelno >= level]


def _fold_output(file, x):
    """The fold's own network, built from its checkpoint without the predictor."""
    from dgcf_auto.inference.model_loading import build_trained_network, load_checkpoint

    with torch.no_grad():
        return build_trained_network(load_checkpoint(file)).eval()(x)


# ------------------------------------------------------------------ the way back, as functions
def test_int16_image_rounds_clips_to_the_ct_range_and_copies_the_geometry():
    reference, _, _ = _source(0.0, shape=(1, 2, 4))
    hu = np.array([[[-5000.0, -1025.0, -1024.0, -1023.6], [2.5, 3070.6, 3071.0, 3072.0]]])
    image = _as_int16_image(hu, reference)
    assert image.GetPixelID() == sitk.sitkInt16
    _assert_geometry(image, reference)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), [[[-1024, -1024, -1024, -1024],
                                                                     [2, 3071, 3071, 3071]]])


def test_sct_from_hu_sets_the_background_only_where_the_mask_is_zero():
    reference, _, _ = _source(0.0, shape=(1, 1, 4))
    hu = np.array([[[10.4, 20.6, -3000.0, 40.0]]])
    background = np.array([[[1, 0, 1, 3]]], np.uint8)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sct_from_hu(hu.copy(), reference, background)),
                                  [[[10, -1000, -1024, 40]]])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sct_from_hu(hu.copy(), reference, None)),
                                  [[[10, 21, -1024, 40]]])
    signed = np.array([[[1, 0, -1, 3]]], np.int16)  # any non-zero label is body, a negative one too
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sct_from_hu(hu.copy(), reference, signed)),
                                  [[[10, -1000, -1024, 40]]])


def test_sct_from_normalised_reads_the_planned_ct_window(folds):
    from dgcf_auto.preprocessing.pipeline import preprocess_case

    source, mask, mask_array = _source(0.0)
    plans = _predictor(folds).plans
    case = preprocess_case(source, None, mask, plans, "N")
    stack = np.full(case.source.shape, 0.3, np.float32)
    sct = sct_from_normalised(stack, case.properties, plans, mask_array)
    _assert_geometry(sct, source)
    values = sitk.GetArrayFromImage(sct)
    assert np.all(values[mask_array > 0] == 625) and np.all(values[mask_array == 0] == -1000)  # 250 + 0.3 x 1250


def _plans(configuration="2d", **changes):
    plans = copy.deepcopy(PLANS)
    plans["configuration"] = configuration
    for key, value in changes.items():
        section, field = key.split("__")
        (plans["configurations"]["2d"] if section == "grid" else plans[section])[field] = value
    return plans


def test_plans_comparisons():
    """Both comparisons are symmetric: every pair is checked in both orders."""
    def same(a, b, compare):
        assert compare(a, b) == compare(b, a)
        return compare(a, b)

    def grid(a, b):
        return same(a, b, same_grid_and_normalisation)

    def output(a, b):
        return same(a, b, same_output_grid)

    base = _plans()
    assert grid(base, _plans()) and output(base, _plans())
    for ct_high in (1400.0, 2000.0):
        assert not grid(base, _plans(ct_normalization__clip_high=ct_high))
        assert not output(base, _plans(ct_normalization__clip_high=ct_high))
    # the source's normalisation changes what a network sees, not where or in which window its output lies
    for source_high in (1500.0, 2500.0):
        assert not grid(base, _plans(source_normalization__clip_high=source_high))
        assert output(base, _plans(source_normalization__clip_high=source_high))
    for spacing in ([1.0, 0.8], [1.0, 1.2]):
        assert not grid(base, _plans(grid__inplane_spacing=spacing))
        assert not output(base, _plans(grid__inplane_spacing=spacing))
    # a 2.5d slab is an input of the same slices: same output grid, not the same network input
    slabs = _plans("2.5d")
    assert output(base, slabs) and not grid(base, slabs)
    read_back = json.loads(json.dumps(slabs))  # as a plans file gives it: strings that are not the literals
    assert output(base, read_back) and output(read_back, _plans())
    other_slabs = _plans("2.5d")
    other_slabs["configurations"]["2.5d"]["slab_size"] = 5
    assert output(slabs, other_slabs) and not grid(slabs, other_slabs)
    assert not output(slabs, _plans("2.5d", grid__inplane_spacing=[1.0, 1.2]))
    # kind is part of the grid: a volume is not a slice stack even where every other field agrees
    as_volume = _plans()
    as_volume["configurations"]["3d_fullres"] = {**as_volume["configurations"]["2d"], "kind": "volume"}
    as_volume["configuration"] = "3d_fullres"
    assert not output(base, as_volume) and not output(slabs, as_volume)
    volume = _plans("3d_fullres")
    assert not output(base, volume) and not output(slabs, volume)
    assert output(volume, _plans("3d_fullres"))
    assert not grid(base, volume)


# ------------------------------------------------------------------ the field-of-view warning
def _geometry(size, origin=(0.0, 0.0, 0.0)):
    return {"size": list(size), "spacing": [1.0, 1.0, 1.0], "origin": list(origin),
            "direction": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]}


def _warnings(caplog):
    return [m for m in _messages(caplog, logging.WARNING) if m.startswith("case F:")]


@pytest.mark.parametrize("grid_width,warned", [(1000, None), (999, None), (998, "0.2%"), (100, "90.0%")])
def test_body_outside_the_grid_warns_above_one_in_a_thousand(caplog, grid_width, warned):
    mask = sitk.GetImageFromArray(np.ones((1, 1, 1000), np.uint8))
    properties = {"slice_grid": _geometry((grid_width, 1, 1)), "original_geometry": _geometry((1000, 1, 1))}
    _warn_if_body_outside_grid(mask, properties, "F")
    if warned is None:
        assert _warnings(caplog) == []
    else:
        assert _warnings(caplog) == [
            f"case F: {warned} of the body mask lies outside the planned slice grid and gets no prediction "
            f"(-1024 HU); re-plan with a larger field of view (--patch_size / --spacing) and retrain, or check the mask"]


def test_body_warning_counts_body_voxels_only(caplog):
    import warnings

    array = np.zeros((1, 1, 1000), np.uint8)
    array[0, 0, 995:] = 1  # 5 body voxels, 2 of them past the grid's 998 columns
    properties = {"slice_grid": _geometry((998, 1, 1)), "original_geometry": _geometry((1000, 1, 1))}
    _warn_if_body_outside_grid(sitk.GetImageFromArray(array), properties, "F")
    assert [m.split(" of ")[0] for m in _warnings(caplog)] == ["case F: 40.0%"]
    caplog.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no body at all: nothing to warn about, no division by zero
        _warn_if_body_outside_grid(sitk.GetImageFromArray(np.zeros((1, 1, 1000), np.uint8)), properties, "F")
    assert _warnings(caplog) == []
    single = np.zeros((1, 1, 1000), np.uint8)
    single[0, 0, 999] = 1  # the whole body (one voxel) past the grid
    _warn_if_body_outside_grid(sitk.GetImageFromArray(single), properties, "F")
    assert [m.split(" of ")[0] for m in _warnings(caplog)] == ["case F: 100.0%"]
    caplog.clear()
    signed = np.zeros((1, 1, 1000), np.int16)
    signed[0, 0, 996:] = [7, 7, -1, -1]  # any non-zero label is body, as for the background: 2 of 4 outside
    _warn_if_body_outside_grid(sitk.GetImageFromArray(signed), properties, "F")
    assert [m.split(" of ")[0] for m in _warnings(caplog)] == ["case F: 50.0%"]
    caplog.clear()
    _warn_if_body_outside_grid(sitk.GetImageFromArray(np.ones((1, 1, 1000), np.uint8)), properties, "F",
                               tolerance=0.0025)
    assert _warnings(caplog) == []  # 0.2 % is within a given tolerance of 0.25 %


def test_body_warning_raises_no_numpy_warning(caplog):
    import warnings

    properties = {"slice_grid": _geometry((998, 1, 1)), "original_geometry": _geometry((1000, 1, 1))}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. a division by zero on the voxels inside the grid
        _warn_if_body_outside_grid(sitk.GetImageFromArray(np.ones((1, 1, 1000), np.uint8)), properties, "F")
    assert len(_warnings(caplog)) == 1


def test_no_warning_for_stretched_slices_without_a_grid(caplog):
    mask = sitk.GetImageFromArray(np.ones((1, 1, 10), np.uint8))
    _warn_if_body_outside_grid(mask, {"grid": "stretch", "original_geometry": _geometry((10, 1, 1))}, "F")
    assert _warnings(caplog) == []


# ------------------------------------------------------------------ the case: back to HU on the source's grid
def _source(value=300.0, shape=(4, 12, 10)):
    """A constant volume with non-square pixels and a flipped, permuted direction (the array's rows run along
    the patient's z axis); a box mask."""
    image = sitk.GetImageFromArray(np.full(shape, value, np.float32))
    image.SetSpacing((0.8, 1.3, 2.5))
    image.SetOrigin((12.0, -7.5, 30.0))
    image.SetDirection((-1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0))
    mask_array = np.zeros(shape, np.uint8)
    mask_array[1:3, :, 2:8] = 1  # every stored row: they are the axial slices (the grid spans the body's slices)
    mask = sitk.GetImageFromArray(mask_array)
    mask.CopyInformation(image)
    return image, mask, mask_array


def _hu_of_source(value):
    """Identity network: the source window's [-1, 1] read as the CT window's."""
    normalised = (np.clip(value, SRC_LOW, SRC_HIGH) - (SRC_LOW + SRC_HIGH) / 2) / ((SRC_HIGH - SRC_LOW) / 2)
    return normalised, (CT_LOW + CT_HIGH) / 2 + normalised * (CT_HIGH - CT_LOW) / 2


def _assert_geometry(image, reference):
    assert image.GetSize() == reference.GetSize()
    assert image.GetSpacing() == reference.GetSpacing()
    assert image.GetOrigin() == reference.GetOrigin()
    assert image.GetDirection() == reference.GetDirection()


def test_case_hu_rounded_on_the_source_grid_with_background_outside_the_mask(folds, caplog):
    source, mask, mask_array = _source(300.0)
    normalised, hu = _hu_of_source(300.0)
    assert 0.3 < hu % 1 < 0.7 and abs(hu) > 50  # rounding, not truncation, decides the value
    predictor = _predictor(folds, [_Identity()], use_tta=False)
    prediction = predictor.predict_case(source, mask, "R")
    assert isinstance(prediction, CasePrediction)
    sct = prediction.sct
    _assert_geometry(sct, source)
    assert sct.GetPixelID() == sitk.sitkInt16
    values = sitk.GetArrayFromImage(sct)
    assert np.all(values[mask_array > 0] == np.rint(hu)) and np.all(values[mask_array == 0] == -1000)
    assert BACKGROUND_HU == -1000
    np.testing.assert_array_equal(prediction.background_mask, mask_array)
    assert prediction.background_mask.dtype == np.uint8
    grid = prediction.properties["slice_grid"]
    assert prediction.normalised.shape == tuple(int(v) for v in reversed(grid["size"]))
    np.testing.assert_allclose(prediction.normalised, normalised, rtol=0, atol=1e-6)
    assert prediction.uncertainty is None
    assert not any("outside the planned slice grid" in m for m in _messages(caplog))
    again, uncertainty = predictor.predict_volume(source, mask, "R")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(again), values)
    assert uncertainty is None


def test_any_non_zero_mask_label_is_body_negative_ones_too(folds):
    source, mask, mask_array = _source(300.0)
    labels = mask_array.astype(np.int16) * 7
    labels[1, :, 2] = -1
    signed = sitk.GetImageFromArray(labels)
    signed.CopyInformation(source)
    prediction = _predictor(folds, [_Identity()], use_tta=False).predict_case(source, signed, "L")
    np.testing.assert_array_equal(prediction.background_mask, mask_array)
    values = sitk.GetArrayFromImage(prediction.sct)
    assert np.all(values[mask_array > 0] == np.rint(_hu_of_source(300.0)[1])) and np.all(values[mask_array == 0] == -1000)


def test_case_without_background_masking_keeps_the_prediction_outside_the_mask(folds):
    source, mask, mask_array = _source(-200.0)
    predictor = _predictor(folds, [_Identity()], use_tta=False, mask_background=False)
    prediction = predictor.predict_case(source, mask, "K")
    assert prediction.background_mask is None
    np.testing.assert_array_equal(sitk.GetArrayFromImage(prediction.sct), np.rint(_hu_of_source(-200.0)[1]))


def test_uncertainty_is_the_fold_spread_in_hu_on_the_source_grid(folds):
    source, mask, mask_array = _source(100.0)
    predictor = _predictor(folds, [_Constant(0.2), _Constant(-0.12)], use_tta=True)
    low, high = -1000.0, 1499.0  # an odd window width: half a unit is 1249.5 HU, not a whole number
    predictor.plans = {**predictor.plans, "ct_normalization": {"clip_low": low, "clip_high": high}}
    prediction = predictor.predict_case(source, mask, "U", with_uncertainty=True)
    _assert_geometry(prediction.uncertainty, source)
    # population std of {0.2, -0.12} (each twice: the mirror of a constant) is 0.16; one unit is (high - low) / 2 HU
    np.testing.assert_allclose(sitk.GetArrayFromImage(prediction.uncertainty), 0.16 * (high - low) / 2, rtol=1e-6)
    values = sitk.GetArrayFromImage(prediction.sct)
    assert np.all(values[mask_array > 0] == np.rint((low + high) / 2 + 0.04 * (high - low) / 2))
    sct, uncertainty = predictor.predict_volume(source, mask, "U", with_uncertainty=True)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(uncertainty), sitk.GetArrayFromImage(prediction.uncertainty))


def test_case_without_a_mask_derives_the_body_from_the_plans(folds):
    array = np.zeros((3, 14, 12), np.float32)
    array[:, 3:11, 2:9] = 1000.0  # the body: the plans' threshold is 0.3 x p99 = 300
    source = sitk.GetImageFromArray(array)
    source.SetSpacing((1.0, 1.0, 2.0))
    prediction = _predictor(folds, [_Identity()], use_tta=False).predict_case(source, None, "D")
    np.testing.assert_array_equal(prediction.background_mask, (array > 0).astype(np.uint8))
    values = sitk.GetArrayFromImage(prediction.sct)
    assert np.all(values[array == 0] == BACKGROUND_HU)
    assert values[1, 7, 5] == np.rint(_hu_of_source(1000.0)[1])  # the body's core


def test_case_with_mask_from_none_masks_nothing(folds, caplog):
    source, _, _ = _source(500.0)
    prediction = _predictor(folds, [_Identity()], use_tta=False, mask_from="none").predict_case(source, None, "N")
    assert prediction.background_mask is None
    np.testing.assert_array_equal(sitk.GetArrayFromImage(prediction.sct), np.rint(_hu_of_source(500.0)[1]))
    assert not any("outside the planned slice grid" in m for m in _messages(caplog))


def test_a_body_wider_than_the_grid_is_reported_in_a_case(folds, caplog):
    wide = sitk.GetImageFromArray(np.full((2, 10, 50), 300.0, np.float32))  # 50 mm wide; the grid is 32 mm
    mask = sitk.GetImageFromArray(np.ones((2, 10, 50), np.uint8))
    prediction = _predictor(folds, [_Constant(0.2), _Constant(-0.12)], use_tta=False).predict_case(
        wide, mask, "WIDE", with_uncertainty=True)
    uncertainty = sitk.GetArrayFromImage(prediction.uncertainty)
    assert uncertainty[0, 5, 0] == 0.0 and uncertainty[0, 5, 25] == pytest.approx(0.16 * (CT_HIGH - CT_LOW) / 2)
    sct = _predictor(folds, [_Identity()], use_tta=False).predict_case(wide, mask, "WIDE").sct
    warning, again = [m for m in _messages(caplog, logging.WARNING) if m.startswith("case WIDE:")]
    assert warning == again
    assert "of the body mask lies outside the planned slice grid" in warning
    values = sitk.GetArrayFromImage(sct)
    assert values[0, 5, 0] == -1024 and values[0, 5, 25] == np.rint(_hu_of_source(300.0)[1])


# ------------------------------------------------------------------ loading folds
def test_an_unknown_precision_is_refused_before_any_file_is_read(tmp_path):
    with pytest.raises(DGCFError) as info:
        SCTPredictor([tmp_path / "missing.pth"], precision="fp8")
    assert str(info.value) == "precision must be one of auto, fp32, bf16, fp16, got 'fp8'"


def test_folds_with_one_vit_share_one_instance_and_each_keeps_its_own_weights(folds, caplog):
    caplog.set_level(logging.INFO)
    predictor = SCTPredictor([folds["0"], folds["1"]], precision="fp32", progress=False, batch_size=3)
    first, second = predictor.networks
    assert first.dinov3 is second.dinov3
    assert predictor.shared_encoder is not None and predictor.shared_encoder.__self__ is first
    assert predictor.shared_encoder.__func__ is type(first).encode_dino
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (2, 1, 32, 32)).astype(np.float32))
    own = {name: _fold_output(folds[name], x).numpy() for name in ("0", "1")}
    with torch.no_grad():
        for network, name in ((first, "0"), (second, "1")):
            np.testing.assert_allclose(network(x).numpy(), own[name], rtol=0, atol=1e-6)
    assert np.abs(own["0"] - own["1"]).max() > 1e-3
    assert predictor.plans["ct_normalization"]["clip_low"] == CT_LOW and predictor.plans["configuration"] == "2d"
    assert predictor.volume_patch is None
    for network in predictor.networks:  # 2D networks run channels_last
        weights = [p for p in network.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[-1] > 1]
        assert weights and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                               for p in weights)
    assert predictor.weights_sources == ["random"]
    assert [m for m in _messages(caplog, logging.WARNING) if m.startswith(RANDOM_NOTE)] != []
    assert not any(m.startswith("note:") for m in _messages(caplog))
    assert predictor.batch_size == 3 and predictor.passes_per_slice == 4
    assert predictor.flips == ((), (-1,))
    assert predictor.progress is False and predictor.mask_background is True
    assert predictor.options == {"tta": True, "precision": "fp32", "mask_background": True, "mask_from": "plans"}
    assert predictor.derives_masks is True


def test_folds_with_other_vit_weights_run_their_own_vit(folds, caplog):
    caplog.set_level(logging.INFO)
    predictor = SCTPredictor([folds["0"], folds["2"], folds["1"]], precision="fp32", progress=False)
    vits = [n.dinov3 for n in predictor.networks]
    assert vits[0] is not vits[1] and vits[2] is not vits[0] and vits[2] is not vits[1]
    assert predictor.shared_encoder is None and predictor.passes_per_slice == 6  # 3 folds x 2 mirrors
    x = torch.from_numpy(np.random.default_rng(1).uniform(-1, 1, (1, 1, 32, 32)).astype(np.float32))
    with torch.no_grad():
        for network, name in zip(predictor.networks, ("0", "2", "1")):
            np.testing.assert_allclose(network(x).numpy(), _fold_output(folds[name], x).numpy(), rtol=0, atol=1e-6)
    notes = [m for m in _messages(caplog) if m.startswith("note:")]
    assert notes == [f"note: {folds['2']}: frozen DINOv3 weights differ from fold_0's; every fold runs its own ViT"]


def test_share_vit_off_gives_each_fold_its_own_instance_with_the_same_results(folds):
    predictor = SCTPredictor([folds["0"], folds["1"]], precision="fp32", progress=False, share_vit=False,
                             use_tta=False)
    assert predictor.networks[0].dinov3 is not predictor.networks[1].dinov3
    assert predictor.shared_encoder is None and predictor.passes_per_slice == 2 and predictor.flips == ((),)
    assert _predictor(folds, share_vit=False).shared_encoder is None  # one fold: nothing shared either
    x = torch.from_numpy(np.random.default_rng(2).uniform(-1, 1, (1, 1, 32, 32)).astype(np.float32))
    with torch.no_grad():
        np.testing.assert_allclose(predictor.networks[1](x).numpy(), _fold_output(folds["1"], x).numpy(),
                                   rtol=0, atol=1e-6)


def test_network_plans_in_another_key_order_are_the_same_plans(folds):
    predictor = SCTPredictor([folds["0"], folds["reordered"]], precision="fp32", progress=False)
    assert list(predictor.networks[0].dinov3.state_dict()) and predictor.shared_encoder is not None


def test_folds_with_other_network_plans_share_the_vit_but_not_its_maps(folds):
    predictor = SCTPredictor([folds["0"], folds["narrow"]], precision="fp32", progress=False)
    assert predictor.networks[0].dinov3 is predictor.networks[1].dinov3  # equal weights: one instance
    assert predictor.shared_encoder is None  # the maps are not computed once: the networks differ


def test_a_network_without_a_vit_shares_nothing(folds):
    predictor = SCTPredictor([folds["3d"]], precision="fp32", progress=False)
    assert predictor.shared_encoder is None
    assert predictor.weights_sources == ["unknown"]


def test_vit_weights_are_the_same_only_with_the_same_keys_and_values():
    from dgcf_auto.inference.predictor import _same_tensors

    t = torch.arange(3.0)
    assert _same_tensors({"a": t, "b": t + 1}, {"a": t.clone(), "b": t + 1})
    assert not _same_tensors({"a": t, "b": t}, {"a": t})  # a deeper ViT: more blocks than the reference's
    assert not _same_tensors({"a": t}, {"a": t, "b": t})
    assert not _same_tensors({"a": t}, {"b": t})
    assert not _same_tensors({"a": t, "b": t}, {"a": t, "b": t + 1})


def test_folds_of_other_plans_are_refused(folds):
    with pytest.raises(DGCFError) as info:
        SCTPredictor([folds["0"], folds["window"]], precision="fp32", progress=False)
    assert str(info.value) == (f"checkpoint {folds['window']}: its plans differ from {folds['0']} (slice grid or "
                               f"normalisation); folds of one model must share plans")


def test_a_model_asked_for_as_another_configuration_is_refused(folds):
    SCTPredictor([folds["0"]], precision="fp32", progress=False, configuration="2d")  # its own: fine
    with pytest.raises(DGCFError) as info:
        SCTPredictor([folds["0"]], precision="fp32", progress=False, configuration="3d_fullres")
    assert str(info.value) == (f"model {folds['0'].parent.parent} was trained on configuration '2d', not "
                               f"'3d_fullres' (-c 2d)")
    with pytest.raises(DGCFError) as info:  # the other way round (names sort the other way too)
        SCTPredictor([folds["3d"]], precision="fp32", progress=False, configuration="2d")
    assert str(info.value) == (f"model {folds['3d'].parent.parent} was trained on configuration '3d_fullres', not "
                               f"'2d' (-c 3d_fullres)")


def test_weights_sources_are_listed_and_only_random_weights_warn(folds, caplog):
    predictor = SCTPredictor([folds["timm"], folds["unknown"]], precision="fp32", progress=False)
    assert predictor.weights_sources == ["timm", "unknown"]
    assert not any(m.startswith(RANDOM_NOTE) for m in _messages(caplog, logging.WARNING))


def test_mask_options(folds):
    assert _predictor(folds, mask_from="none").derives_masks is False
    predictor = _predictor(folds, mask_from="otsu", mask_background=False, use_tta=False)
    assert predictor.derives_masks is True and predictor.mask_from == "otsu"
    assert predictor.options == {"tta": False, "precision": "fp32", "mask_background": False, "mask_from": "otsu"}
    plans_without = _predictor(folds)
    plans_without.plans = {k: v for k, v in plans_without.plans.items() if k != "body_mask"}
    assert predictor_module.effective_method("plans", plans_without.plans) == "otsu"


# ------------------------------------------------------------------ precision
def test_auto_on_a_cpu_reads_no_recorded_check_and_runs_fp32(folds, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    calls = []
    monkeypatch.setattr(predictor_module, "fold_check", lambda *a: calls.append(a) or {})
    predictor = SCTPredictor([folds["0"]])  # every default
    assert predictor.progress is True and predictor.flips == ((), (-1,)) and predictor.mask_background is True
    assert predictor.batch_size is None and predictor.mask_from == "plans"
    assert calls == [] and predictor.precision.precision == "fp32" and predictor.autocast_dtype is None
    assert "precision_recorded_difference_hu" not in predictor.options
    assert not any(m.startswith("precision ") for m in _messages(caplog))


def test_options_given_as_strings_built_at_run_time(folds, caplog, monkeypatch):
    """Equal strings that are other objects than the literals (as argparse hands them over)."""
    caplog.set_level(logging.INFO)
    fp32, none = "".join(["fp", "32"]), "".join(["no", "ne"])
    predictor = SCTPredictor([folds["0"]], precision=fp32, mask_from=none, progress=False)
    assert predictor.precision.precision == "fp32" and predictor.derives_masks is False
    assert not any(m.startswith("precision ") for m in _messages(caplog))
    real_build = predictor_module.build_trained_network
    monkeypatch.setattr(predictor_module, "build_trained_network", lambda c, d, v=None: real_build(c, "cpu", v))
    monkeypatch.setattr(predictor_module, "fold_check", lambda *a: {"bf16": {"mean_hu": 0.1, "p99_hu": 1.0}})
    assert SCTPredictor([folds["0"]], device=torch.device("".join(["cu", "da"])), progress=False,
                        precision="".join(["au", "to"])).precision.precision == "bf16"


def test_auto_reads_the_recorded_check_on_cuda_only(folds, monkeypatch):
    """Another accelerator (mps, xpu) has no recorded check: auto stays fp32 there without reading one."""
    real_build = predictor_module.build_trained_network
    monkeypatch.setattr(predictor_module, "build_trained_network", lambda c, d, v=None: real_build(c, "cpu", v))
    calls = []
    monkeypatch.setattr(predictor_module, "fold_check", lambda *a: calls.append(a) or None)
    for device in ("mps", "xpu"):
        assert SCTPredictor([folds["0"]], device=device, progress=False).precision.precision == "fp32"
    assert calls == []


def test_reduced_precision_asked_for_is_logged_and_used(folds, caplog):
    caplog.set_level(logging.INFO)
    predictor = SCTPredictor([folds["0"]], precision="bf16", progress=False)
    assert predictor.autocast_dtype is torch.bfloat16 and predictor.options["precision"] == "bf16"
    assert "precision_recorded_difference_hu" not in predictor.options
    assert "precision bf16 (asked for)" in _messages(caplog)


def test_auto_on_a_gpu_reads_each_folds_recorded_check(folds, monkeypatch):
    """The CUDA branch without a GPU: networks stay on the CPU, the recorded checks are stood in for."""
    from dgcf_auto.inference.model_loading import load_checkpoint

    real_build = predictor_module.build_trained_network
    monkeypatch.setattr(predictor_module, "build_trained_network", lambda c, d, v=None: real_build(c, "cpu", v))
    calls = []
    checks = {"fold_0": {"bf16": {"mean_hu": 0.2, "p99_hu": 2.0}, "fp16": {"mean_hu": 0.1, "p99_hu": 1.0}},
              "fold_1": {"bf16": {"mean_hu": 0.4, "p99_hu": 1.0}, "fp16": {"mean_hu": 0.1, "p99_hu": 1.0}}}

    def fold_check(model_folder, fold, weights):
        calls.append((model_folder, fold, sorted(weights)))
        return checks[fold]

    monkeypatch.setattr(predictor_module, "fold_check", fold_check)
    predictor = SCTPredictor([folds["0"], folds["1"]], device="cuda", progress=False)
    keys = sorted(load_checkpoint(folds["0"])["network_weights"])
    assert calls == [(folds["0"].parent.parent, "fold_0", keys), (folds["1"].parent.parent, "fold_1", keys)]
    assert predictor.precision.precision == "bf16" and predictor.autocast_dtype is torch.bfloat16
    assert predictor.options["precision_recorded_difference_hu"] == {"mean_hu": 0.4, "p99_hu": 2.0}
    calls.clear()
    SCTPredictor([folds["0"]], device="cuda", progress=False, precision="fp16")
    assert calls == []  # asked for: no check read


# ------------------------------------------------------------------ batching, TTA, ensembling
def _passes(x, networks, flips):
    """Every fold x flip prediction of a (S, H, W) stack, flipped back, computed here in numpy."""
    out = []
    for dims in flips:
        for network in networks:
            xin = np.flip(x, axis=-1) if dims else x
            y = network(torch.from_numpy(xin.copy())[:, None]).numpy()[:, 0]
            out.append(np.flip(y, axis=-1) if dims else y)
    return np.stack(out)


@pytest.mark.parametrize("tta", [True, False])
def test_slice_stack_is_the_mean_over_folds_and_mirrors(folds, tta):
    rng = np.random.default_rng(3)
    slices = rng.uniform(-1, 1, (5, 8, 6)).astype(np.float32)
    networks = [_ColumnScale(rng.uniform(0.5, 2, 6)), _ColumnShift(rng.uniform(-0.5, 0.5, 6))]
    predictor = _predictor(folds, networks, use_tta=tta, batch_size=2)
    mean, std = predictor._predict_slices(slices, "S", True)
    passes = _passes(slices, networks, ((), (-1,)) if tta else ((),))
    assert len(passes) == (4 if tta else 2)
    np.testing.assert_allclose(mean, passes.mean(0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(std, passes.std(0), rtol=0, atol=1e-5)
    mirrored = _passes(slices, networks[:1], ((-1,),))[0]
    assert np.abs(mirrored - _passes(slices, networks[:1], ((),))[0]).max() > 0.1  # the mirror matters here
    assert predictor._predict_slices(slices, "S", False)[1] is None


def test_slices_go_to_the_stack_runner_with_the_predictors_settings(folds, monkeypatch):
    seen = []
    monkeypatch.setattr(predictor_module, "predict_slice_stack", lambda *a, **k: seen.append((a, k)) or (None, None))
    predictor = _predictor(folds, batch_size=4, use_tta=False)
    predictor._predict_slices(np.zeros((2, 4, 4), np.float32), "A", True)
    (args, kwargs), = seen
    assert args[0] is predictor.networks and args[3] is predictor.batch_sizer and args[4] is None
    assert args[5] == ((),) and args[6] is True
    assert kwargs == {"desc": None, "shared_encoder": predictor.shared_encoder, "slab_size": 1}
    predictor.progress = True
    predictor._predict_slices(np.zeros((2, 4, 4), np.float32), "A", False)
    predictor._predict_slices(np.zeros((2, 4, 4), np.float32), "", False)
    assert [k["desc"] for _, k in seen[1:]] == ["predict A", "predict"]
    predictor.plans = {**predictor.plans, "configuration": "2.5d"}
    predictor._predict_slices(np.zeros((2, 4, 4), np.float32), "A", False)
    assert seen[-1][1]["slab_size"] == 3


@pytest.mark.parametrize("tta", [True, False])
def test_a_3d_fold_predicts_by_sliding_window_mirrored_left_right(folds, tta, monkeypatch):
    predictor = SCTPredictor([folds["3d"]], precision="fp32", progress=False, use_tta=tta)
    assert predictor.volume_patch == [4, 8, 12]  # the preset's patch, not the configuration's
    assert not any(p.is_contiguous(memory_format=torch.channels_last_3d) and not p.is_contiguous()
                   for p in predictor.networks[0].parameters())
    rng = np.random.default_rng(4)
    volume = rng.uniform(-1, 1, (4, 8, 12)).astype(np.float32)  # one window: the Gaussian weights cancel
    w = rng.uniform(0.5, 2, 12).astype(np.float32)
    predictor.networks = [_ColumnScale(w)]
    mean, std = predictor._predict_slices(volume, "V", True)
    expected = volume * ((w + w[::-1]) / 2 if tta else w)
    np.testing.assert_allclose(mean, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(std, np.abs(volume * (w - w[::-1]) / 2) if tta else 0.0, rtol=0, atol=1e-4)
    seen = []
    monkeypatch.setattr(predictor_module, "predict_sliding_window",
                        lambda *a, **k: seen.append((a, k)) or (None, None))
    predictor.progress = True
    predictor._predict_slices(volume, " V ", False)
    (args, kwargs), = seen
    assert args[2] == [4, 8, 12] and kwargs["desc"] == "predict  V" and kwargs["with_std"] is False
    assert kwargs["mirror_axes"] == ((2,) if tta else ()) and kwargs["dtype"] is None
    predictor.progress = False
    predictor._predict_slices(volume, "V", False)
    assert seen[-1][1]["desc"] is None
