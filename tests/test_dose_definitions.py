"""Dose evaluation without planning: structures as SynthRAD uses them, its definitions by default,
the cache key, and the dose figures read back from their pixels."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from dgcf_auto.errors import DGCFError
from dgcf_auto.evaluation.dose.structures import CaseStructures, grow, plan_structures, read_target_table

SPACING = (2.0, 1.5, 1.0)  # z, y, x: anisotropic


def _box(shape, z, y, x):
    mask = np.zeros(shape, bool)
    mask[z[0]:z[1], y[0]:y[1], x[0]:x[1]] = True
    return mask


def _clinic(names=("prostate", "ctv", "ptv", "external", "bladder")):
    shape = (12, 30, 30)
    ct = np.full(shape, -1000.0)
    ct[:, 3:27, 3:27] = 0.0
    prostate = _box(shape, (4, 8), (12, 18), (12, 18))
    masks = {"prostate": prostate, "ctv": grow(prostate, 2.0, SPACING), "ptv": grow(prostate, 5.0, SPACING),
             "external": ct > -400, "bladder": _box(shape, (4, 8), (5, 10), (12, 18))}
    extra = {"PTV_7800": masks["ptv"], "ctv1": masks["ctv"], "GTVp": prostate, "ITV": prostate, "Body": ct > -400,
             "BODY": ct > -400, "Skin": ct > -400, "rectum": _box(shape, (4, 8), (20, 25), (12, 18)),
             "Prostate": prostate}
    return ct, {n: (masks | extra)[n] for n in names}


def test_target_volumes_and_body_contours_are_never_oars_and_an_existing_ptv_is_used():
    ct, masks = _clinic()
    chosen = plan_structures("1PA001", CaseStructures(masks, "rtstruct"), ct, SPACING, ("prostate",), 5.0)
    assert list(chosen.oars) == ["bladder"]                      # ctv, ptv, external were OARs before
    np.testing.assert_array_equal(chosen.ptv, masks["ptv"])      # the clinic's PTV as it is, not regrown
    np.testing.assert_array_equal(chosen.body, masks["external"])
    assert chosen.record == {"target": "prostate", "ptv": "structure 'ptv' as it is (with 'prostate')",
                             "ptv_structure": "ptv", "margin_mm": None, "body": "structure 'external'",
                             "not_oars": ["ctv", "ptv", "external"]}
    names = ("Prostate", "PTV_7800", "ctv1", "GTVp", "ITV", "Body", "BODY", "Skin", "bladder", "rectum")
    ct, masks = _clinic(names)
    chosen = plan_structures("1PA001", CaseStructures(masks, "label map"), ct, SPACING, ("prostate",), 5.0)
    assert list(chosen.oars) == ["bladder", "rectum"] and chosen.record["ptv_structure"] == "PTV_7800"
    assert chosen.record["target"] == "Prostate"                 # case-insensitive


def test_without_a_ptv_the_target_is_grown_inside_the_body():
    ct, masks = _clinic(("prostate", "bladder"))
    chosen = plan_structures("1PA001", CaseStructures(masks, "label map"), ct, SPACING, ("prostate",), 4.0)
    distance = ndimage.distance_transform_edt(~masks["prostate"], sampling=SPACING)  # scipy, by hand
    np.testing.assert_array_equal(chosen.ptv, (distance <= 4.0) & (ct > -400))
    assert chosen.record["ptv"] == "'prostate' grown by 4 mm inside the body" and chosen.record["margin_mm"] == 4.0
    assert chosen.record["body"] == "CT above -400 HU, holes filled"


def test_the_first_target_name_a_case_holds_is_used():
    ct, masks = _clinic(("rectum", "bladder"))
    chosen = plan_structures("1PA001", CaseStructures(masks, "x"), ct, SPACING, ("prostate", "Rectum", "bladder"), 0.0)
    assert chosen.record["target"] == "rectum" and list(chosen.oars) == ["bladder"]
    np.testing.assert_array_equal(chosen.ptv, masks["rectum"])
    with pytest.raises(DGCFError, match=r"^case 1PA001: no structure named 'cervix' or 'uterus' for the dose target "
                                        r"\(structures: rectum, bladder; choose with --dose_target or --dose_targets\)$"):
        plan_structures("1PA001", CaseStructures(masks, "x"), ct, SPACING, ("cervix", "uterus"), 5.0)


def test_per_case_target_table_csv_and_json(tmp_path):
    csv_file = tmp_path / "targets.csv"
    csv_file.write_text("case,target\n1PA001,prostate\n# a note\n1PA002, rectum , cervix\n")
    assert read_target_table(csv_file) == {"1PA001": ("prostate",), "1PA002": ("rectum", "cervix")}
    json_file = tmp_path / "targets.json"
    json_file.write_text(json.dumps({"1PA001": "prostate", "1PA002": ["rectum", "cervix"]}))
    assert read_target_table(json_file) == {"1PA001": ("prostate",), "1PA002": ("rectum", "cervix")}
    csv_file.write_text("1PA001\n")
    with pytest.raises(DGCFError, match=r"dose target table .*targets.csv: no target name for 1PA001"):
        read_target_table(csv_file)
    json_file.write_text("[1]")
    with pytest.raises(DGCFError, match=r"dose target table .*targets.json: cannot read it"):
        read_target_table(json_file)


def test_cli_flags_reach_the_settings(tmp_path):
    from dgcf_auto.cli.evaluate import build_parser, dose_settings

    table = tmp_path / "t.csv"
    table.write_text("1PA001,cervix\n")
    args = build_parser().parse_args(["-ref", "r", "-pred", "p", "-o", "o.json", "--dose", "photon",
                                      "--dose_target", "prostate", "rectum", "--dose_targets", str(table),
                                      "--rx", "2.2", "--gamma_cutoff", "10"])
    settings = dose_settings(args)
    assert settings.targets == ("prostate", "rectum") and settings.case_targets == {"1PA001": ("cervix",)}
    assert settings.rx_gy == 2.2 and settings.gamma_cutoff_percent == 10.0
    default = dose_settings(build_parser().parse_args(["-ref", "r", "-pred", "p", "-o", "o.json", "--dose", "proton"]))
    assert default.rx_gy is None and default.gamma_cutoff_percent is None and default.targets == ("prostate",)


def test_rx_follows_the_synthrad_region_letter_unless_given():
    from dgcf_auto.evaluation.dose.plan import rx_for_case

    assert rx_for_case("1PA001", None) == (3.0, "SynthRAD region letter P")   # was 2 Gy
    assert rx_for_case("2PC014", None) == (3.0, "SynthRAD region letter P")
    assert rx_for_case("1BA001", None) == (2.0, "SynthRAD region letter B")
    assert rx_for_case("1PA001", 2.5) == (2.5, "given")
    with pytest.raises(DGCFError, match=r"^case patient7: no SynthRAD region letter .*give it with --rx$"):
        rx_for_case("patient7", None)


def test_cache_key_holds_one_modalitys_plan_and_nothing_else():
    from dgcf_auto.evaluation.dose.plan import DoseSettings

    both = DoseSettings(modalities=("photon", "proton"))
    photon_only = DoseSettings(modalities=("photon",), gamma_cutoff_percent=10.0, targets=("rectum",))
    assert both.plan_key("photon", 3.0) == photon_only.plan_key("photon", 3.0)
    key = both.plan_key("photon", 3.0)
    assert "proton" not in key and "modalities" not in key and key["rx_gy"] == 3.0
    assert both.plan_key("photon", 2.0) != key                                            # Rx changes the plan
    assert DoseSettings(photon_beams=7).plan_key("photon", 3.0) != key
    assert DoseSettings(proton_spot_mm=3.0).plan_key("photon", 3.0) == key                 # a proton setting
    assert DoseSettings(proton_spot_mm=3.0).plan_key("proton", 3.0) != both.plan_key("proton", 3.0)
    with pytest.raises(TypeError):
        DoseSettings(proton_layer_mm=6.0)  # recorded but inert in pyRadPlan 0.5: removed


def test_gamma_voxels_follow_matrads_rule():
    from dgcf_auto.evaluation.dose.metrics import gamma_voxels

    d_ct = np.array([10.0, 0.3, 0.1, 0.1, 0.0, 5.0])
    d_sct = np.array([10.0, 0.1, 0.3, 0.1, 0.5, 5.0])
    body = np.array([True, True, True, True, True, False])
    # 2 % of 10 Gy = 0.2 Gy on either dose, inside the body
    assert gamma_voxels(d_ct, d_sct, body).tolist() == [True, True, True, False, True, False]
    # 10 %: 1 Gy
    assert gamma_voxels(d_ct, d_sct, body, 10.0).tolist() == [True, False, False, False, False, False]


def test_gamma_pass_rate_counts_gamma_below_one_among_those_voxels():
    import pymedphys

    from dgcf_auto.evaluation.dose.metrics import gamma_pass_rate

    d_ct = np.zeros((3, 3, 40))
    d_ct[..., 10:30] = 2.0
    d_sct = d_ct.copy()
    d_sct[..., 14:22] = 2.2    # 10 % hotter over 12 mm: its centre fails 2 %/2 mm
    d_sct[..., 35] = 0.1       # 5 % of the maximum where the CT plan gives nothing: counted (either dose)
    spacing = (1.5, 1.5, 1.5)
    axes = tuple(np.arange(n) * 1.5 for n in d_ct.shape)
    g = pymedphys.gamma(axes, d_ct, axes, d_sct, dose_percent_threshold=2, distance_mm_threshold=2,
                        lower_percent_dose_cutoff=0, quiet=True)
    counted = np.zeros(d_ct.shape, bool)
    counted[..., 10:30] = counted[..., 35] = True   # by hand: above 0.04 Gy on either dose
    expected = 100 * np.mean(g[counted] < 1)
    assert 0 < expected < 100
    body = np.ones_like(d_ct, bool)
    assert gamma_pass_rate(d_ct, d_sct, spacing, body) == pytest.approx(expected)
    body[..., 14:22] = False   # outside the ROI: not counted, the failing voxels go
    counted &= body
    assert gamma_pass_rate(d_ct, d_sct, spacing, body) == pytest.approx(100 * np.mean(g[counted] < 1))
    assert 100 * np.mean(g[counted] < 1) == 100.0


# ---- figures, from their pixels ----

def _images():
    """A 1 mm CT grid (z, y, x) = (20, 96, 120) with one bright 1-voxel line, doses from a 4 mm grid."""
    shape = (20, 96, 120)
    ct = np.full(shape, -1000.0, np.float32)
    ct[:, 10:86, 10:110] = 0.0
    ct[:, 15, 15:105] = 1500.0  # a 1-voxel line: lost on a 4 mm underlay
    zz, yy, xx = np.indices(shape)
    r = np.sqrt(((yy - 48) * 1.0) ** 2 + ((xx - 60) * 1.0) ** 2)
    d_ct = np.clip(3.0 * (1 - r / 40.0), 0, None).astype(np.float32)
    d_sct = d_ct + 0.05 * (d_ct > 0.3)
    d_sct[10, 48, 60] += 50.0  # one hot voxel: must not set the difference scale
    ptv = (r < 12).astype(np.uint8)

    def image(a):
        out = sitk.GetImageFromArray(a)
        out.SetSpacing((1.0, 1.0, 2.0))
        return out
    return image(ct), image(d_ct), image(d_sct.astype(np.float32)), {"PTV": image(ptv)}


def _pixels(fig):
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)


def _panel(fig, ax):
    """Pixels of one axes of the drawn figure."""
    rgb = _pixels(fig)
    box = ax.get_window_extent()
    h = rgb.shape[0]
    return rgb[int(h - box.y1) + 2:int(h - box.y0) - 2, int(box.x0) + 2:int(box.x1) - 2]


def test_dose_figure_pixels():
    from dgcf_auto.evaluation.dose.figures import ISODOSE_COLOURS, PTV_COLOUR, difference_limit, dose_figure

    ct, d_ct, d_sct, structures = _images()
    fig = dose_figure(ct, d_ct, d_sct, structures, 3.0, "t")
    axes = fig.axes
    image_axes = [ax for ax in axes if ax.images]
    assert len(image_axes) == 9
    diff = sitk.GetArrayFromImage(d_sct) - sitk.GetArrayFromImage(d_ct)
    limit = difference_limit(diff, sitk.GetArrayFromImage(d_ct))
    assert limit == pytest.approx(0.05, abs=1e-6)   # 99.5th percentile of |dD| where dose >= 10 %: not 50 Gy
    assert "99.5th percentile" in image_axes[2].get_title()
    # every panel on the CT's own grid: the underlay and the dose images hold the CT's shape
    assert image_axes[0].images[0].get_array().shape == (96, 120)
    assert image_axes[0].images[1].get_array().shape == (96, 120)
    # colour bars say Gy
    labels = [ax.get_xlabel() for ax in axes if not ax.images and ax.get_xlabel()]
    assert labels == ["dose (Gy)", "dose (Gy)", "dose difference (Gy)"]

    axial_ct = _panel(fig, image_axes[0])
    axial_diff = _panel(fig, image_axes[2])
    # the difference panel (axial, centre) is saturated red: 0.05 Gy at a +-0.05 Gy scale
    centre = axial_diff[axial_diff.shape[0] // 2 - 5:axial_diff.shape[0] // 2 + 5,
                        axial_diff.shape[1] // 2 + 10:axial_diff.shape[1] // 2 + 20]
    red = np.array([180, 4, 38])  # coolwarm's top end
    assert np.median(np.abs(centre - (0.6 * red + 0.4 * 102)), axis=(0, 1)).max() < 30
    # the 1-voxel CT line is drawn at full brightness (the dose is below 10 % there: grey underlay only)
    assert (np.abs(axial_ct - 255) <= 3).all(-1).sum() > 100
    # PTV outline, the 95/50/20 % isodose lines (CT solid, sCT dashed) in their colours
    for colour in (PTV_COLOUR, *ISODOSE_COLOURS.values()):
        rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(axial_ct - rgb) <= 40).all(-1).sum() > 20, colour
    # orientation letters and the scale bar: white pixels at the left and right edges mid-height (R, L)
    texts = sorted(t.get_text() for t in image_axes[0].texts)
    assert texts == sorted(["R", "L", "A", "P", "5 cm"])
    assert sorted(t.get_text() for t in image_axes[6].texts) == sorted(["A", "P", "S", "I", "5 cm"])
    bar = [line for line in image_axes[0].lines if line.get_color() == "white"][0]
    assert np.diff(bar.get_xdata())[0] == pytest.approx(50.0)  # 50 columns of 1 mm


def test_dvh_legend_lies_outside_the_curves():
    from dgcf_auto.evaluation.dose.figures import dvh_figure

    rng = np.random.default_rng(0)
    d = rng.uniform(0, 3, (4, 10, 10))
    masks = {f"s{i}": rng.uniform(size=d.shape) > 0.5 for i in range(6)}
    fig = dvh_figure(d, d * 1.01, masks, "t")
    _pixels(fig)
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    axes_box = ax.get_window_extent()
    assert legend.x0 > axes_box.x1  # entirely right of the plotting area
    rgb = _pixels(fig)
    h = rgb.shape[0]
    inside = rgb[int(h - axes_box.y1) + 3:int(h - axes_box.y0) - 3, int(axes_box.x0) + 3:int(axes_box.x1) - 3]
    legend_pixels = rgb[int(h - legend.y1) + 2:int(h - legend.y0) - 2, int(legend.x0) + 2:int(legend.x1) - 2]
    assert (legend_pixels < 128).all(-1).sum() > 50 and inside.size  # the legend text is drawn there


def test_a_label_maps_external_surrounds_the_organs_and_a_couch_stays_out():
    ct, masks = _clinic(("prostate", "bladder"))
    body = ct > -400
    external = body & ~masks["prostate"] & ~masks["bladder"]   # a label map: External holds no organ voxel
    couch = np.zeros_like(body)
    couch[:, 28:30, :] = True                                  # below the patient
    structures = {**masks, "External": external, "Couch": couch}
    chosen = plan_structures("1PA001", CaseStructures(structures, "label map"), ct, SPACING, ("prostate",), 3.0)
    np.testing.assert_array_equal(chosen.body, body)           # organs inside, couch outside
    assert list(chosen.oars) == ["bladder"]                   # the couch lies outside the body: no OAR voxels
