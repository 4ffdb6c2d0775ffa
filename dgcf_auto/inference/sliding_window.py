"""3D sliding-window prediction with Gaussian importance weighting (nnU-Net v2's predict_sliding_window_return_logits).

- Windows of the patch size start at `window_starts` per axis: as few as step `step` x patch allows, spread
  evenly from 0 to size - patch (nnU-Net's compute_steps_for_sliding_window; step 0.5 by default).
- Each window's prediction is weighted by `gaussian_importance`: a unit impulse at the patch centre blurred
  by scipy's gaussian_filter with sigma = patch / 8 per axis, scaled to a peak of 10, zeros replaced by the
  smallest positive weight (so no voxel has zero total weight); the volume is sum(w x p) / sum(w).
- A volume smaller than the patch along an axis is padded (centred, with `pad_value`: -1, the air value of
  both normalisations) and the padding cut off again - never refused.
- Test-time augmentation mirrors along `mirror_axes` (every non-empty combination, as nnU-Net) and averages.

Unlike nnU-Net (which accumulates in float16 and weights with a float16 Gaussian), everything accumulates in
float32, so the sCT does not carry half-precision rounding (up to about 5e-4 of the output, 0.7 HU on a
3000 HU window).
"""
from __future__ import annotations

import itertools
import queue
import threading
from functools import lru_cache

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from dgcf_auto.log import progress_bar
from dgcf_auto.network.execution import autocast

SIGMA_SCALE = 1.0 / 8
GAUSSIAN_PEAK = 10.0
DEFAULT_STEP = 0.5


@lru_cache(maxsize=4)
def _gaussian(patch: tuple[int, ...], sigma_scale: float, peak: float) -> np.ndarray:
    impulse = np.zeros(patch)
    impulse[tuple(p // 2 for p in patch)] = 1.0
    weights = gaussian_filter(impulse, [p * sigma_scale for p in patch], 0, mode="constant", cval=0)
    weights = (weights / (weights.max() / peak)).astype(np.float32)
    weights[weights == 0] = weights[weights > 0].min()
    weights.flags.writeable = False
    return weights


def gaussian_importance(patch, sigma_scale: float = SIGMA_SCALE, peak: float = GAUSSIAN_PEAK) -> np.ndarray:
    """float32 weights of the patch's voxels (see the module docstring); read-only, cached."""
    return _gaussian(tuple(int(p) for p in patch), float(sigma_scale), float(peak))


def window_starts(size, patch, step: float = DEFAULT_STEP) -> list[list[int]]:
    """Start index of every window per axis; `size` >= `patch` on every axis."""
    if not 0 < step <= 1:
        raise ValueError(f"sliding-window step {step} must be in (0, 1]")
    starts = []
    for n, p in zip(size, patch):
        if n < p:
            raise ValueError(f"volume size {tuple(size)} is smaller than the patch {tuple(patch)}; pad it first")
        count = int(np.ceil((n - p) / (p * step))) + 1
        spacing = (n - p) / (count - 1) if count > 1 else 0.0
        starts.append([int(np.round(spacing * i)) for i in range(count)])
    return starts


def pad_to_patch(volume: np.ndarray, patch, pad_value: float) -> tuple[np.ndarray, tuple[slice, ...]]:
    """(volume padded to at least the patch on every axis, centred; the slices that cut the padding off)."""
    widths = [(max(p - n, 0) // 2, max(p - n, 0) - max(p - n, 0) // 2) for n, p in zip(volume.shape, patch)]
    if not any(a or b for a, b in widths):
        return volume, tuple(slice(None) for _ in volume.shape)
    padded = np.pad(volume, widths, mode="constant", constant_values=pad_value)
    return padded, tuple(slice(a, a + n) for (a, _), n in zip(widths, volume.shape))


def mirror_combinations(mirror_axes) -> list[tuple[int, ...]]:
    """() plus every non-empty combination of the mirror axes (volume axes 0..2), as tensor dims (+2)."""
    dims = [int(a) + 2 for a in mirror_axes]
    return [()] + [c for k in range(1, len(dims) + 1) for c in itertools.combinations(dims, k)]


@torch.inference_mode()
def predict_sliding_window(networks: list[torch.nn.Module], volume: np.ndarray, patch, device,
                           step: float = DEFAULT_STEP, mirror_axes=(), batch_size: int = 1,
                           dtype: torch.dtype | None = None, pad_value: float = -1.0, with_std: bool = False,
                           desc: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean (and std) over networks x mirrorings of the Gaussian-blended prediction of a (Z, Y, X) volume.

    `batch_size` windows go through each network at once. The std is the spread over the passes (networks x
    mirrorings) of each window, blended over the windows with the same Gaussian weights (its variance is)."""
    device = torch.device(device)
    patch = tuple(int(p) for p in patch)
    padded, unpad = pad_to_patch(np.asarray(volume, np.float32), patch, pad_value)
    weights = torch.from_numpy(np.array(gaussian_importance(patch))).to(device)
    starts = list(itertools.product(*window_starts(padded.shape, patch, step)))
    data = torch.from_numpy(np.ascontiguousarray(padded)).to(device)
    total = torch.zeros(padded.shape, dtype=torch.float32, device=device)
    total_var = torch.zeros_like(total) if with_std else None
    weight_sum = torch.zeros_like(total)
    flips = mirror_combinations(mirror_axes)
    bar = progress_bar(total=len(starts), desc=desc, unit="patch", leave=False, disable=desc is None)
    for windows, x in _prefetched_windows(data, starts, patch, batch_size):
        mean, variance = _passes(networks, x, flips, device, dtype, with_std)
        for i, w in enumerate(windows):
            total[w] += mean[i] * weights
            weight_sum[w] += weights
            if total_var is not None:
                total_var[w] += variance[i] * weights
        bar.update(len(windows))
    bar.close()
    mean = (total / weight_sum)[unpad]
    std = None
    if total_var is not None:
        std = torch.sqrt((total_var / weight_sum)[unpad]).cpu().numpy()
    return mean.cpu().numpy().astype(np.float32, copy=False), std


def _prefetched_windows(data: torch.Tensor, starts, patch, batch_size: int):
    """(window slices, (B, 1, *patch) input) per batch, cut by a background thread one or two batches ahead
    of the network (measured: on a loaded 2-core CPU the forward passes run up to 2x faster this way)."""
    batches: queue.Queue = queue.Queue(maxsize=2)

    def cut() -> None:
        try:
            for first in range(0, len(starts), batch_size):
                windows = [tuple(slice(s, s + p) for s, p in zip(start, patch))
                           for start in starts[first:first + batch_size]]
                batches.put((windows, torch.stack([data[w] for w in windows])[:, None]))
        finally:
            batches.put(None)

    worker = threading.Thread(target=cut, daemon=True)
    worker.start()
    while (item := batches.get()) is not None:
        yield item
    worker.join()


def _passes(networks, x, flips, device, dtype, with_std):
    """(mean, variance) over networks x mirrorings of one batch of windows, (B, Z, Y, X) float32."""
    total, total_sq = None, None
    for network in networks:
        for dims in flips:
            with autocast(device, dtype):
                out = network(torch.flip(x, dims) if dims else x)
            out = out.float()
            out = (torch.flip(out, dims) if dims else out)[:, 0]
            total = out if total is None else total + out
            if with_std:
                total_sq = out * out if total_sq is None else total_sq + out * out
    n = len(networks) * len(flips)
    mean = total / n
    return mean, (torch.clamp(total_sq / n - mean * mean, min=0.0) if with_std else None)
