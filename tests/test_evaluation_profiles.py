"""Metric profiles (synthrad2023, synthrad2025, dgcf-paper) and the fast torch SSIM/MS-SSIM path."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.signal import fftconvolve
from skimage.metrics import peak_signal_noise_ratio

from dgcf_auto.errors import DGCFError
from dgcf_auto.evaluation import metrics, ssim_fast
from dgcf_auto.evaluation.profiles import PROFILES, get_profile
from test_evaluation import smooth_pair

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
