"""dgcf_auto.evaluation.metrics, function by function, against values computed independently of it.

The oracles: SynthRAD2023 `functions/image_metrics.py` and SynthRAD2025 `image_metrics.py` (their recipes,
written out here with numpy), scikit-image's structural_similarity / peak_signal_noise_ratio where they define
the same thing, brute-force window statistics (sliding windows, numpy's var/cov), and hand-computed voxels.
Arrays are tiny and mostly 2-D, so the whole file runs in about a second: benchmarks/mutation.py runs it once
per mutant of metrics.py (fastest, most sensitive tests first; pytest -x stops at the first failure).
"""
from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dgcf_auto.evaluation import metrics


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    """An empty selection must give NaN by design, not by a numpy 'mean of empty slice' warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def pattern(shape, seed=0, scale=700.0):
    """Smooth deterministic HU-like content plus a little seeded noise (reaches beyond [-1024, 3071])."""
    grids = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    value = 400.0 + scale * np.sin(grids[-1] / 2.3 + 0.4) * np.cos(grids[-2] / 3.1)
    for k, g in enumerate(grids[:-2]):
        value += 90.0 * np.cos(g / (1.7 + k))
    value += np.random.default_rng(seed).normal(0.0, 60.0, shape)
    return value


def window_stats(x, y, win):
    """Mean, sample variances and covariance over every win^d window (borders mirrored as scipy's 'reflect'),
    by direct summation over sliding windows."""
    d = x.ndim
    px, py = (np.pad(a, win // 2, mode="symmetric") for a in (x, y))
    wx, wy = (sliding_window_view(p, (win,) * d) for p in (px, py))
    axes = tuple(range(d, 2 * d))
    ux, uy = wx.mean(axis=axes), wy.mean(axis=axes)
    vx, vy = wx.var(axis=axes, ddof=1), wy.var(axis=axes, ddof=1)
    centred = (wx - ux.reshape(ux.shape + (1,) * d)) * (wy - uy.reshape(uy.shape + (1,) * d))
    vxy = centred.sum(axis=axes) / (win ** d - 1)
    return ux, uy, vx, vy, vxy


def official_prepare(image, mask, hu_range):
    """SynthRAD: clip to the range, floor outside the mask, subtract the floor when it is negative."""
    low, high = hu_range
    out = np.clip(np.asarray(image, dtype=np.float64), low, high)
    if mask is not None:
        out = np.where(mask > 0, out, low)
    return out - low if low < 0 else out


def halve(a):
    """SynthRAD2025's fftconvolve(a, ones(2,..)/2^d, 'same')[::2, ..]: out[i] = mean(a[i-1], a[i]) per axis,
    a[-1] = 0, written as a zero-padded box sum."""
    p = np.pad(a, [(1, 0)] * a.ndim)
    total = sum(p[tuple(slice(o, o + n) for o, n in zip(offset, a.shape))]
                for offset in itertools.product((0, 1), repeat=a.ndim))
    return (total / 2 ** a.ndim)[(slice(None, None, 2),) * a.ndim]


def ms_ssim_by_definition(ct, sct, mask, hu_range, weights, brute_force=True):
    """SynthRAD2025 masked MS-SSIM written from its definition: prepare, edge-pad to 97 per axis, per scale the
    mean over the cropped mask of L^w C^w S^w (terms clipped at 0), product of the factors clipped to [0, 1].
    brute_force=False takes the per-scale SSIM map from skimage (equal to L*C*S where S >= 0)."""
    x, y = official_prepare(ct, mask, hu_range), official_prepare(sct, mask, hu_range)
    m = np.ones(x.shape, bool) if mask is None else mask > 0
    widths = [(max(97 - n, 0) // 2, max(97 - n, 0) - max(97 - n, 0) // 2) for n in x.shape]
    x, y, m = (np.pad(a, widths, mode="edge") for a in (x, y, m))
    r = hu_range[1] - hu_range[0]
    c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
    result = 1.0
    for w in weights:
        if brute_force:
            ux, uy, vx, vy, vxy = window_stats(x, y, 7)
            sx, sy = np.sqrt(np.maximum(vx, 0)), np.sqrt(np.maximum(vy, 0))
            lum = np.maximum((2 * ux * uy + c1) / (ux ** 2 + uy ** 2 + c1), 0)
            con = np.maximum((2 * sx * sy + c2) / (vx + vy + c2), 0)
            struct = np.maximum((vxy + c2 / 2) / (sx * sy + c2 / 2), 0)
            term = lum ** w * con ** w * struct ** w
        else:
            term = structural_similarity(x, y, data_range=r, full=True)[1] ** w
        inner = (slice(3, -3),) * x.ndim
        result *= min(max(term[inner][m[inner]].mean(), 0.0), 1.0)
        x, y, m = halve(x), halve(y), m[(slice(None, None, 2),) * m.ndim]
    return result


# ---------------------------------------------------------------- constants and small helpers (fastest)

def test_official_constants():
    assert metrics.HU_RANGE_SYNTHRAD2023 == (-1024.0, 3000.0)
    assert metrics.HU_RANGE_SYNTHRAD2025 == (-1024.0, 3071.0)
    assert metrics.SSIM_WINDOW == 7
    assert (metrics.SSIM_K1, metrics.SSIM_K2) == (0.01, 0.03)
    assert metrics.MS_SSIM_SCALE_WEIGHTS == (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    assert metrics.MS_SSIM_MIN_SIZE == 97
    assert metrics.TISSUE_THRESHOLDS == (-250.0, 250.0)
    assert metrics.METRIC_NAMES == ("mae", "psnr", "ssim", "ms_ssim", "mae_air", "mae_soft_tissue", "mae_bone")


def test_binary_mask_and_shape_checks():
    full = metrics._binary_mask(None, [2, 3])
    assert full.dtype == bool and full.shape == (2, 3) and full.all()
    mask = np.array([[-1.0, 0.0, 0.5], [2.0, 1e-9, -0.0]])
    np.testing.assert_array_equal(metrics._binary_mask(mask, (2, 3)), [[False, False, True], [True, True, False]])
    with pytest.raises(ValueError, match=r"mask shape \(2, 3\) differs from image shape \(3, 2\)"):
        metrics._binary_mask(mask, (3, 2))
    with pytest.raises(ValueError, match=r"mask shape \(3, 2\) differs from image shape \(2, 3\)"):
        metrics._binary_mask(mask.T, (2, 3))
    metrics._check_pair(np.zeros((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"sCT shape \(3, 2\) differs from CT shape \(2, 3\)"):
        metrics._check_pair(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"sCT shape \(2, 3\) differs from CT shape \(3, 2\)"):
        metrics._check_pair(np.zeros((3, 2)), np.zeros((2, 3)))


def test_mae_by_hand():
    ct = np.array([[100, -2000, 5], [7, 3500, 0]], dtype=np.int16)
    sct = np.array([[110, -1000, 9], [7, 2900, 40]], dtype=np.int16)
    mask = np.array([[1, 1, 0], [0, 1, 2]], dtype=np.uint8)
    assert metrics.mae(ct, sct, mask) == pytest.approx((10 + 1000 + 600 + 40) / 4, rel=1e-15)  # not clipped
    assert metrics.mae(ct, sct) == pytest.approx((10 + 1000 + 4 + 0 + 600 + 40) / 6, rel=1e-15)
    a, b = np.array([[10, 0]], np.uint8), np.array([[20, 1]], np.uint8)  # no wrap-around in uint8
    assert metrics.mae(a, b) == 5.5
    assert math.isnan(metrics.mae(ct, sct, np.zeros(ct.shape)))


def test_tissue_mae_default_bounds_belong_to_soft_tissue():
    ct = np.array([[-800.0, -250.0, 0.0, 250.0, 250.5, 1000.0, 40.0, -250.5]])
    sct = ct + np.array([[10.0, 20.0, 30.0, 40.0, 50.0, 70.0, 999.0, 4.0]])
    mask = np.array([[1, 1, 1, 1, 1, 1, 0, 1]])
    result = metrics.tissue_mae(ct, sct, mask)
    assert list(result) == ["mae_air", "mae_soft_tissue", "mae_bone"]
    assert result == {"mae_air": 7.0, "mae_soft_tissue": 30.0, "mae_bone": 60.0}
    assert metrics.tissue_mae(ct, sct)["mae_soft_tissue"] == pytest.approx((20 + 30 + 40 + 999) / 4)


def test_tissue_mae_own_thresholds_and_absent_class():
    ct = np.array([[-1.0, 0.0, 50.0, 100.0, 101.0]])
    sct = ct - np.array([[1.0, 2.0, 4.0, 8.0, 16.0]])
    assert metrics.tissue_mae(ct, sct, thresholds=(0.0, 100.0)) == {
        "mae_air": 1.0, "mae_soft_tissue": 14.0 / 3, "mae_bone": 16.0}
    no_bone = metrics.tissue_mae(ct[:, :4], sct[:, :4], thresholds=(0.0, 100.0))
    assert math.isnan(no_bone["mae_bone"]) and no_bone["mae_air"] == 1.0
    empty = metrics.tissue_mae(ct, sct, np.zeros(ct.shape))
    assert all(math.isnan(v) for v in empty.values())


def test_psnr_by_hand_with_clipping_and_own_range():
    ct = np.array([[100.0, 3500.0, -2000.0, 0.0]])
    sct = np.array([[110.0, 2900.0, -1000.0, 777.0]])
    mask = np.array([[1, 1, 1, 0]])
    mse = (10 ** 2 + 100 ** 2 + 24 ** 2) / 3  # clipped to [-1024, 3000]: 3000 - 2900, -1024 - (-1000)
    assert metrics.psnr(ct, sct, mask) == pytest.approx(10 * math.log10(4024 ** 2 / mse), rel=1e-14)
    own = (-100.0, 200.0)  # no mask: errors 10, 200 - 200, -100 - (-100), 200 - 0
    mse_own = (10 ** 2 + 0 + 0 + 200 ** 2) / 4
    assert metrics.psnr(ct, sct, hu_range=own) == pytest.approx(10 * math.log10(300 ** 2 / mse_own), rel=1e-14)
    lo_hi = (50.0, 120.0)  # both ends positive
    assert metrics.psnr(ct, sct, mask, lo_hi) == pytest.approx(10 * math.log10(70 ** 2 / (10 ** 2 / 3)), rel=1e-14)


def test_psnr_agrees_with_skimage_single_voxel_perfect_and_empty():
    ct, sct = pattern((5, 6)), pattern((5, 6), seed=1)
    mask = ct > 600
    low, high = -300.0, 900.0
    expected = peak_signal_noise_ratio(np.clip(ct[mask], low, high), np.clip(sct[mask], low, high),
                                       data_range=high - low)
    assert metrics.psnr(ct, sct, mask, (low, high)) == pytest.approx(expected, rel=1e-13)
    one = np.zeros(ct.shape, bool)
    one[2, 3] = True
    error = abs(np.clip(ct[2, 3], -1024, 3000) - np.clip(sct[2, 3], -1024, 3000))
    assert metrics.psnr(ct, sct, one) == pytest.approx(10 * math.log10(4024 ** 2 / error ** 2), rel=1e-13)
    same_inside = np.where(mask, ct, ct + 50)
    assert metrics.psnr(ct, same_inside, mask) == math.inf
    assert metrics.psnr(ct, same_inside) < math.inf
    assert math.isnan(metrics.psnr(ct, sct, np.zeros(ct.shape)))


def test_summarize():
    per_case = {"a": {"mae": 10.0, "mae_bone": math.nan, "psnr": math.inf, "x": None},
                "b": {"mae": 20.0, "mae_bone": 4.0, "psnr": 30.0}, "c": {"mae": 30.0, "psnr": 36.0, "x": None}}
    out = metrics.summarize(per_case)
    assert list(out) == ["mean", "std", "n"]
    assert list(out["mean"]) == ["mae", "mae_bone", "psnr", "x"]
    assert out["n"] == {"mae": 3, "mae_bone": 1, "psnr": 2, "x": 0}
    assert out["mean"]["mae"] == 20.0 and out["std"]["mae"] == pytest.approx(math.sqrt(200 / 3), rel=1e-15)
    assert out["mean"]["mae_bone"] == 4.0 and out["std"]["mae_bone"] == 0.0
    assert out["mean"]["psnr"] == 33.0 and out["std"]["psnr"] == 3.0
    assert math.isnan(out["mean"]["x"]) and math.isnan(out["std"]["x"])
    assert metrics.summarize({}) == {"mean": {}, "std": {}, "n": {}}


def test_crop_and_clip_mask_shift():
    a = np.arange(9 * 10 * 11).reshape(9, 10, 11)
    np.testing.assert_array_equal(metrics._crop(a, 2), a[2:7, 2:8, 2:9])
    np.testing.assert_array_equal(metrics._crop(a, 0), a)
    image = np.array([[-3000.0, -100.0, 0.0, 150.0], [250.0, 999.0, 2500.0, -50.0]])
    m = np.array([[True, True, True, False], [True, True, True, True]])
    before = image.copy()
    shifted = metrics._clip_mask_shift(image, m, (-100.0, 2000.0), np.float32)
    assert shifted.dtype == np.float32
    np.testing.assert_array_equal(shifted, [[0.0, 0.0, 100.0, 0.0], [350.0, 1099.0, 2100.0, 50.0]])
    np.testing.assert_array_equal(image, before)  # the input is left alone
    bone = metrics._clip_mask_shift(image, m, (250.0, 2000.0), np.float64)  # positive floor: not shifted
    assert bone.dtype == np.float64
    np.testing.assert_array_equal(bone, [[250.0, 250.0, 250.0, 250.0], [250.0, 999.0, 2000.0, 250.0]])


def test_local_statistics_brute_force():
    x, y = pattern((9, 10, 8)), pattern((9, 10, 8), seed=3)
    for got, want in zip(metrics._local_statistics(x, y, 3), window_stats(x, y, 3)):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-6)
    x2, y2 = pattern((12, 11)), pattern((12, 11), seed=4)
    for got, want in zip(metrics._local_statistics(x2, y2, 5), window_stats(x2, y2, 5)):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-6)
    for even in (4, 6):  # skimage refuses even windows; so do we
        with pytest.raises(ValueError, match=f"the SSIM window must be odd \\(as skimage's\\), got {even}"):
            metrics._local_statistics(x, y, even)
    x4, y4 = pattern((2, 3, 6, 7)), pattern((2, 3, 6, 7), seed=2)
    for a, b, dims in [(x[:3], y[:3], 2), (x4, y4, 2), (x2, y2, 1)]:  # over the last `dims` axes only
        stack = metrics._local_statistics(a, b, 5, spatial_dims=dims)
        for lead in np.ndindex(a.shape[:a.ndim - dims]):
            for got, want in zip(stack, window_stats(a[lead], b[lead], 5)):
                np.testing.assert_allclose(got[lead], want, rtol=1e-9, atol=1e-6)


def test_ssim_map_is_skimage():
    x, y = pattern((8, 9, 10)) + 1024, pattern((8, 9, 10), seed=5) + 1024
    _, want = structural_similarity(x, y, data_range=3000.0, full=True)
    np.testing.assert_allclose(metrics.ssim_map(x, y, 3000.0), want, rtol=1e-10, atol=1e-12)
    _, want5 = structural_similarity(x, y, data_range=500.0, win_size=5, full=True)
    np.testing.assert_allclose(metrics.ssim_map(x, y, 500.0, win_size=5), want5, rtol=1e-10, atol=1e-12)
    x4, y4 = pattern((2, 3, 7, 8)) + 1024, pattern((2, 3, 7, 8), seed=2) + 1024
    for a, b, dims in [(x[:3, :7], y[:3, :7], 2), (x4, y4, 2), (x[0], y[0], 1)]:
        stack = metrics.ssim_map(a, b, 800.0, spatial_dims=dims)
        for lead in np.ndindex(a.shape[:a.ndim - dims]):
            _, want2 = structural_similarity(a[lead], b[lead], data_range=800.0, full=True)
            np.testing.assert_allclose(stack[lead], want2, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"at least 7 voxels along every axis, got shape \(8, 6, 10\)"):
        metrics.ssim_map(x[:, :6], y[:, :6], 3000.0)
    with pytest.raises(ValueError, match=r"at least 5 voxels along every axis, got shape \(3, 4, 9\)"):
        metrics.ssim_map(x[:3, :4, :9], y[:3, :4, :9], 3000.0, win_size=5, spatial_dims=2)


def skimage_ssim(ct, sct, mask, hu_range):
    """SynthRAD2023 ImageMetrics.ssim with skimage (float32 as its SimpleITK cast), masked crop mean."""
    x, y = (official_prepare(a, mask, hu_range).astype(np.float32) for a in (ct, sct))
    full, smap = structural_similarity(x, y, data_range=hu_range[1] - hu_range[0], full=True)
    if mask is None:
        return full
    inner = (slice(3, -3),) * x.ndim
    return smap[inner][(mask > 0)[inner]].mean(dtype=np.float64)


def test_ssim_official_recipe():
    ct = pattern((9, 12, 11), scale=2500.0)
    sct = ct + pattern((9, 12, 11), seed=6, scale=200.0) - 400.0
    mask = np.zeros(ct.shape, np.uint8)
    mask[1:8, 2:11, 3:10] = 1
    mask[4, 5, 5] = 0
    for hu_range in [metrics.HU_RANGE_SYNTHRAD2023, (-200.0, 700.0), (100.0, 900.0)]:
        got = metrics.ssim(ct, sct, mask, hu_range)
        assert got == pytest.approx(skimage_ssim(ct, sct, mask, hu_range), abs=2e-7)
        assert metrics.ssim(ct, sct, None, hu_range) == pytest.approx(skimage_ssim(ct, sct, None, hu_range),
                                                                      abs=2e-7)
    assert metrics.ssim(ct, sct, mask) == metrics.ssim(ct, sct, mask, metrics.HU_RANGE_SYNTHRAD2023)
    assert metrics.ssim(ct, sct, np.ones(ct.shape)) == pytest.approx(metrics.ssim(ct, sct), abs=1e-9)
    border_only = np.zeros(ct.shape)
    border_only[0] = 1  # every mask voxel falls in the cropped border
    assert math.isnan(metrics.ssim(ct, sct, border_only))
    assert metrics.ssim(ct, ct) == 1.0


def test_slice_ssim_per_slice_skimage():
    ref = pattern((5, 12, 13), scale=0.8) / 1000.0
    pred = ref + pattern((5, 12, 13), seed=7, scale=0.1) / 2000.0
    mask = np.zeros(ref.shape, bool)
    mask[0, 2:10, 1:12] = True
    mask[1] = True
    mask[1, 6, 6] = False
    mask[2, 1, 1:] = True   # only in the cropped border
    mask[3, 5, 7] = True    # one pixel inside the crop
    mask[3, 0, 0] = True
    # slice 4: empty
    for value_range in [(-1.0, 1.0), (0.0, 1.0), (0.2, 0.9)]:
        want = np.ones(5)
        for k in range(5):
            x, y = (official_prepare(a[k], mask[k], value_range) for a in (ref, pred))
            _, smap = structural_similarity(x, y, data_range=value_range[1] - value_range[0], full=True)
            inside = mask[k, 3:-3, 3:-3]
            if inside.any():
                want[k] = smap[3:-3, 3:-3][inside].mean()
        got = metrics.slice_ssim(ref, pred, mask, value_range)
        assert got.dtype == np.float64 and got.shape == (5,)
        np.testing.assert_allclose(got, want, rtol=1e-12)
        assert want[0] != 1.0 and want[2] == 1.0 and want[4] == 1.0
        np.testing.assert_array_equal(metrics.slice_ssim(ref, pred, mask, value_range, chunk=2), got)
    unmasked = metrics.slice_ssim(ref, pred, None, (-1.0, 1.0))
    for k in range(5):
        _, smap = structural_similarity(ref[k] + 1.0, pred[k] + 1.0, data_range=2.0, full=True)
        assert unmasked[k] == pytest.approx(smap[3:-3, 3:-3].mean(), rel=1e-12)
    tall_ref, tall_pred = ref[:, :8, :7].repeat(2, axis=0)[:9], pred[:, :8, :7].repeat(2, axis=0)[:9] ** 3
    tall = metrics.slice_ssim(tall_ref, tall_pred, None, (-1.0, 1.0), chunk=4)  # more slices than rows or columns
    for k in range(9):
        _, smap = structural_similarity(tall_ref[k] + 1.0, tall_pred[k] + 1.0, data_range=2.0, full=True)
        assert tall[k] == pytest.approx(smap[3:-3, 3:-3].mean(), rel=1e-12) and tall[k] != 1.0


def plateau_pair(shape):
    """2-D CT/sCT/mask with clipping on both ends, a plateau flat in both, one flat in the CT only and one in the
    sCT only (variance 0 or rounded below 0), an anti-correlated patch and outliers outside the mask."""
    ct = pattern(shape, scale=2200.0)
    sct = ct + pattern(shape, seed=8, scale=300.0) - 400.0
    ct[4:14, 5:16] = 1100.37
    sct[4:14, 5:16] = 987.61
    ct[14:24, 22:32] = 201.3
    sct[2:12, 20:31] = 55.7
    patch = (slice(20, 30), slice(8, 22))
    sct[patch] = 2 * sct[patch].mean() - sct[patch]  # mirrored: locally anti-correlated with the CT
    mask = np.zeros(shape, bool)
    mask[2:, :-3] = True
    mask[:6, :4] = False
    sct[~mask] = 5000.0
    return ct, sct, mask


def test_ms_ssim_2d_by_definition():
    ct, sct, mask = plateau_pair((40, 37))
    weights = metrics.MS_SSIM_SCALE_WEIGHTS
    want = ms_ssim_by_definition(ct, sct, mask, metrics.HU_RANGE_SYNTHRAD2025, weights)
    assert metrics.ms_ssim(ct, sct, mask) == pytest.approx(want, rel=1e-10)
    own = (-300.0, 1500.0)
    want_own = ms_ssim_by_definition(ct, sct, mask, own, (0.2, 0.5, 0.3))
    assert metrics.ms_ssim(ct, sct, mask, own, (0.2, 0.5, 0.3)) == pytest.approx(want_own, rel=1e-10)
    positive = (900.0, 3000.0)
    want_pos = ms_ssim_by_definition(ct, sct, None, positive, weights)
    assert metrics.ms_ssim(ct, sct, None, positive) == pytest.approx(want_pos, rel=1e-10)


def test_ms_ssim_2d_larger_than_97_and_self():
    ct, sct, mask = plateau_pair((101, 40))
    want = ms_ssim_by_definition(ct.T, sct.T, mask.T, metrics.HU_RANGE_SYNTHRAD2025, (0.6, 0.4))
    assert metrics.ms_ssim(ct.T, sct.T, mask.T, scale_weights=(0.6, 0.4)) == pytest.approx(want, rel=1e-10)
    assert metrics.ms_ssim(ct, ct, mask) == 1.0


def test_ms_ssim_never_exceeds_one():
    """Scale factors are clipped to [0, 1]: a pair equal up to rounding-level noise scores exactly 1, not above."""
    a = np.random.default_rng(0).uniform(-1100.0, 3100.0, (9, 9))
    b = a + np.random.default_rng(1000).normal(0.0, 1e-9, (9, 9))
    assert metrics.ms_ssim(a, b, scale_weights=(1.0,)) == 1.0


def test_ms_ssim_downsamples_only_between_scales(monkeypatch):
    calls = []
    real = metrics.fftconvolve
    monkeypatch.setattr(metrics, "fftconvolve", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    ct, sct, mask = plateau_pair((40, 37))
    metrics.ms_ssim(ct, sct, mask)
    assert calls == [(97, 97)] * 2 + [(49, 49)] * 2 + [(25, 25)] * 2 + [(13, 13)] * 2
    calls.clear()
    metrics.ms_ssim(ct, sct, mask, scale_weights=(0.25,) * 4)
    assert calls == [(97, 97)] * 2 + [(49, 49)] * 2 + [(25, 25)] * 2


def test_ms_ssim_mask_vanishing_at_a_coarse_scale_is_nan():
    ct, sct, _ = plateau_pair((98, 98))
    mask = np.zeros(ct.shape, bool)
    mask[41:58:2, 41:58:2] = True  # odd coordinates only: gone after the first subsampling
    assert math.isnan(metrics.ms_ssim(ct, sct, mask))


def test_evaluate_pair_2d():
    ct, sct, mask = plateau_pair((30, 33))
    result = metrics.evaluate_pair(ct.tolist(), sct.tolist(), mask.astype(np.uint8))
    assert list(result) == list(metrics.METRIC_NAMES)
    assert result["mae"] == metrics.mae(ct, sct, mask)
    assert result["psnr"] == metrics.psnr(ct, sct, mask)
    assert result["ssim"] == metrics.ssim(ct, sct, mask)
    assert result["ms_ssim"] == metrics.ms_ssim(ct, sct, mask)
    tissue = metrics.tissue_mae(ct, sct, mask)
    assert {k: result[k] for k in tissue} == tissue
    assert result["mae"] != metrics.mae(ct, sct)
    with pytest.raises(ValueError, match="the mask is empty"):
        metrics.evaluate_pair(ct, sct, np.zeros(ct.shape))
    with pytest.raises(ValueError, match=r"sCT shape \(30, 32\) differs"):
        metrics.evaluate_pair(ct, sct[:, :32], mask)
    whole = metrics.evaluate_pair(ct, sct)
    assert whole["mae"] == metrics.mae(ct, sct)


def test_ms_ssim_3d_by_definition():
    ct = pattern((9, 12, 10), scale=1500.0)
    sct = ct + pattern((9, 12, 10), seed=9, scale=150.0) - 100.0
    mask = np.zeros(ct.shape, bool)
    mask[1:, 2:11, :8] = True
    want = ms_ssim_by_definition(ct, sct, mask, metrics.HU_RANGE_SYNTHRAD2025, metrics.MS_SSIM_SCALE_WEIGHTS,
                                 brute_force=False)
    assert metrics.ms_ssim(ct, sct, mask) == pytest.approx(want, rel=1e-9)
