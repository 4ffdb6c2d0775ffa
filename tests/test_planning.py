"""Fingerprint, planner rules and overrides, folds."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from dgcf_auto.dataset.discovery import find_cases
from dgcf_auto.dataset.example import make_example_dataset
from dgcf_auto.errors import DGCFError
from dgcf_auto.planning.fingerprint import PERCENTILES, extract_fingerprint, fingerprint_dataset
from dgcf_auto.planning.planner import plan_ct_window, plan_experiment, size_multiple
from dgcf_auto.plans import NetworkPlans
from dgcf_auto.planning.splits import kfold_splits, paper_split, write_splits


@pytest.fixture(scope="module")
def mr_cases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("raw") / "Dataset998_PlanMR"
    make_example_dataset(folder, "mr2ct", n=4, seed=3)
    return find_cases(folder)


@pytest.fixture(scope="module")
def fingerprint(mr_cases):
    return extract_fingerprint(mr_cases, num_processes=1, progress=False)


def test_fingerprint_per_case_values(mr_cases, fingerprint):
    assert fingerprint["num_cases"] == 4 and fingerprint["modality"] == "mr" and fingerprint["task"] == "mr2ct"
    for case, record in zip(mr_cases, fingerprint["cases"]):
        source = sitk.ReadImage(str(case.source))
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(case.mask))) > 0
        values = sitk.GetArrayFromImage(source)[mask]
        assert record["name"] == case.name
        assert record["size"] == list(source.GetSize()) and record["direction"] == list(source.GetDirection())
        assert record["source_p99"] == pytest.approx(np.percentile(values, 99), rel=1e-6)
        assert set(record["source"]["percentiles"]) == {f"{q:g}" for q in PERCENTILES}
        assert record["mask_voxels"] == int(mask.sum())
        # The LPS bounding box holds the mask: its voxel count bounds the mask's.
        assert np.prod(record["mask_bbox_voxels_lps"]) >= mask.sum()
        assert record["ct"]["max"] <= 3071


def test_pooled_percentiles_match_concatenated_voxels(mr_cases, fingerprint):
    # Test-only concatenation: the fingerprint itself pools per-case histograms.
    ct = np.concatenate([sitk.GetArrayFromImage(sitk.ReadImage(str(c.ct)))[
        sitk.GetArrayFromImage(sitk.ReadImage(str(c.mask))) > 0] for c in mr_cases]).astype(float)
    pooled = fingerprint["pooled"]["ct"]
    for q in (1, 50, 99, 99.9):
        assert abs(pooled["percentiles"][f"{q:g}"] - np.percentile(ct, q)) <= 1.0
    assert pooled["mean"] == pytest.approx(ct.mean(), rel=1e-6)
    assert pooled["std"] == pytest.approx(ct.std(), rel=1e-4)
    assert pooled["n"] == ct.size


def test_fingerprint_file_reused_until_inputs_change(mr_cases, tmp_path):
    out = tmp_path / "fp.json"
    first = fingerprint_dataset(mr_cases[:2], out, progress=False)
    stamp = out.stat().st_mtime_ns
    assert fingerprint_dataset(mr_cases[:2], out, progress=False) == first and out.stat().st_mtime_ns == stamp
    assert json.loads(out.read_text())["num_cases"] == 2
    assert fingerprint_dataset(mr_cases[:3], out, progress=False)["num_cases"] == 3


@pytest.mark.parametrize("p999, expected", [(1590.0, 2000.0), (1999.0, 2000.0), (2001.0, 2500.0),
                                            (2600.0, 3000.0), (4000.0, 3000.0), (600.0, 1000.0)])
def test_ct_window_rule(p999, expected):
    window = plan_ct_window({"percentiles": {"0.5": -1000.0, "99.9": p999}})
    assert window["clip_low"] == -1024.0 and window["clip_high"] == expected
    assert f"{p999:g}" in window["derived_from"]


def test_ct_window_lower_bound_follows_offset_cbct():
    assert plan_ct_window({"percentiles": {"0.5": -1180.0, "99.9": 1500.0}})["clip_low"] == -1200.0


def test_plans_from_example_fingerprint(fingerprint):
    plans = plan_experiment(fingerprint, "Dataset998_PlanMR")
    grid = plans["configurations"]["2d"]
    assert plans["source_normalization"]["scheme"] == "percentile"
    assert plans["source_normalization"]["percentile"] == 99.0
    assert plans["ct_normalization"]["clip_high"] == 2000.0  # phantom cortical bone ~1700 HU
    assert grid["slice_axis"] == "axial" and grid["orientation"] == "LPS"
    assert all(p % 16 == 0 for p in grid["patch_size"])
    covered = np.array(grid["patch_size"]) * grid["inplane_spacing"][0]
    assert np.all(covered >= np.array(grid["fov_mm"]) - 1e-6)
    median = min(fingerprint["pooled"]["median_spacing_lps"][:2])
    assert grid["inplane_spacing"][0] == pytest.approx(median)  # small fov: native resolution
    total = grid["slices_per_case"]["total"]
    assert plans["training"]["iterations_per_epoch"] == int(np.ceil(total * 0.8 / 4))
    assert plans["training"]["batch_size"] == 4 and plans["training"]["learning_rate"] == 2e-4
    assert plans["network"]["features"] == [64, 128, 256, 512] and plans["overrides"] == {}


def test_synthrad_sized_fov_lands_on_256(fingerprint):
    # SynthRAD pelvis: 1 mm in-plane, body up to ~480 x 300 mm (LR x AP).
    fp = json.loads(json.dumps(fingerprint))
    fp["pooled"]["median_spacing_lps"] = [1.0, 1.0, 2.5]
    fp["pooled"]["mask_bbox_mm_lps"]["max"] = [480.0, 300.0, 250.0]
    grid = plan_experiment(fp, "x")["configurations"]["2d"]
    assert grid["patch_size"][1] == 256 and grid["patch_size"][0] == 176
    assert grid["inplane_spacing"][0] == pytest.approx(500.0 / 256)


def test_overrides_are_applied_and_recorded(fingerprint):
    plans = plan_experiment(fingerprint, "x", {"patch_size": [64, 64], "ct_window": [-1000, 1500],
                                               "batch_size": 2, "epochs": 3, "features": [8, 16, 32, 64, 128, 256],
                                               "iterations_per_epoch": 7, "interpolation": "linear"})
    grid = plans["configurations"]["2d"]
    # 6 levels pool 6 times: every planned size must divide by 2**6 (one source of truth: the registry)
    assert grid["patch_size"] == [64, 64] and grid["size_multiple"] == 64 == size_multiple(NetworkPlans(features=[8] * 6))
    assert grid["interpolation"] == "linear"
    # The overridden patch still covers the field of view: the spacing grows instead.
    assert 64 * grid["inplane_spacing"][0] >= max(grid["fov_mm"]) - 1e-6
    assert plans["ct_normalization"]["clip_high"] == 1500.0 and plans["ct_normalization"]["derived_from"] == "override"
    assert plans["training"]["batch_size"] == 2 and plans["training"]["iterations_per_epoch"] == 7
    assert plans["overrides"] == {"patch_size": [64, 64], "ct_window": [-1000, 1500], "batch_size": 2,
                                  "epochs": 3, "features": [8, 16, 32, 64, 128, 256], "iterations_per_epoch": 7,
                                  "interpolation": "linear"}
    with pytest.raises(DGCFError, match="multiple of 16"):
        plan_experiment(fingerprint, "x", {"patch_size": [100, 64]})
    # 5 levels: 48 divides by lcm(16, 2**4) but not by the 2**5 the DGCN's five poolings need
    with pytest.raises(DGCFError, match="multiple of 32"):
        plan_experiment(fingerprint, "x", {"patch_size": [48, 48], "features": [8, 16, 32, 64, 128]})
    with pytest.raises(DGCFError, match="upper bound"):
        plan_experiment(fingerprint, "x", {"ct_window": [100, -100]})


def test_five_folds_are_seeded_disjoint_and_order_independent():
    names = [f"1PA{i:03d}" for i in range(23)]
    splits = kfold_splits(names)
    assert len(splits) == 5
    vals = [v for s in splits for v in s["val"]]
    assert sorted(vals) == names and len(set(vals)) == 23
    for s in splits:
        assert not set(s["train"]) & set(s["val"]) and len(s["train"]) + len(s["val"]) == 23
    assert kfold_splits(list(reversed(names))) == splits
    assert kfold_splits(names[:3]) == kfold_splits(names[:3]) and len(kfold_splits(names[:3])) == 3


def test_paper_split_is_7_1_2():
    names = [f"1PA{i:03d}" for i in range(180)]
    (split,) = paper_split(names)
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (126, 18, 36)
    assert sorted(split["train"] + split["val"] + split["test"]) == names
    assert paper_split(names) == [split]
    with pytest.raises(DGCFError, match="at least 3"):
        paper_split(names[:2])


def test_existing_splits_are_kept_and_checked(tmp_path):
    out = tmp_path / "splits_final.json"
    names = [f"c{i}" for i in range(6)]
    first = write_splits(names, out)
    out.write_text(json.dumps(first[::-1]))  # a hand-edited but valid file must survive a rerun
    assert write_splits(names, out) == first[::-1]
    with pytest.raises(DGCFError, match="does not match the dataset"):
        write_splits(names + ["c6"], out)
    with pytest.raises(DGCFError, match="--overwrite"):
        write_splits(names, out, mode="paper")
    assert "test" in write_splits(names, out, mode="paper", overwrite=True)[0]
