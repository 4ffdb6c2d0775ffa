"""DGCFTrainer: the paper's training (section 3.1) with nnU-Net's checkpoints, resume and logging.

One object per run. `initialize()` builds the frozen DINOv3 (when the network or a loss term needs it), the
registered network the plans name, the composite loss of the plans' terms, the plans' optimiser and
scheduler (training/optimizers.py) and the data stream. `run()` is a loop of named steps per epoch
(`train_epoch` of iterations_per_epoch batches, `validate` every `val_every` epochs and the last,
`on_epoch_end` records the epoch and steps the scheduler, `save_checkpoints` writes checkpoint_latest / _best),
then `finish` writes checkpoint_final. Under torchrun the network is
wrapped in DistributedDataParallel and only rank 0 touches the output folder.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from dgcf_auto.atomic import write_json
from dgcf_auto.errors import DGCFError
from dgcf_auto.log import progress_bar
from dgcf_auto.network.dinov3 import RANDOM_DINOV3_WARNING
from dgcf_auto.network.execution import autocast, autocast_dtype, predict_slice_stack
from dgcf_auto.options import option, recorded
from dgcf_auto.plans import configuration_plans, network_plans, training_plans
from dgcf_auto.schema import finite_or_none
from dgcf_auto.training import checkpoint as ckpt
from dgcf_auto.training.dataloading import (
    SliceDataLoader,
    augmentation_transform,
    close_batch_stream,
    make_batch_stream,
    next_batch,
)
from dgcf_auto.training.distributed import DistributedContext, split_batch_size
from dgcf_auto.training.logger import TrainingLogger
from dgcf_auto.training.optimizers import build_optimizer, build_scheduler
from dgcf_auto.training.plans_check import describe_overrides
from dgcf_auto.training.tensorboard import TensorBoardLog
from dgcf_auto.training.validation import validate_cases
from dgcf_auto.training.variants import TrainerVariant

VALIDATION_BATCH_SIZE = 32


@dataclass(frozen=True)
class TrainingSettings:
    """Everything `dgcf_train` says about one run, from its flags to the trainer (`run_training` takes these
    fields as keywords too). epochs, batch_size and iterations_per_epoch None: the plans' values (a resumed
    run: its recorded ones); best_metric None: the trainer variant's. The fields marked not recorded steer
    the run around the trainer and are not written into training_config.json or the checkpoints."""

    epochs: int | None = option(None, "override plans['training']['epochs'] (recorded)")
    batch_size: int | None = option(None, "global batch size, split over the torchrun processes")
    iterations_per_epoch: int | None = option(None, "batches per epoch (None: one pass over the fold's slices)")
    seed: int = option(0, "seed for initialisation and slice sampling")
    num_workers: int = option(4, "background data workers (0: main process)")
    val_every: int = option(1, "validate every N epochs (and after the last)")
    compile: bool = option(False, "torch.compile the network")
    dinov3_weights: str | None = option(None, "DINOv3 ViT-B/16 weight file (Meta .pth or timm safetensors)")
    dinov3_random: bool = option(False, "random DINOv3 weights: tests and demos only")
    precision: str = option("auto", "auto, fp32 or bf16 autocast (network.execution.autocast_dtype)")
    vgg_weights: str | None = option(None, "weight file for the 'vgg' loss term, when the plans use it")
    best_metric: str | None = option(None, "what picks checkpoint_best.pth: 'mae' (lowest) or 'ssim' (highest "
                                           "2D SSIM); None: the trainer variant's")
    pretrained_weights: str | None = option(None, "checkpoint of another run the network starts from")
    pretrained_weights_sha256: str | None = option(None, "its SHA-256 (set by run_training), so the start "
                                                         "point is on record")
    tensorboard: bool = option(False, "also write <fold>/tensorboard/ (training/tensorboard.py)")
    device: str | None = option(None, "cpu, cuda, cuda:N or mps (default: cuda when available)", recorded=False)
    continue_training: bool = option(False, "continue from checkpoint_latest, else checkpoint_final",
                                     recorded=False)
    start_over: bool = option(False, "move an earlier run's files aside (never deleted) and train afresh",
                              recorded=False)
    validation: str = option("final", "'final' (train, then validate), 'none' (train only), 'only' / "
                                      "'only-best' (rerun just the validation)", recorded=False)
    save_probabilities: bool = option(False, "the final validation keeps its float predictions (ensembling)",
                                      recorded=False)


@dataclass
class EpochLosses:
    """An epoch's mean training loss (total and per term, over every rank) and this rank's wait for data (s)."""
    total: float
    terms: dict[str, float]
    data_wait: float


class DGCFTrainer:
    def __init__(self, variant: TrainerVariant, plans: dict, settings: TrainingSettings, train_cases: list,
                 val_cases: list, output_folder: Path, device: torch.device,
                 dist_ctx: DistributedContext | None = None, run_info: dict | None = None):
        if settings.best_metric is None:
            settings = replace(settings, best_metric=variant.best_metric)
        # run_training fills these from the plans (a resumed run: from its checkpoint) before a trainer exists
        self.epochs = _resolved(settings.epochs, "epochs")
        self.iterations_per_epoch = _resolved(settings.iterations_per_epoch, "iterations_per_epoch")
        self.best_metric = _resolved(settings.best_metric, "best_metric")
        self.variant, self.plans, self.settings = variant, plans, settings
        self.train_cases, self.val_cases = train_cases, val_cases
        self.output_folder, self.device = Path(output_folder), device
        self.dist = dist_ctx or DistributedContext()
        self.run_info = run_info or {}
        self.tensorboard: TensorBoardLog | None = None  # made in run() when settings.tensorboard
        self.local_batch_size = split_batch_size(_resolved(settings.batch_size, "batch_size"), self.dist.world_size)
        self.autocast_dtype = autocast_dtype(device, settings.precision)  # bf16 needs no GradScaler
        self.logger = TrainingLogger(self.output_folder, enabled=self.dist.is_main)
        self.start_epoch = 0
        self.batches_done = 0  # batches this rank has consumed; the data stream's resumable state

    # ---------------------------------------------------------------- setup
    def initialize(self) -> None:
        from dgcf_auto.losses import CompositeLoss, loss_needs_dinov3
        from dgcf_auto.network import build_dinov3, build_network, network_needs_dinov3

        s, net_plans, training = self.settings, network_plans(self.plans), training_plans(self.plans)
        torch.manual_seed(s.seed)  # same init on every rank (DDP also broadcasts rank 0's weights)
        self.dinov3 = None
        self.dinov3_source = "none (not used by this trainer)"
        if network_needs_dinov3(net_plans) or loss_needs_dinov3(training.loss):
            self.dinov3 = build_dinov3(net_plans.dinov3, weights=s.dinov3_weights, random=s.dinov3_random)
            self.dinov3_source = str(self.dinov3.weights_source)
        self.network = build_network(net_plans, self.dinov3).to(self.device)
        self.loss = CompositeLoss(training.loss, self.dinov3, training.loss_options,
                                  weights={"vgg": s.vgg_weights}).to(self.device)
        self.network = self.network.to(memory_format=torch.channels_last)
        trainable = [p for p in self.network.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(trainable, training)
        self.scheduler = build_scheduler(self.optimizer, training, self.epochs)
        self._wrap_and_start()

    def _wrap_and_start(self) -> None:
        """DDP / torch.compile around the built network, -pretrained_weights, then each rank's own random stream."""
        s = self.settings
        self.model = self.network
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # Frozen ViT parameters (requires_grad False) are ignored by DDP's gradient all-reduce.
            self.model = DDP(self.network, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if s.compile:
            compiled = torch.compile(self.model)
            assert isinstance(compiled, nn.Module)  # compiling a module gives an OptimizedModule
            self.model = compiled
        if s.pretrained_weights:
            from dgcf_auto.training.pretrained import load_pretrained_weights

            copied = load_pretrained_weights(self.network, s.pretrained_weights)
            self.logger.print(f"initialised {copied} weight tensors from {s.pretrained_weights} "
                              f"(SHA-256 {s.pretrained_weights_sha256})")
        # From here on each rank draws its own random numbers; a resumed run restores them from the checkpoint.
        ckpt.seed_everything(s.seed + 1000 * self.dist.rank)

    def load_checkpoint(self, path: Path, state: dict | None = None) -> None:
        """Continue a run: model, optimiser, epoch, RNG, logger and the data stream's position."""
        state = state if state is not None else ckpt.load_checkpoint(path)
        ckpt.check_compatible(state, path, self.variant.name, self.plans)
        try:
            self.network.load_state_dict(state["network_weights"])
            if state.get("optimizer_state") is not None:
                self.optimizer.load_state_dict(state["optimizer_state"])
            else:  # checkpoint_final keeps no optimiser state (lean model folders)
                self.logger.print(f"{path.name} holds no optimiser state: {type(self.optimizer).__name__} starts "
                                  f"afresh from its weights")
            if self.scheduler is not None:
                self.scheduler.load_state_dict(state["scheduler_state"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise DGCFError(f"checkpoint {path} does not fit this network ({str(exc).splitlines()[0][:160]})") from None
        if len(state["rng_state"]) != self.dist.world_size:
            raise DGCFError(f"checkpoint {path} was written by {len(state['rng_state'])} process(es); continue it "
                            f"with the same number (this run has {self.dist.world_size})")
        self.start_epoch = int(state["epoch"])
        self.batches_done = int(state["dataloader_state"]["batches_done"][self.dist.rank])
        self.logger.load_state_dict(state["logger"])
        ckpt.restore_rng_state(state["rng_state"][self.dist.rank])
        self.logger.print(f"continuing from {path} at epoch {self.start_epoch}")

    # ---------------------------------------------------------------- training
    def run(self) -> None:
        """Every epoch from `start_epoch`: train, validate, record, checkpoint; then checkpoint_final."""
        stream = self.start()
        try:
            for epoch in range(self.start_epoch, self.epochs):
                started = time.perf_counter()
                trained = self.train_epoch(epoch, stream)
                val = self.validate(epoch)
                self.on_epoch_end(epoch, trained, val, time.perf_counter() - started)
                self.save_checkpoints(epoch, val)
        finally:
            close_batch_stream(stream)
            if self.tensorboard is not None:
                self.tensorboard.close()
        self.finish()

    def start(self):
        """training_config.json, the opening lines of the log, TensorBoard, and the batch stream (returned)."""
        s = self.settings
        if self.dist.is_main:
            write_json(self.training_config(), self.output_folder / "training_config.json")
        self._log_start()
        stream = make_batch_stream(self.make_loader(training_plans(self.plans)), s.num_workers)
        self.tensorboard = TensorBoardLog(self.output_folder) if s.tensorboard and self.dist.is_main else None
        return stream

    def make_loader(self, training) -> SliceDataLoader:
        """The training batches (a subclass gives its own kind: 3D patches in trainer_3d)."""
        transform = (augmentation_transform(tuple(self.train_cases[0].source.shape[1:]))
                     if training.augmentation else None)
        return SliceDataLoader(self.train_cases, self.local_batch_size, self.settings.seed, self.dist.rank,
                               training.foreground_slice_fraction, transform,
                               start_batch=self.batches_done, num_workers=self.settings.num_workers,
                               slab_size=configuration_plans(self.plans).slab_size)

    def train_epoch(self, epoch: int, stream) -> EpochLosses:
        """One epoch of `iterations_per_epoch` optimiser steps; its mean loss terms over every rank."""
        self.model.train()
        wait = 0.0
        sums = torch.zeros(1 + len(self.loss.names), dtype=torch.float32, device=self.device)  # mps: no float64
        bar = progress_bar(range(self.iterations_per_epoch), desc=f"epoch {epoch}", disable=not self.dist.is_main,
                           leave=False, dynamic_ncols=True)
        for it in bar:
            t0 = time.perf_counter()
            batch = next_batch(stream)
            wait += time.perf_counter() - t0
            assert batch["batch_number"] == self.batches_done, "data stream out of order"
            self.batches_done += 1
            sums += self.train_step(batch)
            if it % 20 == 0 or it == self.iterations_per_epoch - 1:  # a sync only every 20 steps
                bar.set_postfix(loss=f"{sums[0].item() / (it + 1):.4f}")
        bar.close()
        means = [self.dist.mean(v / self.iterations_per_epoch, self.device) for v in sums.tolist()]
        return EpochLosses(means[0], dict(zip(self.loss.names, means[1:])), wait)

    def validate(self, epoch: int) -> dict | None:
        """Validation MAE/PSNR/SSIM every `val_every` epochs and after the last (None otherwise, or without
        validation cases); rank 0 computes them, every rank gets them."""
        s = self.settings
        if not self.val_cases or not ((epoch + 1) % s.val_every == 0 or epoch == self.epochs - 1):
            return None
        result = None
        if self.dist.is_main:  # rank 0 validates; the others wait for its numbers
            result = self.validation_numbers()
            result.pop("per_case")
        return self.dist.broadcast_object(result)

    def on_epoch_end(self, epoch: int, trained: EpochLosses, val: dict | None, epoch_time: float) -> None:
        """The epoch's record (log, TensorBoard) at the rate it trained with; then the scheduler's step."""
        val_mae, val_psnr, val_ssim = ((finite_or_none(val["mae"]), finite_or_none(val["psnr"]),
                                        finite_or_none(val["ssim"])) if val else (None, None, None))
        self.logger.record_epoch(epoch=epoch, train_loss=trained.total, terms=trained.terms,
                                 val_mae=val_mae, val_psnr=val_psnr, val_ssim=val_ssim,
                                 lr=self.optimizer.param_groups[0]["lr"], epoch_time=epoch_time,
                                 data_wait=trained.data_wait / epoch_time)
        if self.tensorboard is not None:
            self._write_tensorboard(epoch, trained, val)
        if self.scheduler is not None:
            self.scheduler.step()  # per epoch, as StepLR's step_size and PolyLR's epochs count epochs

    def save_checkpoints(self, epoch: int, val: dict | None) -> None:
        """checkpoint_latest (with the optimiser state), and checkpoint_best when validation improved."""
        payload = self.checkpoint_payload(epoch + 1)  # collective under torchrun: every rank takes part
        if payload is None:  # not rank 0
            return
        metric = self.best_metric
        if val is not None and self.logger.is_better(metric, val[metric]):
            self.logger.best = {"metric": metric, "value": float(val[metric]), "epoch": epoch}
            payload["logger"] = self.logger.state_dict()
            ckpt.save_checkpoint(self.output_folder / "checkpoint_best.pth", _without_optimizer(payload))
            shown = f"MAE {val['mae']:.2f} HU" if metric == "mae" else f"2D SSIM {val['ssim']:.4f}"
            self.logger.print(f"new best validation {shown} -> checkpoint_best.pth")
        ckpt.save_checkpoint(self.output_folder / "checkpoint_latest.pth", payload)
        self.logger.plot_progress()

    def finish(self) -> None:
        """checkpoint_final (no optimiser state); checkpoint_latest goes, as nnU-Net's finished folds keep
        final (+ best) only."""
        payload = self.checkpoint_payload(self.epochs)  # collective under torchrun
        if payload is not None:  # rank 0
            ckpt.save_checkpoint(self.output_folder / "checkpoint_final.pth", _without_optimizer(payload))
            (self.output_folder / "checkpoint_latest.pth").unlink(missing_ok=True)
            self.logger.print(f"training finished: {self.output_folder / 'checkpoint_final.pth'}")

    def train_step(self, batch: dict) -> torch.Tensor:
        source = torch.from_numpy(batch["source"]).to(self.device, non_blocking=True)
        ct = torch.from_numpy(batch["ct"]).to(self.device, non_blocking=True)
        source = source.contiguous(memory_format=torch.channels_last)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.autocast_dtype):
            prediction = self.model(source)
            total, parts = self.loss(prediction.float(), ct)
        total.backward()
        self.optimizer.step()
        return torch.stack([total.detach()] + [parts[name] for name in self.loss.names]).float()

    def validation_numbers(self) -> dict:
        """The validation cases' numbers (validation.validate_cases) with the current network (a subclass
        predicts its own kind: the sliding window in trainer_3d)."""
        return validate_cases(self.network, self.val_cases, self.plans, self.device, VALIDATION_BATCH_SIZE,
                              self.autocast_dtype)

    def _write_tensorboard(self, epoch: int, trained: EpochLosses, val: dict | None) -> None:
        """This epoch's loss terms and validation numbers, and the middle slice of the first validation case."""
        assert self.tensorboard is not None  # called only when it is open
        self.tensorboard.epoch(epoch, trained.total, trained.terms, self.optimizer.param_groups[0]["lr"], val)
        if val is None:
            return
        case = self.val_cases[0]
        middle = len(case.source) // 2
        was_training = self.network.training
        self.network.eval()
        try:
            slab = configuration_plans(self.plans).slab_size  # 2.5d: the middle slice with its neighbours
            first = max(0, middle - slab // 2)
            sct, _ = predict_slice_stack([self.network], case.source[first:middle + slab // 2 + 1], self.device, 1,
                                         self.autocast_dtype, slab_size=slab)
        finally:
            self.network.train(was_training)
        self.tensorboard.validation_image(epoch, case.name, case.source[middle], sct[middle - first], case.ct[middle])

    # ---------------------------------------------------------------- state
    def checkpoint_payload(self, next_epoch: int) -> dict | None:
        """The checkpoint dict on rank 0 (None elsewhere). Collective under torchrun: call on every rank."""
        rng = [ckpt.capture_rng_state()]
        batches = [self.batches_done]
        if self.dist.enabled:  # every rank's RNG and stream position, so each resumes its own stream
            import torch.distributed as dist
            gathered_rng: list[dict | None] = [None] * self.dist.world_size
            gathered_batches: list[int | None] = [None] * self.dist.world_size
            dist.all_gather_object(gathered_rng, rng[0])
            dist.all_gather_object(gathered_batches, batches[0])
            # all_gather_object fills every rank's slot
            rng = [state for state in gathered_rng if state is not None]
            batches = [count for count in gathered_batches if count is not None]
        if not self.dist.is_main:
            return None
        return {
            "network_weights": {k: v.detach().cpu() for k, v in self.network.state_dict().items()
                                if not k.startswith(ckpt.VIT_PREFIX)},
            **self._shared_vit_reference(),
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict() if self.scheduler is not None else None,
            "epoch": int(next_epoch),
            "plans": self.plans,
            "trainer_name": self.variant.name,
            "dinov3_source": self.dinov3_source,
            "settings": recorded(self.settings),
            "logger": self.logger.state_dict(),
            "rng_state": rng,
            "dataloader_state": {"seed": self.settings.seed, "batches_done": batches},
        }

    def _shared_vit_reference(self) -> dict:
        """The frozen ViT is written once per model folder (content-addressed); checkpoints name it."""
        reference = getattr(self, "_vit_reference", None)
        if reference is None or (reference and not (self.output_folder.parent / reference["shared_vit"]).is_file()):
            vit = {k[len(ckpt.VIT_PREFIX):]: v for k, v in self.network.state_dict().items()
                   if k.startswith(ckpt.VIT_PREFIX)}
            reference = ckpt.store_shared_vit(self.output_folder.parent, vit) if vit else {}
            self._vit_reference = reference
        return reference

    def training_config(self) -> dict:
        return {"trainer_name": self.variant.name, "paper_row": self.variant.paper_row,
                "network": self.variant.network, "loss": dict(self.loss.weights),
                "dinov3_source": self.dinov3_source,
                "dinov3_random": self.dinov3_source == "random", "settings": recorded(self.settings),
                "world_size": self.dist.world_size, "batch_size_per_process": self.local_batch_size,
                "device": str(self.device), "bf16_autocast": self.autocast_dtype is not None, **self.run_info,
                "train_cases": [c.name for c in self.train_cases], "val_cases": [c.name for c in self.val_cases],
                "plans": self.plans}

    def _log_start(self) -> None:
        s, log = self.settings, self.logger
        terms = " + ".join(f"{w:g} x {name}" for name, w in self.loss.weights.items())
        log.print(f"{self.variant.name} ({self.variant.paper_row}); network {self.variant.network}, loss {terms}, "
                  f"schedule {training_plans(self.plans).schedule}, init {network_plans(self.plans).init}, "
                  f"checkpoint_best by validation {s.best_metric}")
        log.print(f"{len(self.train_cases)} training / {len(self.val_cases)} validation cases; {s.epochs} epochs x "
                  f"{s.iterations_per_epoch} iterations, batch {s.batch_size} ({self.local_batch_size} per process "
                  f"x {self.dist.world_size}), device {self.device}, bf16 {self.autocast_dtype is not None}, "
                  f"compile {s.compile}")
        if (replaced := describe_overrides(self.variant.name, self.run_info.get("trainer_sets", {}))) is not None:
            log.print(replaced)
        if self.dinov3_source == "random":
            log.warning(RANDOM_DINOV3_WARNING)
        if not self.val_cases:
            log.print("this fold has no validation cases: no validation, no checkpoint_best.pth")


_T = TypeVar("_T")


def _resolved(value: _T | None, name: str) -> _T:
    """A setting run_training resolves before it builds the trainer."""
    if value is None:
        raise ValueError(f"TrainingSettings.{name} is None: run_training fills it from the plans before training")
    return value


def _without_optimizer(payload: dict) -> dict:
    """checkpoint_best / _final: everything but the optimiser state (twice the trainable weights' size)."""
    return {k: v for k, v in payload.items() if k != "optimizer_state"}
