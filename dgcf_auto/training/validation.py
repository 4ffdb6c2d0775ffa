"""Validation during training: whole validation volumes, predicted slice by slice, scored in HU.

Scored on the preprocessed slice grid (not resampled back to the original geometry: that is the
predictor's job and too slow for every few epochs), with the SynthRAD2023 definitions of
`dgcf_auto.evaluation.metrics`: MAE in HU and PSNR over [-1024, 3000] HU, both inside the body mask.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from dgcf_auto.evaluation import metrics
from dgcf_auto.training.dataloading import CaseArrays


@torch.no_grad()
def predict_slices(network: torch.nn.Module, source: np.ndarray, device: torch.device,
                   batch_size: int, autocast: bool) -> np.ndarray:
    """(S, H, W) normalised source -> (S, H, W) float32 prediction in the network's [-1, 1] CT range."""
    out = np.empty(source.shape, dtype=np.float32)
    for start in range(0, len(source), batch_size):
        x = torch.from_numpy(np.array(source[start:start + batch_size], dtype=np.float32))  # a copy: mmap is read-only
        x = x[:, None].to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with ctx:
            y = network(x)
        out[start:start + len(x)] = y[:, 0].float().cpu().numpy()
    return out


def validate_cases(network: torch.nn.Module, cases: list[CaseArrays], plans: dict, device: torch.device,
                   batch_size: int, autocast: bool) -> dict:
    """Mean over cases of MAE (HU) and PSNR (dB) in the body mask; per-case values too."""
    from dgcf_auto.preprocessing.normalization import ct_window, denormalize_ct

    low, high = ct_window(plans)
    was_training = network.training
    network.eval()
    per_case = {}
    try:
        for case in cases:
            prediction = predict_slices(network, case.source, device, batch_size, autocast)
            sct_hu = denormalize_ct(prediction, low, high)
            ct_hu = denormalize_ct(np.asarray(case.ct, dtype=np.float32), low, high)
            mask = np.asarray(case.mask) > 0
            per_case[case.name] = {"mae": metrics.mae(ct_hu, sct_hu, mask),
                                   "psnr": metrics.psnr(ct_hu, sct_hu, mask)}
    finally:
        network.train(was_training)
    scored = [v for v in per_case.values() if np.isfinite(v["mae"])]
    return {"mae": float(np.mean([v["mae"] for v in scored])) if scored else float("nan"),
            "psnr": float(np.mean([min(v["psnr"], 100.0) for v in scored])) if scored else float("nan"),
            "per_case": per_case}
