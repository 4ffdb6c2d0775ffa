"""preprocessing/normalization.py: each intensity mapping, its inverse and its refusals, on small arrays.

Expected values come from the formulas: a window [low, high] maps x to 2 (x - low) / (high - low) - 1 after
clipping, the MR percentile rule divides by numpy's percentile over the body voxels, and the inverse maps back.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from dgcf_auto.errors import DGCFError
from dgcf_auto.preprocessing.normalization import (
    CT_AIR_HU,
    apply_source_normalization,
    clip_to_range,
    denormalize_ct,
    denormalize_source,
    normalize_ct,
    normalize_source,
    source_clip_range,
    source_normalization_params,
)


def unit(x, low, high):
    """The window formula, in float64."""
    return 2.0 * (np.clip(np.asarray(x, np.float64), low, high) - low) / (high - low) - 1.0


def as_stored(params: dict) -> dict:
    """Params as a later run reads them from the case properties: a JSON round trip (new string objects)."""
    return json.loads(json.dumps(params))


def test_ct_window_from_its_formula_with_a_non_default_window():
    hu = np.array([-3000, -1000, -200, 1000, 2999, 5000], np.float32)
    x = normalize_ct(hu, -1000.0, 3000.0)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, unit(hu, -1000.0, 3000.0), atol=1e-7)
    assert x[0] == -1.0 and x[3] == 0.0 and x[-1] == 1.0


def test_ct_normalisation_round_trip():
    hu = np.array([-2000, -1024, -500, 0, 1000, 2000, 3000], np.float32)
    x = normalize_ct(hu, -1024, 2000)
    assert x.min() == -1.0 and x.max() == 1.0 and x.dtype == np.float32
    np.testing.assert_allclose(denormalize_ct(x, -1024, 2000), np.clip(hu, -1024, 2000), atol=1e-3)
    assert denormalize_ct(np.array([1.3]), -1024, 2000)[0] == pytest.approx(2000)  # clipped to the window


def test_denormalize_ct_clips_unless_told_not_to():
    x = np.array([-1.5, -0.25, 1.25], np.float32)
    np.testing.assert_allclose(denormalize_ct(x, -1000.0, 3000.0), [-1000.0, 500.0, 3000.0])
    np.testing.assert_allclose(denormalize_ct(x, -1000.0, 3000.0, clip=False), [-2000.0, 500.0, 3500.0])


@pytest.mark.parametrize("window", [(float("5"), float("5")), (2000.0, -1024.0)])
def test_an_empty_ct_window_is_refused(window):
    with pytest.raises(DGCFError, match="is empty"):
        normalize_ct(np.zeros(3, np.float32), *window)


@pytest.mark.parametrize("low, high", [(4.066351196001362, 4.563777886388609),
                                       (639.8146546030794, 1376.9793659039906)])
def test_float32_rounding_at_the_window_ends_stays_inside_minus_one_one(low, high):
    # In float32, (high - mid) / half is 1.0000006 for the first window and (low - mid) / half -1.0000001 for
    # the second: the mapping clips them back.
    params = source_normalization_params(np.zeros(2), None, {"scheme": "window", "clip_low": low, "clip_high": high})
    x = apply_source_normalization(np.array([0.0, low, high, 5000.0], np.float32), params)
    np.testing.assert_allclose(x, [-1.0, -1.0, 1.0, 1.0], atol=2e-6)
    assert x.min() >= -1.0 and x.max() <= 1.0


def test_source_normalisation_percentile_and_window():
    rng = np.random.default_rng(0)
    mr = rng.uniform(0, 1000, (4, 8, 8)).astype(np.float32)
    mask = np.zeros(mr.shape, np.uint8)
    mask[:, 2:6, 2:6] = 1
    mr[mask == 0] = 0.0  # background must not pull the percentile down
    x, params = normalize_source(mr, mask, {"scheme": "percentile", "percentile": 99.0, "clip_max": 1.0})
    assert params["value"] == pytest.approx(np.percentile(mr[mask > 0], 99)) and params["computed_on"] == "mask"
    assert x.min() == -1.0 and x.max() == 1.0
    below = mr <= params["value"]
    np.testing.assert_allclose(denormalize_source(x, params)[below], mr[below], rtol=1e-5, atol=1e-2)
    cbct = np.array([-1500, -1024, 0, 500, 2500], np.float32)
    y, wparams = normalize_source(cbct, None, {"scheme": "window", "clip_low": -1024, "clip_high": 2000})
    np.testing.assert_allclose(y, normalize_ct(cbct, -1024, 2000))
    np.testing.assert_allclose(denormalize_source(y, wparams), np.clip(cbct, -1024, 2000), atol=1e-3)


def mr_volume() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    mr = rng.uniform(100, 900, (3, 6, 5)).astype(np.float32)
    mask = np.zeros(mr.shape, np.int16)
    mask[:, 1:5, 1:4] = 1
    mask[0, 0, 0] = -1  # only voxels > 0 are body
    mr[mask <= 0] = 5.0
    return mr, mask


def test_percentile_rule_defaults_to_p99_with_clip_max_one_over_body_voxels():
    mr, mask = mr_volume()
    params = source_normalization_params(mr, mask, {"scheme": "percentile"})
    p99 = float(np.percentile(mr[mask > 0], 99.0))
    assert params == {"scheme": "percentile", "percentile": 99.0, "value": pytest.approx(p99), "clip_max": 1.0,
                      "computed_on": "mask"}
    x = apply_source_normalization(mr, as_stored(params))
    np.testing.assert_allclose(x, unit(mr / np.float32(p99), 0.0, 1.0), atol=2e-6)
    assert source_clip_range(as_stored(params)) == (0.0, pytest.approx(p99))


def test_percentile_rule_with_its_own_percentile_and_clip_max():
    mr, mask = mr_volume()
    params = source_normalization_params(mr, mask, {"scheme": "percentile", "percentile": 95.0, "clip_max": 1.5})
    p95 = float(np.percentile(mr[mask > 0], 95.0))
    assert params["value"] == pytest.approx(p95) and params["clip_max"] == 1.5
    assert source_clip_range(as_stored(params)) == (0.0, pytest.approx(1.5 * p95))
    x = np.array([-1.5, -1.0, 0.0, 1.0, 1.5], np.float32)
    np.testing.assert_allclose(denormalize_source(x, as_stored(params)),
                               np.array([0.0, 0.0, 0.75, 1.5, 1.5]) * p95, rtol=1e-6)


def test_an_empty_mask_falls_back_to_the_whole_volume():
    mr, _ = mr_volume()
    params = source_normalization_params(mr, np.zeros(mr.shape, np.uint8), {"scheme": "percentile"})
    assert params["value"] == pytest.approx(np.percentile(mr, 99.0)) and params["computed_on"] == "volume"
    assert source_normalization_params(mr, None, {"scheme": "percentile"})["computed_on"] == "volume"


def test_small_positive_mr_intensities_are_normalised():
    mr = np.linspace(0.0, 0.5, 101, dtype=np.float32)  # an MR stored in [0, 0.5]: p99 = 0.495
    x, params = normalize_source(mr, None, {"scheme": "percentile"})
    assert params["value"] == pytest.approx(0.495)
    assert x[0] == -1.0 and x[-1] == 1.0


@pytest.mark.parametrize("top", [0.0, -0.5, np.nan])
def test_a_non_positive_or_undefined_percentile_is_refused(top):
    mr = np.full((2, 3, 3), top, np.float32)
    with pytest.raises(DGCFError, match="must be > 0"):
        source_normalization_params(mr, None, {"scheme": "percentile"})


def test_percentile_window_clips_to_the_volumes_own_percentiles():
    mr, _ = mr_volume()
    params = source_normalization_params(mr, None, as_stored({"scheme": "percentile_window",
                                                              "percentiles": [0.5, 99.5]}))
    low, high = np.percentile(mr, [0.5, 99.5])
    assert params == {"scheme": "percentile_window", "percentiles": [0.5, 99.5], "clip_low": pytest.approx(low),
                      "clip_high": pytest.approx(high), "computed_on": "volume"}
    x = apply_source_normalization(mr, as_stored(params))
    np.testing.assert_allclose(x, unit(mr, low, high), atol=2e-6)
    assert source_clip_range(as_stored(params)) == (pytest.approx(low), pytest.approx(high))
    np.testing.assert_allclose(denormalize_source(np.array([-2.0, 0.0, 2.0]), as_stored(params)),
                               [low, (low + high) / 2, high], rtol=1e-6)


@pytest.mark.parametrize("percentiles, image", [([0.5, 99.5], np.full((2, 4), 7.0)),
                                                ([99.5, 0.5], np.arange(8.0))])
def test_percentile_window_without_a_range_is_refused(percentiles, image):
    with pytest.raises(DGCFError, match="leave no range"):
        source_normalization_params(image, None, {"scheme": "percentile_window", "percentiles": percentiles})


def test_window_scheme_through_stored_params():
    cbct = np.array([-1500, -1000, 500, 3000], np.float32)
    params = source_normalization_params(cbct, None, as_stored({"scheme": "window", "clip_low": -1000,
                                                                "clip_high": 2000}))
    assert params == {"scheme": "window", "clip_low": -1000.0, "clip_high": 2000.0}
    assert source_clip_range(as_stored(params)) == (-1000.0, 2000.0)
    np.testing.assert_allclose(apply_source_normalization(cbct, as_stored(params)), unit(cbct, -1000, 2000),
                               atol=1e-7)


@pytest.mark.parametrize("scheme", ["max", "zscore", "percentiles"])
def test_an_unknown_scheme_is_one_error_naming_it(scheme):
    with pytest.raises(DGCFError, match=f"unknown source normalisation scheme '{scheme}'"):
        source_normalization_params(np.arange(8.0), None, {"scheme": scheme, "percentiles": [1, 99],
                                                           "clip_low": 0, "clip_high": 1})


def test_a_scheme_read_from_json_is_dispatched_by_value():
    mr, mask = mr_volume()
    percentile = source_normalization_params(mr, mask, as_stored({"scheme": "percentile"}))
    assert percentile["computed_on"] == "mask"
    stored = as_stored(percentile)
    assert id(stored["scheme"]) != id("percentile")  # the point: equal, not the same object
    np.testing.assert_array_equal(apply_source_normalization(mr, stored), apply_source_normalization(mr, percentile))
    np.testing.assert_array_equal(denormalize_source(np.array([0.5]), stored),
                                  denormalize_source(np.array([0.5]), percentile))


def test_clip_to_range_clips_before_the_float32_cast():
    assert clip_to_range(np.array([0, 5, 10], np.int16), 0.5, 9.5).tolist() == [0.5, 5.0, 9.5]
    big = clip_to_range(np.array([1e300, -1e300, 3.25], np.float64), -1024.0, 3071.0)
    assert big.dtype == np.float32 and big.tolist() == [3071.0, -1024.0, 3.25]
    extreme = clip_to_range(np.array([np.iinfo(np.int32).max, np.iinfo(np.int32).min], np.int32), -1024.0, 3071.0)
    assert extreme.tolist() == [3071.0, -1024.0]


def test_air_is_minus_1024_hu():
    assert CT_AIR_HU == -1024.0  # SynthRAD's CT background, and what the sCT holds outside the body
