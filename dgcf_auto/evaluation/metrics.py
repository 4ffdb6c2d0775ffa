"""Image similarity metrics of the SynthRAD challenges, reimplemented from the official evaluation code.

MAE, PSNR and SSIM follow SynthRAD2023 `functions/image_metrics.py` (repo SynthRAD2023/metrics, class
`ImageMetrics`, dynamic range [-1024, 3000] HU); MS-SSIM follows SynthRAD2025 `image_metrics.py` (repo
SynthRAD2025/evaluation, masked MS-SSIM, dynamic range [-1024, 3071] HU). documentation/evaluation.md says
exactly what each function computes. Arrays are (z, y, x) numpy arrays on one voxel grid; every metric is
voxel-based (the official code ignores spacing), so no spacing is taken.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import uniform_filter
from scipy.signal import fftconvolve

HU_RANGE_SYNTHRAD2023 = (-1024.0, 3000.0)  # MAE/PSNR/SSIM
HU_RANGE_SYNTHRAD2025 = (-1024.0, 3071.0)  # MS-SSIM
SSIM_WINDOW = 7  # skimage's default uniform window, used by both challenges
SSIM_K1, SSIM_K2 = 0.01, 0.03
MS_SSIM_SCALE_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, Eq. 7
MS_SSIM_MIN_SIZE = 97  # SynthRAD2025 edge-pads every axis to at least this before the 5 levels
# Tissue classes by the reference CT (HU), inside the mask; bounds as in the issue: < -250, [-250, 250], > 250.
TISSUE_THRESHOLDS = (-250.0, 250.0)
METRIC_NAMES = ("mae", "psnr", "ssim", "ms_ssim", "mae_air", "mae_soft_tissue", "mae_bone")


def _binary_mask(mask: np.ndarray | None, shape) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    if mask.shape != tuple(shape):
        raise ValueError(f"mask shape {mask.shape} differs from image shape {tuple(shape)}")
    return np.asarray(mask) > 0


def _check_pair(ct: np.ndarray, sct: np.ndarray) -> None:
    if ct.shape != sct.shape:
        raise ValueError(f"sCT shape {sct.shape} differs from CT shape {ct.shape}")


def mae(ct: np.ndarray, sct: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean |CT - sCT| over the mask voxels, in HU, unclipped (as the official code)."""
    _check_pair(ct, sct)
    m = _binary_mask(mask, ct.shape)
    diff = np.abs(ct[m].astype(np.float64) - sct[m].astype(np.float64))
    return float(diff.mean()) if diff.size else math.nan


def tissue_mae(ct: np.ndarray, sct: np.ndarray, mask: np.ndarray | None = None,
               thresholds=TISSUE_THRESHOLDS) -> dict[str, float]:
    """MAE per tissue class of the reference CT inside the mask; NaN for an absent class."""
    _check_pair(ct, sct)
    m = _binary_mask(mask, ct.shape)
    low, high = thresholds
    ref = ct[m].astype(np.float64)  # gather the mask voxels once; classes are picked among them
    diff = np.abs(ref - sct[m].astype(np.float64))
    classes = {"mae_air": ref < low, "mae_soft_tissue": (ref >= low) & (ref <= high), "mae_bone": ref > high}
    return {name: float(diff[selected].mean()) if selected.any() else math.nan
            for name, selected in classes.items()}


def psnr(ct: np.ndarray, sct: np.ndarray, mask: np.ndarray | None = None,
         hu_range=HU_RANGE_SYNTHRAD2023) -> float:
    """10 log10(R^2 / MSE), both images clipped to `hu_range`, MSE over the mask voxels, R = range width.

    +inf when sCT equals CT on every mask voxel (the official code divides by zero there too).
    """
    _check_pair(ct, sct)
    m = _binary_mask(mask, ct.shape)
    low, high = hu_range
    a = np.clip(ct[m].astype(np.float64), low, high)
    b = np.clip(sct[m].astype(np.float64), low, high)
    if a.size == 0:
        return math.nan
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else float(10.0 * np.log10((high - low) ** 2 / mse))


def _clip_mask_shift(image: np.ndarray, m: np.ndarray, hu_range, dtype) -> np.ndarray:
    """Clip to the HU range, set outside-mask voxels to its floor, and shift by the floor only when the floor
    is negative (official order and condition: SynthRAD2023/2025 `if min(dynamic_range) < 0`; a range such
    as bone's [250, 2000] is not shifted, which changes the luminance term)."""
    low, high = hu_range
    out = np.clip(image.astype(dtype, copy=True), low, high)
    out[~m] = low
    if low < 0:
        out -= dtype(low)
    return out


def _local_statistics(x: np.ndarray, y: np.ndarray, win_size: int, spatial_dims: int | None = None):
    """Uniform-window means and sample (co)variances, as skimage.metrics.structural_similarity computes them;
    over the last `spatial_dims` axes only (default: all), e.g. 2 for a stack of independent 2D slices."""
    if not win_size % 2:
        raise ValueError(f"the SSIM window must be odd (as skimage's), got {win_size}")
    dims = x.ndim if spatial_dims is None else spatial_dims
    size = (1,) * (x.ndim - dims) + (win_size,) * dims
    n_points = win_size ** dims
    cov_norm = n_points / (n_points - 1)
    ux = uniform_filter(x, size=size)
    uy = uniform_filter(y, size=size)
    vx = cov_norm * (uniform_filter(x * x, size=size) - ux * ux)
    vy = cov_norm * (uniform_filter(y * y, size=size) - uy * uy)
    vxy = cov_norm * (uniform_filter(x * y, size=size) - ux * uy)
    return ux, uy, vx, vy, vxy


def _crop(array: np.ndarray, pad: int) -> np.ndarray:
    """skimage.util.crop(array, pad): drop `pad` voxels at both ends of every axis."""
    return array[tuple(slice(pad, dim - pad) for dim in array.shape)]


def ssim_map(x: np.ndarray, y: np.ndarray, data_range: float, win_size: int = SSIM_WINDOW,
             spatial_dims: int | None = None) -> np.ndarray:
    """The per-voxel SSIM of skimage.metrics.structural_similarity (uniform window, sample covariance), over
    the last `spatial_dims` axes (default all)."""
    dims = x.ndim if spatial_dims is None else spatial_dims
    if min(x.shape[x.ndim - dims:]) < win_size:
        raise ValueError(f"SSIM needs at least {win_size} voxels along every axis, got shape {x.shape}")
    ux, uy, vx, vy, vxy = _local_statistics(x, y, win_size, dims)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    numerator = (2 * ux * uy + c1) * (2 * vxy + c2)
    denominator = (ux * ux + uy * uy + c1) * (vx + vy + c2)
    return numerator / denominator


def ssim(ct: np.ndarray, sct: np.ndarray, mask: np.ndarray | None = None,
         hu_range=HU_RANGE_SYNTHRAD2023) -> float:
    """SynthRAD2023 SSIM: clip, background to the range floor, shift >= 0, skimage SSIM map with
    data_range = range width, then the mean of the map over mask voxels (3-voxel border cropped).

    Computed in float32 like the official code (it casts the images to float32 with SimpleITK).
    """
    _check_pair(ct, sct)
    m = _binary_mask(mask, ct.shape)
    x = _clip_mask_shift(ct, m, hu_range, np.float32)
    y = _clip_mask_shift(sct, m, hu_range, np.float32)
    values = ssim_map(x, y, data_range=hu_range[1] - hu_range[0])
    pad = (SSIM_WINDOW - 1) // 2
    if mask is None:
        return float(_crop(values, pad).mean(dtype=np.float64))
    inside = _crop(values, pad)[_crop(m, pad)]
    return float(inside.mean(dtype=np.float64)) if inside.size else math.nan


def slice_ssim(reference: np.ndarray, prediction: np.ndarray, mask: np.ndarray | None,
               value_range: tuple[float, float], chunk: int = 16) -> np.ndarray:
    """SynthRAD2023's masked SSIM of every axial (axis-0) slice on its own, in 2D: one value per slice.

    Per slice, as the DGCF authors' validation calls SynthRAD2023 `ssim(fake_B[i], real_B[i], mask[i],
    dynamic_range=(-1, 1))` (code_model/base_model.py `calclulate_metric`): clip to the range, pixels outside
    the mask to its floor, shift when the floor is negative, skimage's 7x7 SSIM map with data_range = range
    width, mean over the mask pixels with a 3-pixel border cropped. A slice with an empty mask, or with no mask
    pixel left after the crop, scores 1 (their code). Float64 (theirs runs in the images' float32).
    """
    _check_pair(reference, prediction)
    m = _binary_mask(mask, reference.shape)
    pad = (SSIM_WINDOW - 1) // 2
    values = np.ones(reference.shape[0], dtype=np.float64)
    for start in range(0, reference.shape[0], chunk):
        part = slice(start, start + chunk)
        x = _clip_mask_shift(reference[part], m[part], value_range, np.float64)
        y = _clip_mask_shift(prediction[part], m[part], value_range, np.float64)
        maps = ssim_map(x, y, value_range[1] - value_range[0], spatial_dims=2)[:, pad:-pad, pad:-pad]
        inside = m[part][:, pad:-pad, pad:-pad]
        counts = inside.sum(axis=(1, 2))
        sums = np.where(inside, maps, 0.0).sum(axis=(1, 2))
        values[part] = np.where(counts > 0, sums / np.maximum(counts, 1), 1.0)
    return values


def _lcs_map(x: np.ndarray, y: np.ndarray, data_range: float, weight: float) -> np.ndarray:
    """SynthRAD2025 `structural_similarity_at_scale`: L^w * C^w * S^w, each term clipped at 0."""
    ux, uy, vx, vy, vxy = _local_statistics(x, y, SSIM_WINDOW)
    sx = np.sqrt(np.clip(vx, 0, None))
    sy = np.sqrt(np.clip(vy, 0, None))
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    c3 = c2 / 2
    luminance = np.clip((2 * ux * uy + c1) / (ux * ux + uy * uy + c1), 0, None)
    contrast = np.clip((2 * sx * sy + c2) / (vx + vy + c2), 0, None)
    structure = np.clip((vxy + c3) / (sx * sy + c3), 0, None)
    return luminance ** weight * contrast ** weight * structure ** weight


def ms_ssim(ct: np.ndarray, sct: np.ndarray, mask: np.ndarray | None = None,
            hu_range=HU_RANGE_SYNTHRAD2025, scale_weights=MS_SSIM_SCALE_WEIGHTS) -> float:
    """SynthRAD2025 masked MS-SSIM: the product over 5 scales of (masked mean of the scale's SSIM map)^w.

    Images are clipped, set to the range floor outside the mask, shifted >= 0, edge-padded to >= 97 voxels
    per axis; between scales they are averaged over 2x2x2 (fftconvolve, 'same') and subsampled by 2, the
    mask only subsampled. As the official code (whose luminance weights end up equal to the scale weights),
    every factor L, C, S of scale k is raised to weight k. Computed in float64.
    """
    _check_pair(ct, sct)
    m = _binary_mask(mask, ct.shape)
    x = _clip_mask_shift(ct, m, hu_range, np.float64)
    y = _clip_mask_shift(sct, m, hu_range, np.float64)
    data_range = hu_range[1] - hu_range[0]
    pad_widths = [(max((MS_SSIM_MIN_SIZE - d) // 2, 0), max(MS_SSIM_MIN_SIZE - d - (MS_SSIM_MIN_SIZE - d) // 2, 0))
                  for d in x.shape]
    x, y = np.pad(x, pad_widths, mode="edge"), np.pad(y, pad_widths, mode="edge")
    m = np.pad(m, pad_widths, mode="edge")
    box = np.ones((2,) * x.ndim) / 2 ** x.ndim
    pad = (SSIM_WINDOW - 1) // 2
    factors = []
    for level, weight in enumerate(scale_weights):
        values = _lcs_map(x, y, data_range, weight)
        inside = _crop(values, pad)[_crop(m, pad)]
        factors.append(inside.mean(dtype=np.float64) if inside.size else math.nan)
        if level + 1 < len(scale_weights):  # the official code also downsamples after the last scale; unused
            x, y = (fftconvolve(im, box, mode="same")[(slice(None, None, 2),) * im.ndim] for im in (x, y))
            m = m[(slice(None, None, 2),) * m.ndim]
    return float(np.prod(np.clip(factors, 0, 1)))


def evaluate_pair(ct: np.ndarray, sct: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """All metrics of one case: mae, psnr, ssim, ms_ssim and the per-tissue MAE (keys: METRIC_NAMES)."""
    ct = np.asarray(ct)
    sct = np.asarray(sct)
    _check_pair(ct, sct)
    m = _binary_mask(mask, ct.shape)
    if not m.any():
        raise ValueError("the mask is empty")
    result = {
        "mae": mae(ct, sct, m),
        "psnr": psnr(ct, sct, m),
        "ssim": ssim(ct, sct, m),
        "ms_ssim": ms_ssim(ct, sct, m),
    }
    result.update(tissue_mae(ct, sct, m))
    return result


def summarize(per_case: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """{"mean": {metric: value}, "std": {...}, "n": {...}} over cases.

    Non-finite values (NaN for an absent tissue class, +inf PSNR of a perfect case) are left out; "n" counts
    the cases each mean covers. std is the population standard deviation (numpy's default, ddof=0).
    """
    names = list(dict.fromkeys(k for metrics in per_case.values() for k in metrics))
    out: dict[str, dict[str, float]] = {"mean": {}, "std": {}, "n": {}}
    for name in names:
        values = np.array([metrics[name] for metrics in per_case.values()
                           if name in metrics and metrics[name] is not None], dtype=np.float64)
        values = values[np.isfinite(values)]
        out["n"][name] = int(values.size)
        out["mean"][name] = float(values.mean()) if values.size else math.nan
        out["std"][name] = float(values.std()) if values.size else math.nan
    return out
