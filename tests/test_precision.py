"""inference/precision.py: inference precision never costs HU by surprise.

fp32 on a CPU under the default `auto`; bf16/fp16 when asked, or under auto on a GPU after a recorded check
(precision_check.json) within 0.5 HU mean and 5 HU p99. The GPU-only decision is tested through
`choose_precision` with a device string and a recorded check.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from dgcf_auto.errors import DGCFError
from dgcf_auto.inference.precision import (CHECK_FILE, choose_precision, differences_hu, fold_check, passes,
                                           read_check, record_check, weights_digest)
from test_prediction import _predict  # the `trained` fixture (example MR data + 2 tiny folds) is in conftest.py


def _entry(mean, p99):
    return {"mean_hu": mean, "p99_hu": p99}


def test_decision_from_device_and_recorded_check():
    good = {"bf16": _entry(0.5, 5.0), "fp16": _entry(0.1, 1.0)}
    assert choose_precision("cpu", "auto", [good]).precision == "fp32"          # a CPU never reduces under auto
    assert choose_precision("cuda", "auto", []).precision == "fp32"             # no check: fp32
    assert choose_precision("cuda", "auto", [good, None]).precision == "fp32"   # one fold unchecked: fp32
    chosen = choose_precision("cuda", "auto", [good, {"bf16": _entry(0.2, 4.0), "fp16": _entry(0.1, 1.0)}])
    assert chosen.precision == "bf16" and chosen.dtype is torch.bfloat16
    assert chosen.check == {"mean_hu": 0.5, "p99_hu": 5.0}                      # the worst fold is recorded
    assert chosen.record()["recorded_difference_hu"] == {"mean_hu": 0.5, "p99_hu": 5.0}
    # limits are inclusive and both must hold; the next precision is tried before fp32
    assert choose_precision("cuda", "auto", [{"bf16": _entry(0.51, 1.0), "fp16": _entry(0.3, 2.0)}]).precision == "fp16"
    assert choose_precision("cuda", "auto", [{"bf16": _entry(0.1, 5.01), "fp16": _entry(0.3, 6.0)}]).precision == "fp32"
    assert not passes(None) and passes(_entry(0.5, 5.0)) and not passes(_entry(0.5, 5.001))
    # asked for: runs, with no recorded difference claimed
    for device in ("cpu", "cuda"):
        for asked in ("fp32", "bf16", "fp16"):
            choice = choose_precision(device, asked, [])
            assert choice.precision == asked and choice.check is None
    assert choose_precision("cpu", "fp16").dtype is torch.float16
    with pytest.raises(DGCFError, match="precision must be one of"):
        choose_precision("cpu", "fp8")


def test_differences_in_hu_inside_the_mask_only():
    fp32 = np.zeros((2, 3, 3), np.float32)
    reduced = fp32.copy()
    reduced[0, 0, 0] = 0.01        # in the mask
    reduced[1, 2, 2] = 1.0         # outside: ignored
    mask = np.zeros((2, 3, 3), np.uint8)
    mask[0] = 1
    d = differences_hu(fp32, reduced, mask, 1512.0)
    assert d["voxels"] == 9
    assert d["mean_hu"] == pytest.approx(0.01 * 1512.0 / 9)
    assert d["max_hu"] == pytest.approx(15.12)
    assert d["p99_hu"] == pytest.approx(np.percentile([15.12] + [0.0] * 8, 99))


def test_default_prediction_on_a_cpu_is_fp32_even_with_native_bf16(trained, tmp_path, monkeypatch):
    from dgcf_auto.inference.predictor import SCTPredictor

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    folds = sorted(trained["model_folder"].glob("fold_*/checkpoint_final.pth"))
    default = SCTPredictor(folds[:1], device="cpu", use_tta=False)
    assert default.autocast_dtype is None and default.options["precision"] == "fp32"
    assert "precision_recorded_difference_hu" not in default.options
    slices = np.random.default_rng(4).uniform(-1, 1, (3, 32, 32)).astype(np.float32)
    fp32 = SCTPredictor(folds[:1], device="cpu", use_tta=False, precision="fp32")
    np.testing.assert_array_equal(default._predict_slices(slices, "", False)[0], fp32._predict_slices(slices, "", False)[0])

    out = tmp_path / "out"
    assert _predict(["-i", str(trained["raw"]), "-o", str(out), "-device", "cpu", "--disable_tta", "-f", "0"]) == 0
    provenance = json.loads((out / "prediction_provenance.json").read_text())
    assert provenance["options"]["precision"] == "fp32"
    report = json.loads(next(out.glob("*report*.json")).read_text())
    assert report["precision"] == "fp32" and report["precision_choice"]["reason"] == "auto: fp32 on cpu"


class _Case:
    def __init__(self, source, mask):
        self.source, self.mask = source, mask


def test_recorded_check_is_bound_to_the_weights(trained, tmp_path):
    """record_check measures fp32 vs bf16/fp16 in HU and writes it beside the folds; a changed fold loses it."""
    import shutil

    from dgcf_auto.inference.model_loading import load_checkpoint

    model = tmp_path / "Dataset998_X" / "DGCFTrainer__DGCFPlans__2d"
    shutil.copytree(trained["model_folder"], model)
    rng = np.random.default_rng(0)
    source = rng.uniform(-1, 1, (5, 32, 32)).astype(np.float32)
    mask = np.zeros((5, 32, 32), np.uint8)
    mask[1:4, 8:24, 8:24] = 1     # slices 0 and 4 hold no body: never drawn
    entry = record_check(model, model / "fold_0" / "checkpoint_final.pth", [_Case(source, mask)], "cpu")
    record = json.loads((model / CHECK_FILE).read_text())
    assert record["limits_hu"] == {"mean": 0.5, "p99": 5.0} and list(record["folds"]) == ["fold_0"]
    assert entry["slices"] == 3 and entry["bf16"]["voxels"] == 3 * 16 * 16
    assert entry["bf16"]["mean_hu"] > 0  # bf16 really ran and differs from fp32
    assert entry["bf16"]["p99_hu"] >= entry["bf16"]["mean_hu"]

    weights = load_checkpoint(model / "fold_0" / "checkpoint_final.pth")["network_weights"]
    assert fold_check(model, "fold_0", weights) == read_check(model)["fold_0"]
    assert fold_check(model, "fold_1", weights) is None                       # never measured
    key = next(k for k in weights if not k.startswith("dinov3.") and weights[k].is_floating_point())
    changed = dict(weights)
    changed[key] = weights[key] + 1e-3
    assert weights_digest(changed) != weights_digest(weights)
    assert fold_check(model, "fold_0", changed) is None                       # other weights: not trusted
    (model / CHECK_FILE).write_text("{broken")
    assert read_check(model) == {}


def test_reduced_precision_asked_for_is_recorded(trained):
    from dgcf_auto.inference.predictor import SCTPredictor

    fold = sorted(trained["model_folder"].glob("fold_*/checkpoint_final.pth"))[:1]
    predictor = SCTPredictor(fold, device="cpu", use_tta=False, precision="bf16")
    assert predictor.autocast_dtype is torch.bfloat16 and predictor.options["precision"] == "bf16"
    assert predictor.precision.reason == "asked for"


def test_recorded_check_travels_in_the_model_zip_and_still_matches_the_installed_weights(trained, tmp_path):
    import shutil

    from dgcf_auto.inference.model_loading import load_checkpoint
    from dgcf_auto.inference.model_zip import export_model, install_model

    model = tmp_path / "Dataset998_X" / "DGCFTrainer__DGCFPlans__2d"
    shutil.copytree(trained["model_folder"], model)
    source = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32)).astype(np.float32)
    mask = np.ones((2, 32, 32), np.uint8)
    entry = record_check(model, model / "fold_1" / "checkpoint_final.pth", [_Case(source, mask)], "cpu")
    export_model(model, [model / "fold_1" / "checkpoint_final.pth"], tmp_path / "m.zip")  # folds: other ViTs
    installed = install_model(tmp_path / "m.zip", results_root=tmp_path / "results")
    assert json.loads((installed / CHECK_FILE).read_text()) == json.loads((model / CHECK_FILE).read_text())
    # the zip rewrites the checkpoint files (no ViT, no optimiser), the trained tensors stay: still verified
    weights = load_checkpoint(installed / "fold_1" / "checkpoint_final.pth")["network_weights"]
    assert fold_check(installed, "fold_1", weights) == entry


def test_training_records_the_check_on_a_gpu_only(tmp_path, monkeypatch):
    """The end-of-training hook, CUDA branch included, without a GPU: record_check is stood in for."""
    from dgcf_auto.inference import precision
    from dgcf_auto.training.run import record_precision_check

    calls = []

    def fake_record(model_folder, checkpoint, cases, device):
        calls.append((model_folder, checkpoint, cases, device.type))
        return {p: {"mean_hu": 0.1, "p99_hu": 1.0} for p in ("bf16", "fp16")}

    monkeypatch.setattr(precision, "record_check", fake_record)
    fold = tmp_path / "Dataset1_X" / "DGCFTrainer__DGCFPlans__2d" / "fold_3"
    record_precision_check(fold, "cpu", ["case"])
    assert calls == []                                                         # a CPU: nothing measured
    record_precision_check(fold, torch.device("cuda", 0), ["case"])
    assert calls == [(fold.parent, fold / "checkpoint_final.pth", ["case"], "cuda")]
