"""dgcf_compare's defaults and labels: one default profile with dgcf_evaluate, methods labelled from the models
that wrote the predictions, and no significance stars from too few cases (said in one line)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import stats

from dgcf_auto.cli import compare as compare_cli
from dgcf_auto.cli import evaluate as evaluate_cli
from dgcf_auto.evaluation import compare
from dgcf_auto.evaluation.profiles import get_profile


def _summary(path: Path, cases: list[str], psnr: list[float], profile: str = "dgcf-paper", **fields) -> Path:
    rows = [{"case": c, "reference_file": f"/raw/{c}/ct.nii.gz", "metrics": {"psnr_body": p}}
            for c, p in zip(cases, psnr)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"metric_per_case": rows, "profile": get_profile(profile).describe(),
                                "dataset": "Dataset001_X", "task": "mr2ct", **fields}))
    return path


def _run_compare(argv) -> int:
    with pytest.raises(SystemExit) as info:
        compare_cli.main(argv)
    return info.value.code


# ----------------------------------------------------------------------------------------- default profile
def test_a_bare_compare_finds_what_a_bare_evaluate_writes(tmp_path, monkeypatch, capsys):
    """Both commands default to one profile: the summaries `dgcf_evaluate -d 1 --split test` writes are the
    ones a bare `dgcf_compare` collects, and their table columns are there."""
    from dgcf_auto.paths import summary_file_name

    evaluated = evaluate_cli.build_parser().parse_args(["-d", "1", "--split", "test"]).profile
    assert compare_cli.build_parser().parse_args([]).profile == evaluated
    columns = get_profile(evaluated).table
    monkeypatch.setenv("DGCF_results", str(tmp_path))
    for trainer, offset in (("DGCFTrainer", 1.0), ("UNetTrainer", 0.0)):
        rows = [{"case": c, "reference_file": f"/raw/{c}/ct.nii.gz",
                 "metrics": {m: 0.5 + 0.1 * i + offset * (1 + 0.1 * i * i) for m in columns}}
                for i, c in enumerate(["c1", "c2", "c3"])]
        path = tmp_path / "Dataset001_X" / f"{trainer}__DGCFPlans__2d" / "fold_0" / "test" / summary_file_name(evaluated)
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"metric_per_case": rows, "profile": get_profile(evaluated).describe(),
                                    "dataset": "Dataset001_X", "task": "mr2ct", "trainer": trainer}))
    assert _run_compare([]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].count("MRI→CT:") == len(columns)
    assert [line.split(" | ")[0] for line in out.splitlines()[2:4]] == ["| DGCFTrainer", "| UNetTrainer"]
    assert f"written to {tmp_path / f'comparison_test_{evaluated}'}" in out


# ---------------------------------------------------------------------------------------------------- labels
def _provenance_model(trainer: str, folds: list[str], plans: str = "DGCFPlans", checkpoint="checkpoint_final.pth"):
    return {"trainer": trainer, "plans": plans, "configuration": "2d", "folds": folds, "checkpoint": checkpoint,
            "model_id": "0" * 64}


@pytest.mark.parametrize("models, labels", [
    ([("DGCFTrainer", ["0"], "DGCFPlans"), ("UNetTrainer", ["0"], "DGCFPlans")], ["DGCFTrainer", "UNetTrainer"]),
    ([("DGCFTrainer", ["0"], "DGCFPlans"), ("DGCFTrainer", ["0", "1", "2"], "DGCFPlans")],
     ["DGCFTrainer (fold 0)", "DGCFTrainer (folds 0,1,2)"]),
    ([("DGCFTrainer", ["0"], "DGCFPlans"), ("DGCFTrainer", ["0"], "ReleasePlans")],
     ["DGCFTrainer (DGCFPlans)", "DGCFTrainer (ReleasePlans)"]),
])
def test_two_summaries_in_one_folder_are_labelled_by_their_models(tmp_path, capsys, models, labels):
    paths = [_summary(tmp_path / "run" / f"summary_{i}.json", ["c1", "c2", "c3"], [27.0 + i, 28.0 + 0.5 * i, 26.0 + 0.2 * i],
                      prediction_model=_provenance_model(trainer, [f"fold_{f}" for f in folds], plans))
             for i, (trainer, folds, plans) in enumerate(models)]
    assert _run_compare([*map(str, paths), "-o", str(tmp_path / "out")]) == 0
    rows = [line.split(" | ")[0].lstrip("| ") for line in capsys.readouterr().out.splitlines()[2:4]]
    assert rows == labels


def test_summaries_without_any_model_fall_back_to_their_file_names(tmp_path, capsys):
    paths = [_summary(tmp_path / "run" / name, ["c1", "c2", "c3"], [27.0, 28.0, 26.0]) for name in ("a.json", "b.json")]
    assert _run_compare([*map(str, paths), "-o", str(tmp_path / "out")]) == 0
    rows = [line.split(" | ")[0].lstrip("| ") for line in capsys.readouterr().out.splitlines()[2:4]]
    assert rows == ["run (a)", "run (b)"]


def test_evaluate_records_the_model_from_the_predictions_provenance(tmp_path):
    from dgcf_auto.atomic import write_json
    from dgcf_auto.evaluation.evaluate import evaluate_folders
    from dgcf_auto.inference.provenance import PROVENANCE_FILE, build_provenance

    model = tmp_path / "Dataset001_X" / "UNetTrainer__ReleasePlans__2d"
    checkpoints = []
    for fold in (1, 3):
        (model / f"fold_{fold}").mkdir(parents=True)
        (model / f"fold_{fold}" / "checkpoint_best.pth").write_bytes(bytes([fold]) * 10)
        checkpoints.append(model / f"fold_{fold}" / "checkpoint_best.pth")
    image = sitk.GetImageFromArray(np.linspace(-1000, 1000, 8 * 16 * 16).reshape(8, 16, 16).astype(np.int16))
    for folder in ("ref", "pred"):
        (tmp_path / folder).mkdir()
        sitk.WriteImage(image, str(tmp_path / folder / "c1.nii.gz"))
    provenance = build_provenance(model, checkpoints, {"tta": False})
    write_json(provenance, tmp_path / "pred" / PROVENANCE_FILE)
    summary = evaluate_folders(tmp_path / "ref", tmp_path / "pred", tmp_path / "run" / "s.json")
    assert summary["prediction_model"] == {"trainer": "UNetTrainer", "plans": "ReleasePlans", "configuration": "2d",
                                           "folds": ["fold_1", "fold_3"], "checkpoint": "checkpoint_best.pth",
                                           "model_id": provenance["model_id"]}
    assert compare.load_summary(tmp_path / "run" / "s.json").label == "UNetTrainer"


# ------------------------------------------------------------------------------------------------- small n
def test_too_few_cases_for_a_paired_test_is_said_in_one_line_and_shows_no_star(tmp_path, capsys):
    cases = ["c1", "c2", "c3", "c4"]
    a = [26.0, 27.0, 28.0, 29.0]
    b = [x + d for x, d in zip(a, [2.0, 2.1, 1.9, 2.05])]
    assert stats.ttest_rel(b, a).pvalue < 0.001  # the t-test alone would star B
    paths = [_summary(tmp_path / name / "s.json", cases, values, trainer=name) for name, values in (("A", a), ("B", b))]
    assert _run_compare([*map(str, paths), "-o", str(tmp_path / "out"), "--metrics", "psnr_body"]) == 0
    out = capsys.readouterr().out
    assert "| B | **29.51 ± 1.11** |" in out and "*" not in out.split("\n\n")[0].replace("**", "")
    notes = [line for line in out.splitlines() if "too few" in line]
    assert notes == ["- MRI→CT: too few cases for a paired Student's t-test (4 in common, at least 5 needed): "
                     "no significance marked"]
    rows = list(csv.DictReader((tmp_path / "out" / "table.csv").open()))
    assert [r["significant"] for r in rows] == ["0", "0"]


@pytest.mark.parametrize("test, n, starred", [("ttest", 5, True), ("wilcoxon", 5, False), ("wilcoxon", 6, True)])
def test_the_smallest_n_is_where_each_test_can_reach_p_below_alpha(tmp_path, test, n, starred):
    """Wilcoxon's exact two-sided p is at least 2 / 2**n: 0.0625 with 5 pairs, 0.031 with 6."""
    cases = [f"c{i}" for i in range(n)]
    a = [26.0 + i for i in range(n)]
    b = [x + 2.0 + 0.01 * i for i, x in enumerate(a)]
    summaries = [compare.load_summary(_summary(tmp_path / name / "s.json", cases, values, trainer=name))
                 for name, values in (("A", a), ("B", b))]
    _, _, cells, notes = compare.build_table(summaries, ["psnr_body"], test)
    assert cells["B", "MRI→CT", "psnr_body"].significant is starred
    assert any("too few" in note for note in notes) is not starred
    if starred:
        expected = stats.ttest_rel(b, a).pvalue if test == "ttest" else stats.wilcoxon(b, a).pvalue
        assert cells["B", "MRI→CT", "psnr_body"].p_value == pytest.approx(expected, rel=1e-9)


def test_the_parsers_profile_names_are_the_registered_profiles():
    from dgcf_auto.evaluation.profile_names import DEFAULT_PROFILE, PROFILE_NAMES
    from dgcf_auto.evaluation.profiles import PROFILES

    assert PROFILE_NAMES == tuple(PROFILES) and DEFAULT_PROFILE in PROFILES
