"""SynthRAD2023's dose metrics (dgcf_auto/evaluation/dose/metrics.py) on tiny dose arrays, no planning: every value
computed independently here, by hand from SynthRAD's / matRad's definitions or by pymedphys called directly."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pymedphys
import pytest
from scipy import ndimage

from dgcf_auto.evaluation.dose import metrics as dm

EPS = 1e-12  # SynthRAD's eps in DoseMetrics.dvh_metric


def _synthrad_term(ct: float, sct: float) -> float:
    return abs(ct - sct + EPS) / (ct + EPS)


# ---- mae_target: sum |D_ct - D_sct| / Rx / n over the n voxels with D_ct >= 0.9 Rx ----

def test_mae_target_by_hand():
    d_ct = np.array([2.0, 1.8, 1.79, 1.0, 0.3, 2.2])
    d_sct = np.array([1.9, 2.0, 0.0, 3.0, 5.0, 5.0])
    # Rx 2 Gy: 1.8 Gy counts (>=), 1.79 does not; errors 0.1, 0.2, 2.8 (one above Rx)
    assert dm.mae_target(d_ct, d_sct, 2.0) == pytest.approx((0.1 + 0.2 + 2.8) / 2.0 / 3, rel=1e-12)
    d_ct3 = np.array([[[3.0, 2.6], [2.8, 0.0]]])
    d_sct3 = np.array([[[2.4, 0.0], [3.1, 9.0]]])
    # Rx 3 Gy: 2.7 Gy threshold; 3.0 and 2.8 count
    assert dm.mae_target(d_ct3, d_sct3, 3.0) == pytest.approx((0.6 + 0.3) / 3.0 / 2, rel=1e-12)


def test_mae_target_is_nan_without_a_voxel_at_90_percent_of_rx():
    assert math.isnan(dm.mae_target(np.array([1.79, 0.5]), np.array([2.0, 2.0]), 2.0))


# ---- DVH values: matRad's DX (linear interpolation of the ascending sorted dose), mean, V95, CI ----

def test_dose_at_volume_is_matrads_dx():
    values = np.array([8.0, 1.0, 16.0, 2.0, 4.0])
    # ascending 1, 2, 4, 8, 16 at positions 0..4: D_x sits at (100 - x) % of the way, linearly interpolated
    assert dm.dose_at_volume(values, 2) == pytest.approx(8.0 + 0.92 * 8.0, abs=1e-12)    # position 3.92
    assert dm.dose_at_volume(values, 5) == pytest.approx(8.0 + 0.80 * 8.0, abs=1e-12)    # 3.8
    assert dm.dose_at_volume(values, 98) == pytest.approx(1.0 + 0.08 * 1.0, abs=1e-12)   # 0.08
    assert dm.dose_at_volume(values, 50) == pytest.approx(4.0, abs=1e-12)
    assert dm.dose_at_volume(values, 98) == pytest.approx(np.percentile(values, 2), abs=1e-12)


def test_structure_values_of_an_oar():
    dose = np.arange(24, dtype=np.float32).reshape(2, 3, 4) ** 1.5
    mask = np.zeros(dose.shape, bool)
    mask[0, 1:, :3] = mask[1, 2, 1:] = True
    inside = np.sort(dose[mask].astype(np.float64))   # 9 voxels
    n = inside.size

    def dx(x):  # the dose at position (100 - x) % of n - 1 in the ascending order
        position = (100 - x) / 100 * (n - 1)
        low = int(position)
        return inside[low] + (position - low) * (inside[low + 1] - inside[low])

    values = dm.structure_values(dose, mask, 2.0)
    assert set(values) == {"D2", "D5", "D98", "Dmean"}   # no V95 / CI95 unless asked for the target
    assert values["D2"] == pytest.approx(dx(2), rel=1e-12) and values["D5"] == pytest.approx(dx(5), rel=1e-12)
    assert values["D98"] == pytest.approx(dx(98), rel=1e-12)
    assert values["Dmean"] == pytest.approx(inside.sum() / n, rel=1e-12)


def test_target_v95_and_conformity_number():
    # Rx 2 Gy: 95 % is 1.9 Gy; the target holds 5 voxels, 3 of them >= 1.9 Gy (one exactly); 2 more outside
    dose = np.array([[2.0, 1.9, 1.95, 1.5, 1.0],
                     [1.92, 2.1, 0.5, 1.89, 0.0]])
    target = np.zeros(dose.shape, bool)
    target[0] = True
    values = dm.structure_values(dose, target, 2.0, target=True)
    assert values["V95"] == pytest.approx(3 / 5, rel=1e-12)
    assert values["CI95"] == pytest.approx(3 ** 2 / (5 * 5), rel=1e-12)   # V_target,95^2 / (V_target V_95)
    assert values["Dmean"] == pytest.approx(8.35 / 5, rel=1e-12)
    # Rx 3 Gy: 2.85 Gy reached nowhere: V95 0, CI undefined
    cold = dm.structure_values(dose, target, 3.0, target=True)
    assert cold["V95"] == 0.0 and math.isnan(cold["CI95"])


def test_an_empty_structure_gives_nan_values_and_the_dvh_metric_nan():
    dose = np.ones((2, 3))
    empty = np.zeros(dose.shape, bool)
    oar = dm.structure_values(dose, empty, 2.0)
    assert set(oar) == {"D2", "D5", "D98", "Dmean"} and all(math.isnan(v) for v in oar.values())
    target = dm.structure_values(dose, empty, 2.0, target=True)
    assert set(target) == {"D2", "D5", "D98", "Dmean", "V95", "CI95"}
    assert all(math.isnan(v) for v in target.values())
    one = dm.structure_values(dose, ~empty, 2.0)   # a structure holding voxels gives numbers
    assert oar.keys() == one.keys() and all(v == 1.0 for v in one.values())
    assert dm.dvh_metric(target, target, {}, {})[1] == []


# ---- dvh_metric: SynthRAD's formula, eps inside the absolute value ----

def test_relative_term_with_eps_as_synthrad_writes_it():
    assert dm._relative(2.0, 1.5) == pytest.approx(0.25, rel=1e-9)
    assert dm._relative(2.0, 2.5) == pytest.approx(0.25, rel=1e-9)
    assert dm._relative(0.0, 0.0) == 1.0          # eps / eps: an empty coverage or a dose-free OAR scores 1
    assert dm._relative(1e-12, 0.0) == 1.0        # 2 eps / 2 eps
    assert dm._relative(0.0, 1e-12) == 0.0        # the eps cancels the difference
    assert dm._relative(4.0, 4.0) == pytest.approx(EPS / 4.0, rel=1e-9)


def _oar(d2, d5, dmean):
    return {"D2": d2, "D5": d5, "D98": 0.0, "Dmean": dmean}


def test_dvh_metric_by_hand_with_more_than_three_oars():
    target_ct, target_sct = {"D98": 2.0, "CI95": 0.8}, {"D98": 1.9, "CI95": 0.6}
    # (D5 + Dmean) / 2 on the CT: b 1.5, d 1.25, a 0.75, c 0.25 (c has the highest D2: SynthRAD ranks by D5)
    oars_ct = {"a": _oar(1.0, 1.0, 0.5), "b": _oar(2.0, 2.0, 1.0), "c": _oar(4.0, 0.25, 0.25),
               "d": _oar(1.5, 1.5, 1.0)}
    oars_sct = {"a": _oar(1.1, 9.0, 0.5), "b": _oar(1.8, 9.0, 1.1), "c": _oar(5.0, 9.0, 5.0),
                "d": _oar(1.5, 9.0, 0.45)}
    value, used = dm.dvh_metric(target_ct, target_sct, oars_ct, oars_sct)
    assert used == ["b", "d", "a"]
    target = _synthrad_term(2.0, 1.9) + _synthrad_term(0.8, 0.6)
    d2 = (_synthrad_term(2.0, 1.8) + _synthrad_term(1.5, 1.5) + _synthrad_term(1.0, 1.1)) / 3
    dmean = (_synthrad_term(1.0, 1.1) + _synthrad_term(1.0, 0.45) + _synthrad_term(0.5, 0.5)) / 3
    assert value == pytest.approx(target + d2 + dmean, rel=1e-12)
    assert value == pytest.approx(0.05 + 0.25 + (0.1 + 0 + 0.1) / 3 + (0.1 + 0.55 + 0) / 3, rel=1e-9)


def test_dvh_metric_with_fewer_than_three_oars_and_with_none():
    target_ct, target_sct = {"D98": 3.0, "CI95": 0.5}, {"D98": 3.3, "CI95": 0.0}
    target = _synthrad_term(3.0, 3.3) + _synthrad_term(0.5, 0.0)
    assert dm.dvh_metric(target_ct, target_sct, {}, {}) == (pytest.approx(target, rel=1e-12), [])
    # one OAR receiving no dose at all on either: eps / eps = 1 for D2 and for Dmean
    oars = {"far": _oar(0.0, 0.0, 0.0)}
    assert dm.dvh_metric(target_ct, target_sct, oars, oars) == (pytest.approx(target + 2.0, rel=1e-12), ["far"])
    oars_ct = {"p": _oar(2.0, 1.0, 1.0), "q": _oar(1.0, 2.0, 2.0)}
    oars_sct = {"p": _oar(1.0, 1.0, 1.5), "q": _oar(1.5, 2.0, 1.0)}
    value, used = dm.dvh_metric(target_ct, target_sct, oars_ct, oars_sct)
    assert used == ["q", "p"]
    assert value == pytest.approx(target + (0.5 + 0.5) / 2 + (0.5 + 0.5) / 2, rel=1e-9)


@pytest.mark.parametrize("missing", ["D98_ct", "D98_sct", "CI95_ct", "CI95_sct"])
def test_dvh_metric_is_nan_when_a_target_value_is(missing):
    values = {"D98_ct": 2.0, "D98_sct": 2.0, "CI95_ct": 0.5, "CI95_sct": 0.5, missing: math.nan}
    value, used = dm.dvh_metric({"D98": values["D98_ct"], "CI95": values["CI95_ct"]},
                                {"D98": values["D98_sct"], "CI95": values["CI95_sct"]},
                                {"a": _oar(1.0, 1.0, 1.0)}, {"a": _oar(1.0, 1.0, 1.0)})
    assert math.isnan(value) and used == []


def test_most_exposed_oars_rank_by_d5_and_dmean_ties_keep_the_structure_order():
    # scores (D5 + Dmean) / 2: z 2.0, x 0.75, y 0.75 (a tie: x is listed first), w 0.5; v holds no voxel
    oars = {"w": _oar(9.0, 0.5, 0.5), "x": _oar(0.0, 1.0, 0.5), "v": _oar(math.nan, math.nan, math.nan),
            "y": _oar(0.0, 0.75, 0.75), "z": _oar(0.0, 0.0, 4.0)}
    assert dm.most_exposed_oars(oars) == ["z", "x", "y"]
    swapped = {k: oars[k] for k in ("w", "y", "v", "x", "z")}
    assert dm.most_exposed_oars(swapped) == ["z", "y", "x"]
    assert dm.most_exposed_oars(oars, num=5) == ["z", "x", "y", "w"]
    # D5 and Dmean weigh alike (a 1.5, c 1.4, b 1.25, d 1.0): a high D2 does not count
    assert dm.most_exposed_oars({"a": _oar(0.0, 3.0, 0.0), "b": _oar(5.0, 1.0, 1.5), "c": _oar(0.0, 0.0, 2.8),
                                 "d": _oar(0.0, 1.0, 1.0)}) == ["a", "c", "b"]


def test_most_exposed_oars_keep_order_at_tiny_doses():
    # OARs far from the field: scores of 1e-17 Gy and 0 still rank, and the dose-free ones keep their order
    oars = {"zero1": _oar(0.0, 0.0, 0.0), "tiny": _oar(0.0, 1e-17, 1e-17), "zero2": _oar(0.0, 0.0, 0.0),
            "tinier": _oar(0.0, 0.0, 1e-17)}
    assert dm.most_exposed_oars(oars) == ["tiny", "tinier", "zero1"]
    # a dose resampled slightly below zero ranks below a dose-free OAR
    assert dm.most_exposed_oars({"below": _oar(0.0, 0.0, -1e-4), "free": _oar(0.0, 0.0, 0.0)}) == ["free", "below"]


# ---- gamma: which voxels are scored (matRad's doseIx, inside the body) ----

def test_gamma_voxels_either_dose_above_the_cutoff_of_its_own_maximum():
    #                  0     1      2       3    4    5      6    7    8     9    10   11    12
    d_ct = np.array([10.0, 0.201, 0.1995, 0.2, 0.0, 0.0, 0.0, 3.0, 0.0, 0.1, 1.0, 1.01, 0.0])
    d_sct = np.array([10.0, 0.0, 0.0, 0.0, 0.401, 0.3, 0.4, 3.0, 20.0, 0.1, 0.0, 0.0, 2.0])
    body = np.ones(d_ct.shape, bool)
    body[7] = False
    # 2 %: 0.2 Gy on the CT dose (max 10), 0.4 Gy on the sCT dose (max 20), strictly above
    expected = [1, 1, 0, 0, 1, 0, 0, 0, 1, 0, 1, 1, 1]
    assert dm.gamma_voxels(d_ct, d_sct, body).astype(int).tolist() == expected
    # 10 %: 1 Gy and 2 Gy
    expected10 = [1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0]
    assert dm.gamma_voxels(d_ct, d_sct, body, cutoff_percent=10.0).astype(int).tolist() == expected10
    assert dm.gamma_voxels(d_ct.reshape(1, 13), d_sct.reshape(1, 13), body.reshape(1, 13)).shape == (1, 13)
    # a body read from a label image (0 outside, any other value inside) selects the same voxels, as a mask
    labels = np.where(body, 2, 0).astype(np.uint8)
    labels[0] = 1
    selected = dm.gamma_voxels(d_ct, d_sct, labels)
    assert selected.dtype == bool and selected.astype(int).tolist() == expected


# ---- gamma pass rate: 2 %/2 mm global, pymedphys ----

SPACING = (2.5, 1.5, 0.8)   # z, y, x: anisotropic; 1 voxel in z, 1 in y and 2 in x: 2.5, 1.5 and 1.6 mm


@pytest.fixture(autouse=True, scope="module")
def _one_numba_thread():
    """pymedphys interpolates in numba threads: on a loaded machine tiny arrays run ~20x faster on one."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


def _rate(d_ct, d_sct, spacing=SPACING, body=None, **kw):
    body = np.ones(d_ct.shape, bool) if body is None else body
    return dm.gamma_pass_rate(d_ct, d_sct, spacing, body, **kw)


def test_a_uniform_dose_shift_of_1_percent_passes_2_percent_is_the_limit_and_2_5_percent_fails():
    d_ct = np.full((3, 4, 5), 50.0)
    assert _rate(d_ct, d_ct + 0.5) == 100.0
    assert _rate(d_ct, d_ct - 0.5) == 100.0
    assert _rate(d_ct, d_ct + 1.0) == 0.0    # gamma exactly 1: not below 1
    assert _rate(d_ct, d_ct + 1.25) == 0.0


def test_the_dose_criterion_is_global_2_percent_of_the_ct_maximum():
    d_ct = np.full((3, 4, 5), 2.0)
    d_ct[1, 2, 2] = 10.0
    # +0.1 Gy: 1 % of the 10 Gy maximum everywhere (5 % of the local 2 Gy: a local gamma fails there)
    assert _rate(d_ct, d_ct + 0.1) == 100.0


@pytest.mark.parametrize("axis, voxels", [(0, 1), (1, 1), (2, 2)])
def test_a_field_edge_shifted_by_less_than_2_mm_passes_and_by_more_fails(axis, voxels):
    shape = (4, 6, 8)
    index = np.indices(shape)[axis]
    d_ct = np.where(index >= 2, 10.0, 0.0)
    d_sct = np.where(index >= 2 + voxels, 10.0, 0.0)   # the field edge `voxels` further along `axis`
    scored = index >= 2                                # either dose above 0.2 Gy
    # the voxels in between are 10 Gy off, their match (2 + voxels - index) voxels away: they pass below 2 mm
    failing = scored & (index < 2 + voxels) & ((2 + voxels - index) * SPACING[axis] >= 2.0)
    expected = 100.0 * (scored & ~failing).sum() / scored.sum()
    assert expected == (50.0 if axis == 0 else 100.0)
    assert _rate(d_ct, d_sct) == pytest.approx(expected, abs=1e-9)
    # the body restriction: leave the edge out and every scored voxel passes
    assert _rate(d_ct, d_sct, body=~failing) == 100.0


def test_a_negative_ct_dose_voxel_is_scored_as_matrad_does():
    d_ct = np.zeros((2, 2, 6))
    d_sct = np.zeros((2, 2, 6))
    d_ct[..., :3] = d_sct[..., :3] = 10.0
    d_ct[..., 3] = -0.01   # resampling ringing below zero
    d_sct[..., 3] = 0.3    # above 2 % of the sCT maximum: scored; its match (0 Gy) one 1-mm voxel away
    assert _rate(d_ct, d_sct, spacing=(1.0, 1.0, 1.0)) == 100.0


def _smooth_pair(seed=12, shape=(5, 6, 7)):   # a pair whose pass rate moves with pymedphys' interp_fraction
    rng = np.random.default_rng(seed)
    d_ct = ndimage.gaussian_filter(rng.uniform(0, 10, shape), 1.0)
    d_sct = d_ct + ndimage.gaussian_filter(rng.normal(0, 0.6, shape), 1.0)
    return d_ct, d_sct


@pytest.mark.parametrize("cutoff", [None, 10.0])
def test_gamma_pass_rate_equals_pymedphys_on_a_smooth_dose_pair(cutoff):
    d_ct, d_sct = _smooth_pair()
    spacing = (2.5, 1.5, 1.0)
    body = np.ones(d_ct.shape, bool)
    body[:, 0, :] = False
    axes = tuple(np.arange(n) * s for n, s in zip(d_ct.shape, spacing))
    gamma = pymedphys.gamma(axes, d_ct, axes, d_sct, dose_percent_threshold=2, distance_mm_threshold=2,
                            lower_percent_dose_cutoff=0, interp_fraction=10)
    percent = 2.0 if cutoff is None else cutoff
    scored = body & ((d_ct > percent / 100 * d_ct.max()) | (d_sct > percent / 100 * d_sct.max()))
    expected = 100.0 * np.mean(gamma[scored] < 1)
    assert 0 < expected < 100
    kw = {} if cutoff is None else {"cutoff_percent": cutoff}
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no deprecated pymedphys argument
        assert _rate(d_ct, d_sct, spacing=spacing, body=body, **kw) == pytest.approx(expected, abs=1e-9)


def test_gamma_pass_rate_is_nan_when_no_voxel_is_scored():
    d_ct, d_sct = _smooth_pair()
    assert math.isnan(_rate(d_ct, d_sct, body=np.zeros(d_ct.shape, bool)))
    zero = np.zeros((2, 3, 4))
    assert math.isnan(_rate(zero, zero))
