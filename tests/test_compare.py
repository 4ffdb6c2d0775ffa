"""dgcf_compare: Table 1 layout, paired tests (checked against formulas computed here), bad input."""
from __future__ import annotations

import csv
import itertools
import json
import math
import random

import numpy as np
import pytest
from scipy import stats

from dgcf_auto.cli import compare as compare_cli
from dgcf_auto.evaluation import compare
from dgcf_auto.evaluation.profiles import get_profile

CASES = ["c1", "c2", "c3", "c4", "c5"]
A_MS = [0.80, 0.82, 0.84, 0.86, 0.88]
A_PSNR = [26.0, 27.0, 28.0, 29.0, 30.0]
METHODS = {
    "A": (A_MS, A_PSNR),
    "B": ([a + d for a, d in zip(A_MS, [0.01, 0.02, 0.015, 0.012, 0.018])],
          [a + d for a, d in zip(A_PSNR, [0.5, -0.5, 0.3, -0.3, 0.1])]),
    "C": ([a - 0.05 for a in A_MS], [a - 1.0 for a in A_PSNR]),
}


def write_summary(path, trainer, ms, psnr, cases=CASES, profile="dgcf-paper", dataset="Dataset001_X", task="mr2ct"):
    rows = [{"case": c, "reference_file": f"/raw/{c}/ct.nii.gz", "prediction_file": f"/p/{c}.nii.gz",
             "metrics": {"ms_ssim_body": m, "psnr_body": p}} for c, m, p in zip(cases, ms, psnr)]
    summary = {"metric_per_case": rows, "profile": get_profile(profile).describe(), "dataset": dataset,
               "task": task, "trainer": trainer}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary))
    return path


@pytest.fixture
def summaries(tmp_path):
    return [str(write_summary(tmp_path / name / "s.json", name, *values)) for name, values in METHODS.items()]


def paired_t_p(a, b):
    """Student's paired t-test from its formula: t = mean(d) / (sd(d) / sqrt(n)), two-sided, n - 1 dof."""
    d = np.asarray(a) - np.asarray(b)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    return 2 * stats.t.sf(abs(t), len(d) - 1)


def wilcoxon_exact_p(a, b):
    """Exact two-sided signed-rank p by enumerating every sign pattern (no ties, no zeros)."""
    d = np.asarray(a) - np.asarray(b)
    ranks = stats.rankdata(np.abs(d))
    w = ranks[d > 0].sum()
    sums = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product([0, 1], repeat=len(d))]
    low = np.mean([s <= w for s in sums])
    high = np.mean([s >= w for s in sums])
    return min(1.0, 2 * min(low, high))


def test_table_one_layout_by_hand(summaries, tmp_path):
    markdown = compare.compare([(None, s) for s in summaries], tmp_path / "out")
    lines = markdown.splitlines()
    assert lines[0] == "| method | MRI→CT: ms_ssim_body (%) | MRI→CT: psnr_body (dB) |"
    assert lines[2] == "| A | 84.00 ± 2.83 | 28.00 ± 1.41 |"
    assert lines[3] == "| B | **85.50 ± 2.96*** | **28.02 ± 1.38** |"   # significant on MS-SSIM only
    assert lines[4] == "| C | 79.00 ± 2.83 | 27.00 ± 1.41 |"
    rows = list(csv.DictReader((tmp_path / "out" / "table.csv").open()))
    b_ms = next(r for r in rows if r["method"] == "B" and r["metric"] == "ms_ssim_body")
    assert float(b_ms["p_value"]) == pytest.approx(paired_t_p(METHODS["B"][0], A_MS), rel=1e-9)
    assert float(b_ms["p_value"]) < 0.05 and b_ms["significant"] == "1"
    b_psnr = next(r for r in rows if r["method"] == "B" and r["metric"] == "psnr_body")
    assert float(b_psnr["p_value"]) == pytest.approx(paired_t_p(METHODS["B"][1], A_PSNR), rel=1e-9)
    tex = (tmp_path / "out" / "table.tex").read_text()
    assert r"\textbf{85.50 $\pm$ 2.96}$^*$" in tex and r"MRI$\rightarrow$CT" in tex
    assert (tmp_path / "out" / "boxplots.png").read_bytes()[:4] == b"\x89PNG"


def test_wilcoxon_option(summaries, tmp_path):
    _, _, cells, _ = compare.build_table([compare.load_summary(s) for s in summaries], test="wilcoxon")
    expected = wilcoxon_exact_p(METHODS["B"][1], A_PSNR)
    assert cells["B", "MRI→CT", "psnr_body"].p_value == pytest.approx(expected, rel=1e-9)
    # 5 pairs, all positive: the smallest possible exact p, 2/32, is not < 0.05
    assert cells["B", "MRI→CT", "ms_ssim_body"].p_value == pytest.approx(2 / 32)
    assert not cells["B", "MRI→CT", "ms_ssim_body"].significant


def test_missing_cases_reported_and_left_out_of_pairing(tmp_path):
    a = write_summary(tmp_path / "a.json", "A", A_MS, A_PSNR)
    b_ms = [0.9, 0.93, 0.9, 0.95]
    b = write_summary(tmp_path / "b.json", "B", b_ms, A_PSNR[:4], cases=CASES[:4])
    _, _, cells, notes = compare.build_table([compare.load_summary(a), compare.load_summary(b)])
    assert notes == ["MRI→CT: B lacks 1 case(s) that other methods have (c5); they are left out of its paired tests",
                     "MRI→CT: too few cases for a paired Student's t-test (4 in common, at least 5 needed): "
                     "no significance marked"]
    assert cells["B", "MRI→CT", "ms_ssim_body"].n == 4 and cells["A", "MRI→CT", "ms_ssim_body"].n == 5
    assert cells["B", "MRI→CT", "ms_ssim_body"].p_value == pytest.approx(paired_t_p(b_ms, A_MS[:4]), rel=1e-9)


def test_two_tasks_side_by_side_and_labels(tmp_path):
    mr = write_summary(tmp_path / "mr.json", "A", A_MS, A_PSNR)
    cbct = write_summary(tmp_path / "cbct.json", "A", A_MS, A_PSNR, dataset="Dataset002_Y", task="cbct2ct")
    other = write_summary(tmp_path / "o.json", "A", A_MS, A_PSNR)
    markdown = compare.compare([(None, str(mr)), (None, str(cbct)), ("mine", str(other))], tmp_path / "o",
                               metrics=["psnr_body"])
    assert markdown.splitlines()[0] == "| method | MRI→CT: psnr_body (dB) | CBCT→CT: psnr_body (dB) |"
    assert "| mine | **28.00 ± 1.41** | - |" in markdown and "| A | **28.00 ± 1.41** | **28.00 ± 1.41** |" in markdown


@pytest.mark.parametrize("problem, message", [
    ("profile", "metric profile synthrad2023, but"),
    ("dataset", "dataset Dataset009_Z, but"),
    ("duplicate", "both are method 'A'"),
    ("not_json", "b.json: not valid JSON"),
])
def test_bad_summaries_one_line(tmp_path, capsys, problem, message):
    first = write_summary(tmp_path / "a.json", "A", A_MS, A_PSNR)
    if problem == "profile":
        second = write_summary(tmp_path / "b.json", "B", A_MS, A_PSNR, profile="synthrad2023")
    elif problem == "dataset":
        second = write_summary(tmp_path / "b.json", "B", A_MS, A_PSNR, dataset="Dataset009_Z")
    elif problem == "duplicate":
        second = write_summary(tmp_path / "b.json", "A", A_MS, A_PSNR)
    else:
        second = tmp_path / "b.json"
        second.write_text("{not json")
    inputs = [str(first), str(second)] if problem != "duplicate" else [f"A={first}", f"A={second}"]  # given labels
    with pytest.raises(SystemExit) as exit_info:
        compare_cli.main([*inputs, "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and message in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and not (tmp_path / "out" / "table.md").exists()


def _summary(path, trainer, values: dict[str, dict[str, float]], profile="synthrad2023"):
    from dgcf_auto.evaluation.profiles import get_profile

    rows = [{"case": case, "reference_file": f"/raw/{case}/ct.nii.gz", "prediction_file": f"/p/{case}.nii.gz",
             "metrics": metrics} for case, metrics in values.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"metric_per_case": rows, "profile": get_profile(profile).describe(),
                                "dataset": "Dataset001_X", "task": "mr2ct", "trainer": trainer}))
    return str(path)


# Hand mutation this catches: paired tests pairing rows by position instead of by case name.
def test_paired_test_pairs_cases_by_name_with_a_missing_middle_case_and_shuffled_rows(tmp_path):
    from dgcf_auto.evaluation import compare

    cases = [f"c{i}" for i in range(1, 9)]
    a = dict(zip(cases, [70.0, 82.0, 64.0, 91.0, 77.0, 68.0, 85.0, 73.0]))
    b = dict(zip(cases, [75.0, 80.0, 71.0, 99.0, 79.0, 75.0, 90.0, 74.0]))
    del b["c4"]  # a middle case the second method lacks
    shuffled = list(b)
    random.Random(3).shuffle(shuffled)
    paths = [_summary(tmp_path / "A" / "s.json", "A", {c: {"mae": v} for c, v in a.items()}),
             _summary(tmp_path / "B" / "s.json", "B", {c: {"mae": b[c]} for c in shuffled})]
    methods, columns, cells, notes = compare.build_table([compare.load_summary(p) for p in paths], ["mae"])
    common = sorted(b)
    expected = stats.ttest_rel([a[c] for c in common], [b[c] for c in common]).pvalue
    assert cells["A", "MRI→CT", "mae"].p_value == pytest.approx(expected, rel=1e-12)
    assert cells["B", "MRI→CT", "mae"].n == 7 and any("B lacks 1 case(s)" in note for note in notes)


# Hand mutation this catches: lower-is-better ignored when bolding and starring: MAE and HD95 columns.
def test_lowest_mae_is_bold_and_starred_and_the_highest_is_not(tmp_path):
    from dgcf_auto.evaluation import compare

    cases = [f"c{i}" for i in range(1, 9)]
    low = [50.0, 52.0, 49.0, 55.0, 51.0, 53.0, 50.5, 54.0]
    high = [v + d for v, d in zip(low, [20.0, 22.0, 19.0, 25.0, 21.0, 18.0, 23.0, 20.0])]
    paths = [_summary(tmp_path / "low" / "s.json", "low", {c: {"mae": v} for c, v in zip(cases, low)}),
             _summary(tmp_path / "high" / "s.json", "high", {c: {"mae": v} for c, v in zip(cases, high)})]
    markdown = compare.compare([(None, p) for p in paths], tmp_path / "table", ["mae"])
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in markdown.splitlines()[2:4]}
    assert rows["low"] == f"**{np.mean(low):.2f} ± {np.std(low):.2f}**\\*".replace("\\", "")
    assert rows["high"] == f"{np.mean(high):.2f} ± {np.std(high):.2f}"
    assert stats.ttest_rel(low, high).pvalue < 0.05  # the star is deserved
