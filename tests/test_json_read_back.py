"""Every JSON file read back (splits_final.json, dataset.json, the fingerprint) is checked before a field is used:
a damaged one is one line naming the file and the field (or, for derived files, a warning and a rewrite), never a
traceback."""
from __future__ import annotations

import json

import numpy as np
import pytest

from model_fixtures import run_cli

DATASET = "Dataset991_Broken"
TRUNCATED = '[{"train": ["a", "b"], "val": ["c"'


@pytest.fixture
def preprocessed(tmp_path, monkeypatch):
    for key in ("DGCF_raw", "DGCF_preprocessed", "DGCF_results"):
        monkeypatch.setenv(key, str(tmp_path / key))
    folder = tmp_path / "DGCF_preprocessed" / DATASET
    (folder / "DGCFPlans_2d").mkdir(parents=True)
    np.save(folder / "DGCFPlans_2d" / "a_source.npy", np.zeros((1, 4, 4), np.float32))
    (folder / "DGCFPlans.json").write_text(json.dumps({"plans_name": "DGCFPlans"}))
    (tmp_path / "DGCF_raw" / DATASET).mkdir(parents=True)
    return folder


@pytest.mark.parametrize("content, field", [
    (TRUNCATED, "not valid JSON"),
    ('[{"train": ["a"]}]', "field [0].val: missing"),
    ('[{"train": ["a"], "val": "c"}]', "field [0].val: expected a list, got a string ('c')"),
    ("[]", "empty at the top level"),
    ('{"train": []}', "expected a list at the top level, got an object"),
])
def test_train_and_predict_split_say_which_field_of_splits_final(preprocessed, capsys, content, field):
    splits = preprocessed / "splits_final.json"
    splits.write_text(content)
    for command, argv in (("train", ["991", "2d", "0", "-device", "cpu"]),
                          ("predict", ["-d", "991", "-f", "0", "--split", "val", "-o", str(preprocessed / "out")])):
        code, out, err = run_cli(command, argv, capsys)
        assert code != 0 and "Traceback" not in err, command
        lines = err.strip().splitlines()
        assert len(lines) == 1, (command, err)
        assert f"splits file {splits}: {field}" in lines[0], (command, err)


def test_a_damaged_fingerprint_is_extracted_again_with_one_warning(tmp_path, caplog, monkeypatch):
    from dgcf_auto.dataset.discovery import find_cases
    from dgcf_auto.dataset.example import write_example_dataset
    from dgcf_auto.planning.fingerprint import fingerprint_dataset

    monkeypatch.setenv("DGCF_raw", str(tmp_path / "raw"))
    cases = find_cases(write_example_dataset(990, "cbct2ct", n=2, seed=3))
    target = tmp_path / "dataset_fingerprint.json"
    good = fingerprint_dataset(cases, target, progress=False)
    damaged = {**good, "pooled": {k: v for k, v in good["pooled"].items() if k != "source_p99"}}
    target.write_text(json.dumps(damaged))  # same inputs, same version: only the schema notices
    with caplog.at_level("WARNING"):
        again = fingerprint_dataset(cases, target, progress=False)
    assert again["pooled"]["source_p99"] == good["pooled"]["source_p99"]
    assert json.loads(target.read_text())["pooled"]["source_p99"] == good["pooled"]["source_p99"]
    assert [r.getMessage() for r in caplog.records] == [
        f"fingerprint {target}: field pooled.source_p99: missing; extracting it again"]
    target.write_text(TRUNCATED)
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert fingerprint_dataset(cases, target, progress=False)["pooled"] == good["pooled"]
    assert len(caplog.records) == 1 and "not valid JSON" in caplog.records[0].getMessage()


def test_a_truncated_preprocessed_dataset_json_is_rewritten(tmp_path, monkeypatch):
    from dgcf_auto.dataset.example import write_example_dataset
    from dgcf_auto.preprocessing.run import plan_and_preprocess

    for key in ("DGCF_raw", "DGCF_preprocessed", "DGCF_results"):
        monkeypatch.setenv(key, str(tmp_path / key))
    raw = write_example_dataset(989, "cbct2ct", n=3, seed=4)
    out = tmp_path / "DGCF_preprocessed" / raw.name
    plan_and_preprocess(989, num_processes=1, preprocess=False, progress=False)
    written = json.loads((out / "dataset.json").read_text())
    (out / "dataset.json").write_text('{"name": "Data')
    plan_and_preprocess(989, num_processes=1, preprocess=False, progress=False)
    assert json.loads((out / "dataset.json").read_text()) == written
    assert written["cases"] == sorted(p.name for p in raw.iterdir() if p.is_dir())
