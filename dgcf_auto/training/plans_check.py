"""Before a fold trains: every name its plans give is one this installation can honour, and every plans field a
trainer variant replaces is said once and recorded.

The schema (`dgcf_auto.plans_schema`) checks types, ranges and the rules across fields when the file is read;
the registries live with the networks, loss terms and optimisers, so the names are checked here, where
training imports them anyway. A plans file naming a network, loss term or optimiser that does not exist is
one DGCFError naming the field, never a silent default.
"""
from __future__ import annotations

from collections.abc import Sequence

from dgcf_auto.errors import DGCFError
from dgcf_auto.losses.registry import LOSSES
from dgcf_auto.network.registry import NETWORKS


def check_plans_names(plans: dict, where: str, optimizers: Sequence[str], schedulers: Sequence[str]) -> None:
    """Network architecture, loss terms, optimiser and learning-rate scheduler of the (configuration-resolved)
    plans are registered; `optimizers` / `schedulers`: the names the trainer offers."""
    network, training = plans.get("network", {}), plans.get("training", {})
    checks = [("network.architecture", network.get("architecture"), sorted(NETWORKS)),
              ("training.optimizer", training.get("optimizer"), list(optimizers))]
    checks += [(f"training.loss.{term}", term, sorted(LOSSES)) for term in training.get("loss", {})]
    scheduler = training.get("lr_scheduler")
    if isinstance(scheduler, dict):
        checks.append(("training.lr_scheduler.name", scheduler.get("name"), list(schedulers)))
    for path, value, known in checks:
        if value is not None and value not in known:
            raise DGCFError(f"{where}: field {path}: {value!r} is not offered (known: {', '.join(known)})")


def variant_overrides(plans: dict, run_plans: dict, command_line: dict) -> dict[str, dict]:
    """The plans fields the trainer variant replaced ({json path: {"plans": value, "trainer": value}}); the trainer
    says them once in the fold's log (`describe_overrides`) and records them in training_config.json. Values from
    the command line (`command_line`, recorded separately) are not the variant's."""
    changed: dict[str, dict] = {}
    for section in ("network", "training"):
        before, after = _flatten(plans.get(section, {}), section), _flatten(run_plans.get(section, {}), section)
        for path in sorted(set(before) | set(after)):
            if path in ("training.derived_from",) or path.removeprefix("training.") in command_line:
                continue
            if before.get(path) != after.get(path):
                changed[path] = {"plans": before.get(path), "trainer": after.get(path)}
    return changed


def describe_overrides(trainer: str, changed: dict[str, dict]) -> str | None:
    """One line for the fold's log naming what `variant_overrides` found (None when nothing)."""
    if not changed:
        return None
    words = "; ".join(f"{path} {v['plans']!r} -> {v['trainer']!r}" for path, v in changed.items())
    return f"trainer {trainer} sets these plans fields (recorded in training_config.json): {words}"


def _flatten(section: dict, prefix: str) -> dict:
    """Nested dicts -> {"a.b.c": leaf}; dicts whose keys are data (loss terms) compare as whole values."""
    flat = {}
    for key, value in section.items():
        path = f"{prefix}.{key}"
        if isinstance(value, dict) and key not in ("loss", "loss_options", "options", "model_kwargs", "lr_scheduler"):
            flat.update(_flatten(value, path))
        else:
            flat[path] = value
    return flat
