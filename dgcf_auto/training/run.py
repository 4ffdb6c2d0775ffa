"""`dgcf_train` end to end: find the preprocessed data and the fold, settle the settings, train.

Everything here is resolution and checking (clear errors before any work starts); the training itself is
`DGCFTrainer`. Works the same under torchrun, where every rank runs this and rank 0 writes.
"""
from __future__ import annotations

import contextlib
import datetime
import math
import os
from pathlib import Path

from dgcf_auto import paths
from dgcf_auto.atomic import check_writable, folder_lock, read_json
from dgcf_auto.errors import DGCFError
from dgcf_auto.log import get_logger
from dgcf_auto.training import checkpoint as ckpt
from dgcf_auto.training.dataloading import open_case
from dgcf_auto.training.distributed import init_distributed, resolve_device, shutdown_distributed
from dgcf_auto.training.final_validation import validate_fold
from dgcf_auto.training.trainer import DGCFTrainer, TrainingSettings
from dgcf_auto.training.variants import BEST_METRICS, effective_plans, get_trainer_variant

log = get_logger(__name__)

CONFIGURATIONS = ("2d",)
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


def load_preprocessed(dataset: str | int, plans_name: str) -> tuple[Path, dict, list, Path]:
    """(preprocessed dataset folder, plans, splits, folder of the 2d arrays)."""
    folder = paths.preprocessed_dataset(dataset)
    plans_file, splits_file = folder / f"{plans_name}.json", folder / "splits_final.json"
    for file in (plans_file, splits_file):
        if not file.is_file():
            raise DGCFError(f"dataset {folder.name}: {file} is missing; run dgcf_plan_and_preprocess "
                            f"-d {paths.parse_dataset_id(folder.name)} first")
    plans = read_json(plans_file)
    # Each plans identifier has its own arrays: a trainer given one plans file never reads another's.
    identifier = plans.get("configurations", {}).get(CONFIGURATIONS[0], {}).get("data_identifier")
    if plans.get("plans_name", plans_name) != plans_name or identifier not in (None, f"{plans_name}_2d"):
        raise DGCFError(f"dataset {folder.name}: {plans_file} names plans {plans.get('plans_name')!r} with arrays "
                        f"{identifier!r}, not {plans_name!r}; re-run dgcf_plan_and_preprocess")
    data_folder = folder / f"{plans_name}_2d"
    if not data_folder.is_dir() or not any(data_folder.glob("*_source.npy")):
        raise DGCFError(f"dataset {folder.name}: no preprocessed slices in {data_folder}; "
                        f"run dgcf_plan_and_preprocess -d {paths.parse_dataset_id(folder.name)} first")
    return folder, plans, read_json(splits_file), data_folder


def fold_cases(splits: list, fold: int | str, splits_file: Path) -> tuple[list[str], list[str]]:
    if fold == "all":
        names = sorted(set(splits[0]["train"]) | set(splits[0]["val"]))
        return names, []
    if not 0 <= fold < len(splits):
        raise DGCFError(f"fold {fold} does not exist: {splits_file} has {len(splits)} folds "
                        f"(0-{len(splits) - 1}) or use 'all'")
    return list(splits[fold]["train"]), list(splits[fold]["val"])


def run_training(dataset: str | int, configuration: str, fold: str | int, trainer_name: str = "DGCFTrainer",
                 plans_name: str = "DGCFPlans", device: str | None = None, continue_training: bool = False,
                 epochs: int | None = None, batch_size: int | None = None,
                 iterations_per_epoch: int | None = None, seed: int = 0, num_workers: int = 4,
                 val_every: int = 1, compile: bool = False, dinov3_weights: str | None = None,
                 dinov3_random: bool = False, precision: str = "auto", vgg_weights: str | None = None,
                 validation: str = "final", best_metric: str | None = None, save_probabilities: bool = False,
                 pretrained_weights: str | None = None, start_over: bool = False,
                 tensorboard: bool = False) -> Path | None:
    """Train one fold, then predict and score its validation cases (nnU-Net's final validation); returns the
    output folder (None on torchrun ranks other than 0). `validation`: "final" (train, then validate), "none"
    (train only), "only" / "only-best" (rerun just the validation, with checkpoint_final / checkpoint_best).
    `best_metric` ("mae" | "ssim") picks checkpoint_best.pth; None: the trainer's default ("ssim" for the
    `_release` trainers, as the authors' train.json; "mae" otherwise).
    `save_probabilities` (--npz): the final validation keeps its float predictions for ensembling.
    `pretrained_weights`: initialise the network from another run's checkpoint (same architecture).
    `continue_training` (--c) continues from checkpoint_latest, else checkpoint_final; `start_over` moves an
    earlier run's files aside (never deletes them). One run per fold at a time (a lock file in the fold).
    Raises DGCFError for every user-fixable problem."""
    if validation not in VALIDATION_MODES:
        raise DGCFError(f"validation must be one of {', '.join(VALIDATION_MODES)}, got {validation!r}")
    if configuration not in CONFIGURATIONS:
        raise DGCFError(f"configuration '{configuration}' is not available; DGCF trains {', '.join(CONFIGURATIONS)}")
    variant = get_trainer_variant(trainer_name)
    best_metric = best_metric or variant.best_metric
    if best_metric not in BEST_METRICS:
        raise DGCFError(f"--best_metric must be one of {', '.join(BEST_METRICS)}, got {best_metric!r}")
    fold = parse_fold(fold)
    for name, value in (("--epochs", epochs), ("--batch_size", batch_size),
                        ("--iterations_per_epoch", iterations_per_epoch), ("--val_every", val_every)):
        if value is not None and value < 1:
            raise DGCFError(f"{name} must be at least 1, got {value}")
    pretrained_sha256 = _check_pretrained(pretrained_weights, continue_training)
    folder, plans, splits, data_folder = load_preprocessed(dataset, plans_name)
    train_names, val_names = fold_cases(splits, fold, folder / "splits_final.json")
    output = check_writable(paths.training_output_folder(folder.name, variant.name, plans_name, configuration, fold),
                            "results folder")
    with _fold_lock(output):
        if validation.startswith("only"):
            checkpoint = "checkpoint_best.pth" if validation == "only-best" else "checkpoint_final.pth"
            validate_fold(dataset, variant.name, plans_name, configuration, fold, checkpoint, device, precision,
                          save_probabilities)
            return output
        resume_from = _resume_point(output, continue_training, start_over)
        resume_state = None
        if resume_from is not None:
            resume_state = ckpt.load_checkpoint(resume_from)
            recorded = resume_state["plans"]["training"]  # a resumed run keeps its recorded settings
            epochs = epochs or recorded["epochs"]
            batch_size = batch_size or recorded["batch_size"]
            iterations_per_epoch = iterations_per_epoch or recorded["iterations_per_epoch"]
        overrides = {"epochs": epochs, "batch_size": batch_size, "iterations_per_epoch": iterations_per_epoch}
        run_plans = effective_plans(plans, variant, overrides)
        _check_patch_fits(run_plans, variant.name)
        train_cases = [open_case(data_folder, n) for n in train_names]
        val_cases = [open_case(data_folder, n) for n in val_names]
        training = run_plans["training"]
        if not training.get("iterations_per_epoch"):
            # the fallback definition: one epoch shows as many slices as the fold's training set holds
            total = sum(len(c.source) for c in train_cases)
            training["iterations_per_epoch"] = max(1, math.ceil(total / training["batch_size"]))
        settings = TrainingSettings(epochs=int(training["epochs"]), batch_size=int(training["batch_size"]),
                                    iterations_per_epoch=int(training["iterations_per_epoch"]), seed=seed,
                                    num_workers=num_workers, val_every=val_every, compile=compile,
                                    dinov3_weights=dinov3_weights, dinov3_random=dinov3_random,
                                    precision=precision, vgg_weights=vgg_weights, best_metric=best_metric,
                                    pretrained_weights=(str(Path(pretrained_weights).resolve())
                                                        if pretrained_weights else None),
                                    pretrained_weights_sha256=pretrained_sha256, tensorboard=tensorboard)
        if resume_state is not None:
            ckpt.check_compatible(resume_state, resume_from, variant.name, run_plans)
            if resume_from.name == "checkpoint_final.pth" and resume_state["epoch"] >= settings.epochs:
                log.info(f"{output} is a finished model: it already trained {resume_state['epoch']} "
                         f"epochs (checkpoint_final.pth); nothing to do (pass a larger --epochs to train on, or "
                         f"--val to redo the validation)")
                return output

        if start_over and int(os.environ.get("RANK", "0")) == 0:
            _move_aside(output)
        ctx = init_distributed((device or ("cuda" if _cuda() else "cpu")).split(":")[0])
        try:
            trainer = DGCFTrainer(variant, run_plans, settings, train_cases, val_cases, output,
                                  resolve_device(device, ctx), ctx,
                                  run_info={"dataset": folder.name, "fold": fold, "plans_name": plans_name,
                                            "configuration": configuration,
                                            "command_line_overrides": {k: v for k, v in overrides.items() if v}})
            trainer.initialize()
            if resume_state is not None:
                trainer.load_checkpoint(resume_from, resume_state)
            trainer.run()
        finally:
            shutdown_distributed(ctx)
        if not ctx.is_main:
            return None
        if validation == "final" and val_names:
            validate_fold(dataset, variant.name, plans_name, configuration, fold, "checkpoint_final.pth", device,
                          precision, save_probabilities)
        return output


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
    patch = plans["configurations"]["2d"]["patch_size"]
    if any(int(p) % multiple for p in patch):
        raise DGCFError(f"trainer {trainer_name}: network {network_plans(plans).architecture!r} needs slices "
                        f"whose sides are multiples of {multiple}, but the plans' patch size is {patch}; "
                        f"re-run dgcf_plan_and_preprocess (it plans for every registered network)")


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()
