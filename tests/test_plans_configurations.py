"""Typed configurations (dgcf_auto/plans.py): inheritance, resolution for one configuration, the version upgrade,
and the configuration checks of the commands (nothing written on a bad name)."""
from __future__ import annotations

import copy
import json
import shutil

import pytest

from dgcf_auto.errors import DGCFError
from dgcf_auto.plans import (KIND_SLABS, KIND_SLICES, PLANS_VERSION, ConfigurationPlans, configuration_names,
                             configuration_plans, resolve_configuration, upgrade_plans)
from dgcf_auto.plans_schema import load_plans

# A version-1 plans file as the planner wrote it before configurations were typed (no plans_version, no kind).
V1_PLANS = {
    "plans_name": "DGCFPlans", "dataset_name": "Dataset001_X", "task": "mr2ct", "source_modality": "mr",
    "ct_normalization": {"clip_low": -1000.0, "clip_high": 1500.0},
    "source_normalization": {"scheme": "percentile", "percentile": 99.0},
    "configurations": {"2d": {"data_identifier": "DGCFPlans_2d", "slice_axis": "axial", "orientation": "LPS",
                              "inplane_spacing": [1.25, 1.25], "patch_size": [96, 80], "size_multiple": 16,
                              "slice_spacing": "native", "interpolation": "linear", "fov_mm": [110.0, 90.0],
                              "slices_per_case": {"median": 30.0, "total": 120}, "derived_from": {"x": "y"}}},
    "network": {"architecture": "cross_fusion", "features": [8, 16, 32, 64]},
    "training": {"batch_size": 4, "epochs": 3},
}


def _with_slabs(slab_size: int = 5) -> dict:
    plans = upgrade_plans(copy.deepcopy(V1_PLANS))
    plans["configurations"]["2.5d"] = {"inherits_from": "2d", "kind": KIND_SLABS, "slab_size": slab_size,
                                       "batch_size": 2, "network": {"features": [4, 8, 16, 32]}}
    return plans


def test_version_1_plans_upgrade_to_typed_2d():
    plans = upgrade_plans(copy.deepcopy(V1_PLANS))
    assert plans["plans_version"] == PLANS_VERSION == 2
    grid = configuration_plans(plans, "2d")
    assert isinstance(grid, ConfigurationPlans)
    assert (grid.name, grid.kind, grid.patch_size, grid.inplane_spacing) == ("2d", KIND_SLICES, [96, 80], [1.25, 1.25])
    assert (grid.interpolation, grid.data_identifier, grid.slab_size) == ("linear", "DGCFPlans_2d", 1)
    assert configuration_plans(plans).name == "2d"  # unresolved plans: the paper's configuration


def test_newer_plans_version_is_refused():
    with pytest.raises(DGCFError, match="plans_version 3"):
        upgrade_plans({**V1_PLANS, "plans_version": 3})


def test_inheritance_takes_the_parents_grid_and_keeps_its_own_kind():
    plans = _with_slabs(7)
    slabs = configuration_plans(plans, "2.5d")
    assert (slabs.kind, slabs.slab_size, slabs.inherits_from) == (KIND_SLABS, 7, "2d")
    assert slabs.patch_size == [96, 80] and slabs.inplane_spacing == [1.25, 1.25]
    assert slabs.data_identifier == "DGCFPlans_2d"  # the same arrays: nothing preprocessed twice
    assert slabs.derived_from is None  # notes about 2d's derivation are not 2.5d's
    assert configuration_names(plans) == ["2d", "2.5d"]
    # the parent is untouched by its child's values
    assert configuration_plans(plans, "2d").kind == KIND_SLICES


def test_resolving_a_configuration_merges_its_sections_over_the_top_level():
    plans = _with_slabs(5)
    resolved = resolve_configuration(plans, "2.5d")
    assert resolved["configuration"] == "2.5d"
    assert resolved["network"]["features"] == [4, 8, 16, 32]
    assert resolved["network"]["architecture"] == "cross_fusion"  # not named by 2.5d: the top level's
    assert resolved["network"]["in_channels"] == 5               # every slice of the slab is a channel
    assert resolved["training"] == {"batch_size": 2, "epochs": 3}
    assert plans["network"] == {"architecture": "cross_fusion", "features": [8, 16, 32, 64]}  # a copy
    assert configuration_plans(resolved).name == "2.5d"  # resolved plans know their configuration
    assert resolve_configuration(plans, "2d")["network"] == plans["network"]


def test_a_configuration_not_planned_names_the_planned_ones():
    with pytest.raises(DGCFError, match=r"configuration '3d_fullres' is not in plans 'DGCFPlans' \(planned: 2d, 2.5d\)"):
        configuration_plans(_with_slabs(), "3d_fullres")


def test_inheritance_cycles_and_unknown_fields_are_one_line():
    plans = _with_slabs()
    plans["configurations"]["2d"]["inherits_from"] = "2.5d"
    with pytest.raises(DGCFError, match="cycle"):
        configuration_plans(plans, "2.5d")
    plans = _with_slabs()
    plans["configurations"]["2d"]["patch_sise"] = [1, 2]
    with pytest.raises(DGCFError, match="configurations.2d.*patch_sise"):
        configuration_plans(plans, "2d")
    plans = _with_slabs()
    plans["configurations"]["2d"]["kind"] = "cubes"
    with pytest.raises(DGCFError, match="kind 'cubes'"):
        configuration_plans(plans, "2d")


def test_load_plans_upgrades_and_refuses_a_truncated_file(tmp_path):
    good = tmp_path / "DGCFPlans.json"
    good.write_text(json.dumps(V1_PLANS))
    assert load_plans(good)["plans_version"] == PLANS_VERSION
    bad = tmp_path / "Bad.json"
    bad.write_text(json.dumps(V1_PLANS)[:-40])
    with pytest.raises(DGCFError, match=f"plans file {bad}: not valid JSON"):
        load_plans(bad)


def test_grid_fields_ignore_notes_for_people():
    plans = upgrade_plans(copy.deepcopy(V1_PLANS))
    other = copy.deepcopy(plans)
    other["configurations"]["2d"].update(derived_from="else", slices_per_case={"median": 1, "total": 1})
    assert configuration_plans(plans).grid_fields() == configuration_plans(other).grid_fields()
    other["configurations"]["2d"]["inplane_spacing"] = [1.3, 1.25]
    assert configuration_plans(plans).grid_fields() != configuration_plans(other).grid_fields()


def _main_exit(main, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


def test_plan_and_preprocess_refuses_an_unplanned_configuration_before_writing(tmp_path, monkeypatch, capsys):
    from dgcf_auto.cli.plan_and_preprocess import main
    from dgcf_auto.dataset.example import write_example_dataset

    for name in ("DGCF_raw", "DGCF_preprocessed", "DGCF_results"):
        monkeypatch.setenv(name, str(tmp_path / name))
    write_example_dataset(7, "mr2ct", n=2, seed=1)
    assert _main_exit(main, ["-d", "7", "-pl", "release", "-c", "3d_fullres", "--no_pp"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dgcf_plan_and_preprocess: error: configuration(s) 3d_fullres are not planned by "
                   "DGCFReleasePlans (it plans 2d)"]
    assert not (tmp_path / "DGCF_preprocessed").exists() or not any((tmp_path / "DGCF_preprocessed").rglob("*.json"))


def test_a_model_used_with_another_configuration_is_one_line(tmp_path, monkeypatch, capsys):
    """A 2d model copied into a 2.5d model folder: -c 2.5d finds it and refuses the 2d checkpoint inside."""
    from dgcf_auto.cli.predict import main
    from dgcf_auto.dataset.example import write_example_dataset
    from dgcf_auto.preprocessing.run import plan_and_preprocess
    from model_fixtures import TINY_FEATURES, save_tiny_folds

    for name in ("DGCF_raw", "DGCF_preprocessed", "DGCF_results"):
        monkeypatch.setenv(name, str(tmp_path / name))
    raw = write_example_dataset(8, "mr2ct", n=2, seed=2)
    plans = plan_and_preprocess(8, num_processes=1, preprocess=False, progress=False,
                                overrides={"patch_size": [32, 32], "features": TINY_FEATURES})["plans"]
    folder_2d = tmp_path / "DGCF_results" / raw.name / "DGCFTrainer__DGCFPlans__2d"
    save_tiny_folds(folder_2d, resolve_configuration(plans, "2d"), folds=(0,))
    shutil.copytree(folder_2d, folder_2d.with_name("DGCFTrainer__DGCFPlans__2.5d"))
    case = next(p for p in raw.iterdir() if p.is_dir())
    out = tmp_path / "out"
    assert _main_exit(main, ["-i", str(case / "mr.nii.gz"), "-o", str(out), "-d", "8", "-c", "2.5d", "-device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was trained on configuration '2d', not '2.5d' (-c 2d)" in err[0]
    assert not out.exists() or not any(out.glob("*.nii.gz"))
