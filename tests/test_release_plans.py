"""Release plans (`-pl release`, `-p DGCFReleasePlans`): the authors' preprocessing and its inverse.

The expected values are written out here from their code (HiLab-git/DGCF), independently of dgcf_auto:
MR clipped to np.percentile(volume, [1, 99]) and mapped linearly to [-1, 1]; CBCT and CT clipped to
[-1024, 2000] HU and mapped to [-1, 1]; every stored slice resized to 256 x 256 with torchvision's bilinear
Resize (antialias=None on tensors: half-pixel centres, no antialiasing; written out below as a matrix),
and the sCT mapped back to HU without clipping and resized onto the slice's own size. The network is a fixed
linear map, so every voxel of the sCT has a closed form.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from dgcf_auto.atomic import read_json
from model_fixtures import data_folders

SIZE = 256
WINDOW = (-1024.0, 2000.0)


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Rows: output pixels; torchvision bilinear: source = (i + 0.5) * n_in / n_out - 0.5, floored at 0."""
    src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
    low = np.minimum(np.floor(src).astype(int), n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    frac = src - low
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), low] += 1 - frac
    m[np.arange(n_out), high] += frac
    return m


def resize_slices(volume: np.ndarray, rows: int, cols: int) -> np.ndarray:
    r, c = bilinear_matrix(volume.shape[1], rows), bilinear_matrix(volume.shape[2], cols)
    return np.stack([r @ s.astype(np.float64) @ c.T for s in volume])


def to_unit(x, low, high):
    return (np.clip(x.astype(np.float64), low, high) - low) / (high - low) * 2 - 1


def from_unit(y, low, high):
    return (y + 1) / 2 * (high - low) + low


def network(x):  # the known "generator": a fixed linear map; its output reaches 1.25 (their inverse does not clip)
    return 0.9 * x + 0.35


def rotated_case(modality: str, seed: int = 3):
    """A 5-slice anisotropic volume, 12 x 18 per stored slice, on an oblique grid."""
    rng = np.random.default_rng(seed)
    shape = (5, 12, 18)  # (K, Y, X)
    if modality == "mr":
        source = rng.gamma(2.0, 150.0, shape).astype(np.float32)
        source[:, :2] = 0.0  # background rows: p1 is 0
    else:
        source = rng.uniform(-1300, 2600, shape).astype(np.float32)  # beyond the window on both sides
    ct = rng.uniform(-1200, 2400, shape).astype(np.float32)
    mask = np.zeros(shape, np.uint8)
    mask[:, 3:10, 2:15] = 1
    angle = 0.5
    c, s = np.cos(angle), np.sin(angle)
    direction = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]) @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    images = []
    for array in (source, ct, mask):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((0.7, 1.9, 3.3))
        image.SetOrigin((-12.3, 40.1, 7.7))
        image.SetDirection(direction.ravel().tolist())
        images.append(image)
    return images, (source, ct, mask)


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    from dgcf_auto.dataset.example import make_example_dataset
    from dgcf_auto.preprocessing.run import plan_and_preprocess

    root = tmp_path_factory.mktemp("release_plans")
    with data_folders(root):
        make_example_dataset(root / "DGCF_raw" / "Dataset981_MR", "mr2ct", n=2, seed=0, size_scale=0.3)
        make_example_dataset(root / "DGCF_raw" / "Dataset982_CBCT", "cbct2ct", n=2, seed=0, size_scale=0.3)
        plan_and_preprocess(981, 1, planner="default", preprocess=False, progress=False)
        plan_and_preprocess(981, 1, planner="release", progress=False)
        plan_and_preprocess(982, 1, planner="release", preprocess=False, progress=False)
        yield root


def test_release_planner_writes_its_own_plans_and_arrays(planned):
    root = planned
    folder = root / "DGCF_preprocessed" / "Dataset981_MR"
    plans = read_json(folder / "DGCFReleasePlans.json")
    assert (folder / "DGCFPlans.json").is_file()  # both plans side by side
    assert plans["plans_name"] == "DGCFReleasePlans"
    assert plans["configurations"]["2d"]["data_identifier"] == "DGCFReleasePlans_2d"
    assert plans["ct_normalization"]["clip_low"] == -1024 and plans["ct_normalization"]["clip_high"] == 2000
    assert plans["source_normalization"]["percentiles"] == [1.0, 99.0]
    assert not (folder / "DGCFPlans_2d").exists()
    for case in read_json(folder / "dataset.json")["cases"]:
        source = sitk.ReadImage(str(root / "DGCF_raw" / "Dataset981_MR" / case / "mr.nii.gz"))
        array = np.load(folder / "DGCFReleasePlans_2d" / f"{case}_source.npy")
        assert array.shape == (source.GetSize()[2], SIZE, SIZE)  # every stored slice, stretched


def test_trainer_never_reads_the_other_plans_arrays(planned):
    from dgcf_auto.errors import DGCFError
    from dgcf_auto.training.run import load_preprocessed

    root = planned
    _, plans, _, data = load_preprocessed(981, "DGCFReleasePlans")
    assert data.name == "DGCFReleasePlans_2d" and plans["plans_name"] == "DGCFReleasePlans"
    folder = root / "DGCF_preprocessed" / "Dataset981_MR"
    copied = folder / "Mixed.json"  # a plans file whose arrays are another identifier's
    copied.write_text((folder / "DGCFReleasePlans.json").read_text())
    (folder / "Mixed_2d").mkdir()
    np.save(folder / "Mixed_2d" / "x_source.npy", np.zeros(1))
    try:
        with pytest.raises(DGCFError, match="names plans 'DGCFReleasePlans' with arrays 'DGCFReleasePlans_2d'"):
            load_preprocessed(981, "Mixed")
        with pytest.raises(DGCFError, match="no preprocessed slices in .*DGCFPlans_2d"):
            load_preprocessed(981, "DGCFPlans")  # planned, not preprocessed: never falls back to the release arrays
    finally:
        (folder / "Mixed_2d" / "x_source.npy").unlink()
        (folder / "Mixed_2d").rmdir()
        copied.unlink()


@pytest.mark.parametrize("modality", ["mr", "cbct"])
def test_release_plans_match_their_formulas_there_and_back(planned, modality):
    from dgcf_auto.preprocessing.pipeline import preprocess_case, restore_ct

    root = planned
    dataset = "Dataset981_MR" if modality == "mr" else "Dataset982_CBCT"
    plans = read_json(root / "DGCF_preprocessed" / dataset / "DGCFReleasePlans.json")
    (image, ct_image, mask_image), (source, ct, mask) = rotated_case(modality)

    if modality == "mr":
        low, high = np.percentile(source, [1, 99])  # whole volume, no mask
    else:
        low, high = WINDOW
    expected_source = resize_slices(to_unit(source, low, high), SIZE, SIZE)
    expected_ct = resize_slices(to_unit(ct, *WINDOW), SIZE, SIZE)
    prepared = preprocess_case(image, ct_image, mask_image, plans, "rotated")
    np.testing.assert_allclose(prepared.source, expected_source, atol=2e-5, rtol=0)
    np.testing.assert_allclose(prepared.ct, expected_ct, atol=2e-5, rtol=0)
    stretched_mask = resize_slices(mask.astype(np.float64), SIZE, SIZE)  # the stored mask: stretched, >= 0.5
    assert np.array_equal(prepared.mask, (stretched_mask >= 0.5).astype(np.uint8))
    assert prepared.properties["has_ct"] is True

    stored = json.loads(json.dumps(prepared.properties))  # as a later run reads them from <case>.json
    sct = restore_ct(network(prepared.source), stored, plans)
    expected_sct = resize_slices(from_unit(network(expected_source), *WINDOW), *source.shape[1:])
    assert sct.GetSize() == image.GetSize()
    for get in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(sct, get)(), getattr(image, get)(), atol=1e-9)
    np.testing.assert_allclose(sitk.GetArrayFromImage(sct), expected_sct, atol=0.1, rtol=0)


def test_predictor_writes_the_sct_on_the_input_grid(planned):
    """The predictor's own path (int16 HU on the input grid), the network replaced by the fixed linear map."""
    from dgcf_auto.inference.predictor import SCTPredictor

    root = planned
    plans = read_json(root / "DGCF_preprocessed" / "Dataset981_MR" / "DGCFReleasePlans.json")
    (image, _, _), (source, _, _) = rotated_case("mr", seed=5)
    predictor = SCTPredictor.__new__(SCTPredictor)
    predictor.plans, predictor.mask_from, predictor.mask_background = plans, "none", False
    predictor._predict_slices = lambda slices, case, with_uncertainty: (network(slices), None)
    sct, _ = predictor.predict_volume(image, None, "rotated")
    low, high = np.percentile(source, [1, 99])
    expected = resize_slices(from_unit(network(resize_slices(to_unit(source, low, high), SIZE, SIZE)), *WINDOW),
                             *source.shape[1:])
    got = sitk.GetArrayFromImage(sct).astype(np.float64)
    assert np.abs(got - expected).max() <= 0.5 + 0.1  # int16 rounding
    assert sct.GetSize() == image.GetSize() and sct.GetDirection() == image.GetDirection()


def test_release_planner_refuses_grid_overrides(planned):
    from dgcf_auto.cli.plan_and_preprocess import main

    with pytest.raises(SystemExit) as exit_info:
        main(["-d", "982", "-pl", "release", "--patch-size", "64", "64", "--plan-only"])
    assert exit_info.value.code == 1


def test_import_makes_missing_release_plans_or_says_how(planned, capsys):
    from dgcf_auto.cli.import_reference_checkpoint import main
    from dgcf_auto.dataset.example import make_example_dataset

    root = planned
    make_example_dataset(root / "DGCF_raw" / "Dataset983_New", "mr2ct", n=2, seed=1, size_scale=0.3)
    argv = ["--generator", str(root / "absent.pth"), "--dinov3-weights", str(root / "absent_vit.pth")]
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["-d", "983"])
    err = capsys.readouterr().err
    assert "DGCFReleasePlans.json is missing: planning it now (dgcf_plan_and_preprocess -d 983 -pl release" in err
    assert read_json(root / "DGCF_preprocessed" / "Dataset983_New" / "DGCFReleasePlans.json")["plans_name"] == \
        "DGCFReleasePlans"
    assert exit_info.value.code == 1 and "absent.pth does not exist" in err  # then the generator is checked
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["-d", "984"])  # no raw dataset to plan from: one line
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and len(err.strip().splitlines()) == 1 and "Dataset984_" in err, err


def test_constant_mr_volume_is_one_clear_error():
    from dgcf_auto.errors import DGCFError
    from dgcf_auto.preprocessing.normalization import source_normalization_params

    with pytest.raises(DGCFError, match="p1 = 7 and p99 = 7 leave no range to normalise"):
        source_normalization_params(np.full((3, 4, 5), 7.0, np.float32), None,
                                    {"scheme": "percentile_window", "percentiles": [1, 99]})


def test_release_plans_stretch_to_a_non_square_patch_and_keep_a_half_covered_mask_node(planned):
    """patch_size is (rows, columns); 8 rows onto 6 puts output row 1 exactly halfway between stored rows 1 and
    2 (4:3 with half-pixel centres), where the stretched 0/1 mask is 0.5 and the stored mask counts it in."""
    import copy

    from dgcf_auto.preprocessing.pipeline import preprocess_case

    plans = copy.deepcopy(read_json(planned / "DGCF_preprocessed" / "Dataset981_MR" / "DGCFReleasePlans.json"))
    plans["configurations"]["2d"]["patch_size"] = [6, 5]
    source = np.arange(3 * 8 * 10, dtype=np.float32).reshape(3, 8, 10)
    mask = np.zeros(source.shape, np.uint8)
    mask[:, :2] = 1
    image, mask_image = sitk.GetImageFromArray(source), sitk.GetImageFromArray(mask)
    prepared = preprocess_case(image, None, mask_image, plans, "wide")
    low, high = np.percentile(source, [1, 99])
    np.testing.assert_allclose(prepared.source, resize_slices(to_unit(source, low, high), 6, 5), atol=2e-5, rtol=0)
    stretched = resize_slices(mask.astype(np.float64), 6, 5)
    assert stretched[0, 1, 0] == 0.5
    assert np.array_equal(prepared.mask, (stretched >= 0.5).astype(np.uint8))
    assert prepared.mask[:, :2].all() and not prepared.mask[:, 2:].any()
