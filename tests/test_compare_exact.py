"""dgcf_compare on small hand-made tables: every cell, flag, p-value, note and output text checked exactly.

The expected best and starred cells are written out by hand from how the data were made; p-values come from
scipy here; the Markdown, CSV and LaTeX of a small table are literal. No datasets, summaries live in tmp_path.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from dgcf_auto.errors import DGCFError
from dgcf_auto.evaluation import compare

# A custom profile: MAE lower-is-better by its definition, PSNR higher, SSIM without a direction (higher).
PROFILE = {"name": "custom", "table": ["mae", "psnr", "ssim"],
           "metrics": {"mae": {"higher_is_better": False}, "psnr": {"higher_is_better": True}, "ssim": {}}}
CASES = ["c1", "c2", "c3", "c4", "c5", "c6"]
TASK = "MRI→CT"


def write(path, values, cases=CASES, profile=PROFILE, **fields):
    """A summary JSON with per-case `values` ({metric: [value per case]}) and extra top-level `fields`."""
    rows = [{"case": c, "reference_file": f"/raw/{c}/ct.nii.gz", "metrics": {m: v[i] for m, v in values.items()}}
            for i, c in enumerate(cases)]
    fields = {"dataset": "Dataset001_X", "task": "mr2ct", **fields}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"metric_per_case": rows, "profile": profile,
                                **{k: v for k, v in fields.items() if v is not None}}))
    return path


def load(tmp_path, name, values, label=None, **kwargs):
    return compare.load_summary(write(tmp_path / name / "s.json", values, trainer=name, **kwargs.pop("fields", {}),
                                      **kwargs), label)


# --------------------------------------------------------------------------------------- three methods, 7 columns
MAE_A = [50.0, 52.0, 54.0, 56.0, 58.0, 60.0]
PSNR_A = [28.0, 29.0, 27.0, 30.0, 26.0, 31.0]
SSIM_A = [0.80, 0.82, 0.84, 0.86, 0.88, 0.90]
THREE = {
    # MAE: A best and significantly better than B (the runner-up, +0.5 HU each case); C worse and noisy.
    # PSNR: B best, not significantly; C significantly worse than A but by less than 1 dB.
    # SSIM: A and C tie for best; B 1 point lower every case.
    # hd95_* (lower by its prefix): C best. dose_mae_target_* (lower) / gamma_* (higher): dose columns.
    "A": {"mae": MAE_A, "psnr": PSNR_A, "ssim": SSIM_A, "hd95_x": [3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
          "segscore": [0.70, 0.71, 0.72, 0.73, 0.74, 0.75],
          "dose_mae_target_photon": [0.02, 0.03, 0.02, 0.03, 0.02, 0.03], "unused": [1.0] * 6},
    "B": {"mae": [a + d for a, d in zip(MAE_A, [0.5, 0.6, 0.4, 0.55, 0.45, 0.5])],
          "psnr": [a + d for a, d in zip(PSNR_A, [0.8, -0.6, 0.9, -0.3, 0.7, 0.1])],
          "ssim": [a - 0.01 for a in SSIM_A], "hd95_x": [3.5, 4.4, 5.6, 6.2, 7.8, 8.1],
          "segscore": [0.60, 0.62, 0.61, 0.60, 0.66, 0.64], "gamma_photon": [0.95, 0.96, 0.97, 0.98, 0.99, 0.97],
          "dose_mae_target_photon": [0.01, 0.01, 0.015, 0.01, 0.012, 0.011]},
    "C": {"mae": [a + d for a, d in zip(MAE_A, [1.0, 2.5, -0.5, 3.0, 0.2, 1.8])],
          "psnr": [a - d for a, d in zip(PSNR_A, [0.3, 0.32, 0.28, 0.31, 0.29, 0.3])],
          "ssim": SSIM_A, "hd95_x": [1.0, 1.5, 1.2, 1.1, 1.3, 1.4], "segscore": [0.72, 0.71, None, 0.74, 0.75, 0.76],
          "gamma_photon": [0.90, 0.91, 0.92, 0.93, 0.94, 0.9]},
}
BEST = {"mae": {"A"}, "psnr": {"B"}, "ssim": {"A", "C"}, "hd95_x": {"C"}, "segscore": {"C"},
        "gamma_photon": {"B"}, "dose_mae_target_photon": {"B"}}
RIVAL = {  # the best other method of each cell
    "mae": {"A": "B", "B": "A", "C": "A"}, "psnr": {"A": "B", "B": "A", "C": "B"},
    "ssim": {"A": "C", "B": "C", "C": "A"}, "hd95_x": {"A": "C", "B": "C", "C": "A"},
    "segscore": {"A": "C", "B": "C", "C": "A"}, "gamma_photon": {"B": "C", "C": "B"},
    "dose_mae_target_photon": {"A": "B", "B": "A"}}
STARRED = {("mae", "A"), ("hd95_x", "C"), ("segscore", "C"), ("gamma_photon", "B"), ("dose_mae_target_photon", "B")}


def three(tmp_path, values=THREE, **kwargs):
    return [load(tmp_path, name, v, **kwargs) for name, v in values.items()]


def common_values(a: dict, b: dict, metric: str):
    cases = [i for i in range(len(CASES)) if a.get(metric, [None] * 6)[i] is not None
             and b.get(metric, [None] * 6)[i] is not None]
    return [a[metric][i] for i in cases], [b[metric][i] for i in cases]


def test_default_columns_best_stars_and_p_values_against_the_best_other(tmp_path):
    methods, columns, cells, notes = compare.build_table(three(tmp_path))
    assert methods == ["A", "B", "C"] and notes == []
    # the profile's table, then segscore, then the dose metrics in the order they first appear; never `unused`
    assert columns == [(TASK, m) for m in ("mae", "psnr", "ssim", "segscore", "dose_mae_target_photon",
                                            "gamma_photon")]
    for _, metric in columns:
        for name in RIVAL[metric]:
            cell = cells[name, TASK, metric]
            mine = [v for v in THREE[name][metric] if v is not None]
            assert (cell.mean, cell.std, cell.n) == (pytest.approx(np.mean(mine), rel=1e-12),
                                                     pytest.approx(np.std(mine, ddof=0), rel=1e-12), len(mine))
            assert cell.best is (name in BEST[metric]), (metric, name)
            assert cell.significant is ((metric, name) in STARRED), (metric, name)
            a, b = common_values(THREE[name], THREE[RIVAL[metric][name]], metric)
            expected = stats.ttest_rel(a, b).pvalue if a != b else math.nan
            assert cell.p_value == pytest.approx(expected, rel=1e-9, nan_ok=True), (metric, name)
    # A has no gamma values: its cell says so, it has no rival and no p-value
    gamma_a = cells["A", TASK, "gamma_photon"]
    assert gamma_a.n == 0 and math.isnan(gamma_a.mean) and math.isnan(gamma_a.std) and math.isnan(gamma_a.p_value)
    assert not gamma_a.best and not gamma_a.significant


def test_wilcoxon_pairs_each_method_with_the_same_rival(tmp_path):
    _, columns, cells, notes = compare.build_table(three(tmp_path), ["hd95_x", "mae", "psnr", "ssim"], "wilcoxon")
    assert [m for _, m in columns] == ["hd95_x", "mae", "psnr", "ssim"] and notes == []
    for _, metric in columns:
        for name, rival in RIVAL[metric].items():
            a, b = common_values(THREE[name], THREE[rival], metric)
            expected = stats.wilcoxon(a, b, alternative="two-sided").pvalue if a != b else math.nan
            assert cells[name, TASK, metric].p_value == pytest.approx(expected, rel=1e-9, nan_ok=True)
    # 6 pairs of one sign: p = 2/64 < 0.05, so the better of the pair is starred, never the worse
    assert [(m, n) for (n, _, m), c in cells.items() if c.significant] == [("hd95_x", "C"), ("mae", "A")]
    assert cells["B", TASK, "mae"].p_value == pytest.approx(2 / 64)


def test_equal_means_are_never_starred_even_with_p_below_alpha(tmp_path):
    # differences +1 ... +11 and -66: equal means, but Wilcoxon's exact p is below 0.05
    cases = [f"c{i:02d}" for i in range(12)]
    a = [10.0 + i for i in range(12)]
    b = [x + (i + 1.0 if i < 11 else -66.0) for i, x in enumerate(a)]
    assert np.mean(a) == np.mean(b) and stats.wilcoxon(b, a).pvalue < 0.05
    summaries = [load(tmp_path, n, {"psnr": v}, cases=cases) for n, v in (("A", a), ("B", b))]
    _, _, cells, _ = compare.build_table(summaries, test="wilcoxon")
    assert cells["B", TASK, "psnr"].best and cells["A", TASK, "psnr"].best
    assert cells["B", TASK, "psnr"].p_value == pytest.approx(stats.wilcoxon(b, a).pvalue, rel=1e-9)
    assert not cells["B", TASK, "psnr"].significant and not cells["A", TASK, "psnr"].significant


def test_one_method_alone_and_a_method_without_values(tmp_path):
    alone = [load(tmp_path, "A", {"psnr": PSNR_A})]
    _, columns, cells, notes = compare.build_table(alone)
    cell = cells["A", TASK, "psnr"]
    assert columns == [(TASK, "psnr")] and cell.best and not cell.significant and math.isnan(cell.p_value)
    # a method with no finite value of a column comes first: the others are still compared
    values = {"E": {"psnr": [None, math.inf, None, -math.inf, None, None]}, "A": {"psnr": PSNR_A},
              "B": {"psnr": [p + 1.0 + 0.01 * i for i, p in enumerate(PSNR_A)]}}
    _, _, cells, notes = compare.build_table([load(tmp_path, n, v) for n, v in values.items()])
    assert notes == [] and cells["E", TASK, "psnr"].n == 0 and not cells["E", TASK, "psnr"].best
    assert cells["B", TASK, "psnr"].significant and cells["B", TASK, "psnr"].p_value == pytest.approx(
        stats.ttest_rel(values["B"]["psnr"], PSNR_A).pvalue, rel=1e-9)
    assert cells["A", TASK, "psnr"].p_value == cells["B", TASK, "psnr"].p_value


def test_metrics_no_summary_has_are_left_out_and_explicit_metrics_keep_their_order(tmp_path):
    _, columns, _, _ = compare.build_table(three(tmp_path), ["nowhere", "psnr", "unused", "mae"])
    assert columns == [(TASK, "psnr"), (TASK, "unused"), (TASK, "mae")]


def test_the_first_summarys_table_gives_the_default_columns(tmp_path):
    other = {**PROFILE, "table": ["psnr"]}
    summaries = [load(tmp_path, "A", {"mae": MAE_A, "psnr": PSNR_A}),
                 load(tmp_path, "B", {"mae": MAE_A, "psnr": PSNR_A}, profile=other)]
    assert compare.build_table(summaries)[1] == [(TASK, "mae"), (TASK, "psnr")]
    assert compare.build_table(summaries[::-1])[1] == [(TASK, "psnr")]


# ------------------------------------------------------------------------------------------ missing cases, notes
def test_a_missing_middle_case_is_reported_and_left_out_of_the_pairing(tmp_path):
    b_values = [p + 1.0 + 0.1 * i for i, p in enumerate(PSNR_A)]
    a = load(tmp_path, "A", {"psnr": PSNR_A})
    b = load(tmp_path, "B", {"psnr": b_values[:2] + b_values[3:]}, cases=CASES[:2] + CASES[3:])
    _, _, cells, notes = compare.build_table([a, b])
    assert notes == ["MRI→CT: B lacks 1 case(s) that other methods have (c3); they are left out of its paired tests"]
    kept = [0, 1, 3, 4, 5]
    expected = stats.ttest_rel([b_values[i] for i in kept], [PSNR_A[i] for i in kept]).pvalue
    assert cells["B", TASK, "psnr"].p_value == pytest.approx(expected, rel=1e-9)
    assert cells["B", TASK, "psnr"].significant and cells["B", TASK, "psnr"].n == 5


@pytest.mark.parametrize("missing, shown", [(10, "c10, c11, c12, c13, c14, c15, c16, c17, c18, c19"),
                                            (11, "c09, c10, c11, c12, c13, c14, c15, c16, c17, c18, ...")])
def test_at_most_ten_missing_cases_are_named(tmp_path, missing, shown):
    cases = [f"c{i:02d}" for i in range(20)]
    a = load(tmp_path, "A", {"psnr": [20.0 + i for i in range(20)]}, cases=cases)
    b = load(tmp_path, "B", {"psnr": [21.0 + i for i in range(20 - missing)]}, cases=cases[:20 - missing])
    notes = compare.build_table([a, b])[3]
    assert notes == [f"MRI→CT: B lacks {missing} case(s) that other methods have ({shown}); they are left out of "
                     "its paired tests"]


def test_the_note_names_the_fewest_pairs_a_test_was_refused_for(tmp_path):
    # psnr: 4 pairs; mae: 3 pairs (B lacks more of it); ssim: 6 pairs, tested
    a = load(tmp_path, "A", {"psnr": PSNR_A, "mae": MAE_A, "ssim": SSIM_A})
    b = load(tmp_path, "B", {"psnr": [1.0 + p for p in PSNR_A[:4]] + [None, None],
                             "mae": [m - 1.0 for m in MAE_A[:3]] + [None] * 3,
                             "ssim": [s + 0.01 + 0.001 * i for i, s in enumerate(SSIM_A)]})
    _, _, cells, notes = compare.build_table([b, a], ["psnr", "mae", "ssim"])
    assert notes == ["MRI→CT: too few cases for a paired Student's t-test (3 in common, at least 5 needed): "
                     "no significance marked"]
    # B's refusal does not keep A's p-value (reported, never starred) from being computed
    assert cells["A", TASK, "psnr"].p_value == cells["B", TASK, "psnr"].p_value == pytest.approx(
        stats.ttest_rel(PSNR_A[:4], [1.0 + p for p in PSNR_A[:4]]).pvalue)
    assert [cells["B", TASK, m].significant for m in ("psnr", "mae", "ssim")] == [False, False, True]
    _, _, _, notes = compare.build_table([a, b], ["psnr", "ssim"], "wilcoxon")
    assert notes == ["MRI→CT: too few cases for a paired Wilcoxon signed-rank test (4 in common, at least 6 "
                     "needed): no significance marked"]


def test_two_tasks_are_compared_apart(tmp_path):
    mr = [load(tmp_path, n, {"psnr": v}) for n, v in (("A", PSNR_A), ("B", [p + 2.0 + 0.1 * i for i, p in
                                                                            enumerate(PSNR_A)]))]
    cbct = [load(tmp_path / "cbct", "A", {"psnr": PSNR_A[:4]}, cases=CASES[:4], task="cbct2ct", dataset="D2"),
            load(tmp_path / "cbct", "C", {"psnr": [p - 3.0 for p in PSNR_A[:4]]}, cases=CASES[:4], task="cbct2ct",
                 dataset="D2")]
    methods, columns, cells, notes = compare.build_table([mr[0], cbct[0], mr[1], cbct[1]])
    assert methods == ["A", "B", "C"] and columns == [(TASK, "psnr"), ("CBCT→CT", "psnr")]
    assert cells["B", TASK, "psnr"].significant and cells["A", "CBCT→CT", "psnr"].best
    assert ("C", TASK, "psnr") not in cells and ("B", "CBCT→CT", "psnr") not in cells
    assert notes == ["CBCT→CT: too few cases for a paired Student's t-test (4 in common, at least 5 needed): "
                     "no significance marked"]


def test_a_task_outside_the_known_labels_groups_its_methods(tmp_path):
    # the task names are read from each summary (equal strings, not one shared label object)
    b_values = [p + 1.0 + 0.1 * i for i, p in enumerate(PSNR_A)]
    pelvis = [load(tmp_path, n, {"psnr": v}, task="pelvis") for n, v in (("A", PSNR_A), ("B", b_values))]
    methods, columns, cells, notes = compare.build_table(pelvis)
    assert columns == [("pelvis", "psnr")] and notes == []
    assert cells["B", "pelvis", "psnr"].significant and cells["A", "pelvis", "psnr"].n == 6
    assert cells["A", "pelvis", "psnr"].p_value == pytest.approx(stats.ttest_rel(PSNR_A, b_values).pvalue)


# --------------------------------------------------------------------------------------------- tests themselves
def test_min_pairs():
    assert compare.min_pairs("ttest") == 5 and compare.min_pairs("wilcoxon") == 6
    # names built at run time (as from the command line) are equal, not the same objects, as the literals
    assert compare.min_pairs("".join(["wil", "coxon"])) == 6 and compare.min_pairs("".join(["t", "test"])) == 5
    assert 2 * 0.5 ** 6 < compare.ALPHA <= 2 * 0.5 ** 5 and compare.ALPHA == 0.05
    for unknown in ("sign", "x", "zz"):  # before and after both names in sort order
        with pytest.raises(DGCFError, match=f"unknown test '{unknown}' \\(expected one of ttest, wilcoxon\\)"):
            compare.min_pairs(unknown)


def test_paired_p_value_edges():
    a, b = np.array([1.0, 2.0]), np.array([1.5, 2.7])
    assert compare.paired_p_value(a, b) == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-12)
    assert compare.paired_p_value(a, b, "wilcoxon") == pytest.approx(0.5)
    assert math.isnan(compare.paired_p_value(a[:1], b[:1], "wilcoxon"))  # scipy would say 1.0
    assert math.isnan(compare.paired_p_value(a, a.copy(), "wilcoxon"))  # scipy would say 1.0
    for unknown in ("x", "u", "Wilcoxon"):  # sorting after, between and before the known names
        with pytest.raises(DGCFError, match=rf"^unknown test '{unknown}' \(expected one of ttest, wilcoxon\)$"):
            compare.paired_p_value(a, b, unknown)
    built = "".join(["t", "test"]), "".join(["wil", "coxon"])
    assert compare.paired_p_value(a, b, built[0]) == compare.paired_p_value(a, b, "ttest")
    assert compare.paired_p_value(a, b, built[1]) == compare.paired_p_value(a, b, "wilcoxon")
    # one equal pair among unequal ones is still a test
    c = np.array([1.0, 2.0, 3.0])
    assert compare.paired_p_value(c, np.array([1.0, 2.5, 3.9]), "wilcoxon") == pytest.approx(
        stats.wilcoxon(c, [1.0, 2.5, 3.9]).pvalue)


# ---------------------------------------------------------------------------------------------- the output texts
SMALL = {"A": {"mae": [40.0, 42.0, 44.0, 46.0, 48.0, 50.0], "ssim": [0.9, 0.91, 0.92, 0.93, 0.94, 0.95]},
         "B": {"mae": [41.0, 43.5, 44.5, 47.0, 49.0, 50.5], "ssim": [0.85, 0.9, 0.95, 0.9, 0.92, 0.93]}}


def small_table(tmp_path):
    labels = {"A": "my_net 5%&\\×", "B": None}
    return compare.build_table([load(tmp_path, n, v, label=labels[n]) for n, v in SMALL.items()], ["mae", "ssim"])


def test_markdown_csv_and_latex_of_a_small_table(tmp_path):
    methods, columns, cells, notes = small_table(tmp_path)
    p_mae = stats.ttest_rel(SMALL["A"]["mae"], SMALL["B"]["mae"]).pvalue
    p_ssim = stats.ttest_rel(SMALL["A"]["ssim"], SMALL["B"]["ssim"]).pvalue
    assert p_mae < 0.05 < p_ssim
    assert compare.to_markdown(methods, columns, cells, notes, "ttest") == (
        "| method | MRI→CT: mae (HU) | MRI→CT: ssim (%) |\n"
        "|---|---|---|\n"
        "| my_net 5%&\\× | **45.00 ± 3.42*** | **92.50 ± 1.71** |\n"
        "| B | 45.92 ± 3.26 | 90.83 ± 3.13 |\n"
        "\n"
        "mean ± std (population, over each method's cases); best in bold; * p < 0.05 against the best other "
        "method (paired two-sided Student's t-test over the cases both have, at least 5).\n")
    assert compare.to_markdown(methods, columns, cells, ["a note"], "wilcoxon").endswith(
        "(paired two-sided Wilcoxon signed-rank test over the cases both have, at least 6).\n- a note\n")
    mean_a, std_a = float(np.mean(SMALL["A"]["mae"])), float(np.std(SMALL["A"]["mae"]))
    p_mae, p_ssim = float(p_mae), float(p_ssim)
    assert compare.to_csv(methods, columns, cells) == (
        "method,task,metric,mean,std,n,best,significant,p_value\n"
        f"my_net 5%&\\×,{TASK},mae,{mean_a!r},{std_a!r},6,1,1,{p_mae!r}\n"
        f"my_net 5%&\\×,{TASK},ssim,{float(np.mean(SMALL['A']['ssim']))!r},{float(np.std(SMALL['A']['ssim']))!r},6,1,0,{p_ssim!r}\n"
        f"B,{TASK},mae,{float(np.mean(SMALL['B']['mae']))!r},{float(np.std(SMALL['B']['mae']))!r},6,0,0,{p_mae!r}\n"
        f"B,{TASK},ssim,{float(np.mean(SMALL['B']['ssim']))!r},{float(np.std(SMALL['B']['ssim']))!r},6,0,0,{p_ssim!r}\n")
    assert compare.to_latex(methods, columns, cells) == (
        "\\begin{tabular}{lcc}\n"
        "\\hline\n"
        "Method & \\multicolumn{2}{c}{MRI$\\rightarrow$CT} \\\\\n"
        " & mae (HU) & ssim (\\%) \\\\\n"
        "\\hline\n"
        "my\\_net 5\\%\\&\\textbackslash{}$\\times$ & \\textbf{45.00 $\\pm$ 3.42}$^*$ & \\textbf{92.50 $\\pm$ 1.71} \\\\\n"
        "B & 45.92 $\\pm$ 3.26 & 90.83 $\\pm$ 3.13 \\\\\n"
        "\\hline\n"
        "\\end{tabular}\n")


def test_outputs_of_two_tasks_with_a_missing_cell_and_no_p_value(tmp_path):
    a = load(tmp_path, "A", {"psnr": PSNR_A, "dose_mae_target_photon": [0.01] * 6})
    b = load(tmp_path / "t2", "A", {"psnr": PSNR_A[:1]}, cases=CASES[:1], task="cbct2ct", dataset="D2")
    c = load(tmp_path / "t2", "C", {"psnr": [PSNR_A[0] - 0.5]}, cases=CASES[:1], task="cbct2ct", dataset="D2")
    methods, columns, cells, notes = compare.build_table([a, b, c], ["psnr", "dose_mae_target_photon"])
    assert columns == [(TASK, "psnr"), (TASK, "dose_mae_target_photon"), ("CBCT→CT", "psnr")]
    assert compare.to_markdown(methods, columns, cells, notes, "ttest").splitlines()[:4] == [
        "| method | MRI→CT: psnr (dB) | MRI→CT: dose_mae_target_photon (× Rx) | CBCT→CT: psnr (dB) |",
        "|---|---|---|---|",
        "| A | **28.50 ± 1.71** | **0.01 ± 0.00** | **28.00 ± 0.00** |",
        "| C | - | - | 27.50 ± 0.00 |"]
    assert compare.to_csv(methods, columns, cells).splitlines()[1:] == [
        f"A,{TASK},psnr,28.5,{float(np.std(PSNR_A))!r},6,1,0,",
        f"A,{TASK},dose_mae_target_photon,0.01,{float(np.std([0.01] * 6))!r},6,1,0,",
        "A,CBCT→CT,psnr,28.0,0.0,1,1,0,",
        "C,CBCT→CT,psnr,27.5,0.0,1,0,0,"]
    # columns whose equal task names are separate strings still span one header
    built = [("".join(["MRI", "→CT"]), "psnr"), ("".join(["MRI", "→CT"]), "dose_mae_target_photon")]
    assert compare.to_latex(methods, built, {}).splitlines()[2] == \
        "Method & \\multicolumn{2}{c}{MRI$\\rightarrow$CT} \\\\"
    latex = compare.to_latex(methods, columns, cells).splitlines()
    assert latex[0] == "\\begin{tabular}{lccc}"
    assert latex[2] == ("Method & \\multicolumn{2}{c}{MRI$\\rightarrow$CT} & \\multicolumn{1}{c}{CBCT$\\rightarrow$CT}"
                        " \\\\")
    assert latex[3] == " & psnr (dB) & dose\\_mae\\_target\\_photon ($\\times$ Rx) & psnr (dB) \\\\"
    assert latex[6] == "C & - & - & 27.50 $\\pm$ 0.00 \\\\"


# ------------------------------------------------------------------------------------------- reading summaries
def test_load_summary_directions_task_dataset_and_label(tmp_path):
    values = {"mae": [1.0, 2.0], "psnr": [2.0, 3.0], "ssim": [0.5, 0.6], "hd95_y": [1.0, None],
              "dvh_photon": [0.1, 0.2], "dose_mae_target_proton": [None, 0.1], "gamma_photon": [0.9, 0.8],
              "segscore_dice": [0.5, 0.4]}
    s = compare.load_summary(write(tmp_path / "run" / "s.json", values, cases=["c1", "c2"], dataset=None, task=None))
    assert s.lower_is_better == {"mae", "hd95_y", "dvh_photon", "dose_mae_target_proton", "segscore_hd95"}
    assert (s.dataset, s.task, s.label, s.profile, s.labelled) == ("/raw", "/raw", "run", "custom", False)
    assert s.table == ["mae", "psnr", "ssim"] and s.per_case == {c: {k: v[i] for k, v in values.items()} for i, c in enumerate(["c1", "c2"])}
    two = compare.load_summary(write(tmp_path / "two.json", {"mae": [1.0, 2.0]}, cases=["c1", "c2"], dataset=None,
                                     task="pelvis"), "mine")
    assert (two.dataset, two.task, two.label, two.labelled) == ("/raw", "pelvis", "mine", True)
    cbct = compare.load_summary(write(tmp_path / "c.json", {"mae": [1.0]}, cases=["c1"], task="cbct2ct"))
    assert cbct.task == "CBCT→CT" and cbct.dataset == "Dataset001_X"
    # a profile that defines segscore_hd95 itself (lower is better) keeps it lower-is-better
    seg = {"name": "seg", "metrics": {"segscore_hd95": {"higher_is_better": False}, "segscore_dice": {}}}
    assert compare.load_summary(write(tmp_path / "g.json", {"mae": [1.0]}, cases=["c1"], profile=seg)
                                ).lower_is_better == {"segscore_hd95"}
    bare = compare.load_summary(write(tmp_path / "b.json", {"mae": [1.0]}, cases=["c1"], profile={"name": "bare"}))
    assert bare.table == [] and bare.lower_is_better == {"segscore_hd95"}


def test_load_summary_refusals(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(DGCFError, match=f"^summary {missing}: not found$"):
        compare.load_summary(missing)
    with pytest.raises(DGCFError, match=f"^summary {tmp_path}: not found$"):
        compare.load_summary(tmp_path)
    twice = write(tmp_path / "t.json", {"mae": [1.0, 2.0, 3.0]}, cases=["c1", "c2", "c1"])
    with pytest.raises(DGCFError) as info:
        compare.load_summary(twice)
    assert str(info.value) == f"summary {twice}: field metric_per_case[2].case: 'c1' appears twice"
    mixed = tmp_path / "m.json"
    mixed.write_text(json.dumps({"profile": PROFILE, "metric_per_case": [
        {"case": "a", "reference_file": "/raw/a.nii.gz", "metrics": {}},
        {"case": "b", "reference_file": "raw/b.nii.gz", "metrics": {}}]}))
    with pytest.raises(DGCFError) as info:
        compare.load_summary(mixed)
    assert str(info.value) == (f"summary {mixed}: field metric_per_case: its reference files share no folder; give "
                               "the summary a dataset field")


@pytest.mark.parametrize("fields, identity", [
    ({"prediction_model": {"trainer": "T", "plans": "P", "configuration": "2d", "folds": ["fold_0"],
                           "checkpoint": "checkpoint_best.pth"}, "trainer": "X", "plans": "Y", "fold": 3},
     {"trainer": "T", "plans": "P", "configuration": "2d", "folds": "fold 0", "checkpoint": "checkpoint_best"}),
    ({"prediction_model": {"folds": ["fold_1", "fold_all"], "checkpoint": None}, "trainer": "X", "plans": "Y",
      "configuration": "3d", "fold": 3},
     {"trainer": "X", "plans": "Y", "configuration": "3d", "folds": "folds 1,all", "checkpoint": None}),
    ({"fold": 0}, {"trainer": None, "plans": None, "configuration": None, "folds": "fold 0", "checkpoint": None}),
    ({"fold": "all", "prediction_model": {"folds": [], "checkpoint": "x.pth.pth"}},
     {"trainer": None, "plans": None, "configuration": None, "folds": "fold all", "checkpoint": "x.pth"}),
    ({"prediction_model": {"folds": ["fold_0", "fold_1", "fold_2"]}},
     {"trainer": None, "plans": None, "configuration": None, "folds": "folds 0,1,2", "checkpoint": None}),
])
def test_method_identity(tmp_path, fields, identity):
    path = tmp_path / "runs" / "summary_x.json"
    assert compare.method_identity(fields, path) == {**identity, "folder": "runs", "file": "summary_x"}


# ---------------------------------------------------------------------------------------------------- labels
def _labelled(tmp_path, specs):
    """Summaries loaded from (folder/file, label or None, prediction_model, task)."""
    out = []
    for where, label, model, task in specs:
        path = write(tmp_path / where, {"psnr": [1.0]}, cases=["c1"], task=task, prediction_model=model,
                     dataset="D")
        out.append(compare.load_summary(path, label))
    return out


def _model(folds, checkpoint="checkpoint_final.pth", trainer="T"):
    return {"trainer": trainer, "plans": "P", "configuration": "2d", "folds": folds, "checkpoint": checkpoint}


def test_labels_add_the_first_differing_parts_until_the_group_is_told_apart(tmp_path):
    summaries = _labelled(tmp_path, [
        ("r/a.json", None, _model(["fold_0"]), "mr2ct"),
        ("r/b.json", None, _model(["fold_0"], None), "mr2ct"),
        ("r/c.json", None, _model(["fold_0", "fold_1"]), "mr2ct"),
        ("r/d.json", None, _model(["fold_0"]), "cbct2ct"),      # alone on its task: unchanged
        ("r/e.json", "T", _model(["fold_0"]), "cbct2ct"),       # given: unchanged, not grouped
        ("r/f.json", None, _model(["fold_1"], trainer="U"), "mr2ct"),  # another trainer: its own group of one
    ])
    compare.label_methods(summaries)
    assert [s.label for s in summaries] == ["T (fold 0, checkpoint_final)", "T (fold 0, no checkpoint)",
                                            "T (folds 0,1, checkpoint_final)", "T", "T", "U"]


def test_a_method_alone_before_a_group_does_not_end_the_labelling(tmp_path):
    summaries = _labelled(tmp_path, [("r/u.json", None, _model(["fold_0"], trainer="U"), "mr2ct"),
                                     ("r/a.json", None, _model(["fold_0"]), "mr2ct"),
                                     ("r/b.json", None, _model(["fold_1"]), "mr2ct")])
    compare.label_methods(summaries)
    assert [s.label for s in summaries] == ["U", "T (fold 0)", "T (fold 1)"]


def test_labels_of_two_and_of_identical_identities(tmp_path):
    pair = _labelled(tmp_path, [("r/a.json", None, _model(["fold_0"]), "mr2ct"),
                                ("s/a.json", None, _model(["fold_0"]), "mr2ct")])
    compare.label_methods(pair)
    assert [s.label for s in pair] == ["T (r)", "T (s)"]
    same = _labelled(tmp_path, [("r/x/a.json", None, _model(["fold_0"]), "mr2ct"),
                                ("s/x/a.json", None, _model(["fold_0"]), "mr2ct")])
    with pytest.raises(DGCFError) as info:
        compare.build_table(same)
    assert str(info.value) == (f"summaries {tmp_path / 'r/x/a.json'} and {tmp_path / 's/x/a.json'}: both are "
                               "method 'T' on MRI→CT; give one of them another label (LABEL=PATH)")


def _in_memory(label, identity=None, **values):
    """A MethodSummary built directly (its dataclass defaults: not labelled, no identity)."""
    per_case = {f"c{i}": {m: v[i] for m, v in values.items()} for i in range(len(next(iter(values.values()))))}
    s = compare.MethodSummary(label, TASK, "D", "custom", compare.Path(f"/s/{label}.json"), per_case, {"mae"}, [])
    if identity is not None:
        s.identity = identity
    return s


def test_a_large_group_stops_at_the_first_part_that_tells_it_apart():
    group = [_in_memory("T", {"trainer": "T", "plans": "P", "folds": "fold 0", "folder": f"f{i}", "file": f"s{i}"},
                        psnr=[1.0]) for i in range(300)]
    assert not group[0].labelled
    compare.label_methods(group)
    assert [s.label for s in group] == [f"T (f{i})" for i in range(300)]


def test_ranking_is_exact_near_the_largest_float():
    summaries = [_in_memory("A", mae=[1.0e308], psnr=[1.0e308]), _in_memory("B", mae=[1.5e308], psnr=[1.5e308])]
    _, _, cells, _ = compare.build_table(summaries, ["mae", "psnr"])
    assert [cells[n, TASK, m].best for m in ("mae", "psnr") for n in "AB"] == [True, False, False, True]


# ------------------------------------------------------------------------------------------------- consistency
def test_check_consistent_refusals(tmp_path):
    with pytest.raises(DGCFError, match="^no summaries to compare$"):
        compare.check_consistent([])
    a = load(tmp_path, "A", {"psnr": PSNR_A})
    b = load(tmp_path, "B", {"psnr": PSNR_A})
    other_profile = load(tmp_path, "P", {"psnr": PSNR_A}, profile={**PROFILE, "name": "other"})
    with pytest.raises(DGCFError) as info:
        compare.check_consistent([a, b, other_profile])
    assert str(info.value) == (f"summary {other_profile.path}: metric profile other, but {a.path} has custom; "
                               "compare summaries of one profile (dgcf_evaluate --profile)")
    with pytest.raises(DGCFError) as info:
        compare.check_consistent([a, other_profile, b])
    assert str(info.value).startswith(f"summary {other_profile.path}: metric profile other, but {a.path}")
    before = load(tmp_path, "Q", {"psnr": PSNR_A}, profile={**PROFILE, "name": "alpha"})  # sorts before "custom"
    with pytest.raises(DGCFError, match="metric profile alpha, but"):
        compare.check_consistent([a, before])
    elsewhere = load(tmp_path, "D", {"psnr": PSNR_A}, dataset="Dataset002_Y")
    with pytest.raises(DGCFError) as info:
        compare.check_consistent([a, b, elsewhere])
    assert str(info.value) == (f"summary {elsewhere.path}: dataset Dataset002_Y, but {a.path} (same task MRI→CT) has "
                               "Dataset001_X; a table compares methods on one dataset per task")
    earlier = load(tmp_path, "F", {"psnr": PSNR_A}, dataset="Dataset000_W")  # sorts before Dataset001_X
    with pytest.raises(DGCFError, match="dataset Dataset000_W, but"):
        compare.check_consistent([a, earlier])
    cbct = load(tmp_path, "E", {"psnr": PSNR_A}, dataset="Dataset002_Y", task="cbct2ct")
    cbct_a = load(tmp_path / "c", "A", {"psnr": PSNR_A}, dataset="Dataset002_Y", task="cbct2ct")
    compare.check_consistent([a, cbct, b, cbct_a])  # one dataset per task; one method on two tasks
    twice = load(tmp_path / "again", "B", {"psnr": PSNR_A})
    with pytest.raises(DGCFError) as info:
        compare.check_consistent([a, b, twice])
    assert str(info.value) == (f"summaries {b.path} and {twice.path}: both are method 'B' on MRI→CT; give one of "
                               "them another label (LABEL=PATH)")


# --------------------------------------------------------------------------------------------------- box plots
def test_box_plots_one_panel_per_column(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    figures = []
    monkeypatch.setattr(Figure, "savefig", lambda self, path, **k: (figures.append(self), open(path, "wb").close()))
    summaries = three(tmp_path)
    columns = [(TASK, m) for m in ("mae", "psnr", "ssim", "gamma_photon")]
    compare.save_boxplots(summaries, columns, tmp_path / "out" / "boxplots.png")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["boxplots.png"]
    (fig,) = figures
    assert list(fig.get_size_inches()) == pytest.approx([3 * 4.0, 2 * 3.6]) and fig.dpi == 110
    axes = fig.axes
    assert [ax.get_visible() for ax in axes] == [True] * 4 + [False] * 2
    assert [ax.get_title() for ax in axes[:4]] == ["MRI→CT: mae (HU)", "MRI→CT: psnr (dB)", "MRI→CT: ssim (%)",
                                                   "MRI→CT: gamma_photon (%)"]
    assert all(ax.title.get_fontsize() == 9 for ax in axes[:4])
    for ax, (_, metric) in zip(axes, columns):
        labels = ax.get_xticklabels()
        assert [t.get_text() for t in labels] == ["A", "B", "C"] and list(ax.get_xticks()) == [1, 2, 3]
        assert all(t.get_rotation() == 30 and t.get_fontsize() == 8 for t in labels)
        scale = 100.0 if metric == "ssim" else 1.0
        means = [line.get_ydata()[0] for line in ax.lines if line.get_marker() == "^"]
        expected = [np.mean([v for v in THREE[n].get(metric, []) if v is not None]) * scale if metric in THREE[n]
                    else math.nan for n in "ABC"]
        assert means == pytest.approx(expected, rel=1e-12, nan_ok=True)


def test_box_plot_size_grows_with_the_methods(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    sizes = []
    monkeypatch.setattr(Figure, "savefig", lambda self, path, **k: (
        sizes.append((*self.get_size_inches(), self.dpi, len(self.axes), sum(a.get_visible() for a in self.axes))),
        open(path, "wb").close()))
    many = [load(tmp_path, n, {"psnr": PSNR_A}) for n in "ABCDE"]
    compare.save_boxplots(many, [(TASK, "psnr")], tmp_path / "one.png")
    compare.save_boxplots(many[:2], [(TASK, "psnr")] * 7, tmp_path / "seven.png")
    # 5 methods: 1.2 in each; 7 panels: 3 rows of 3, two of them hidden
    assert sizes == [(pytest.approx(6.0), pytest.approx(3.6), 110, 1, 1),
                     (pytest.approx(12.0), pytest.approx(10.8), 110, 9, 7)]


# -------------------------------------------------------------------------------------------- finding, writing
def test_find_summaries(tmp_path, monkeypatch):
    monkeypatch.setenv("DGCF_results", str(tmp_path))
    with pytest.raises(DGCFError) as info:
        compare.find_summaries("val", "custom")
    assert str(info.value) == (f"no summary_custom.json of --split val under {tmp_path}; run dgcf_evaluate -d ID "
                               "--split val --profile custom first, or name the summaries")
    made = []
    for dataset, model, split in (("Dataset002_Y", "T__P__2d", "validation"), ("Dataset001_X", "U__P__2d", "test"),
                                  ("Dataset001_X", "T__P__2d", "validation"), ("Dataset001_X", "T__P__2d", "test")):
        made.append(write(tmp_path / dataset / model / "fold_0" / split / "summary_custom.json", {"psnr": [1.0]},
                          cases=["c1"]))
    (tmp_path / "Dataset003_file").write_text("")
    assert compare.find_summaries("val", "custom") == [(None, str(made[2])), (None, str(made[0]))]
    assert compare.find_summaries("test", "custom") == [(None, str(made[3])), (None, str(made[1]))]
    assert compare.find_summaries("val", "custom", ["2"]) == [(None, str(made[0]))]
    with pytest.raises(DGCFError) as info:
        compare.find_summaries("test", "custom", ["2"])
    assert str(info.value).startswith(f"no summary_custom.json of --split test under {tmp_path / 'Dataset002_Y'};")


def test_compare_writes_four_files_and_refuses_absent_metrics(tmp_path):
    paths = [str(write(tmp_path / n / "s.json", v, trainer=n)) for n, v in SMALL.items()]
    with pytest.raises(DGCFError) as info:
        compare.compare([(None, p) for p in paths], tmp_path / "out", ["nowhere", "never"])
    assert str(info.value) == "none of the metrics nowhere, never is in the summaries"
    assert not (tmp_path / "out").exists()
    markdown = compare.compare([("X", paths[0]), (None, paths[1])], tmp_path / "out", ["ssim"], "wilcoxon")
    assert markdown.splitlines()[2:4] == ["| X | **92.50 ± 1.71** |", "| B | 90.83 ± 3.13 |"]
    assert "Wilcoxon" in markdown and (tmp_path / "out" / "table.md").read_text(encoding="utf-8") == markdown
    # one panel, two methods: 4 x 3.6 inches at 110 dpi
    png = (tmp_path / "out" / "boxplots.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (png[16:20], png[20:24]) == ((440).to_bytes(4, "big"),
                                                                              (396).to_bytes(4, "big"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["boxplots.png", "table.csv", "table.md",
                                                                    "table.tex"]
    assert (tmp_path / "out" / "table.csv").read_text().splitlines()[1].startswith("X,MRI→CT,ssim,")
    assert (tmp_path / "out" / "table.tex").read_text().splitlines()[5].startswith("X & \\textbf{92.50")


def test_box_plots_of_two_tasks_show_each_tasks_methods(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    figures = []
    monkeypatch.setattr(Figure, "savefig", lambda self, path, **k: (figures.append(self), open(path, "wb").close()))
    cbct = {"task": "cbct2ct", "dataset": "D2"}
    summaries = [load(tmp_path, "A", {"psnr": PSNR_A}), load(tmp_path / "cb", "B", {"psnr": PSNR_A[:3]}, cases=CASES[:3], **cbct),
                 load(tmp_path / "cb", "C", {"psnr": [p - 1.0 for p in PSNR_A]}, **cbct)]
    columns = compare.build_table(summaries)[1]
    compare.save_boxplots(summaries, columns, tmp_path / "a.png")
    # the task named by a string equal to, not the same object as, the summaries' own
    compare.save_boxplots(summaries, [("".join(["CBCT", "→CT"]), "psnr")], tmp_path / "b.png")
    panels = [ax for fig in figures for ax in fig.axes if ax.get_visible()]
    assert [[t.get_text() for t in ax.get_xticklabels()] for ax in panels] == [["A"], ["B", "C"], ["B", "C"]]
    means = [[line.get_ydata()[0] for line in ax.lines if line.get_marker() == "^"] for ax in panels]
    cbct_means = [np.mean(PSNR_A[:3]), np.mean(PSNR_A) - 1.0]
    assert means == [[pytest.approx(np.mean(PSNR_A))], pytest.approx(cbct_means), pytest.approx(cbct_means)]
