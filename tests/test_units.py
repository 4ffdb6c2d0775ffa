"""Metric tables print units: dgcf_evaluate / dgcf_demo (format_table), dgcf_compare and the model README."""
from __future__ import annotations


def _summary():
    metrics = {"mae": 61.5, "psnr": 27.25, "ssim": 0.875, "mae_bone": 210.0, "gamma_photon": 98.5,
               "dose_mae_target_photon": 0.0125, "dvh_photon": 0.25}
    return {"metric_per_case": [{"case": "1PA001", "metrics": metrics}], "mean": metrics,
            "std": {k: 0.0 for k in metrics},
            "profile": {"name": "synthrad2023", "metrics": {"mae": {}, "psnr": {}, "ssim": {}, "mae_bone": {}}}}


def test_evaluate_table_header_carries_units():
    from dgcf_auto.evaluation.evaluate import format_table

    lines = format_table(_summary()).splitlines()
    assert lines[0].split() == ["case", "mae", "(HU)", "psnr", "(dB)", "ssim", "mae_bone", "(HU)",
                                "gamma_photon", "(%)", "dose_mae_target_photon", "(×", "Rx)", "dvh_photon",
                                "(relative)"]
    assert lines[1].split() == ["1PA001", "61.5000", "27.2500", "0.8750", "210.0000", "98.5000", "0.0125",
                                "0.2500"]


def test_compare_headers_carry_units():
    from dgcf_auto.evaluation.compare import metric_header

    assert [metric_header(m) for m in ("mae", "psnr", "ssim", "ms_ssim_body", "hd95", "gamma_proton",
                                       "dose_mae_target_proton", "segscore")] == [
        "mae (HU)", "psnr (dB)", "ssim (%)", "ms_ssim_body (%)", "hd95 (mm)", "gamma_proton (%)",
        "dose_mae_target_proton (× Rx)", "segscore (%)"]
