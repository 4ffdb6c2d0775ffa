"""Metric profiles (synthrad2023, synthrad2025, dgcf-paper) and the fast torch SSIM/MS-SSIM path."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import uniform_filter
from scipy.signal import fftconvolve
from skimage.metrics import peak_signal_noise_ratio
from skimage.util import crop

from dgcf_auto.errors import DGCFError
from dgcf_auto.evaluation import metrics, ssim_fast
from dgcf_auto.evaluation.profiles import PROFILES, get_profile
from evaluation_fixtures import smooth_pair

OFFICIAL_SSIM = 0.9616828525761663      # SynthRAD2023 code on smooth_pair (see test_evaluation.py)
OFFICIAL_MS_SSIM = 0.9912739111766282   # SynthRAD2025 code on smooth_pair


def noisy_pair(shape=(30, 41, 37), seed=0):
    rng = np.random.default_rng(seed)
    ct = rng.uniform(-1200, 3300, shape).astype(np.float32)
    sct = (ct + rng.normal(0, 120, shape)).astype(np.float32)
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    mask = ((y - 20) ** 2 / 15 ** 2 + (x - 18) ** 2 / 12 ** 2 < 1) & (z > 2) & (z < 27)
    return ct, sct, mask


def test_fast_path_matches_official_values_on_cpu():
    ct, sct, mask = smooth_pair()
    assert ssim_fast.ssim(ct, sct, mask, device="cpu") == pytest.approx(OFFICIAL_SSIM, abs=1e-6)
    assert ssim_fast.ms_ssim(ct, sct, mask, device="cpu") == pytest.approx(OFFICIAL_MS_SSIM, abs=1e-6)


@pytest.mark.parametrize("use_mask", [True, False])
def test_fast_path_matches_reference_implementation(use_mask):
    ct, sct, mask = noisy_pair()
    mask = mask if use_mask else None
    assert ssim_fast.ssim(ct, sct, mask) == pytest.approx(metrics.ssim(ct, sct, mask), abs=1e-6)
    # float HU: level 0 held in float32 costs ~1e-9; integer HU (CT files, dgcf_predict's int16): rounding only
    assert ssim_fast.ms_ssim(ct, sct, mask) == pytest.approx(metrics.ms_ssim(ct, sct, mask), abs=1e-7)
    ct, sct = np.round(ct), np.round(sct)
    assert ssim_fast.ms_ssim(ct, sct, mask) == pytest.approx(metrics.ms_ssim(ct, sct, mask), abs=1e-11)
    own = (-300.0, 900.0)
    assert ssim_fast.ms_ssim(ct, sct, mask, own) == pytest.approx(metrics.ms_ssim(ct, sct, mask, own), abs=1e-11)


def test_tiles_do_not_change_the_result(monkeypatch):
    ct, sct, mask = noisy_pair()
    whole = ssim_fast.ms_ssim(ct, sct, mask)
    monkeypatch.setattr(ssim_fast, "CPU_TILE_ROWS", 3)
    monkeypatch.setattr(ssim_fast, "CPU_TILE_VOXELS", 2000)  # many tiles along z and y
    assert ssim_fast.ms_ssim(ct, sct, mask) == pytest.approx(whole, abs=1e-12)


@pytest.mark.parametrize("shape", [(7, 8, 9), (10, 11, 12), (97, 13, 2)])
def test_halve_is_the_official_fftconvolve_downsampling(shape):
    a = np.random.default_rng(1).uniform(0, 4000, shape)
    expected = fftconvolve(a, np.ones((2, 2, 2)) / 8, mode="same")[::2, ::2, ::2]
    np.testing.assert_allclose(ssim_fast._halve(torch.from_numpy(a)).numpy(), expected, rtol=0, atol=1e-8)


def test_registry_and_definitions():
    assert list(PROFILES) == ["synthrad2023", "synthrad2025", "dgcf-paper"]
    with pytest.raises(DGCFError, match="unknown metric profile 'nope'.*synthrad2023"):
        get_profile("nope")
    described = get_profile("dgcf-paper").describe()
    assert described["metrics"]["ms_ssim_full"]["range"] == "[-1024, 2000]"
    assert described["metrics"]["ms_ssim_full"]["mask"] == "none (whole image)"
    assert "own CT range" in described["description"] or "own" in described["metrics"]["psnr_body"]["range"]
    ct, sct, mask = smooth_pair()
    for profile in PROFILES.values():  # every computed key is defined, and vice versa
        assert set(profile.compute(ct, sct, mask)) == set(profile.metrics)


def test_synthrad2025_profile_by_hand():
    ct, sct, mask = smooth_pair()
    result = get_profile("synthrad2025").compute(ct, sct, mask)
    m = mask > 0
    a, b = np.clip(ct[m], -1024, 3071).astype(np.float64), np.clip(sct[m], -1024, 3071).astype(np.float64)
    assert result["psnr"] == pytest.approx(10 * math.log10(4095 ** 2 / np.mean((a - b) ** 2)), abs=1e-9)
    assert result["ms_ssim"] == pytest.approx(OFFICIAL_MS_SSIM, abs=1e-6)


def test_dgcf_paper_profile_follows_the_authors_recipe():
    """The authors' columns written out independently: skimage PSNR, reference MS-SSIM, their class masks."""
    ct, sct, mask = noisy_pair()
    ct, sct = np.round(ct), np.round(sct)  # integer HU, as in CT files and dgcf_predict's int16 output
    ct[5, 10, 10], ct[5, 10, 11] = -250.0, 250.0   # boundaries: -250 is soft tissue, 250 is bone
    result = get_profile("dgcf-paper").compute(ct, sct, mask)
    full = (-1024.0, 2000.0)

    def psnr(selected, lo, hi):
        a, b = np.clip(ct, lo, hi)[selected], np.clip(sct, lo, hi)[selected]
        return peak_signal_noise_ratio(a.astype(np.float64), b.astype(np.float64), data_range=hi - lo)

    everywhere = np.ones(ct.shape, bool)
    assert result["psnr_full"] == pytest.approx(psnr(everywhere, *full), abs=1e-9)
    assert result["ms_ssim_full"] == pytest.approx(metrics.ms_ssim(ct, sct, None, full), abs=1e-9)
    own = (float(ct[mask].min()), float(ct[mask].max()))
    assert result["psnr_body"] == pytest.approx(psnr(mask, *own), abs=1e-9)
    assert result["ms_ssim_body"] == pytest.approx(metrics.ms_ssim(ct, sct, mask, own), abs=1e-9)
    classes = {"air": (ct < -250, (-1024.0, -250.0)), "soft_tissue": ((ct >= -250) & (ct < 250), (-250.0, 250.0)),
               "bone": (ct >= 250, (250.0, 2000.0))}
    assert classes["soft_tissue"][0][5, 10, 10] and classes["bone"][0][5, 10, 11]
    for name, (selected, hu_range) in classes.items():
        assert result[f"psnr_{name}"] == pytest.approx(psnr(selected, *hu_range), abs=1e-9)
        # NaN where the class has no voxel left on the coarsest scale's single cropped voxel (as the authors' code)
        expected = metrics.ms_ssim(ct, sct, selected, hu_range)
        assert result[f"ms_ssim_{name}"] == pytest.approx(expected, abs=1e-9, nan_ok=True)
    assert sum(math.isfinite(result[f"ms_ssim_{name}"]) for name in classes) >= 1
    no_bone = get_profile("dgcf-paper").compute(np.minimum(ct, 0), sct, None)
    assert math.isnan(no_bone["psnr_bone"]) and math.isnan(no_bone["psnr_body"])


# ------------------------------------------------------------------ dgcf-paper against the authors' formulas
# Written from HiLab-git/DGCF code_util/metrics/image_similarity/SynthRAD2025.py (`ms_ssim`,
# `structural_similarity_at_scale`), SynthRAD2023.py (`psnr`) and calculate.py (`calculate_folder_SynthRAD2023`,
# `calculate_dynamic_range`), independent of dgcf_auto.evaluation.metrics.
def authors_ms_ssim(gt, pred, mask, dynamic_range, always_shift=False):
    lo, hi = min(dynamic_range), max(dynamic_range)
    gt, pred = np.clip(gt, lo, hi), np.clip(pred, lo, hi)
    if mask is not None:
        mask = np.where(mask > 0, 1.0, 0.0)
        gt, pred = np.where(mask == 0, lo, gt), np.where(mask == 0, lo, pred)
    else:
        mask = np.ones_like(gt)
    if lo < 0 or always_shift:   # "Make values non-negative" only for a negative floor
        gt, pred = gt - lo, pred - lo
    data_range = dynamic_range[1] - dynamic_range[0]
    weights = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])   # scale weights = luminance weights there
    pads = [(max((97 - d) // 2, 0), max(97 - d - (97 - d) // 2, 0)) for d in gt.shape]
    gt, pred, mask = (np.pad(a, pads, mode="edge") for a in (gt, pred, mask))
    per_scale = []
    for w in weights:
        ux, uy = uniform_filter(gt, 7), uniform_filter(pred, 7)
        norm = 343 / 342
        vx = norm * (uniform_filter(gt * gt, 7) - ux * ux)
        vy = norm * (uniform_filter(pred * pred, 7) - uy * uy)
        vxy = norm * (uniform_filter(gt * pred, 7) - ux * uy)
        sx, sy = np.clip(vx, 0, None) ** 0.5, np.clip(vy, 0, None) ** 0.5
        c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
        lum = np.clip((2 * ux * uy + c1) / (ux * ux + uy * uy + c1), 0, None)
        con = np.clip((2 * sx * sy + c2) / (vx + vy + c2), 0, None)
        struct = np.clip((vxy + c2 / 2) / (sx * sy + c2 / 2), 0, None)
        ssim_map = lum ** w * con ** w * struct ** w
        per_scale.append(crop(ssim_map, 3)[crop(mask, 3).astype(bool)].mean(dtype=np.float64))
        gt, pred = (fftconvolve(a, np.ones((2, 2, 2)) / 8, mode="same")[::2, ::2, ::2] for a in (gt, pred))
        mask = mask[::2, ::2, ::2]
    return float(np.prod(np.clip(per_scale, 0, 1)))


def authors_psnr(gt, pred, mask, dynamic_range):
    mask = np.ones(gt.shape) if mask is None else np.where(mask > 0, 1.0, 0.0)
    lo, hi = dynamic_range
    gt, pred = np.clip(gt, lo, hi)[mask == 1], np.clip(pred, lo, hi)[mask == 1]
    return float(peak_signal_noise_ratio(gt, pred, data_range=hi - lo))


def phantom_with_every_column():
    """97 x 113 x 113 HU phantom: the coarsest MS-SSIM scale keeps 1 x 2 x 2 cropped voxels, at (48, 48|64, 48|64)
    of the full grid; air, soft tissue and bone sit there, so every column of the profile is a number."""
    rng = np.random.default_rng(7)
    z, y, x = np.meshgrid(np.arange(97), np.arange(113), np.arange(113), indexing="ij")
    body = (y - 56) ** 2 / 50 ** 2 + (x - 56) ** 2 / 46 ** 2 < 1
    ct = np.where(body, 40 + 120 * np.sin(x / 5.0) * np.cos(y / 7.0) + z, -1000.0)
    ct[(z - 48) ** 2 + (y - 48) ** 2 + (x - 48) ** 2 < 10 ** 2] = -700.0                      # gas
    bone = ((y - 64) ** 2 + (x - 56) ** 2 < 14 ** 2) & (np.abs(x - 56) > 3)
    ct[bone] = 700 + 600 * np.cos(z[bone] / 9.0)                                              # 100..1300 HU
    sct = ct + uniform_filter(rng.normal(0, 150, ct.shape), 3) * 3
    return np.round(ct), np.round(sct), body


def test_dgcf_paper_every_column_equals_the_authors_formulas():
    ct, sct, body = phantom_with_every_column()
    result = get_profile("dgcf-paper").compute(ct, sct, body)
    classes = {"air": (ct < -250, (-1024.0, -250.0)), "soft_tissue": ((ct >= -250) & (ct < 250), (-250.0, 250.0)),
               "bone": (ct >= 250, (250.0, 2000.0))}
    columns = {"full": (None, (-1024.0, 2000.0)), "body": (body, (float(ct[body].min()), float(ct[body].max()))),
               **classes}
    for name, (mask, hu_range) in columns.items():
        expected = authors_ms_ssim(ct, sct, mask, hu_range)
        assert math.isfinite(expected), name
        assert result[f"ms_ssim_{name}"] == pytest.approx(expected, abs=1e-9), name
        assert result[f"psnr_{name}"] == pytest.approx(authors_psnr(ct, sct, mask, hu_range), abs=1e-9), name
    # the bone range starts above 0: their code does not shift it, and that changes the value
    shifted = authors_ms_ssim(ct, sct, classes["bone"][0], (250.0, 2000.0), always_shift=True)
    assert abs(shifted - result["ms_ssim_bone"]) > 1e-5
