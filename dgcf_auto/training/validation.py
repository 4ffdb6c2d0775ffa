"""Validation during training: whole validation volumes, predicted slice by slice, scored in HU.

Scored on the preprocessed slice grid (not resampled back to the original geometry: that is the
predictor's job and too slow for every few epochs), with the SynthRAD2023 definitions of
`dgcf_auto.evaluation.metrics`: MAE in HU and PSNR over [-1024, 3000] HU, both inside the body mask, and
the authors' validation SSIM (`--best_metric ssim`): the masked 2D SSIM of each normalised slice on the
range [-1, 1] (`metrics.slice_ssim`), averaged over every validation slice. Theirs averages per-batch means
(batches of 4 slices), the same number whenever a case's slice count is a multiple of 4.
"""
from __future__ import annotations

import numpy as np
import torch

from dgcf_auto.evaluation import metrics
from dgcf_auto.network.execution import predict_slice_stack
from dgcf_auto.plans import configuration_plans
from dgcf_auto.training.dataloading import CaseArrays


def validate_cases(network: torch.nn.Module, cases: list[CaseArrays], plans: dict, device: torch.device,
                   batch_size: int, dtype: torch.dtype | None, predict=None) -> dict:
    """Mean over cases of MAE (HU) and PSNR (dB) in the body mask, mean over all slices of the 2D SSIM;
    per-case values too. `predict`: normalised source array -> normalised sCT (default: slice by slice;
    the 3D trainer passes its sliding window)."""
    from dgcf_auto.preprocessing.normalization import ct_window, denormalize_ct

    low, high = ct_window(plans)
    slab_size = configuration_plans(plans).slab_size  # 2.5d: each slice predicted from its slab
    was_training = network.training
    network.eval()
    per_case, slice_ssims = {}, []
    try:
        for case in cases:
            if predict is None:
                prediction, _ = predict_slice_stack([network], case.source, device, batch_size, dtype,
                                                    slab_size=slab_size)
            else:
                prediction = predict(np.asarray(case.source, dtype=np.float32))
            sct_hu = denormalize_ct(prediction, low, high)
            ct_hu = denormalize_ct(np.asarray(case.ct, dtype=np.float32), low, high)
            mask = np.asarray(case.mask) > 0
            ssims = metrics.slice_ssim(np.asarray(case.ct, dtype=np.float32), prediction, mask, (-1.0, 1.0))
            slice_ssims.append(ssims)
            per_case[case.name] = {"mae": metrics.mae(ct_hu, sct_hu, mask),
                                   "psnr": metrics.psnr(ct_hu, sct_hu, mask), "ssim": float(ssims.mean())}
    finally:
        network.train(was_training)
    scored = [v for v in per_case.values() if np.isfinite(v["mae"])]
    return {"mae": float(np.mean([v["mae"] for v in scored])) if scored else float("nan"),
            "psnr": float(np.mean([min(v["psnr"], 100.0) for v in scored])) if scored else float("nan"),
            "ssim": float(np.concatenate(slice_ssims).mean()) if slice_ssims else float("nan"),
            "per_case": per_case}
