"""A model zip leaves the training machine without its paths: no member (nor any string pickled inside a
checkpoint) names the training root or its folders; exporting says what it removed; the fingerprint written at
plan time holds no paths; the README describes the model."""
from __future__ import annotations

import io
import json
import zipfile

import pytest
import torch

from model_fixtures import data_folders, example_model, run_cli

DATASET_ID = 993
MODEL = "DGCFTrainer__DGCFPlans__2d"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("private_site_xq")  # a folder name that must never reach the zip
    with data_folders(root):
        raw, folder, files = example_model(root, DATASET_ID, MODEL, n=3, seed=7, folds=(0, 1))
        yield {"root": root, "raw": raw, "folder": folder, "files": files,
               "preprocessed": root / "DGCF_preprocessed" / raw.name}


def _every_text(archive: zipfile.ZipFile) -> dict[str, str]:
    """Each member's bytes as text; a checkpoint (itself a zip) contributes each of its records, so strings
    pickled inside (plans, dinov3_source) are searched too."""
    texts = {}
    for name in archive.namelist():
        data = archive.read(name)
        if zipfile.is_zipfile(io.BytesIO(data)):
            with zipfile.ZipFile(io.BytesIO(data)) as inner:
                for record in inner.namelist():
                    texts[f"{name}!{record}"] = inner.read(record).decode("latin-1")
        else:
            texts[name] = data.decode("utf-8")
    return texts


def test_plan_time_fingerprint_and_dataset_json_hold_no_paths(trained):
    for name in ("dataset_fingerprint.json", "dataset.json"):
        text = (trained["preprocessed"] / name).read_text()
        assert str(trained["root"]) not in text and trained["root"].name not in text, name
    fingerprint = json.loads((trained["preprocessed"] / "dataset_fingerprint.json").read_text())
    assert [c["name"] for c in fingerprint["cases"]] == sorted(p.name for p in trained["raw"].iterdir() if p.is_dir())


def test_exported_zip_names_no_training_folder_and_says_what_it_removed(trained, tmp_path, capsys, monkeypatch):
    root, folder = trained["root"], trained["folder"]
    for key in ("DGCF_raw", "DGCF_preprocessed", "DGCF_results"):
        monkeypatch.setenv(key, str(root / key))
    # What older runs left: paths in the fingerprint, dataset.json, the fold's settings and the checkpoint.
    preprocessed = trained["preprocessed"]
    fingerprint = json.loads((preprocessed / "dataset_fingerprint.json").read_text())
    for case in fingerprint["cases"]:
        case["files"] = {"source": str(trained["raw"] / case["name"] / "mr.nii.gz")}
    (preprocessed / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))
    info = json.loads((preprocessed / "dataset.json").read_text())
    (preprocessed / "dataset.json").write_text(json.dumps({**info, "raw_folder": str(trained["raw"])}))
    weights = root / "weights" / "dinov3_vitb16.pth"
    (folder / "fold_0" / "training_config.json").write_text(json.dumps({
        "dinov3_source": str(weights), "train_cases": ["a", "b"], "val_cases": ["c"],
        "note": f"resumed from {folder / 'fold_0' / 'checkpoint_latest.pth'} at epoch 3"}))
    checkpoint = torch.load(trained["files"][0], weights_only=True)
    torch.save({**checkpoint, "dinov3_source": str(weights)}, trained["files"][0])
    (folder / "fold_0" / "validation").mkdir(exist_ok=True)
    (folder / "fold_0" / "validation" / "summary.json").write_text(json.dumps({
        "metric_per_case": [{"case": "c", "metrics": {"mae": 61.25, "psnr": 27.5, "ssim": 0.875}}],
        "profile": {"name": "synthrad2023", "table": ["mae", "psnr", "ssim"]},
        "mean": {"mae": 61.25, "psnr": 27.5, "ssim": 0.875}, "dataset": trained["raw"].name}))

    zip_path = tmp_path / "model.zip"
    code, out, err = run_cli("export_model_to_zip", ["-d", str(DATASET_ID), "-o", str(zip_path), "-f", "0", "1"],
                             capsys)
    assert code == 0, err
    removed_line = next(line for line in out.splitlines() if "removed" in line)
    for field in ("dataset.json: raw_folder", "dataset_fingerprint.json: cases[].files",
                  "dataset_fingerprint.json: input_signature", "fold_0/training_config.json: dinov3_source",
                  "fold_0/training_config.json: note", "fold_0/checkpoint_final.pth: dinov3_source"):
        assert field in removed_line
    assert "fold_1/checkpoint_final.pth" not in removed_line  # nothing to remove there: not claimed

    with zipfile.ZipFile(zip_path) as archive:
        texts = _every_text(archive)
        prefix = f"{trained['raw'].name}/{MODEL}/"
        config = json.loads(archive.read(prefix + "fold_0/training_config.json"))
        readme = archive.read(prefix + "README.md").decode()
        payload = torch.load(io.BytesIO(archive.read(prefix + "fold_0/checkpoint_final.pth")), weights_only=True)
    assert len(texts) > 10
    for name, text in texts.items():
        for secret in (str(root), root.name, "DGCF_raw", "DGCF_results", "DGCF_preprocessed", str(tmp_path)):
            assert secret not in text, f"{name} holds {secret!r}"
    assert config["dinov3_source"] == "dinov3_vitb16.pth" and config["train_cases"] == ["a", "b"]
    assert config["note"] == "resumed from checkpoint_latest.pth at epoch 3"
    assert payload["dinov3_source"] == "dinov3_vitb16.pth"

    plans = checkpoint["plans"]
    window = plans["ct_normalization"]
    assert f"- task: mr2ct (source: mr)" in readme
    assert "- configuration: 2d; trainer: DGCFTrainer; plans: DGCFPlans" in readme
    assert f"CT window [{window['clip_low']}, {window['clip_high']}] HU" in readme
    assert f"{plans['configurations']['2d']['patch_size'][0]}x{plans['configurations']['2d']['patch_size'][1]}" \
        in readme  # the planner's summary of the plans
    assert "fold_0 (checkpoint_final.pth, epoch 1), fold_1 (checkpoint_final.pth, epoch 1)" in readme
    assert "- fold_0: 2 training, 1 validation cases" in readme
    assert f"- dataset: {trained['raw'].name}, 3 cases" in readme
    ct = fingerprint["pooled"]["ct"]["percentiles"]
    assert f"median {ct['50']:.4g}, p99.5 {ct['99.5']:.4g} HU" in readme
    assert "- fold_0 (1 case, profile synthrad2023): mae (HU) 61.25, psnr (dB) 27.5, ssim 0.875" in readme
    assert "- fold_1: no validation summary" in readme


@pytest.mark.parametrize("text, expected", [
    ("/home/u/PAT_123/mr.nii.gz", "mr.nii.gz"),
    ("C:\\data\\PAT_123\\ct.mha", "ct.mha"),
    ("~/PAT_123/w.pth", "w.pth"),
    ("loaded from /srv/PAT_123/w.pth (sha 1)", "loaded from w.pth (sha 1)"),
    ("fold_0/checkpoint_final.pth", "fold_0/checkpoint_final.pth"),     # relative: kept
    ("https://ai.meta.com/dinov3-license/", "https://ai.meta.com/dinov3-license/"),
    ("7:1:2 split, 1/2 of them, (a+b)/2, {x}/y", "7:1:2 split, 1/2 of them, (a+b)/2, {x}/y"),
    ("weights=/opt/w/PAT_1.pth, more", "weights=PAT_1.pth, more"),
])
def test_absolute_paths_become_file_names(text, expected):
    from dgcf_auto.inference.model_card import without_paths

    removed: set[str] = set()
    assert without_paths({"a": [text]}, "x.json", removed) == {"a": [expected]}
    assert removed == ({"x.json: a[]"} if expected != text else set())
