"""dgcf-paper: the SSIM and PSNR columns that the DGCF authors' released evaluation writes.

Facts read in HiLab-git/DGCF (commit a65163e): `evaluation.py` calls `calculate_folder_SynthRAD2023` of
`code_util/metrics/calculate.py` with `file_config/evaluation.json` (metric_names ["SSIM", "PSNR"],
dynamic_range [-1024, 2000], class_range [[-1024,-250], [-250,250], [250,2000]]). There, "SSIM" is the
SynthRAD2025 masked 3D MS-SSIM (`image_similarity/SynthRAD2025.py: ms_ssim`, the range passed in) and "PSNR"
SynthRAD2023's PSNR with `use_population_range=True` (clip to the range passed in, data range = its width).
Each case gets five columns per metric, numbered in this order:
  1-3  the HU classes of the reference CT (whole image, NOT intersected with the body mask), each on its own
       class range; class k holds lo_k <= CT <= hi_k, a later class wins at a shared bound, CT below -1024
       joins class 1 and CT above 2000 class 3 (`generateSegMask` with nonzero=True), i.e. CT < -250,
       -250 <= CT < 250, CT >= 250;
  4    the body mask, on this case's own CT range inside the mask (min, max of the reference CT there);
  5    no mask (whole image) on [-1024, 2000].
Where the authors' code silently falls back (an absent class is evaluated on the whole image, a failed
metric becomes 0), we write null instead. documentation/evaluation.md says which column Table 1 most likely
reports.
"""
from __future__ import annotations

import math

import numpy as np

from dgcf_auto.evaluation import metrics, ssim_fast
from dgcf_auto.evaluation.profiles.base import MetricDefinition, Profile

FULL_RANGE = (-1024.0, 2000.0)
CLASS_RANGES = {"air": (-1024.0, -250.0), "soft_tissue": (-250.0, 250.0), "bone": (250.0, 2000.0)}
_MS_SSIM = ("SynthRAD2025 masked 3D MS-SSIM (5 scales, 7x7x7 uniform window) with the images clipped to the "
            "range, voxels outside the mask set to its floor, data range = range width")
_PSNR = "CT and sCT clipped to the range, MSE over the mask voxels, 10 log10(width^2 / MSE) dB"
_CLASS_MASK = {"air": "reference CT < -250 HU (whole image, no body mask)",
               "soft_tissue": "-250 <= reference CT < 250 HU (whole image, no body mask)",
               "bone": "reference CT >= 250 HU (whole image, no body mask)"}


def _definitions() -> dict[str, MetricDefinition]:
    out = {}
    columns = [("full", f"[{FULL_RANGE[0]:g}, {FULL_RANGE[1]:g}]", "none (whole image)", 5),
               ("body", "this case's reference CT [min, max] inside the body mask", "body mask", 4)]
    columns += [(name, f"[{lo:g}, {hi:g}]", _CLASS_MASK[name], index + 1)
                for index, (name, (lo, hi)) in enumerate(CLASS_RANGES.items())]
    for suffix, hu_range, mask, column in columns:
        out[f"ms_ssim_{suffix}"] = MetricDefinition(hu_range, mask, "3D", f"{_MS_SSIM} (authors' column SSIM_{column})")
        out[f"psnr_{suffix}"] = MetricDefinition(hu_range, mask, "3D", f"{_PSNR} (authors' column PSNR_{column})")
    return out


def hu_class(ct: np.ndarray, name: str) -> np.ndarray:
    """The authors' class mask `name` of the reference CT (see the module docstring)."""
    if name == "air":
        return ct < -250
    if name == "soft_tissue":
        return (ct >= -250) & (ct < 250)
    return ct >= 250


def _pair(ct, sct, mask, hu_range, device) -> tuple[float, float]:
    if hu_range[1] <= hu_range[0]:  # a constant CT inside the mask: no dynamic range
        return math.nan, math.nan
    return (ssim_fast.ms_ssim(ct, sct, mask, hu_range, device=device), metrics.psnr(ct, sct, mask, hu_range))


def compute(ct, sct, mask, device=None) -> dict[str, float]:
    result: dict[str, float] = {}
    result["ms_ssim_full"], result["psnr_full"] = _pair(ct, sct, None, FULL_RANGE, device)
    if mask is not None and np.any(mask):
        inside = ct[np.asarray(mask) > 0]
        own = (float(inside.min()), float(inside.max()))
        result["ms_ssim_body"], result["psnr_body"] = _pair(ct, sct, mask, own, device)
    else:
        result["ms_ssim_body"] = result["psnr_body"] = math.nan
    for name in CLASS_RANGES:  # one class mask at a time: memory
        selected = hu_class(ct, name)
        if selected.any():
            result[f"ms_ssim_{name}"], result[f"psnr_{name}"] = _pair(ct, sct, selected, CLASS_RANGES[name], device)
        else:
            result[f"ms_ssim_{name}"] = result[f"psnr_{name}"] = math.nan
    return result


PROFILE = Profile("dgcf-paper", "the DGCF authors' released evaluation: MS-SSIM ('SSIM') and PSNR without mask on "
                  "[-1024, 2000], in the body mask on the case's own CT range, and per HU class",
                  "HiLab-git/DGCF code_util/metrics/calculate.py (calculate_folder_SynthRAD2023) with "
                  "file_config/evaluation.json", _definitions(), ("ms_ssim_body", "psnr_body"), compute)
