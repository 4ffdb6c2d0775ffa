"""dgcf_evaluate --dose: identity, sensitivity, an independent recomputation of SynthRAD's dose metrics, and
the inputs around them. One tiny rotated phantom (non-identity direction), a coarse dose grid, a non-default
prescription and margin, so the planning runs stay within seconds."""
from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from dgcf_auto.dataset import example as ex
from dgcf_auto.errors import DGCFError

RX = 3.0          # SynthRAD's pelvis prescription, from the P in the case id (no --rx given)
CASE = "1PA004"  # case index 3: a small in-plane rotation, so planning resamples onto an axis-aligned grid
BAD = "1PA002"   # its structures hold no target: left out of the dose evaluation, the other case scored
SHIFT_HU = 80.0


def _settings(**changes):
    from dgcf_auto.evaluation.dose.plan import DoseSettings

    return DoseSettings(**{"margin_mm": 4.0, "dose_grid_mm": 4.0, "photon_beams": 4, **changes})


def _write_sct(ct_file, mask_file, target, shift):
    ct = sitk.ReadImage(str(ct_file))
    hu = sitk.GetArrayFromImage(ct).astype(np.float32)
    hu[sitk.GetArrayFromImage(sitk.ReadImage(str(mask_file))) > 0] += shift
    sct = sitk.GetImageFromArray(hu)
    sct.CopyInformation(ct)
    sitk.WriteImage(sct, str(target))


def _clinic_structures(folder):
    """What a clinic's structure set holds besides organs: a PTV (label maps cannot overlap: the 4 mm ring
    around the prostate), a CTV shell outside it and the External contour (every other body voxel)."""
    from dgcf_auto.evaluation.dose.structures import body_mask, grow

    labels_image = sitk.ReadImage(str(folder / "structures.nii.gz"))
    labels = sitk.GetArrayFromImage(labels_image)
    legend = json.loads((folder / "structures.json").read_text())
    spacing = labels_image.GetSpacing()[::-1]
    prostate = labels == legend["prostate"]
    labels[grow(prostate, 4.0, spacing) & (labels == 0)] = 6
    labels[grow(prostate, 7.0, spacing) & (labels == 0)] = 7
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "ct.nii.gz")))
    labels[body_mask(ct) & (labels == 0)] = 8
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(labels_image)
    sitk.WriteImage(out, str(folder / "structures.nii.gz"))
    (folder / "structures.json").write_text(json.dumps({**legend, "PTV": 6, "CTV_1": 7, "External": 8}))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{"same": summary, "shift": summary, "photon_only": summary, "root": folder}: the CT as its own sCT,
    then CT + 80 HU in the body (both modalities), then the shifted sCT photon-only with the 10 % gamma
    cut-off (its plan from the cache). A second case without its target stays out of every dose part."""
    from dgcf_auto.evaluation.evaluate import evaluate_folders

    root = tmp_path_factory.mktemp("dose")
    ex.make_example_dataset(root / "all", "mr2ct", n=4, seed=0, size_scale=0.6)
    (root / "ref").mkdir()
    for name in (CASE, BAD):
        shutil.copytree(root / "all" / name, root / "ref" / name)
    _clinic_structures(root / "ref" / CASE)
    (root / "ref" / BAD / "structures.json").write_text(json.dumps({"bladder": 2, "rectum": 3}))
    out = {"root": root}
    for name, shift, settings in (("same", 0.0, _settings()), ("shift", SHIFT_HU, _settings()),
                                  ("photon_only", SHIFT_HU, _settings(modalities=("photon",),
                                                                      gamma_cutoff_percent=10.0))):
        (root / name).mkdir()
        for case in (CASE, BAD):
            _write_sct(root / "ref" / case / "ct.nii.gz", root / "ref" / case / "mask.nii.gz",
                       root / name / f"{case}.nii.gz", shift)
        out[name] = evaluate_folders(root / "ref", root / name, root / f"out_{name}" / "summary.json",
                                     dose=settings, dose_cache=root / "cache")
    return out


def _metrics(summary, case=None):
    """The metrics of `case` (default: CASE, or the only case of a one-case summary)."""
    rows = {row["case"]: row["metrics"] for row in summary["metric_per_case"]}
    return rows[case or (CASE if CASE in rows else next(iter(rows)))]


def test_identity_gives_zero_error_and_full_gamma(runs):
    m = _metrics(runs["same"])
    for modality in ("photon", "proton"):
        assert m[f"dose_mae_target_{modality}"] == 0.0
        assert m[f"dvh_{modality}"] == pytest.approx(0.0, abs=1e-9)  # SynthRAD's eps: 1e-12 / D98 at most
        assert m[f"gamma_{modality}"] == 100.0
        ptv = runs["same"]["dose"]["cases"][CASE]["dvh"][modality]["ct"]["PTV"]
        # the plan delivers Rx (D98 lower: the PTV of this 6 cm phantom lies in the photons' build-up region)
        assert ptv["D98"] > 0.75 * RX and ptv["Dmean"] == pytest.approx(RX, rel=0.05)


def test_80_hu_shift_hurts_protons_more_than_photons(runs):
    m = _metrics(runs["shift"])
    assert m["dose_mae_target_proton"] > m["dose_mae_target_photon"] > 0
    assert m["dvh_proton"] > m["dvh_photon"] > 1e-6
    assert m["gamma_proton"] < 100.0
    assert m["gamma_photon"] <= 100.0
    # the second run scored against the cached reference plan of the first
    record = runs["shift"]["dose"]["cases"][CASE]
    assert record["photon_reference"] == record["proton_reference"] == "cache"
    assert runs["same"]["dose"]["cases"][CASE]["photon_reference"] == "planned"


def test_photon_only_run_reuses_the_photon_plan_of_a_photon_and_proton_run(runs):
    """The cache key once held the modality list, so `--dose photon` planned again."""
    record = runs["photon_only"]["dose"]["cases"][CASE]
    assert record["photon_reference"] == "cache" and "proton_reference" not in record
    assert "gamma_proton" not in _metrics(runs["photon_only"])
    assert _metrics(runs["photon_only"])["dose_mae_target_photon"] == _metrics(runs["shift"])["dose_mae_target_photon"]


def test_one_case_without_its_target_is_left_out_and_the_others_are_scored(runs):
    from dgcf_auto.evaluation.summary_schema import SUMMARY_SCHEMA
    from dgcf_auto.schema import check

    summary = runs["shift"]
    check(summary, SUMMARY_SCHEMA, "summary")
    reason = ("case 1PA002: no structure named 'prostate' for the dose target (structures: bladder, rectum; "
              "choose with --dose_target or --dose_targets)")
    assert summary["not_evaluated"] == [{"case": BAD, "reason": reason, "part": "dose"}]
    assert summary["dose"]["cases"][BAD] == {"not_evaluated": reason}
    bad = _metrics(summary, BAD)
    assert "mae" in bad and not any(k.startswith(("dose_", "dvh_", "gamma_")) for k in bad)  # image metrics kept
    assert summary["n"]["dose_mae_target_photon"] == 1 and summary["n"]["mae"] == 2


def test_rx_ptv_oars_and_body_as_synthrad_and_a_clinic_expect(runs):
    record = runs["shift"]["dose"]["cases"][CASE]
    assert record["rx_gy"] == 3.0 and record["rx_source"] == "SynthRAD region letter P"
    assert record["target"] == "prostate" and record["ptv_structure"] == "PTV" and record["margin_mm"] is None
    assert record["ptv"] == "structure 'PTV' as it is (with 'prostate')"
    assert record["body"] == "structure 'External'"
    assert record["oars"] == ["bladder", "rectum", "femoral_head_right", "femoral_head_left"]  # no PTV, CTV_1, External
    assert sorted(record["not_oars"]) == ["CTV_1", "External", "PTV"]
    for modality in ("photon", "proton"):
        assert not {"PTV", "CTV_1", "External"} & set(record["dvh"][modality]["oars_used"])
    settings = runs["shift"]["dose"]["settings"]
    assert "proton_layer_mm" not in settings and "layer_spacing_mm" not in settings["proton"]
    assert settings["gamma_cutoff"] == "matRad: 2 % of each dose's own maximum, on either dose, inside the body"
    assert runs["photon_only"]["dose"]["settings"]["gamma_cutoff"] == \
        "10 % of each dose's own maximum, on either dose, inside the body"


# ---- independent recomputation from the written files (numpy + pymedphys, nothing from the package) ----

def _matrad_dx(values, x):
    """matRad_calcQualityIndicators: interp1(linspace(0, 1, n), sort(dose), (100 - x) / 100)."""
    ordered = np.sort(values)
    return float(np.interp((100 - x) / 100, np.linspace(0, 1, ordered.size), ordered))


def _independent(files, record, cutoff=2.0):
    import pymedphys

    grid = sitk.ReadImage(files["structures_plan"])
    codes = sitk.GetArrayFromImage(grid).astype(np.int64)
    masks = {name: (codes >> bit) & 1 == 1 for bit, name in enumerate(record["structures_plan_bits"])}
    dose = {}
    for key in ("dose_ct", "dose_sct"):
        image = sitk.ReadImage(files[key])
        dose[key] = image
    on_ct = {k: sitk.GetArrayFromImage(sitk.Resample(v, grid, sitk.Transform(), sitk.sitkLinear, 0.0,
                                                     sitk.sitkFloat64)) for k, v in dose.items()}
    ct, sct = on_ct["dose_ct"], on_ct["dose_sct"]
    high = ct >= 0.9 * RX
    mae = float(np.mean(np.abs(ct[high] - sct[high])) / RX)

    def values(d, name):
        v = d[masks[name]]
        return {"D2": _matrad_dx(v, 2), "D5": _matrad_dx(v, 5), "D98": _matrad_dx(v, 98), "mean": float(v.mean()),
                "CI": (np.sum(v >= 0.95 * RX) ** 2 / (v.size * np.sum(d >= 0.95 * RX)))}

    eps = 1e-12
    rel = lambda a, b: abs(a - b + eps) / (a + eps)  # noqa: E731
    p_ct, p_sct = values(ct, "PTV"), values(sct, "PTV")
    oars = [n for n in masks if n not in ("PTV", "BODY")]
    oar_ct = {n: values(ct, n) for n in oars}
    chosen = sorted(oars, key=lambda n: (oar_ct[n]["D5"] + oar_ct[n]["mean"]) / 2, reverse=True)[:3]
    dvh = rel(p_ct["D98"], p_sct["D98"]) + rel(p_ct["CI"], p_sct["CI"])
    dvh += sum(rel(oar_ct[n]["D2"], values(sct, n)["D2"]) for n in chosen) / len(chosen)
    dvh += sum(rel(oar_ct[n]["mean"], values(sct, n)["mean"]) for n in chosen) / len(chosen)
    d_ct, d_sct = (sitk.GetArrayFromImage(d).astype(np.float64) for d in dose.values())
    body_image = sitk.GetImageFromArray(masks["BODY"].astype(np.uint8))
    body_image.CopyInformation(grid)
    body = sitk.GetArrayFromImage(sitk.Resample(body_image, dose["dose_ct"], sitk.Transform(),
                                                sitk.sitkNearestNeighbor, 0)) > 0
    spacing = dose["dose_ct"].GetSpacing()[::-1]
    axes = tuple(np.arange(n) * s for n, s in zip(d_ct.shape, spacing))
    g = pymedphys.gamma(axes, d_ct, axes, d_sct, dose_percent_threshold=2, distance_mm_threshold=2,
                        lower_percent_dose_cutoff=0, quiet=True)
    # matRad_gammaIndex as SynthRAD reads it: inside the ROI (body), either dose above the cut-off, gamma < 1
    evaluated = body & ((d_ct > cutoff / 100 * d_ct.max()) | (d_sct > cutoff / 100 * d_ct.max()))
    gamma = 100.0 * np.mean(g[evaluated] < 1)
    return mae, dvh, gamma, chosen


@pytest.mark.parametrize("run,modality,cutoff", [("shift", "photon", 2.0), ("shift", "proton", 2.0),
                                                  ("photon_only", "photon", 10.0)])
def test_metrics_recomputed_from_the_written_files(runs, run, modality, cutoff):
    summary = runs[run]
    record = summary["dose"]["cases"][CASE]
    files = {**record["files"][modality], "structures_plan": record["files"]["structures_plan"]}
    mae, dvh, gamma, chosen = _independent(files, record, cutoff)
    m = _metrics(summary)
    # rel 1e-5: NIfTI stores the rotated case's planning grid in float32, so the files' grid is off by ~1e-6 mm
    assert m[f"dose_mae_target_{modality}"] == pytest.approx(mae, rel=1e-5)
    assert m[f"dvh_{modality}"] == pytest.approx(dvh, rel=1e-5)
    assert m[f"gamma_{modality}"] == pytest.approx(gamma, abs=1e-9)
    assert record["dvh"][modality]["oars_used"] == chosen


def test_files_named_in_the_summary_and_plan_recorded(runs):
    summary = runs["shift"]
    record = summary["dose"]["cases"][CASE]
    folder = runs["root"] / "out_shift" / "dose" / CASE
    for modality in ("photon", "proton"):
        names = {k: v for k, v in record["files"][modality].items()}
        assert names == {"dose_ct": str(folder / f"dose_ct_{modality}.nii.gz"),
                         "dose_sct": str(folder / f"dose_sct_{modality}.nii.gz"),
                         "dose_png": str(folder / f"dose_{modality}.png"), "dvh_png": str(folder / f"dvh_{modality}.png")}
        dose = sitk.ReadImage(names["dose_ct"])
        assert dose.GetSpacing() == pytest.approx((4.0, 4.0, 4.0))
        assert np.allclose(dose.GetDirection(), np.eye(3).ravel())
    settings = summary["dose"]["settings"]
    assert settings["rx_gy"] == "by region letter of the case id: B 2 Gy, P 3 Gy"
    assert settings["margin_mm"] == 4.0 and settings["dose_grid_mm"] == 4.0
    assert settings["photon"]["gantry_angles"] == [0.0, 90.0, 180.0, 270.0]
    assert settings["proton"]["gantry_angles"] == [90.0, 270.0]
    assert settings["hlut"]["source"] == "pyRadPlan default_hlut()"
    assert settings["hlut"]["hu"][0] == -1024 and settings["hlut"]["density"][-1] == 2.505
    assert record["structures_source"] == "label map" and record["target"] == "prostate"


# ---- cheap checks: no planning ----

def test_dvh_metric_formula_by_hand():
    from dgcf_auto.evaluation.dose.metrics import dvh_metric

    target_ct, target_sct = {"D98": 2.0, "CI95": 0.8}, {"D98": 1.9, "CI95": 0.6}
    # c has the highest D2 but the lowest (D5 + Dmean) / 2: SynthRAD ranks by D5, so c stays out
    oars_ct = {"a": {"D2": 1.0, "D5": 1.0, "Dmean": 0.5}, "b": {"D2": 2.0, "D5": 1.8, "Dmean": 1.0},
               "c": {"D2": 4.0, "D5": 0.1, "Dmean": 0.05}, "d": {"D2": 1.5, "D5": 1.5, "Dmean": 0.9}}
    oars_sct = {"a": {"D2": 1.1, "Dmean": 0.5}, "b": {"D2": 1.8, "Dmean": 1.1}, "c": {"D2": 5.0, "Dmean": 5.0},
                "d": {"D2": 1.5, "Dmean": 0.45}}
    value, used = dvh_metric(target_ct, target_sct, oars_ct, oars_sct)
    assert used == ["b", "d", "a"]  # (D5 + Dmean) / 2: 1.4, 1.2, 0.75, c 0.075
    expected = 0.1 / 2.0 + 0.2 / 0.8 + (0.2 / 2.0 + 0.0 + 0.1 / 1.0) / 3 + (0.1 / 1.0 + 0.45 / 0.9 + 0.0) / 3
    assert value == pytest.approx(expected, rel=1e-9)


def test_mae_target_counts_only_voxels_above_90_percent_of_rx():
    from dgcf_auto.evaluation.dose.metrics import mae_target

    d_ct = np.array([2.0, 1.8, 1.79, 0.5])
    d_sct = np.array([1.9, 2.0, 0.0, 3.0])
    assert mae_target(d_ct, d_sct, 2.0) == pytest.approx((0.1 + 0.2) / 2.0 / 2)


def test_example_structures_follow_the_tissue_map_and_the_patient_sides():
    for index in (0, 1):  # 1: stored RAS, x flipped
        images = ex.make_example_case(np.random.default_rng([0, index]), "mr2ct", index, size_scale=0.5)
        labels = sitk.GetArrayFromImage(images["labels"])
        structures = sitk.GetArrayFromImage(images["structures"])
        assert np.array_equal(structures == ex.STRUCTURES["prostate"], labels == ex.PROSTATE)
        assert np.array_equal(structures == ex.STRUCTURES["bladder"], labels == ex.BLADDER)
        centre_x = {}
        for side in ("femoral_head_left", "femoral_head_right"):
            z, y, x = np.argwhere(structures == ex.STRUCTURES[side]).mean(axis=0)
            centre_x[side] = images["structures"].TransformContinuousIndexToPhysicalPoint((x, y, z))[0]
        assert centre_x["femoral_head_left"] > centre_x["femoral_head_right"]  # LPS: +x is the patient's left


def test_planning_frame_reorients_flips_exactly_and_resamples_rotations():
    from dgcf_auto.evaluation.dose.plan import planning_frame

    identity = np.eye(3).ravel()
    for index in (1, 3):  # stored RAS; rotated by a few degrees
        images = ex.make_example_case(np.random.default_rng([0, index]), "mr2ct", index, size_scale=0.4)
        labels = images["structures"]
        framed = planning_frame(labels, label=True)
        assert np.allclose(framed.GetDirection(), identity)
        if index == 1:
            lps = sitk.DICOMOrient(labels, "LPS")
            assert np.array_equal(sitk.GetArrayFromImage(framed), sitk.GetArrayFromImage(lps))
        centres = []
        for image in (labels, framed):  # the prostate stays where it is in the patient (within a voxel)
            z, y, x = np.argwhere(sitk.GetArrayFromImage(image) == ex.STRUCTURES["prostate"]).mean(axis=0)
            centres.append(np.array(image.TransformContinuousIndexToPhysicalPoint((x, y, z))))
        assert np.linalg.norm(centres[0] - centres[1]) < max(labels.GetSpacing())


def test_planner_beams_are_the_recorded_ones():
    from dgcf_auto.evaluation.dose.plan import DoseSettings, PlanningCase, Planner
    from dgcf_auto.evaluation.dose.structures import body_mask

    images = ex.make_example_case(np.random.default_rng([0, 0]), "mr2ct", 0, size_scale=0.4)
    ct = sitk.Cast(images["ct"], sitk.sitkFloat32)
    organs = sitk.GetArrayFromImage(images["structures"])
    case = PlanningCase(ct, organs == ex.STRUCTURES["prostate"], {"bladder": organs == ex.STRUCTURES["bladder"]},
                        body_mask(sitk.GetArrayFromImage(ct)))
    settings = DoseSettings(photon_beams=7, dose_grid_mm=5.0)
    for modality, expected in (("photon", [360.0 * k / 7 for k in range(7)]), ("proton", [90.0, 270.0])):
        planner = Planner(case, modality, settings, 2.0)
        assert [b.gantry_angle for b in planner.stf.beams] == pytest.approx(expected)
        assert [b.couch_angle for b in planner.stf.beams] == [0.0] * len(expected)
        assert settings.plan_key(modality, 2.0)[modality]["gantry_angles"] == pytest.approx(expected)
        assert planner.stf.beams[0].radiation_mode == modality + "s"


def test_hu_table_and_settings_checks(tmp_path):
    from dgcf_auto.evaluation.dose.plan import DoseSettings, read_hlut

    table = tmp_path / "hlut.csv"
    table.write_text("HU,density\n-1000,0.0012\n0,1.0\n1500,1.9\n")
    rows = read_hlut(table)
    assert rows == ((-1000.0, 0.0012), (0.0, 1.0), (1500.0, 1.9))
    hlut = DoseSettings(hlut=rows).describe()["hlut"]
    assert hlut == {"source": "given", "hu": [-1000.0, 0.0, 1500.0], "density": [0.0012, 1.0, 1.9]}
    table.write_text("0,1.0\n-1000,0.001\n")
    with pytest.raises(DGCFError, match=r"HU table .*hlut.csv: expected at least two rows HU,density with HU increasing"):
        read_hlut(table)
    with pytest.raises(DGCFError, match=r"dose: rx_gy must be positive, got -2.0"):
        DoseSettings(rx_gy=-2.0)


def test_example_dataset_writes_structures_and_legend_unless_asked_not_to(tmp_path):
    ex.make_example_dataset(tmp_path / "on", n=1, size_scale=0.3)
    ex.make_example_dataset(tmp_path / "off", n=1, size_scale=0.3, structures=False)
    assert json.loads((tmp_path / "on" / "1PA001" / "structures.json").read_text()) == ex.STRUCTURES
    labels = sitk.ReadImage(str(tmp_path / "on" / "1PA001" / "structures.nii.gz"))
    ct = sitk.ReadImage(str(tmp_path / "on" / "1PA001" / "ct.nii.gz"))
    assert labels.GetSize() == ct.GetSize() and labels.GetDirection() == ct.GetDirection()
    assert not (tmp_path / "off" / "1PA001" / "structures.nii.gz").exists()


@pytest.fixture()
def small_case(tmp_path):
    ex.make_example_dataset(tmp_path / "ref", n=1, size_scale=0.3)
    (tmp_path / "pred").mkdir()
    shutil.copy(tmp_path / "ref" / "1PA001" / "ct.nii.gz", tmp_path / "pred" / "1PA001.nii.gz")
    return tmp_path


def test_case_without_structures_is_not_evaluated_with_one_line(small_case, monkeypatch, caplog):
    from dgcf_auto.evaluation.dose import run
    from dgcf_auto.evaluation.evaluate import evaluate_folders

    for name in ("structures.nii.gz", "structures.json"):
        (small_case / "ref" / "1PA001" / name).unlink()

    def no_weights(*args, **kwargs):
        raise DGCFError("SegScore: TotalSegmentator weights not found in /nowhere")

    monkeypatch.setattr(run, "totalsegmentator_structures", no_weights)
    summary = evaluate_folders(small_case / "ref", small_case / "pred", small_case / "out" / "summary.json",
                               dose=_settings(), dose_cache=None)
    assert "dose_mae_target_photon" not in _metrics(summary) and "mae" in _metrics(summary)
    reason = summary["dose"]["cases"]["1PA001"]["not_evaluated"]
    assert reason.startswith("case 1PA001: no structures for the dose plan") and "weights not found" in reason
    assert summary["not_evaluated"] == [{"case": "1PA001", "reason": reason, "part": "dose"}]
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"].count(reason) == 1  # one line


def test_totalsegmentator_structures_when_none_are_given(monkeypatch):
    from dgcf_auto.evaluation import segscore
    from dgcf_auto.evaluation.dose.structures import totalsegmentator_structures

    images = ex.make_example_case(np.random.default_rng([0, 0]), "mr2ct", 0, size_scale=0.4)
    ids = {name: label for label, name in segscore.totalseg_class_map().items()}
    ours = sitk.GetArrayFromImage(images["structures"])

    class FakeTotalSegmentator:  # TotalSegmentator's label ids for our phantom's organs
        settings = {"version": "fake"}

        def __init__(self, fast, device):
            pass

        def __call__(self, image):
            labels = np.zeros(ours.shape, np.uint8)
            labels[ours == ex.STRUCTURES["prostate"]] = ids["prostate"]
            labels[ours == ex.STRUCTURES["bladder"]] = ids["urinary_bladder"]
            labels[ours == ex.STRUCTURES["femoral_head_left"]] = ids["femur_left"]
            return labels

    monkeypatch.setattr(segscore, "TotalSegmentatorSegmenter", FakeTotalSegmentator)
    found = totalsegmentator_structures("1PA001", images["ct"])
    assert list(found.masks) == ["prostate", "bladder", "femur_left"]  # absent ones (colon, femur_right) left out
    assert np.array_equal(found.masks["bladder"], ours == ex.STRUCTURES["bladder"])
    assert found.source == "TotalSegmentator fake 'total'"


def test_bad_structure_inputs_name_case_and_file_and_leave_only_that_case_out(small_case):
    from dgcf_auto.evaluation.evaluate import evaluate_folders

    def reason():
        summary = evaluate_folders(small_case / "ref", small_case / "pred", small_case / "out" / "s.json",
                                   dose=_settings())
        assert "mae" in _metrics(summary, "1PA001")  # the image metrics are still there
        (row,) = summary["not_evaluated"]
        assert row["case"] == "1PA001" and row["part"] == "dose"
        return row["reason"]

    legend = small_case / "ref" / "1PA001" / "structures.json"
    legend.write_text(json.dumps({"bladder": 2}))
    assert re.match(r"case 1PA001: no structure named 'prostate' .*structures: bladder", reason())
    legend.write_text("[1, 2")
    assert re.match(r"case 1PA001: file .*structures.json: not a structure legend", reason())
    legend.write_text(json.dumps({"prostate": 1, "liver": 9}))
    assert re.match(r"case 1PA001: file .*structures.nii.gz: no voxel has the label of liver", reason())
    legend.write_text(json.dumps(ex.STRUCTURES))
    labels_file = small_case / "ref" / "1PA001" / "structures.nii.gz"
    labels = sitk.ReadImage(str(labels_file))
    labels.SetSpacing(tuple(2 * v for v in labels.GetSpacing()))
    sitk.WriteImage(labels, str(labels_file))
    assert re.match(r"case 1PA001: file .*structures.nii.gz: not on the grid of the CT \(spacing", reason())
    shutil.rmtree(small_case / "out")
    with pytest.raises(DGCFError, match=r"structures folder .*nowhere: not found"):
        evaluate_folders(small_case / "ref", small_case / "pred", small_case / "out" / "s.json", dose=_settings(),
                         structures_dir=small_case / "nowhere")
    assert not (small_case / "out" / "s.json").exists() and not (small_case / "out" / "dose").exists()


def test_without_the_extra_dose_says_what_to_install(small_case, monkeypatch, capsys):
    import importlib.util

    from dgcf_auto.cli.evaluate import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyRadPlan" else real(name, *a))
    with pytest.raises(SystemExit) as exit_info:
        main(["-ref", str(small_case / "ref"), "-pred", str(small_case / "pred"), "-o",
              str(small_case / "out" / "s.json"), "--dose", "photon"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1
    assert err == ['dgcf_evaluate: error: --dose needs pyRadPlan: install the dose extra with pip install -e ".[dose]"']
    assert not (small_case / "out" / "s.json").exists()


def test_reference_cache_refuses_a_damaged_entry(tmp_path):
    from dgcf_auto.evaluation.dose.run import ReferenceCache

    cache = ReferenceCache(tmp_path)
    key = {"ct_sha1": "abc", "plan": {"rx_gy": 2.0}}
    dose = sitk.GetImageFromArray(np.full((3, 4, 5), 1.5, np.float32))
    cache.store("c", "photon", key, np.arange(6, dtype=np.float64), dose)
    weights, loaded = cache.load("c", "photon", key, 6)
    assert np.array_equal(weights, np.arange(6)) and np.array_equal(sitk.GetArrayFromImage(loaded),
                                                                   sitk.GetArrayFromImage(dose))
    assert cache.load("c", "photon", key, 7) is None                       # other steering geometry
    assert cache.load("c", "photon", {**key, "ct_sha1": "abd"}, 6) is None  # another CT
    cache.store("c", "photon", {**key, "ct_sha1": "abd"}, np.ones(6), dose)  # its own entry, beside the first
    assert np.array_equal(cache.load("c", "photon", key, 6)[0], np.arange(6))
    assert np.array_equal(cache.load("c", "photon", {**key, "ct_sha1": "abd"}, 6)[0], np.ones(6))
    entry = cache._entry("c", "photon", key)
    (entry / "weights.npy").write_bytes((entry / "weights.npy").read_bytes()[:-8])
    assert cache.load("c", "photon", key, 6) is None                       # truncated: planned again


def test_compare_puts_dose_columns_in_the_table_with_their_direction(tmp_path):
    from dgcf_auto.evaluation.compare import build_table, load_summary

    rows = {"A": (0.01, 0.02, 99.0), "B": (0.03, 0.05, 90.0)}
    paths = []
    for label, (mae, dvh, gamma) in rows.items():
        summary = {"metric_per_case": [{"case": f"c{i}", "reference_file": f"/ref/c{i}.nii.gz",
                                        "metrics": {"mae": 50.0, "dose_mae_target_proton": mae + 0.001 * i,
                                                    "dvh_proton": dvh, "gamma_proton": gamma - i}}
                                       for i in range(3)],
                   "profile": {"name": "synthrad2023", "metrics": {"mae": {"higher_is_better": False}},
                               "table": ["mae"]}, "task": "mr2ct"}
        paths.append(tmp_path / f"{label}.json")
        paths[-1].write_text(json.dumps(summary))
    summaries = [load_summary(p, label) for p, label in zip(paths, rows)]
    assert {"dose_mae_target_proton", "dvh_proton"} <= summaries[0].lower_is_better
    assert "gamma_proton" not in summaries[0].lower_is_better
    methods, columns, cells, _ = build_table(summaries)
    assert [metric for _, metric in columns] == ["mae", "dose_mae_target_proton", "dvh_proton", "gamma_proton"]
    for task, metric in columns[1:]:  # A has the lower errors and the higher gamma: bold everywhere
        assert cells["A", task, metric].best and not cells["B", task, metric].best


def test_rtstruct_in_the_case_folder_gives_the_structures(small_case):
    """No label map: the ROIs of an RTSTRUCT beside the CT, rasterised on its grid, in lower case, plan the dose."""
    from test_dicom import _box, _rtstruct_with_roi

    from dgcf_auto.evaluation.dose.structures import check_structures, rtstruct_structures
    from dgcf_auto.evaluation.evaluate import evaluate_folders

    case = small_case / "ref" / "1PA001"
    for name in ("structures.nii.gz", "structures.json"):
        (case / name).unlink()
    ct = sitk.ReadImage(str(case / "ct.nii.gz"))
    nx, ny, nz = ct.GetSize()
    x0, y0, k = nx // 2 - 3, ny // 2 - 2, nz // 2  # a 6 x 4 voxel box in the body's centre, on two slices
    corners = _box(x0 - 0.5, x0 + 5.5, y0 - 0.5, y0 + 3.5)  # half-integer corners: 6 x 4 voxel centres inside
    rs = _rtstruct_with_roi(case, ct, "Prostate", "1.2.3.4", [(k, corners), (k + 1, corners)])
    structures = rtstruct_structures("1PA001", ct, case / "ct.nii.gz")
    assert structures.source == "rtstruct" and structures.files == [str(rs)]
    assert list(structures.masks) == ["prostate"]  # the contourless PTV ROI gives no structure
    expected = np.zeros(structures.masks["prostate"].shape, bool)
    expected[k:k + 2, y0:y0 + 4, x0:x0 + 6] = True
    np.testing.assert_array_equal(structures.masks["prostate"], expected)
    check_structures("1PA001", case / "ct.nii.gz", None)  # readable: no error
    summary = evaluate_folders(small_case / "ref", small_case / "pred", small_case / "out" / "summary.json",
                               dose=_settings(), dose_cache=None)
    assert summary["dose"]["cases"]["1PA001"]["structures_source"] == "rtstruct"
    assert _metrics(summary)["dose_mae_target_photon"] == 0.0  # the CT as its own sCT


def test_a_planning_error_leaves_that_modality_out_and_the_command_fails_after_writing(small_case, monkeypatch,
                                                                                         capsys):
    """pyRadPlan failing on one case: that case's modality under not_evaluated, the summary written and valid,
    exit code 1 with the reason, no traceback."""
    from dgcf_auto.cli.evaluate import main
    from dgcf_auto.evaluation.dose import plan
    from dgcf_auto.evaluation.summary_schema import SUMMARY_SCHEMA
    from dgcf_auto.schema import check

    def broken(self):
        raise ValueError("Did not find same number of target entries and exits!\nmore")

    monkeypatch.setattr(plan.Planner, "optimise", broken)
    out = small_case / "out" / "s.json"
    with pytest.raises(SystemExit) as exit_info:
        main(["-ref", str(small_case / "ref"), "-pred", str(small_case / "pred"), "-o", str(out), "--dose", "photon",
              "--dose_margin", "4", "--dose_grid", "4", "--photon_beams", "4", "--dose_cache", str(small_case / "c")])
    err = capsys.readouterr().err
    reason = "case 1PA001: photon plan failed (ValueError: Did not find same number of target entries and exits!)"
    assert exit_info.value.code == 1 and reason in err and "Traceback" not in err
    summary = json.loads(out.read_text())
    check(summary, SUMMARY_SCHEMA, "summary")
    assert summary["not_evaluated"] == [{"case": "1PA001", "reason": reason, "part": "dose photon"}]
    assert summary["dose"]["cases"]["1PA001"]["not_evaluated"] == {"photon": reason}
    assert summary["metric_per_case"][0]["metrics"]["mae"] == 0.0
