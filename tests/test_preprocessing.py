"""Normalisation and slicing round trips, the CT inverse (issue item 9), the command end to end, bad input."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from dgcf_auto.cli.plan_and_preprocess import main
from dgcf_auto.dataset.discovery import find_cases
from dgcf_auto.dataset.example import make_example_dataset
from dgcf_auto.dataset.validation import load_case
from dgcf_auto.geometry import canonical_frame
from dgcf_auto.imageio import geometry
from dgcf_auto.planning.fingerprint import extract_fingerprint
from dgcf_auto.planning.planner import plan_experiment
from dgcf_auto.preprocessing.pipeline import preprocess_case, restore_ct
from dgcf_auto.preprocessing.slicing import from_slice_grid, slice_grid_reference, to_slice_grid

GEOMETRY = ("GetSize", "GetSpacing", "GetOrigin", "GetDirection")


def same_geometry(a: sitk.Image, b: sitk.Image) -> bool:
    return all(getattr(a, g)() == getattr(b, g)() for g in GEOMETRY)


def oblique_volume(spacing_in_plane=(0.8, 0.8)) -> sitk.Image:
    """Odd size, anisotropic spacing, flipped + permuted + slightly rotated axes."""
    rng = np.random.default_rng(1)
    image = sitk.GetImageFromArray(rng.normal(0, 100, (9, 31, 27)).astype(np.float32))  # (z, y, x)
    a = np.deg2rad(5)
    rotation = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    permutation = np.array([[0, -1, 0], [1, 0, 0], [0, 0, -1]], float)  # x->A, y->L, z->I
    image.SetDirection((rotation @ permutation).ravel().tolist())
    image.SetSpacing((spacing_in_plane[0], spacing_in_plane[1], 3.1))
    image.SetOrigin((12.5, -40.25, 7.0))
    return image


def test_canonical_frame_equals_dicom_orient():
    image = oblique_volume()
    for code in ("LPS", "LIP", "PIL"):
        oriented = sitk.DICOMOrient(image, code)
        frame = canonical_frame(image, code)
        np.testing.assert_allclose(frame["direction"].ravel(), oriented.GetDirection(), atol=1e-12)
        np.testing.assert_allclose(frame["origin"], oriented.GetOrigin(), atol=1e-9)
        assert tuple(frame["size"]) == oriented.GetSize()


@pytest.mark.parametrize("spacing", [0.8, 1.3])
def test_slicing_round_trip_keeps_geometry(spacing):
    image = oblique_volume()
    grid = {"orientation": "LPS", "patch_size": [48, 48], "inplane_spacing": [spacing, spacing]}
    reference = slice_grid_reference(image, None, grid)
    assert reference.GetSize()[2] == 9 and reference.GetSpacing()[2] == pytest.approx(3.1)
    slices = to_slice_grid(image, reference, sitk.sitkLinear, 0.0)
    assert sitk.GetArrayViewFromImage(slices).shape == (9, 48, 48)
    back = from_slice_grid(slices, geometry(image), sitk.sitkLinear, 0.0)
    assert same_geometry(back, image)
    if spacing == 0.8:  # same spacing: the snapped grid copies voxels, the round trip is exact
        np.testing.assert_allclose(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image), atol=1e-3)


@pytest.fixture(scope="module")
def mr_dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("raw") / "Dataset997_PreMR"
    make_example_dataset(folder, "mr2ct", n=4, seed=5)
    cases = find_cases(folder)
    plans = plan_experiment(extract_fingerprint(cases, progress=False), folder.name)
    return cases, plans


def test_restore_ct_recovers_geometry_and_hu(mr_dataset):
    """Issue item 9: preprocess a case's CT, invert it, compare on the original grid."""
    cases, plans = mr_dataset
    window = plans["ct_normalization"]
    for case in cases:  # includes an RAS-stored and a rotated case
        source, ct, mask = load_case(case)
        result = preprocess_case(source, ct, mask, plans, case.name)
        assert result.ct.shape == result.source.shape == result.mask.shape
        assert result.ct.shape[1:] == tuple(plans["configurations"]["2d"]["patch_size"])
        assert result.ct.min() >= -1 and result.ct.max() <= 1 and result.mask.dtype == np.uint8
        restored = restore_ct(result.ct, result.properties, plans)
        assert same_geometry(restored, ct) and restored.GetPixelID() == sitk.sitkFloat32
        reference = np.clip(sitk.GetArrayFromImage(ct), window["clip_low"], window["clip_high"])
        inside = sitk.GetArrayFromImage(mask) > 0
        mae = float(np.abs(sitk.GetArrayFromImage(restored) - reference)[inside].mean())
        print(f"{case.name}: spacing {ct.GetSpacing()[0]:.3f} -> {plans['configurations']['2d']['inplane_spacing'][0]:.3f}"
              f" mm, HU MAE inside mask after round trip {mae:.2f}")
        assert mae < 20.0
        json.dumps(result.properties)  # properties must be JSON-serialisable


def test_prediction_without_mask_or_ct(mr_dataset):
    cases, plans = mr_dataset
    source, _, _ = load_case(cases[0])
    result = preprocess_case(source, None, None, plans, cases[0].name)
    assert result.ct is None and result.mask.any() and result.properties["has_ct"] is False
    restored = restore_ct(np.zeros_like(result.source), result.properties, plans)
    assert same_geometry(restored, source)


@pytest.fixture
def env(tmp_path, monkeypatch):
    for var in ("DGCF_raw", "DGCF_preprocessed", "DGCF_results"):
        monkeypatch.setenv(var, str(tmp_path / var))
    return tmp_path


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_command_end_to_end_and_idempotent(env, capsys):
    make_example_dataset(env / "DGCF_raw" / "Dataset996_CBCT", "cbct2ct", n=3, seed=2)
    code, out, _ = run_cli(["-d", "996", "-np", "2", "-q", "--patch-size", "96", "96"], capsys)
    assert code == 0 and "preprocessed 3 case(s), 0 up to date" in out
    folder = env / "DGCF_preprocessed" / "Dataset996_CBCT"
    for name in ("dataset.json", "dataset_fingerprint.json", "DGCFPlans.json", "splits_final.json"):
        assert (folder / name).is_file()
    plans = json.loads((folder / "DGCFPlans.json").read_text())
    assert plans["overrides"] == {"patch_size": [96, 96]} and plans["source_normalization"]["scheme"] == "window"
    data = folder / "DGCFPlans_2d"
    ct = np.load(data / "2PA001_ct.npy", mmap_mode="r")
    assert ct.shape[1:] == (96, 96) and ct.dtype == np.float32
    assert np.load(data / "2PA001_mask.npy", mmap_mode="r").dtype == np.uint8
    assert json.loads((data / "2PA001.json").read_text())["case"] == "2PA001"
    stamps = {p.name: p.stat().st_mtime_ns for p in data.iterdir()}

    code, out, _ = run_cli(["-d", "996", "-q", "--patch-size", "96", "96"], capsys)
    assert code == 0 and "preprocessed 0 case(s), 3 up to date" in out
    assert {p.name: p.stat().st_mtime_ns for p in data.iterdir()} == stamps

    os.utime(env / "DGCF_raw" / "Dataset996_CBCT" / "2PA002" / "cbct.nii.gz")  # an input changed
    code, out, _ = run_cli(["-d", "996", "-q", "--patch-size", "96", "96", "-np", "1"], capsys)
    assert "preprocessed 1 case(s), 2 up to date" in out

    code, out, _ = run_cli(["-d", "996", "-q", "--patch-size", "96", "96", "-np", "1", "--overwrite"], capsys)
    assert code == 0 and "preprocessed 3 case(s), 0 up to date" in out

    code, _, err = run_cli(["-d", "996", "-q", "--split", "paper", "--plan-only"], capsys)  # folds stay stable
    assert code == 1 and "holds a 5fold split" in err
    code, out, _ = run_cli(["-d", "996", "-q", "--split", "paper", "--plan-only", "--overwrite"], capsys)
    (split,) = json.loads((folder / "splits_final.json").read_text())
    assert code == 0 and len(split["test"]) == 1 and len(split["val"]) == 1 and len(split["train"]) == 1


def preprocessed_is_empty(env) -> bool:
    root = env / "DGCF_preprocessed"
    return not root.exists() or not any(root.rglob("*"))


def test_bad_input_unknown_duplicate_and_empty(env, capsys):
    code, _, err = run_cli(["-d", "5", "-q"], capsys)
    assert code == 1 and "dataset 5" in err and "Traceback" not in err
    (env / "DGCF_raw" / "Dataset007_A").mkdir(parents=True)
    (env / "DGCF_raw" / "Dataset007_B").mkdir()
    code, _, err = run_cli(["-d", "7", "-q"], capsys)
    assert code == 1 and "Dataset007_A" in err and "Dataset007_B" in err
    (env / "DGCF_raw" / "Dataset008_Empty").mkdir()
    code, _, err = run_cli(["-d", "8", "-q"], capsys)
    assert code == 1 and "no cases found" in err
    assert preprocessed_is_empty(env)


def test_bad_input_one_invalid_case_writes_nothing(env, capsys):
    raw = env / "DGCF_raw" / "Dataset995_Bad"
    make_example_dataset(raw, "mr2ct", n=3, seed=4)
    (raw / "1PA002" / "ct.nii.gz").unlink()
    mask = sitk.ReadImage(str(raw / "1PA003" / "mask.nii.gz"))
    sitk.WriteImage(mask * 0, str(raw / "1PA003" / "mask.nii.gz"))
    code, _, err = run_cli(["-d", "995", "-q"], capsys)
    lines = err.strip().splitlines()
    assert code == 1 and "Traceback" not in err
    assert any("1PA002" in line and "ct" in line for line in lines)
    assert any("1PA003" in line and "mask" in line for line in lines)
    assert preprocessed_is_empty(env)
    code, _, err = run_cli(["-d", "995", "-q", "--patch-size", "90", "96"], capsys)  # bad override: nothing
    assert code == 1 and "multiple of 16" in err and preprocessed_is_empty(env)
    shutil.rmtree(raw)


# Hand mutation this catches: the CT outside its field of view filled with 0 HU instead of -1024 in training targets.
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


# Survivors of mutation testing preprocessing/pipeline.py (benchmarks/mutation.py) that were real gaps.
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


def test_a_negative_mask_label_is_body_too(trained):
    """Any non-zero label is body (as for the background and the field-of-view warning), a negative one too."""
    from dgcf_auto.preprocessing.pipeline import preprocess_case

    array = np.random.default_rng(5).uniform(100, 400, (3, 10, 12)).astype(np.float32)
    mask_array = np.zeros(array.shape, np.int16)
    mask_array[:, 2:8, 3:6] = 4
    mask_array[:, 2:8, 6:9] = -1
    grid = dict(trained["plans"]["configurations"]["2d"], inplane_spacing=[1.0, 1.0], patch_size=[32, 32],
                interpolation="linear")
    plans = {**trained["plans"], "configurations": {"2d": grid},
             "source_normalization": {"scheme": "percentile", "percentile": 99.0}}
    case = preprocess_case(sitk.GetImageFromArray(array), None, sitk.GetImageFromArray(mask_array), plans, "N")
    assert case.mask.sum() == np.count_nonzero(mask_array) == 3 * 6 * 6
    assert case.properties["source_normalization"]["value"] == pytest.approx(
        np.percentile(array[mask_array != 0], 99), rel=1e-6)
