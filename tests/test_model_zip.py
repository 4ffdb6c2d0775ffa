"""dgcf_export_model_to_zip / dgcf_install_model_from_zip: contents, identical predictions after install,
and every refusal of an untrusted zip (nothing left behind)."""
from __future__ import annotations

import hashlib
import io
import json
import stat
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from model_fixtures import save_tiny_folds

DATASET_ID = 996
MODEL = "DGCFTrainer__DGCFPlans__2d"


def _install(argv):
    from dgcf_auto.cli.install_model_from_zip import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code


def test_zip_holds_weights_once_and_no_optimiser(model):
    with zipfile.ZipFile(model["zip"]) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("manifest.json"))
        prefix = f"{model['raw'].name}/{MODEL}/"
        assert manifest["folds"] == ["fold_0", "fold_1", "fold_2"]  # CV folds, not fold_all, by default
        vit_names = [n for n in names if n.startswith(prefix + "dinov3_")]
        assert len(vit_names) == 1  # the frozen ViT once, named by the SHA-256 of its bytes
        vit_sha = hashlib.sha256(archive.read(vit_names[0])).hexdigest()
        assert vit_names[0] == f"{prefix}dinov3_{vit_sha[:16]}.pth"
        assert names == {"manifest.json", vit_names[0]} | {prefix + n for n in (
            "plans.json", "README.md", "DINOv3_LICENSE_NOTICE.txt", "dataset_fingerprint.json",
            "dataset.json", "splits_final.json", "fold_0/checkpoint_final.pth", "fold_1/checkpoint_final.pth",
            "fold_2/checkpoint_final.pth")}
        for name in names - {"manifest.json"}:
            assert manifest["sha256"][name] == hashlib.sha256(archive.read(name)).hexdigest()
        fold = torch.load(io.BytesIO(archive.read(prefix + "fold_1/checkpoint_final.pth")), weights_only=True)
        vit = torch.load(io.BytesIO(archive.read(vit_names[0])), weights_only=True)
        readme = archive.read(prefix + "README.md").decode()
        notice = archive.read(prefix + "DINOv3_LICENSE_NOTICE.txt").decode()
    original = torch.load(model["files"][1], weights_only=True)["network_weights"]
    assert "optimizer_state" not in fold and fold["shared_vit"] == vit_names[0].split("/")[-1]
    assert fold["shared_vit_sha256"] == vit_sha
    assert not any(k.startswith("dinov3.") for k in fold["network_weights"])
    assert set(fold["network_weights"]) | {"dinov3." + k for k in vit} == set(original)
    for key, value in vit.items():
        assert torch.equal(value, original["dinov3." + key])
    assert "RANDOMLY INITIALISED" in notice and "3 cases" in readme
    checkpoints = sum(f.stat().st_size for f in model["files"])
    assert model["zip"].stat().st_size < checkpoints / 2


def test_installed_model_predicts_identically_on_a_fresh_results_folder(model, tmp_path, monkeypatch):
    from dgcf_auto.inference.model_loading import resolve_folds
    from dgcf_auto.inference.predictor import SCTPredictor

    monkeypatch.setenv("DGCF_results", str(tmp_path / "fresh"))
    assert _install([str(model["zip"])]) == 0
    installed = tmp_path / "fresh" / model["raw"].name / MODEL
    assert sorted(p.name for p in installed.iterdir() if p.is_dir()) == ["fold_0", "fold_1", "fold_2"]
    case = sorted(d for d in model["raw"].iterdir() if d.is_dir())[0]
    source = sitk.ReadImage(str(case / "mr.nii.gz"))
    mask = sitk.ReadImage(str(case / "mask.nii.gz"))
    before = SCTPredictor(model["files"], precision="fp32").predict_volume(source, mask, case.name)[0]
    after = SCTPredictor(resolve_folds(installed, None, "checkpoint_final.pth"),
                         precision="fp32").predict_volume(source, mask, case.name)[0]
    assert np.array_equal(sitk.GetArrayFromImage(before), sitk.GetArrayFromImage(after))
    assert len(np.unique(sitk.GetArrayFromImage(after))) > 10  # a real prediction, not a constant
    # Installed again without --overwrite: refused; with it: replaced.
    assert _install([str(model["zip"])]) == 1
    (installed / "marker").write_text("old")
    assert _install([str(model["zip"]), "--overwrite"]) == 0
    assert not (installed / "marker").exists()


def _rezip(source, target, change=None, add=None, fix_manifest=True):
    """Copy `source` into `target`, changing entries {name: bytes|None} and adding ZipInfos."""
    with zipfile.ZipFile(source) as src:
        entries = {n: src.read(n) for n in src.namelist()}
    for name, data in (change or {}).items():
        if data is None:
            entries.pop(name, None)
        else:
            entries[name] = data
    extra = list(add or [])
    if fix_manifest:
        manifest = json.loads(entries["manifest.json"])
        for name, data in list(entries.items()) + [(i.filename, d) for i, d in extra]:
            if name != "manifest.json":
                manifest["sha256"][name] = hashlib.sha256(data).hexdigest()
        entries["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(target, "w") as out:
        for name, data in entries.items():
            out.writestr(name, data)
        for info, data in extra:
            out.writestr(info, data)
    return target


def _prefix(model):
    return f"{model['raw'].name}/{MODEL}/"


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def _pickled_object() -> bytes:
    buffer = io.BytesIO()
    torch.save({"network_weights": _Evil()}, buffer)
    return buffer.getvalue()


def _symlink(name):
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("attack, message", [
    ("absolute", "has an absolute or non-portable path"),
    ("dotdot", "climbs out of the install folder"),
    ("symlink", "is a link or special file"),
    ("tampered", "does not match its SHA-256 in the manifest"),
    ("unlisted", "is not in the manifest"),
    ("missing", "is listed in the manifest but missing from the zip"),
    ("no_manifest", "no manifest.json"),
    ("pickle", "does not load as weights only"),
    ("outside", "lies outside the model folder"),
])
def test_untrusted_zips_are_refused_and_leave_nothing(model, tmp_path, monkeypatch, capsys, attack, message):
    prefix = _prefix(model)
    fold = prefix + "fold_0/checkpoint_final.pth"
    with zipfile.ZipFile(model["zip"]) as archive:
        fold_bytes = archive.read(fold)
    bad = tmp_path / "bad.zip"
    if attack == "absolute":
        _rezip(model["zip"], bad, add=[(zipfile.ZipInfo("/tmp/evil.pth"), b"x")])
    elif attack == "dotdot":
        _rezip(model["zip"], bad, add=[(zipfile.ZipInfo(prefix + "../../../evil.pth"), b"x")])
    elif attack == "symlink":
        _rezip(model["zip"], bad, add=[(_symlink(prefix + "fold_0/link"), b"/etc/passwd")])
    elif attack == "tampered":
        altered = bytearray(fold_bytes)
        altered[-100] ^= 0xFF
        _rezip(model["zip"], bad, change={fold: bytes(altered)}, fix_manifest=False)
    elif attack == "unlisted":
        _rezip(model["zip"], bad, fix_manifest=False, add=[(zipfile.ZipInfo(prefix + "extra.txt"), b"x")])
    elif attack == "missing":
        _rezip(model["zip"], bad, change={fold: None}, fix_manifest=False)
    elif attack == "no_manifest":
        _rezip(model["zip"], bad, change={"manifest.json": None}, fix_manifest=False)
    elif attack == "pickle":
        _rezip(model["zip"], bad, change={fold: _pickled_object()})
    elif attack == "outside":
        _rezip(model["zip"], bad, add=[(zipfile.ZipInfo("Dataset001_Other/x.txt"), b"x")])
    results = tmp_path / "results"
    monkeypatch.setenv("DGCF_results", str(results))
    assert _install([str(bad)]) == 1
    err = capsys.readouterr()
    assert message in err.err.strip().splitlines()[-1] and "pwned" not in err.out
    assert not results.exists() or list(results.rglob("*")) == []


def test_export_refuses_folds_with_different_vits(tmp_path, model, monkeypatch):
    from dgcf_auto.errors import DGCFError
    from dgcf_auto.inference.model_zip import export_model

    plans = torch.load(model["files"][0], weights_only=True)["plans"]
    folder = tmp_path / "Dataset995_X" / MODEL
    files = save_tiny_folds(folder, plans, folds=(0, 1), shared_vit=False)
    with pytest.raises(DGCFError, match="frozen DINOv3 weights differ"):
        export_model(folder, files, tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists()
