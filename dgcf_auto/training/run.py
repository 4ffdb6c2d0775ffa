"""`dgcf_train` end to end: find the preprocessed data and the fold, settle the settings, train.

Everything here is resolution and checking (clear errors before any work starts); the training itself is
`DGCFTrainer`. Works the same under torchrun, where every rank runs this and rank 0 writes.
"""
from __future__ import annotations

import contextlib
import datetime
import math
import os
from dataclasses import replace
from pathlib import Path

from dgcf_auto import paths
from dgcf_auto.atomic import check_writable, folder_lock
from dgcf_auto.errors import DGCFError
from dgcf_auto.log import get_logger
from dgcf_auto.options import apply_keywords, with_option_keywords
from dgcf_auto.planning.splits import SPLITS_FILE, read_splits
from dgcf_auto.plans import DEFAULT_CONFIGURATION, KIND_VOLUME, configuration_plans, resolve_configuration
from dgcf_auto.plans_schema import load_plans
from dgcf_auto.training import checkpoint as ckpt
from dgcf_auto.training.dataloading import open_case
from dgcf_auto.training.distributed import init_distributed, resolve_device, shutdown_distributed
from dgcf_auto.training.final_validation import validate_fold
from dgcf_auto.training.optimizers import OPTIMIZERS, SCHEDULERS
from dgcf_auto.training.plans_check import check_plans_names, variant_overrides
from dgcf_auto.training.trainer import DGCFTrainer, TrainingSettings
from dgcf_auto.training.trainer_3d import DGCFTrainer3d, prepare_volume_plans
from dgcf_auto.training.variants import BEST_METRICS, TrainerVariant, effective_plans, get_trainer_variant

log = get_logger(__name__)

# Configuration kinds a trainer can train (the others are planned but refused with one line).
TRAINABLE_KINDS = ("slices", "slabs", "volume")
VALIDATION_MODES = ("final", "none", "only", "only-best")


def parse_fold(text: str | int) -> int | str:
    """'fold0', '0' or 'all' (nnU-Net's spellings)."""
    value = str(text).strip().lower()
    if value == "all":
        return "all"
    value = value.removeprefix("fold").removeprefix("_")
    if not value.isdigit():
        raise DGCFError(f"fold '{text}' is not valid: use e.g. fold0, 0 or all")
    return int(value)


def load_preprocessed(dataset: str | int, plans_name: str,
                      configuration: str = DEFAULT_CONFIGURATION) -> tuple[Path, dict, list, Path]:
    """(preprocessed dataset folder, plans, splits, folder of the configuration's arrays)."""
    folder = paths.preprocessed_dataset(dataset)
    plans_file, splits_file = folder / f"{plans_name}.json", folder / SPLITS_FILE
    for file in (plans_file, splits_file):
        if not file.is_file():
            raise DGCFError(f"dataset {folder.name}: {file} is missing; run dgcf_plan_and_preprocess "
                            f"-d {paths.parse_dataset_id(folder.name)} first")
    splits = read_splits(splits_file)
    plans = load_plans(plans_file)
    try:
        identifier = configuration_plans(plans, configuration).data_identifier
    except DGCFError as exc:
        raise DGCFError(f"dataset {folder.name}: {exc}") from None
    # Each plans identifier has its own arrays: a trainer given one plans file never reads another's.
    if plans.get("plans_name", plans_name) != plans_name or not identifier.startswith(f"{plans_name}_"):
        raise DGCFError(f"dataset {folder.name}: {plans_file} names plans {plans.get('plans_name')!r} with arrays "
                        f"{identifier!r}, not {plans_name!r}; re-run dgcf_plan_and_preprocess")
    data_folder = folder / identifier
    if not data_folder.is_dir() or not any(data_folder.glob("*_source.npy")):
        raise DGCFError(f"dataset {folder.name}: no preprocessed slices in {data_folder}; "
                        f"run dgcf_plan_and_preprocess -d {paths.parse_dataset_id(folder.name)} first")
    return folder, plans, splits, data_folder


def fold_cases(splits: list, fold: int | str, splits_file: Path) -> tuple[list[str], list[str]]:
    if fold == "all":
        names = sorted(set(splits[0]["train"]) | set(splits[0]["val"]))
        return names, []
    if isinstance(fold, str) or not 0 <= fold < len(splits):  # a fold is 'all' or parse_fold's number
        raise DGCFError(f"fold {fold} does not exist: {splits_file} has {len(splits)} folds "
                        f"(0-{len(splits) - 1}) or use 'all'")
    return list(splits[fold]["train"]), list(splits[fold]["val"])


@with_option_keywords(TrainingSettings)
def run_training(dataset: str | int, configuration: str, fold: str | int, trainer_name: str = paths.DEFAULT_TRAINER,
                 plans_name: str = paths.DEFAULT_PLANS, settings: TrainingSettings | None = None,
                 **keywords) -> Path | None:
    """Train one fold, then predict and score its validation cases (nnU-Net's final validation); returns the
    output folder (None on torchrun ranks other than 0). `settings` (TrainingSettings) says everything else;
    each of its fields may also be given as a keyword (listed below), replacing that field of `settings`.
    `validation`: "final" (train, then validate), "none" (train only), "only" / "only-best" (rerun just the
    validation, with checkpoint_final / checkpoint_best). `best_metric` ("mae" | "ssim") picks
    checkpoint_best.pth; None: the trainer's default ("ssim" for the `_release` trainers, as the authors'
    train.json; "mae" otherwise). `continue_training` (--c) continues from checkpoint_latest, else
    checkpoint_final; `start_over` moves an earlier run's files aside (never deletes them). One run per fold
    at a time (a lock file in the fold). Raises DGCFError for every user-fixable problem."""
    (s,) = apply_keywords("run_training", (settings or TrainingSettings(),), keywords)
    s, variant, fold = _checked(s, trainer_name, fold)
    pretrained_sha256 = _check_pretrained(s.pretrained_weights, s.continue_training)
    folder, plans, splits, data_folder = load_preprocessed(dataset, plans_name, configuration)
    kind = configuration_plans(plans, configuration).kind
    if kind not in TRAINABLE_KINDS:
        raise DGCFError(f"configuration {configuration!r} ({kind}) cannot be trained by this dgcf_auto version")
    if kind not in variant.kinds:
        raise DGCFError(f"trainer {variant.name} trains {' or '.join(variant.kinds)} configurations, not "
                        f"{configuration!r} ({kind}); the 3d_fullres trainers are DGCFTrainer3d*")
    plans = resolve_configuration(plans, configuration)
    check_plans_names(plans, f"plans file {folder / (plans_name + '.json')}", OPTIMIZERS.names(), SCHEDULERS.names())
    train_names, val_names = fold_cases(splits, fold, folder / SPLITS_FILE)
    output = check_writable(paths.training_output_folder(folder.name, variant.name, plans_name, configuration, fold),
                            "results folder")
    with _fold_lock(output):
        if s.validation.startswith("only"):
            checkpoint = "checkpoint_best.pth" if s.validation == "only-best" else "checkpoint_final.pth"
            validate_fold(dataset, variant.name, plans_name, configuration, fold, checkpoint, s.device, s.precision,
                          s.save_probabilities)
            return output
        resume_from = _resume_point(output, s.continue_training, s.start_over)
        resume_state = None
        overrides = {"epochs": s.epochs, "batch_size": s.batch_size, "iterations_per_epoch": s.iterations_per_epoch}
        if resume_from is not None:
            resume_state = ckpt.load_checkpoint(resume_from)
            recorded = resume_state["plans"]["training"]  # a resumed run keeps its recorded settings
            overrides = {key: value or recorded[key] for key, value in overrides.items()}
        if kind == KIND_VOLUME:  # the variant's 3D preset: its planned topology, patch and batch size
            plans = prepare_volume_plans(plans, variant.network)
        run_plans = effective_plans(plans, variant, overrides)
        check_plans_names(run_plans, f"trainer {variant.name}", OPTIMIZERS.names(), SCHEDULERS.names())
        replaced = variant_overrides(plans, run_plans, {k: v for k, v in overrides.items() if v})
        _check_patch_fits(run_plans, variant.name)
        train_cases = [open_case(data_folder, n) for n in train_names]
        val_cases = [open_case(data_folder, n) for n in val_names]
        training = run_plans["training"]
        if not training.get("iterations_per_epoch"):
            # the fallback definition: one epoch shows as many slices as the fold's training set holds
            total = sum(len(c.source) for c in train_cases)
            training["iterations_per_epoch"] = max(1, math.ceil(total / training["batch_size"]))
        s = replace(s, epochs=int(training["epochs"]), batch_size=int(training["batch_size"]),
                    iterations_per_epoch=int(training["iterations_per_epoch"]),
                    pretrained_weights=str(Path(s.pretrained_weights).resolve()) if s.pretrained_weights else None,
                    pretrained_weights_sha256=pretrained_sha256)
        if resume_from is not None and resume_state is not None:  # set together above
            ckpt.check_compatible(resume_state, resume_from, variant.name, run_plans)
            if resume_from.name == "checkpoint_final.pth" and resume_state["epoch"] >= s.epochs:
                log.info(f"{output} is a finished model: it already trained {resume_state['epoch']} "
                         f"epochs (checkpoint_final.pth); nothing to do (pass a larger --epochs to train on, or "
                         f"--val to redo the validation)")
                return output

        if s.start_over and int(os.environ.get("RANK", "0")) == 0:
            _move_aside(output)
        run_info = {"dataset": folder.name, "fold": fold, "plans_name": plans_name, "configuration": configuration,
                    "trainer_sets": replaced, "command_line_overrides": {k: v for k, v in overrides.items() if v}}
        trainer_class = DGCFTrainer3d if kind == KIND_VOLUME else DGCFTrainer
        device = _train(trainer_class, variant, run_plans, s, (train_cases, val_cases), output, run_info,
                        resume_from, resume_state)
        if device is None:  # a torchrun rank other than 0
            return None
        if val_cases:
            record_precision_check(output, device, val_cases)
        if s.validation == "final" and val_names:
            validate_fold(dataset, variant.name, plans_name, configuration, fold, "checkpoint_final.pth", s.device,
                          s.precision, s.save_probabilities)
        return output


def record_precision_check(fold_folder: Path, device, val_cases) -> None:
    """On a GPU, once per fold: fp32 vs bf16/fp16 on the validation slices into the model folder's
    precision_check.json, which `--precision auto` needs before it predicts in a reduced precision. On a CPU
    inference always runs fp32 under auto, so nothing is measured."""
    import torch

    from dgcf_auto.inference.precision import record_check

    device = torch.device(device)
    if device.type != "cuda":
        return
    entry = record_check(fold_folder.parent, fold_folder / "checkpoint_final.pth", val_cases, device)
    log.info(f"precision check of {fold_folder.name}: " + ", ".join(
        f"{p} mean {entry[p]['mean_hu']:.3g} HU, p99 {entry[p]['p99_hu']:.3g} HU" for p in ("bf16", "fp16")))


def _checked(s: TrainingSettings, trainer_name: str, fold: str | int) -> tuple[TrainingSettings, TrainerVariant,
                                                                                int | str]:
    """The settings with the variant's best_metric filled in, the variant and the fold, after every check
    that needs no file."""
    if s.validation not in VALIDATION_MODES:
        raise DGCFError(f"validation must be one of {', '.join(VALIDATION_MODES)}, got {s.validation!r}")
    variant = get_trainer_variant(trainer_name)
    s = replace(s, best_metric=s.best_metric or variant.best_metric)
    if s.best_metric not in BEST_METRICS:
        raise DGCFError(f"--best_metric must be one of {', '.join(BEST_METRICS)}, got {s.best_metric!r}")
    fold = parse_fold(fold)
    for name, value in (("--epochs", s.epochs), ("--batch_size", s.batch_size),
                        ("--iterations_per_epoch", s.iterations_per_epoch), ("--val_every", s.val_every)):
        if value is not None and value < 1:
            raise DGCFError(f"{name} must be at least 1, got {value}")
    return s, variant, fold


def _train(trainer_class, variant: TrainerVariant, run_plans: dict, s: TrainingSettings, cases: tuple[list, list],
           output: Path, run_info: dict, resume_from: Path | None, resume_state: dict | None):
    """The trainer on this process (under torchrun: one of the ranks); its device on the main process, else
    None."""
    ctx = init_distributed((s.device or ("cuda" if _cuda() else "cpu")).split(":")[0])
    try:
        trainer = trainer_class(variant, run_plans, s, cases[0], cases[1], output, resolve_device(s.device, ctx),
                                ctx, run_info=run_info)
        trainer.initialize()
        if resume_state is not None:
            trainer.load_checkpoint(resume_from, resume_state)
        trainer.run()
    finally:
        shutdown_distributed(ctx)
    return trainer.device if ctx.is_main else None


def _check_pretrained(pretrained_weights: str | None, continue_training: bool) -> str | None:
    """The SHA-256 of the -pretrained_weights file (None without one), after the checks that need no network."""
    if not pretrained_weights:
        return None
    if continue_training:
        raise DGCFError("-pretrained_weights starts a new run; --c continues one: give only one of them")
    if not Path(pretrained_weights).is_file():
        raise DGCFError(f"-pretrained_weights {pretrained_weights}: no such file")
    from dgcf_auto.hashing import file_sha256

    return file_sha256(pretrained_weights)


CHECKPOINTS = ("checkpoint_latest.pth", "checkpoint_final.pth", "checkpoint_best.pth")
LOCK_FILE = ".dgcf_train.lock"
PREVIOUS_RUNS = "previous_runs"


def _fold_lock(output: Path):
    """One dgcf_train per fold: a second one exits with one line naming the first (torchrun: rank 0 locks)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()
    return folder_lock(output, LOCK_FILE, busy=f"{output} is being trained by another dgcf_train (process {{pid}}); "
                                               f"wait for it to finish, or stop it first")


def _resume_point(output: Path, continue_training: bool, start_over: bool) -> Path | None:
    """The checkpoint --c continues from (latest, else final); None for a fresh start. Nothing is deleted:
    a fresh start over an earlier run's checkpoints needs --start_over (they are moved aside)."""
    existing = [name for name in CHECKPOINTS if (output / name).is_file()]
    if continue_training and start_over:
        raise DGCFError("--c and --start_over contradict each other: continue the run, or start it afresh")
    if continue_training:
        for name in CHECKPOINTS[:2]:
            if name in existing:
                return output / name
        if existing:
            raise DGCFError(f"--c: {output} holds {', '.join(existing)} but neither checkpoint_latest.pth nor "
                            f"checkpoint_final.pth to continue from; pass --start_over instead of --c to move "
                            f"them aside into {PREVIOUS_RUNS}/ and train afresh")
        log.info(f"--c given but {output} holds no checkpoint yet; starting this fold")
        return None
    if existing and not start_over:
        raise DGCFError(f"{output} already holds {', '.join(existing)} from an earlier run; pass --c to continue "
                        f"it, or --start_over to move it aside into {PREVIOUS_RUNS}/ and train afresh")
    return None


def _move_aside(output: Path) -> None:
    """--start_over: the earlier run's files go to previous_runs/<UTC time>/ inside the fold (never deleted)."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    target = output / PREVIOUS_RUNS / stamp
    moving = [p for p in output.iterdir() if p.name not in (PREVIOUS_RUNS, LOCK_FILE)]
    if not moving:
        return
    target.mkdir(parents=True)
    for path in moving:
        os.replace(path, target / path.name)
    log.info(f"--start_over: the earlier run's {len(moving)} files are now in {target}")


def _check_patch_fits(plans: dict, trainer_name: str) -> None:
    """Plans made before a network was registered may have a slice size that network cannot take."""
    from dgcf_auto.network import network_size_multiple
    from dgcf_auto.plans import network_plans

    multiple = network_size_multiple(plans)
    patch = configuration_plans(plans).patch_size
    if any(int(p) % multiple for p in patch):
        raise DGCFError(f"trainer {trainer_name}: network {network_plans(plans).architecture!r} needs slices "
                        f"whose sides are multiples of {multiple}, but the plans' patch size is {patch}; "
                        f"re-run dgcf_plan_and_preprocess (it plans for every registered network)")


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()
