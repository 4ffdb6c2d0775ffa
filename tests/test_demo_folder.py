"""dgcf_demo never reuses another demo's data: a demo folder holding another task's or another number of cases'
example data is refused in one line before any work (--overwrite starts afresh); a model folder copied under
another dataset name is reported under its plans' dataset, said once."""
from __future__ import annotations

import json
import shutil

import pytest

from model_fixtures import data_folders, example_model, run_cli


@pytest.fixture
def cbct_demo_folder(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    monkeypatch.setenv("DGCF_raw", str(out / "DGCF_raw"))
    from dgcf_auto.dataset.example import write_example_dataset

    write_example_dataset(999, "cbct2ct", n=5, seed=0)
    return out


@pytest.mark.parametrize("argv, asked", [(["--task", "mr2ct", "-n", "5"], "--task mr2ct with -n 5"),
                                         (["-n", "7"], "--task cbct2ct with -n 7")])
def test_demo_refuses_a_folder_of_another_demo(cbct_demo_folder, capsys, argv, asked):
    code, out, err = run_cli("demo", ["-o", str(cbct_demo_folder), *argv, "--skip_dose"], capsys)
    assert code != 0 and len(err.strip().splitlines()) == 1, err
    assert (f"demo folder {cbct_demo_folder} holds the cbct2ct demo with 5 cases (Dataset999_ExampleCBCT); this "
            f"run asks for {asked}: pass --overwrite") in err
    assert sorted(p.name for p in cbct_demo_folder.iterdir()) == ["DGCF_raw"]  # nothing planned or trained


def test_demo_refuses_a_damaged_example_dataset_json(cbct_demo_folder, capsys):
    info = cbct_demo_folder / "DGCF_raw" / "Dataset999_ExampleCBCT" / "dataset.json"
    info.write_text('{"task": "cbct2ct"}')
    code, _, err = run_cli("demo", ["-o", str(cbct_demo_folder), "--skip_dose"], capsys)
    assert code != 0 and len(err.strip().splitlines()) == 1
    assert f"{info}: field num_cases: missing; pass --overwrite" in err


def test_demo_overwrite_starts_afresh_with_the_asked_data(cbct_demo_folder, monkeypatch):
    import dgcf_auto.dataset.example as example
    from dgcf_auto.demo import run_demo
    from dgcf_auto.errors import DGCFError

    asked = []

    def stop(dataset_id, task, n, seed=0):
        asked.append((dataset_id, task, n, (cbct_demo_folder / "DGCF_raw").exists()))
        raise DGCFError("stopped after the example stage")

    monkeypatch.setattr(example, "write_example_dataset", stop)
    with pytest.raises(DGCFError, match="stopped"):
        run_demo(cbct_demo_folder, task="mr2ct", num_cases=6, overwrite=True, dose=False)
    assert asked == [(999, "mr2ct", 6, False)]  # the CBCT data gone, the asked data made


def test_a_renamed_model_copy_is_reported_under_its_plans_dataset(tmp_path, capsys, monkeypatch):
    with data_folders(tmp_path):
        raw, folder, _ = example_model(tmp_path, 994, "DGCFTrainer__DGCFPlans__2d", n=3, seed=2, folds=(0,))
    copy = tmp_path / "elsewhere" / "Dataset777_Renamed" / folder.name
    shutil.copytree(folder, copy)
    case = tmp_path / "in" / "1PA001"
    case.mkdir(parents=True)
    for name in ("mr.nii.gz", "mask.nii.gz"):
        shutil.copy(raw / "1PA001" / name, case / name)
    code, out, err = run_cli("predict", ["-i", str(case), "-o", str(tmp_path / "sct"), "-m", str(copy), "-f", "0",
                                         "-device", "cpu", "--disable_tta"], capsys)
    assert code == 0, err
    note = (f"model folder {copy} lies under Dataset777_Renamed, but its plans say it was trained on {raw.name}: "
            f"reported as {raw.name}")
    assert err.count(note) == 1, err
    rest = err.replace(note, "")
    assert f"fold(s) of {raw.name}/DGCFTrainer__DGCFPlans__2d" in rest and "Dataset777_Renamed" not in rest
    provenance = json.loads((tmp_path / "sct" / "prediction_provenance.json").read_text())
    assert provenance["model"]["dataset"] == raw.name
