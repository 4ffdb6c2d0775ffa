"""synthrad2023 (default): MAE, PSNR and SSIM as the SynthRAD2023 challenge computes them, plus our per-tissue MAE.

Official code: repository SynthRAD2023/metrics, `functions/image_metrics.py` (class ImageMetrics,
dynamic_range [-1024, 3000]); the numpy reference transcription is in `evaluation/metrics.py`.
"""
from __future__ import annotations

from dgcf_auto.evaluation import metrics, ssim_fast
from dgcf_auto.evaluation.profiles.base import MetricDefinition, Profile

RANGE = metrics.HU_RANGE_SYNTHRAD2023
_R = f"[{RANGE[0]:g}, {RANGE[1]:g}]"
_TISSUE = ("MAE over the body mask restricted to voxels whose reference CT is {}; null when no voxel is "
           "(ours, not a challenge metric)")

METRICS = {
    "mae": MetricDefinition("- (not clipped)", "body mask", "3D", "mean |CT - sCT| in HU over the mask voxels",
                            higher_is_better=False),
    "psnr": MetricDefinition(_R, "body mask", "3D", f"CT and sCT clipped to {_R}, MSE over the mask voxels, "
                             "10 log10(4024^2 / MSE) dB"),
    "ssim": MetricDefinition(_R, "body mask", "3D", f"clip to {_R}, voxels outside the mask set to -1024, shift "
                             "by +1024, skimage SSIM map (7x7x7 uniform window, sample covariance, data range "
                             "4024), mean over the mask voxels after a 3-voxel border crop"),
    "mae_air": MetricDefinition("- (not clipped)", "body mask and CT < -250 HU", "3D", _TISSUE.format("< -250 HU"),
                                higher_is_better=False),
    "mae_soft_tissue": MetricDefinition("- (not clipped)", "body mask and -250 <= CT <= 250 HU", "3D",
                                        _TISSUE.format("in [-250, 250] HU"), higher_is_better=False),
    "mae_bone": MetricDefinition("- (not clipped)", "body mask and CT > 250 HU", "3D", _TISSUE.format("> 250 HU"),
                                 higher_is_better=False),
}


def compute(ct, sct, mask, device=None) -> dict[str, float]:
    result = {"mae": metrics.mae(ct, sct, mask), "psnr": metrics.psnr(ct, sct, mask, RANGE),
              "ssim": ssim_fast.ssim(ct, sct, mask, RANGE, device=device)}
    result.update(metrics.tissue_mae(ct, sct, mask))
    return result


PROFILE = Profile("synthrad2023", "MAE, PSNR and SSIM of the SynthRAD2023 challenge (masked, 3D) and per-tissue MAE",
                  "SynthRAD2023/metrics functions/image_metrics.py", METRICS, ("mae", "psnr", "ssim"), compute)
