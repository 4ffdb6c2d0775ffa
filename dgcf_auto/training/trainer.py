"""DGCFTrainer: the paper's training (section 3.1) with nnU-Net's checkpoints, resume and logging.

One object per run. `initialize()` builds the frozen DINOv3 (when the network or a loss term needs it), the
registered network the plans name, the composite loss of the plans' terms, Adam (+ an optional StepLR) and
the data stream; `run()` trains epoch by epoch (an epoch = iterations_per_epoch batches), validates every
`val_every` epochs and the last, and writes checkpoint_latest / _best / _final. Under torchrun the network is
wrapped in DistributedDataParallel and only rank 0 touches the output folder.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dgcf_auto.atomic import write_json
from dgcf_auto.errors import DGCFError
from dgcf_auto.log import progress_bar
from dgcf_auto.network.dinov3 import RANDOM_DINOV3_WARNING
from dgcf_auto.network.execution import autocast, autocast_dtype, predict_slice_stack
from dgcf_auto.plans import network_plans, training_plans
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
from dgcf_auto.training.tensorboard import TensorBoardLog
from dgcf_auto.training.validation import validate_cases
from dgcf_auto.training.variants import TrainerVariant

VALIDATION_BATCH_SIZE = 32


@dataclass
class TrainingSettings:
    epochs: int
    batch_size: int            # global: split over the ranks
    iterations_per_epoch: int
    seed: int = 0
    num_workers: int = 4
    val_every: int = 1
    compile: bool = False
    dinov3_weights: str | None = None
    dinov3_random: bool = False
    precision: str = "auto"    # see network.execution.autocast_dtype
    vgg_weights: str | None = None  # weight file for the "vgg" loss term, when the plans use it
    best_metric: str = "mae"   # what picks checkpoint_best.pth: "mae" (lowest) or "ssim" (highest 2D SSIM)
    pretrained_weights: str | None = None         # checkpoint the network started from (-pretrained_weights)
    pretrained_weights_sha256: str | None = None  # its SHA-256, so the start point is on record
    tensorboard: bool = False  # also write <fold>/tensorboard/ (training/tensorboard.py)


class DGCFTrainer:
    def __init__(self, variant: TrainerVariant, plans: dict, settings: TrainingSettings, train_cases: list,
                 val_cases: list, output_folder: Path, device: torch.device,
                 dist_ctx: DistributedContext | None = None, run_info: dict | None = None):
        self.variant, self.plans, self.settings = variant, plans, settings
        self.train_cases, self.val_cases = train_cases, val_cases
        self.output_folder, self.device = Path(output_folder), device
        self.dist = dist_ctx or DistributedContext()
        self.run_info = run_info or {}
        self.tensorboard: TensorBoardLog | None = None  # made in run() when settings.tensorboard
        self.local_batch_size = split_batch_size(settings.batch_size, self.dist.world_size)
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
        self.optimizer = torch.optim.Adam(trainable, lr=training.learning_rate, betas=tuple(training.adam_betas))
        self.scheduler = _lr_scheduler(self.optimizer, training.lr_scheduler)
        self.model = self.network
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # Frozen ViT parameters (requires_grad False) are ignored by DDP's gradient all-reduce.
            self.model = DDP(self.network, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if s.compile:
            self.model = torch.compile(self.model)
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
                self.logger.print(f"{path.name} holds no optimiser state: Adam starts afresh from its weights")
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
        s, log = self.settings, self.logger
        if self.dist.is_main:
            write_json(self.training_config(), self.output_folder / "training_config.json")
        self._log_start()
        training = training_plans(self.plans)
        transform = (augmentation_transform(tuple(self.train_cases[0].source.shape[1:]))
                     if training.augmentation else None)
        loader = SliceDataLoader(self.train_cases, self.local_batch_size, s.seed, self.dist.rank,
                                 training.foreground_slice_fraction, transform,
                                 start_batch=self.batches_done, num_workers=s.num_workers)
        stream = make_batch_stream(loader, s.num_workers)
        self.tensorboard = TensorBoardLog(self.output_folder) if s.tensorboard and self.dist.is_main else None
        try:
            for epoch in range(self.start_epoch, s.epochs):
                self._train_epoch(epoch, stream)
        finally:
            close_batch_stream(stream)
            if self.tensorboard is not None:
                self.tensorboard.close()
        payload = self.checkpoint_payload(s.epochs)  # collective under torchrun: every rank takes part
        if self.dist.is_main:
            ckpt.save_checkpoint(self.output_folder / "checkpoint_final.pth", _without_optimizer(payload))
            # as nnU-Net: the finished fold keeps final (+ best); latest (with the optimiser state) goes
            (self.output_folder / "checkpoint_latest.pth").unlink(missing_ok=True)
            log.print(f"training finished: {self.output_folder / 'checkpoint_final.pth'}")

    def _train_epoch(self, epoch: int, stream) -> None:
        s = self.settings
        self.model.train()
        start = time.perf_counter()
        wait = 0.0
        sums = torch.zeros(1 + len(self.loss.names), dtype=torch.float32, device=self.device)  # mps: no float64
        bar = progress_bar(range(s.iterations_per_epoch), desc=f"epoch {epoch}", disable=not self.dist.is_main,
                           leave=False, dynamic_ncols=True)
        for it in bar:
            t0 = time.perf_counter()
            batch = next_batch(stream)
            wait += time.perf_counter() - t0
            assert batch["batch_number"] == self.batches_done, "data stream out of order"
            self.batches_done += 1
            sums += self.train_step(batch)
            if it % 20 == 0 or it == s.iterations_per_epoch - 1:  # a sync only every 20 steps
                bar.set_postfix(loss=f"{sums[0].item() / (it + 1):.4f}")
        bar.close()
        means = [self.dist.mean(v / s.iterations_per_epoch, self.device) for v in sums.tolist()]
        val = self._maybe_validate(epoch)
        epoch_time = time.perf_counter() - start
        val_mae, val_psnr, val_ssim = ((finite_or_none(val["mae"]), finite_or_none(val["psnr"]),
                                        finite_or_none(val["ssim"])) if val else (None, None, None))
        self.logger.record_epoch(epoch=epoch, train_loss=means[0], terms=dict(zip(self.loss.names, means[1:])),
                                 val_mae=val_mae, val_psnr=val_psnr, val_ssim=val_ssim,
                                 lr=self.optimizer.param_groups[0]["lr"], epoch_time=epoch_time,
                                 data_wait=wait / epoch_time)
        if self.tensorboard is not None:
            self._write_tensorboard(epoch, means, val)
        if self.scheduler is not None:
            self.scheduler.step()  # per epoch, as StepLR's step_size counts epochs
        payload = self.checkpoint_payload(epoch + 1)
        if self.dist.is_main:
            metric = s.best_metric
            if val is not None and self.logger.is_better(metric, val[metric]):
                self.logger.best = {"metric": metric, "value": float(val[metric]), "epoch": epoch}
                payload["logger"] = self.logger.state_dict()
                ckpt.save_checkpoint(self.output_folder / "checkpoint_best.pth", _without_optimizer(payload))
                shown = f"MAE {val['mae']:.2f} HU" if metric == "mae" else f"2D SSIM {val['ssim']:.4f}"
                self.logger.print(f"new best validation {shown} -> checkpoint_best.pth")
            ckpt.save_checkpoint(self.output_folder / "checkpoint_latest.pth", payload)
            self.logger.plot_progress()

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

    def _maybe_validate(self, epoch: int) -> dict | None:
        s = self.settings
        if not self.val_cases or not ((epoch + 1) % s.val_every == 0 or epoch == s.epochs - 1):
            return None
        result = None
        if self.dist.is_main:  # rank 0 validates; the others wait for its numbers
            result = validate_cases(self.network, self.val_cases, self.plans, self.device,
                                    VALIDATION_BATCH_SIZE, self.autocast_dtype)
            result.pop("per_case")
        return self.dist.broadcast_object(result)

    def _write_tensorboard(self, epoch: int, means: list[float], val: dict | None) -> None:
        """This epoch's loss terms and validation numbers, and the middle slice of the first validation case."""
        self.tensorboard.epoch(epoch, means[0], dict(zip(self.loss.names, means[1:])),
                               self.optimizer.param_groups[0]["lr"], val)
        if val is None:
            return
        case = self.val_cases[0]
        middle = len(case.source) // 2
        was_training = self.network.training
        self.network.eval()
        try:
            sct, _ = predict_slice_stack([self.network], case.source[middle:middle + 1], self.device, 1,
                                         self.autocast_dtype)
        finally:
            self.network.train(was_training)
        self.tensorboard.validation_image(epoch, case.name, case.source[middle], sct[0], case.ct[middle])

    # ---------------------------------------------------------------- state
    def checkpoint_payload(self, next_epoch: int) -> dict | None:
        """The checkpoint dict on rank 0 (None elsewhere). Collective under torchrun: call on every rank."""
        rng = [ckpt.capture_rng_state()]
        batches = [self.batches_done]
        if self.dist.enabled:  # every rank's RNG and stream position, so each resumes its own stream
            import torch.distributed as dist
            gathered_rng, gathered_batches = [None] * self.dist.world_size, [None] * self.dist.world_size
            dist.all_gather_object(gathered_rng, rng[0])
            dist.all_gather_object(gathered_batches, batches[0])
            rng, batches = gathered_rng, gathered_batches
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
            "settings": asdict(self.settings),
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
                "dinov3_random": self.dinov3_source == "random", "settings": asdict(self.settings),
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
        if self.dinov3_source == "random":
            log.warning(RANDOM_DINOV3_WARNING)
        if not self.val_cases:
            log.print("this fold has no validation cases: no validation, no checkpoint_best.pth")


def _without_optimizer(payload: dict) -> dict:
    """checkpoint_best / _final: everything but the optimiser state (twice the trainable weights' size)."""
    return {k: v for k, v in payload.items() if k != "optimizer_state"}


def _lr_scheduler(optimizer: torch.optim.Optimizer, config: dict | None):
    """None (a constant learning rate) or the plans' per-epoch schedule."""
    if config is None:
        return None
    if config.get("name") != "step":
        raise DGCFError(f"training.lr_scheduler {config}: only {{'name': 'step', 'step_size', 'gamma'}} exists")
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(config["step_size"]),
                                           gamma=float(config["gamma"]))
