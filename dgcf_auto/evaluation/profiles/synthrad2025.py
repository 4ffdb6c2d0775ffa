"""synthrad2025: MAE, PSNR and masked 3D MS-SSIM on [-1024, 3071] as the SynthRAD2025 challenge computes them.

Official code: repository SynthRAD2025/evaluation, `image_metrics.py` (class ImageMetrics, dynamic_range
[-1024, 3071], used by PSNR and MS-SSIM); the numpy reference transcription is in `evaluation/metrics.py`.
"""
from __future__ import annotations

from dgcf_auto.evaluation import metrics, ssim_fast
from dgcf_auto.evaluation.profiles.base import MetricDefinition, Profile

RANGE = metrics.HU_RANGE_SYNTHRAD2025
_R = f"[{RANGE[0]:g}, {RANGE[1]:g}]"

METRICS = {
    "mae": MetricDefinition("- (not clipped)", "body mask", "3D", "mean |CT - sCT| in HU over the mask voxels",
                            higher_is_better=False),
    "psnr": MetricDefinition(_R, "body mask", "3D", f"CT and sCT clipped to {_R}, MSE over the mask voxels, "
                             "10 log10(4095^2 / MSE) dB"),
    "ms_ssim": MetricDefinition(_R, "body mask", "3D", f"clip to {_R}, outside the mask -> -1024, shift +1024, "
                                "edge-pad to >= 97 voxels per axis; 5 scales (weights 0.0448, 0.2856, 0.3001, 0.2363, "
                                "0.1333) of L^w C^w S^w maps (7x7x7 uniform window, data range 4095) averaged over "
                                "the mask after a 3-voxel crop, 2x2x2 mean + subsampling between scales; product "
                                "of the clipped scale means"),
}


def compute(ct, sct, mask, device=None) -> dict[str, float]:
    return {"mae": metrics.mae(ct, sct, mask), "psnr": metrics.psnr(ct, sct, mask, RANGE),
            "ms_ssim": ssim_fast.ms_ssim(ct, sct, mask, RANGE, device=device)}


PROFILE = Profile("synthrad2025", "MAE, PSNR and masked MS-SSIM of the SynthRAD2025 challenge (3D, [-1024, 3071])",
                  "SynthRAD2025/evaluation image_metrics.py", METRICS, ("mae", "psnr", "ms_ssim"), compute)
