"""dgcf_compare: evaluation summaries of several methods (and tasks) -> the paper's Table 1 layout.

Rows are methods, columns are metrics per task, each cell mean ± std over that method's cases; the best mean
of a column is bold, and `*` marks a method that is better than the best other method with p < 0.05 in a
paired two-sided test over the cases both have (Student's t-test, as the paper, or Wilcoxon signed-rank),
never with fewer cases than the test can use (`min_pairs`; a note says so). Cases that some summaries lack are
reported and left out of the pairing only. Methods are named by the model that wrote their predictions
(`label_methods`). Summaries are checked against SUMMARY_SCHEMA first. Outputs: Markdown, CSV, LaTeX and a PNG
of per-case box plots per metric.
"""
from __future__ import annotations

import csv
import io
import itertools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dgcf_auto.atomic import atomic_path, check_writable
from dgcf_auto.errors import DGCFError
from dgcf_auto.evaluation import units
from dgcf_auto.evaluation.dose import DOSE_PREFIXES
from dgcf_auto.evaluation.summary_schema import SUMMARY_SCHEMA
from dgcf_auto.evaluation.units import PERCENT_PREFIXES
from dgcf_auto.schema import read_checked

TASK_LABELS = {"mr2ct": "MRI→CT", "cbct2ct": "CBCT→CT"}
TESTS = ("ttest", "wilcoxon")
TEST_NAMES = {"ttest": "Student's t-test", "wilcoxon": "Wilcoxon signed-rank test"}
ALPHA = 0.05


@dataclass
class MethodSummary:
    label: str
    task: str               # column group: the task label (or the dataset when the task is unknown)
    dataset: str
    profile: str
    path: Path
    per_case: dict[str, dict[str, float | None]]
    lower_is_better: set[str]
    table: list[str]
    identity: dict[str, str | None] = field(default_factory=dict)  # what tells methods apart (see label_methods)
    labelled: bool = False  # the label was given (LABEL=PATH): never changed


# Lower is better for HD95 and the dose errors (dgcf_evaluate --dose); the gamma pass rate is higher-better.
LOWER_PREFIXES = ("hd95", "dose_mae_target_", "dvh_")


def load_summary(path: str | os.PathLike, label: str | None = None) -> MethodSummary:
    """A dgcf_evaluate summary, checked against its schema (one line naming the file and the field)."""
    path = Path(path)
    where = f"summary {path}"
    if not path.is_file():
        raise DGCFError(f"{where}: not found")
    data = read_checked(path, SUMMARY_SCHEMA, where)
    rows = data["metric_per_case"]
    per_case: dict[str, dict[str, float | None]] = {}
    for index, row in enumerate(rows):
        if row["case"] in per_case:
            raise DGCFError(f"{where}: field metric_per_case[{index}].case: {row['case']!r} appears twice")
        per_case[row["case"]] = row["metrics"]
    profile = data["profile"]
    definitions = profile.get("metrics", {})
    lower = {k for k, d in definitions.items() if not d.get("higher_is_better", True)} | {"segscore_hd95"}
    lower |= {k for row in per_case.values() for k in row if k.startswith(LOWER_PREFIXES)}
    try:
        dataset = data.get("dataset") or str(Path(os.path.commonpath([r["reference_file"] for r in rows])))
    except ValueError:  # absolute and relative paths mixed
        raise DGCFError(f"{where}: field metric_per_case: its reference files share no folder; give the summary "
                        f"a dataset field") from None
    task = TASK_LABELS.get(data.get("task"), data.get("task") or dataset)
    identity = method_identity(data, path)
    return MethodSummary(label or identity["trainer"] or path.parent.name, task, dataset, profile["name"], path,
                         per_case, lower, list(profile.get("table", [])), identity, labelled=label is not None)


def method_identity(summary: dict, path: Path) -> dict[str, str | None]:
    """What says which method a summary is, in the order labels use it: the model that wrote the predictions
    (from their provenance, else the summary's own fields), then where the summary lies."""
    model = summary.get("prediction_model") or {}
    folds = model.get("folds") or ([f"fold_{summary['fold']}"] if summary.get("fold") is not None else [])
    numbers = [f.removeprefix("fold_") for f in folds]
    return {"trainer": model.get("trainer") or summary.get("trainer"),
            "plans": model.get("plans") or summary.get("plans"),
            "configuration": model.get("configuration") or summary.get("configuration"),
            "folds": (f"fold {numbers[0]}" if len(numbers) == 1 else f"folds {','.join(numbers)}") if numbers else None,
            "checkpoint": (model.get("checkpoint") or "").removesuffix(".pth") or None,
            "folder": path.parent.name, "file": path.stem}


def label_methods(summaries: list[MethodSummary]) -> None:
    """Summaries of one task that share a label (two trainers' summaries in one folder, one trainer's folds)
    get the parts of their identity that differ added: 'DGCFTrainer (folds 0,1,2)'. Given labels stay."""
    groups: dict[tuple[str, str], list[MethodSummary]] = {}
    for s in summaries:
        if not s.labelled:
            groups.setdefault((s.label, s.task), []).append(s)
    for (label, _), group in groups.items():
        if len(group) < 2:
            continue
        shown: list[str] = []  # the first identity parts that differ, until they tell the group apart
        for key in group[0].identity:
            if len({s.identity[key] for s in group}) > 1:
                shown.append(key)
                if len({tuple(s.identity[k] for k in shown) for s in group}) == len(group):
                    break
        for s in group:
            parts = [s.identity[key] or f"no {key}" for key in shown]
            s.label = f"{label} ({', '.join(parts)})" if parts else label


def check_consistent(summaries: list[MethodSummary]) -> None:
    """One profile, one dataset per task, one summary per method and task: else one line saying which."""
    if not summaries:
        raise DGCFError("no summaries to compare")
    first = summaries[0]
    for s in summaries[1:]:
        if s.profile != first.profile:
            raise DGCFError(f"summary {s.path}: metric profile {s.profile}, but {first.path} has {first.profile}; "
                            f"compare summaries of one profile (dgcf_evaluate --profile)")
    datasets: dict[str, MethodSummary] = {}
    seen: dict[tuple[str, str], Path] = {}
    for s in summaries:
        other = datasets.setdefault(s.task, s)
        if other.dataset != s.dataset:
            raise DGCFError(f"summary {s.path}: dataset {s.dataset}, but {other.path} (same task {s.task}) has "
                            f"{other.dataset}; a table compares methods on one dataset per task")
        if (s.label, s.task) in seen:
            raise DGCFError(f"summaries {seen[s.label, s.task]} and {s.path}: both are method {s.label!r} on "
                            f"{s.task}; give one of them another label (LABEL=PATH)")
        seen[s.label, s.task] = s.path


def min_pairs(test: str) -> int:
    """Fewest paired cases for which `test` may mark a difference. Wilcoxon's exact two-sided p is at least
    2 / 2**n, so below 6 pairs it can never fall under 0.05; the t-test can, but with fewer than 5 pairs (3 degrees
    of freedom or less) its normality assumption cannot be checked at all and one case decides p."""
    if test == "wilcoxon":
        return next(n for n in itertools.count(1) if 2 * 0.5 ** n < ALPHA)
    if test == "ttest":
        return 5
    raise _unknown_test(test)


def _unknown_test(test: str) -> DGCFError:
    return DGCFError(f"unknown test {test!r} (expected one of {', '.join(TESTS)})")


def paired_p_value(a: np.ndarray, b: np.ndarray, test: str = "ttest") -> float:
    """Two-sided p of a paired test; NaN with fewer than 2 pairs or when every difference is 0."""
    from scipy import stats

    if len(a) < 2 or np.all(a == b):
        return math.nan
    if test == "ttest":
        return float(stats.ttest_rel(a, b).pvalue)
    if test == "wilcoxon":
        return float(stats.wilcoxon(a, b, alternative="two-sided").pvalue)
    raise _unknown_test(test)


@dataclass
class Cell:
    mean: float
    std: float
    n: int
    best: bool = False
    significant: bool = False
    p_value: float = math.nan


def _values(summary: MethodSummary, metric: str) -> dict[str, float]:
    out = {}
    for case, row in summary.per_case.items():
        value = row.get(metric)
        if value is not None and math.isfinite(value):
            out[case] = float(value)
    return out


def build_table(summaries: list[MethodSummary], metrics: list[str] | None = None, test: str = "ttest"):
    """(methods, columns [(task, metric)], cells {(method, task, metric): Cell}, notes [str])."""
    label_methods(summaries)
    check_consistent(summaries)
    tasks = list(dict.fromkeys(s.task for s in summaries))
    methods = list(dict.fromkeys(s.label for s in summaries))
    if metrics is None:
        metrics = list(summaries[0].table)
        if any("segscore" in row for s in summaries for row in s.per_case.values()):
            metrics.append("segscore")
        metrics += list(dict.fromkeys(k for s in summaries for row in s.per_case.values() for k in row
                                      if k.startswith(DOSE_PREFIXES)))
    columns, cells, notes = [], {}, []
    for task in tasks:
        group = [s for s in summaries if s.task == task]
        all_cases = set().union(*(s.per_case for s in group))
        for s in group:
            if absent := sorted(all_cases - set(s.per_case)):
                notes.append(f"{task}: {s.label} lacks {len(absent)} case(s) that other methods have "
                             f"({', '.join(absent[:10])}{', ...' if len(absent) > 10 else ''}); "
                             "they are left out of its paired tests")
        fewest = math.inf  # the smallest number of pairs a test was refused for, in this task
        for metric in metrics:
            values = {s.label: _values(s, metric) for s in group}
            if not any(values.values()):
                continue
            columns.append((task, metric))
            lower = any(metric in s.lower_is_better for s in group)
            sign = -1.0 if lower else 1.0
            for label, v in values.items():
                arr = np.array(list(v.values()))
                cells[label, task, metric] = Cell(float(arr.mean()) if arr.size else math.nan,
                                                  float(arr.std()) if arr.size else math.nan, int(arr.size))
            ranked = sorted((sign * cells[name, task, metric].mean, name) for name in values
                            if math.isfinite(cells[name, task, metric].mean))
            for score, label in ranked:  # ties share the bold
                cells[label, task, metric].best = score == ranked[-1][0]
            for label in values:
                others = [(score, name) for score, name in ranked if name != label]
                cell = cells[label, task, metric]
                if not others or not math.isfinite(cell.mean):
                    continue
                rival = others[-1][1]
                common = sorted(set(values[label]) & set(values[rival]))
                a = np.array([values[label][c] for c in common])
                b = np.array([values[rival][c] for c in common])
                cell.p_value = paired_p_value(a, b, test)
                if len(common) < min_pairs(test):
                    fewest = min(fewest, len(common))
                    continue
                cell.significant = sign * cell.mean > sign * cells[rival, task, metric].mean and cell.p_value < ALPHA
        if fewest < math.inf:
            notes.append(f"{task}: too few cases for a paired {TEST_NAMES[test]} ({fewest} in common, at least "
                         f"{min_pairs(test)} needed): no significance marked")
    return methods, columns, cells, notes


def _scale(metric: str) -> float:
    return 100.0 if metric.startswith(PERCENT_PREFIXES) else 1.0


def metric_header(metric: str) -> str:
    return units.metric_header(metric, percent=True)


def _cell_text(cell: Cell | None, metric: str, bold: tuple[str, str], star: str = "*") -> str:
    if cell is None or not math.isfinite(cell.mean):
        return "-"
    k = _scale(metric)
    text = f"{cell.mean * k:.2f} ± {cell.std * k:.2f}"
    if cell.best:
        text = f"{bold[0]}{text}{bold[1]}"
    return text + (star if cell.significant else "")


def to_markdown(methods, columns, cells, notes, test: str) -> str:
    header = "| method | " + " | ".join(f"{task}: {metric_header(m)}" for task, m in columns) + " |"
    lines = [header, "|---" * (len(columns) + 1) + "|"]
    for method in methods:
        lines.append(f"| {method} | " + " | ".join(_cell_text(cells.get((method, t, m)), m, ("**", "**"))
                                                   for t, m in columns) + " |")
    lines += ["", f"mean ± std (population, over each method's cases); best in bold; * p < {ALPHA} against the "
                  f"best other method (paired two-sided {TEST_NAMES[test]} over the cases both have, at least "
                  f"{min_pairs(test)})."]
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def to_csv(methods, columns, cells) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "task", "metric", "mean", "std", "n", "best", "significant", "p_value"])
    for method in methods:
        for task, metric in columns:
            cell = cells.get((method, task, metric))
            if cell is not None:
                writer.writerow([method, task, metric, repr(cell.mean), repr(cell.std), cell.n, int(cell.best),
                                 int(cell.significant), "" if math.isnan(cell.p_value) else repr(cell.p_value)])
    return buffer.getvalue()


def _latex_escape(text: str) -> str:
    return (text.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")
            .replace("→", r"$\rightarrow$").replace("×", r"$\times$"))


def to_latex(methods, columns, cells) -> str:
    tasks = list(dict.fromkeys(t for t, _ in columns))
    spans = " & ".join(rf"\multicolumn{{{sum(1 for t, _ in columns if t == task)}}}{{c}}{{{_latex_escape(task)}}}"
                       for task in tasks)
    lines = [r"\begin{tabular}{l" + "c" * len(columns) + "}", r"\hline",
             f"Method & {spans} \\\\",
             " & " + " & ".join(_latex_escape(metric_header(m)) for _, m in columns) + r" \\", r"\hline"]
    for method in methods:
        texts = [_cell_text(cells.get((method, t, m)), m, (r"\textbf{", "}"), "$^*$").replace("±", r"$\pm$")
                 for t, m in columns]
        lines.append(_latex_escape(method) + " & " + " & ".join(texts) + r" \\")
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def save_boxplots(summaries: list[MethodSummary], columns, path: Path) -> None:
    """One panel per (task, metric): per-case values of every method as box plots."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(columns)
    fig = Figure(figsize=(max(4.0, 1.2 * len(summaries)) * min(n, 3), 3.6 * math.ceil(n / 3)), dpi=110,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(math.ceil(n / 3), min(n, 3), squeeze=False).ravel()
    for ax, (task, metric) in zip(axes, columns):
        group = [s for s in summaries if s.task == task]
        data = [np.array(list(_values(s, metric).values())) * _scale(metric) for s in group]
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(group) + 1), [s.label for s in group], rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{task}: {metric_header(metric)}", fontsize=9)
    for ax in axes[n:]:
        ax.set_visible(False)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")


def find_summaries(split: str, profile: str, datasets: list[str] | None = None) -> list[tuple[None, str]]:
    """Every `dgcf_evaluate --split` summary of this split and profile under $DGCF_results (or its datasets)."""
    from dgcf_auto.paths import SPLIT_FOLDERS, results_dataset, results_root, summary_file_name

    roots = [results_dataset(d) for d in datasets] if datasets else sorted(
        p for p in results_root().glob("Dataset*") if p.is_dir())
    found = sorted(str(p) for root in roots
                   for p in root.glob(f"*__*__*/fold_*/{SPLIT_FOLDERS[split]}/{summary_file_name(profile)}"))
    if not found:
        raise DGCFError(f"no {summary_file_name(profile)} of --split {split} under "
                        f"{', '.join(map(str, roots)) or results_root()}; run dgcf_evaluate -d ID --split {split} "
                        f"--profile {profile} first, or name the summaries")
    return [(None, path) for path in found]


def compare(inputs: list[tuple[str | None, str]], output_dir, metrics: list[str] | None = None,
            test: str = "ttest") -> str:
    """Write table.md, table.csv, table.tex and boxplots.png into `output_dir`; return the Markdown."""
    output_dir = check_writable(output_dir)
    summaries = [load_summary(path, label) for label, path in inputs]
    methods, columns, cells, notes = build_table(summaries, metrics, test)
    if not columns:
        raise DGCFError(f"none of the metrics {', '.join(metrics or [])} is in the summaries")
    markdown = to_markdown(methods, columns, cells, notes, test)
    for name, text in (("table.md", markdown), ("table.csv", to_csv(methods, columns, cells)),
                       ("table.tex", to_latex(methods, columns, cells))):
        with atomic_path(output_dir / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
    save_boxplots(summaries, columns, output_dir / "boxplots.png")
    return markdown
