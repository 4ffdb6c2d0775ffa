"""What a shared model says about itself: its files without paths, and its README.

A model zip leaves the training machine: nothing in it may name a folder there (clinical folder names often hold
patient IDs). `without_paths` rewrites every absolute path in a JSON value to its file name and drops the fields
that only locate files on the training machine; the caller reports what went. `readme` describes the model from
its plans, its folds' settings and validation summaries, and the dataset's fingerprint.
"""
from __future__ import annotations

import datetime
import json
import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from dgcf_auto import __version__
from dgcf_auto.planning.planners import plans_summary
from dgcf_auto.schema import read_checked

# Fields that only say where files were on the training machine (per file name in the zip; "cases[]" is each
# entry of the list "cases"). The fingerprint's input signature hashes those paths: meaningless elsewhere.
LOCAL_FIELDS = {"dataset.json": ("raw_folder",),
                "dataset_fingerprint.json": ("input_signature", "cases[].files")}
# An absolute path, alone or inside a message: '/…', '~/…', 'C:\…' or '\\server\…', starting the text or after a
# space, quote, bracket, '=' or ',' (so 'fold_0/x.pth', '1/2', '(a)/2' and URLs' '//' after 'https:' stay).
_ABSOLUTE = re.compile(r"(?:^|(?<=[\s'\"(\[=,]))(?:~|[A-Za-z]:)?(?:[/\\]{1,2}[^\s'\"/\\,;()\[\]{}<>|]+)+[/\\]?")


def without_paths(value: Any, file: str, removed: set[str]) -> Any:
    """`value` (JSON-like) with LOCAL_FIELDS of `file` dropped and every absolute path cut to its file name;
    each change is added to `removed` as '<file>: <field>'."""
    dropped = LOCAL_FIELDS.get(file, ())
    return _scrub(value, file, "", dropped, removed)


def _scrub(value: Any, file: str, field: str, dropped: tuple[str, ...], removed: set[str]) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            name = f"{field}.{key}" if field else str(key)
            if name in dropped:
                removed.add(f"{file}: {name}")
                continue
            out[key] = _scrub(item, file, name, dropped, removed)
        return out
    if isinstance(value, (list, tuple)):
        return [_scrub(item, file, f"{field}[]", dropped, removed) for item in value]
    if isinstance(value, str):
        cut = _ABSOLUTE.sub(lambda match: _file_name(match.group()), value)
        if cut != value:
            removed.add(f"{file}: {field or '(value)'}")
        return cut
    return value


def _file_name(path: str) -> str:
    name = (PureWindowsPath(path) if "\\" in path or ":" in path[:2] else PurePosixPath(path)).name
    return name or "(folder)"


def summarise_removed(removed: set[str]) -> str:
    """'dataset.json: raw_folder; plans.json: dataset_folder' (sorted), or 'nothing'."""
    return "; ".join(sorted(removed)) or "nothing"


# ------------------------------------------------------------------------------------------------ README
def readme(model_folder: Path, files: list[Path], checkpoints: list[dict], info: dict | None,
           fingerprint: dict | None) -> str:
    """README.md of a model zip: what the model does, how it was trained and validated, on what data."""
    plans = checkpoints[0]["plans"]
    dataset, (trainer, plans_name, configuration) = model_folder.parent.name, model_folder.name.split("__")
    network = plans.get("network", {})
    lines = [f"# {dataset} / {model_folder.name}", "",
             f"A dgcf_auto {__version__} synthetic-CT model exported on {datetime.date.today().isoformat()}: "
             "weights only (no optimiser state).", "",
             "Install and predict:", "", "```", "dgcf_install_model_from_zip model.zip",
             f"dgcf_predict -i INPUT -o OUTPUT -d {dataset}", "```", "",
             "## Model", "",
             f"- task: {plans.get('task', '?')} (source: {plans.get('source_modality', '?')})",
             f"- configuration: {configuration}; trainer: {checkpoints[0].get('trainer_name') or trainer}; "
             f"plans: {plans_name}",
             f"- network: {network.get('architecture', 'cross_fusion')}, features {network.get('features')}",
             f"- DINOv3 weights: {checkpoints[0].get('dinov3_source', 'unknown')}",
             "- folds: " + ", ".join(f"{p.parent.name} ({p.name}, epoch {c.get('epoch', '?')})"
                                    for p, c in zip(files, checkpoints))]
    if summary := plans_summary(plans):
        lines.append(f"- {summary}")
    lines += [_intensity_line(plans), ""]
    lines += ["## Training data", ""]
    if info:
        lines.append(f"- dataset: {info.get('name', dataset)}, {info.get('num_cases', '?')} cases")
    for path in files:
        config = _json_or_none(path.parent / "training_config.json")
        if config:
            lines.append(f"- {path.parent.name}: {len(config.get('train_cases', []))} training, "
                         f"{len(config.get('val_cases', []))} validation cases")
    if fingerprint:
        lines += _fingerprint_lines(fingerprint)
    lines += ["", "## Validation (each fold's held-out cases, predicted on their original grids)", ""]
    lines += _validation_lines(files)
    lines += ["", "See DINOv3_LICENSE_NOTICE.txt before redistributing or using this model."]
    return "\n".join(lines) + "\n"


def _intensity_line(plans: dict) -> str:
    ct = plans.get("ct_normalization", {})
    source = plans.get("source_normalization", {})
    text = f"- intensities: CT window [{ct.get('clip_low', '?')}, {ct.get('clip_high', '?')}] HU"
    if "clip_low" in source:
        text += f"; source window [{source['clip_low']:g}, {source['clip_high']:g}]"
    elif source.get("scheme"):
        text += f"; source: {source['scheme']} normalisation" + (
            f" (p{source['percentile']:g}, clipped at {source.get('clip_max', '?')})" if "percentile" in source else "")
    return text


def _fingerprint_lines(fingerprint: dict) -> list[str]:
    pooled = fingerprint.get("pooled", {})
    lines = []
    if "median_spacing_lps" in pooled:
        lines.append("- median spacing (LPS, mm): " + " x ".join(f"{v:.3g}" for v in pooled["median_spacing_lps"]))
    for key, label, unit in (("ct", "CT", " HU"), ("source", "source", "")):
        stats = pooled.get(key)
        if isinstance(stats, dict) and "percentiles" in stats:
            p = stats["percentiles"]
            lines.append(f"- {label} inside the body masks: p0.5 {p.get('0.5', float('nan')):.4g}, "
                         f"median {p.get('50', float('nan')):.4g}, p99.5 {p.get('99.5', float('nan')):.4g}{unit} "
                         f"(min {stats.get('min', float('nan')):.4g}, max {stats.get('max', float('nan')):.4g})")
    if isinstance(pooled.get("source_p99"), dict):
        p99 = pooled["source_p99"]
        lines.append(f"- source 99th percentile per case: median {p99['median']:.4g} "
                     f"(from {p99['min']:.4g} to {p99['max']:.4g})")
    return lines


def _validation_lines(files: list[Path]) -> list[str]:
    from dgcf_auto.errors import DGCFError
    from dgcf_auto.evaluation.summary_schema import SUMMARY_SCHEMA
    from dgcf_auto.evaluation.units import metric_header
    from dgcf_auto.training.final_validation import SUMMARY_FILE

    lines = []
    for path in files:
        summary_file = path.parent / "validation" / SUMMARY_FILE
        if not summary_file.is_file():
            lines.append(f"- {path.parent.name}: no validation summary (dgcf_train ... --val writes it)")
            continue
        try:
            summary = read_checked(summary_file, SUMMARY_SCHEMA, f"validation summary of {path.parent.name}")
        except DGCFError as exc:
            lines.append(f"- {path.parent.name}: validation summary unreadable ({str(exc).split(': ', 1)[-1]})")
            continue
        shown = summary.get("profile", {}).get("table") or list(summary.get("mean", {}))
        values = [f"{metric_header(m)} {summary['mean'][m]:.4g}" for m in shown
                  if isinstance(summary.get("mean", {}).get(m), (int, float))]
        count = len(summary["metric_per_case"])
        lines.append(f"- {path.parent.name} ({count} case{'s' if count != 1 else ''}, profile "
                     f"{summary['profile']['name']}): " + (", ".join(values) or "no finite means"))
    return lines


def _json_or_none(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
