"""The newcomer path: `dgcf_demo` end to end on tiny settings (real ViT-B/16 shapes, 32x32 slices)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from dgcf_auto.cli.demo import main


def test_demo_runs_end_to_end(tmp_path, monkeypatch, capsys):
    for variable in ("DGCF_raw", "DGCF_preprocessed", "DGCF_results"):
        monkeypatch.setenv(variable, str(tmp_path / "user_data" / variable))  # the demo must not use these
    out = tmp_path / "demo"
    with pytest.raises(SystemExit) as exit_info:
        main(["-o", str(out), "--cases", "5", "--epochs", "1", "--iterations-per-epoch", "2",
              "--patch-size", "32", "32", "--features", "8", "16", "32", "64", "-device", "cpu",
              "--skip_dose"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr()
    assert "RANDOMLY" in printed.err
    assert "mean" in printed.out and "mae" in printed.out

    summary = json.loads((out / "summary.json").read_text())
    (row,) = summary["metric_per_case"]  # 5 cases, 7:1:2 -> 1 test case
    case = row["case"]
    sct = sitk.ReadImage(str(out / "predictions" / f"{case}.nii.gz"))
    # The reported MAE is mean |CT - sCT| over the mask, recomputed here from the files the demo wrote.
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(next((out / "test_cases" / case).glob("ct.*"))))).astype(float)
    body = sitk.GetArrayFromImage(sitk.ReadImage(str(next((out / "test_cases" / case).glob("mask.*"))))) > 0
    mae = np.abs(ct - sitk.GetArrayFromImage(sct).astype(float))[body].mean()
    assert summary["mean"]["mae"] == pytest.approx(mae, rel=1e-6) and row["metrics"]["mae"] == summary["mean"]["mae"]
    source = sitk.ReadImage(str(next((out / "test_cases" / case).glob("cbct.*"))))
    assert sct.GetSize() == source.GetSize() and sct.GetDirection() == source.GetDirection()
    assert sitk.GetArrayViewFromImage(sct).dtype == np.int16
    assert (out / "figures" / f"{case}.png").stat().st_size > 10_000
    assert "dose" not in summary  # --skip_dose: tests/test_dose.py covers the dose evaluation on example data
    fold = out / "DGCF_results" / "Dataset999_ExampleCBCT" / "DGCFTrainer__DGCFPlans__2d" / "fold_0"
    assert {"checkpoint_final.pth", "progress.png", "training_config.json"} <= {p.name for p in fold.iterdir()}
    assert not (tmp_path / "user_data").exists()
    assert printed.err.count("RANDOMLY INITIALISED") == 1  # encoder, trainer and predictor say it once
    assert "--c given" not in printed.err

    # A rerun trains afresh with its own --epochs (it used to resume the old run and ignore them).
    with pytest.raises(SystemExit) as exit_info:
        main(["-o", str(out), "--cases", "5", "--epochs", "2", "--iterations_per_epoch", "1",
              "--patch_size", "32", "32", "--features", "8", "16", "32", "64", "-device", "cpu"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 0, err
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    assert final["logger"]["history"]["epoch"] == [0, 1] and final["dataloader_state"]["batches_done"] == [2]
    assert "--c given" not in err and "continuing from" not in err
