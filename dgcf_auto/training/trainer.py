"""DGCFTrainer: the paper's training (section 3.1) with nnU-Net's checkpoints, resume and logging.

One object per run. `initialize()` builds the frozen DINOv3, the network of the variant, the loss, Adam and
the data stream; `run()` trains epoch by epoch (an epoch = iterations_per_epoch batches), validates every
`val_every` epochs and the last, and writes checkpoint_latest / _best / _final. Under torchrun the network is
wrapped in DistributedDataParallel and only rank 0 touches the output folder.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dgcf_auto.atomic import write_json
from dgcf_auto.errors import DGCFError
from dgcf_auto.network.execution import autocast, autocast_dtype
from dgcf_auto.training import checkpoint as ckpt
from dgcf_auto.training.dataloading import (SliceDataLoader, augmentation_transform, close_batch_stream,
                                            make_batch_stream)
from dgcf_auto.training.distributed import DistributedContext, split_batch_size
from dgcf_auto.training.logger import TrainingLogger, finite_or_none
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


class DGCFTrainer:
    def __init__(self, variant: TrainerVariant, plans: dict, settings: TrainingSettings, train_cases: list,
                 val_cases: list, output_folder: Path, device: torch.device,
                 dist_ctx: DistributedContext | None = None, run_info: dict | None = None):
        self.variant, self.plans, self.settings = variant, plans, settings
        self.train_cases, self.val_cases = train_cases, val_cases
        self.output_folder, self.device = Path(output_folder), device
        self.dist = dist_ctx or DistributedContext()
        self.run_info = run_info or {}
        self.local_batch_size = split_batch_size(settings.batch_size, self.dist.world_size)
        self.autocast_dtype = autocast_dtype(device, settings.precision)  # bf16 needs no GradScaler
        self.logger = TrainingLogger(self.output_folder, enabled=self.dist.is_main)
        self.start_epoch = 0
        self.batches_done = 0  # batches this rank has consumed; the data stream's resumable state

    # ---------------------------------------------------------------- setup
    def initialize(self) -> None:
        from dgcf_auto.losses.mldp import SynthesisLoss
        from dgcf_auto.network import build_network
        from dgcf_auto.network.dinov3 import build_dinov3

        s, training = self.settings, self.plans["training"]
        torch.manual_seed(s.seed)  # same init on every rank (DDP also broadcasts rank 0's weights)
        needs_vit = self.variant.architecture != "cnn_only" or training["mldp_weight"] > 0
        self.dinov3 = None
        self.dinov3_source = "none (not used by this trainer)"
        if needs_vit:
            self.dinov3 = build_dinov3(self.plans["network"]["dinov3"], weights=s.dinov3_weights,
                                       random=s.dinov3_random)
            self.dinov3_source = str(self.dinov3.weights_source)
        self.network = build_network(self.plans["network"], self.dinov3).to(self.device)
        self.loss = SynthesisLoss(self.dinov3, training["l1_weight"], training["mldp_weight"],
                                  training.get("mldp_layers", [3, 6, 9, 12])).to(self.device)
        self.network = self.network.to(memory_format=torch.channels_last)
        trainable = [p for p in self.network.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(trainable, lr=training["learning_rate"],
                                          betas=tuple(training.get("adam_betas", (0.9, 0.999))))
        self.model = self.network
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # Frozen ViT parameters (requires_grad False) are ignored by DDP's gradient all-reduce.
            self.model = DDP(self.network, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if s.compile:
            self.model = torch.compile(self.model)
        # From here on each rank draws its own random numbers; a resumed run restores them from the checkpoint.
        ckpt.seed_everything(s.seed + 1000 * self.dist.rank)

    def load_checkpoint(self, path: Path, state: dict | None = None) -> None:
        """Continue a run: model, optimiser, epoch, RNG, logger and the data stream's position."""
        state = state if state is not None else ckpt.load_checkpoint(path)
        ckpt.check_compatible(state, path, self.variant.name, self.plans)
        try:
            self.network.load_state_dict(state["network_weights"])
            self.optimizer.load_state_dict(state["optimizer_state"])
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
        transform = (augmentation_transform(tuple(self.train_cases[0].source.shape[1:]))
                     if self.plans["training"].get("augmentation") else None)
        loader = SliceDataLoader(self.train_cases, self.local_batch_size, s.seed, self.dist.rank,
                                 self.plans["training"].get("foreground_slice_fraction"), transform,
                                 start_batch=self.batches_done, num_workers=s.num_workers)
        stream = make_batch_stream(loader, s.num_workers)
        try:
            for epoch in range(self.start_epoch, s.epochs):
                self._train_epoch(epoch, stream)
        finally:
            close_batch_stream(stream)
        payload = self.checkpoint_payload(s.epochs)  # collective under torchrun: every rank takes part
        if self.dist.is_main:
            ckpt.save_checkpoint(self.output_folder / "checkpoint_final.pth", payload)
            log.print(f"training finished: {self.output_folder / 'checkpoint_final.pth'}")

    def _train_epoch(self, epoch: int, stream) -> None:
        s = self.settings
        self.model.train()
        start = time.perf_counter()
        wait = 0.0
        sums = torch.zeros(3, dtype=torch.float32, device=self.device)  # float32: mps has no float64
        bar = tqdm(range(s.iterations_per_epoch), desc=f"epoch {epoch}", disable=not self.dist.is_main,
                   leave=False, dynamic_ncols=True)
        for it in bar:
            t0 = time.perf_counter()
            batch = next(stream)
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
        val_mae, val_psnr = (finite_or_none(val["mae"]), finite_or_none(val["psnr"])) if val else (None, None)
        self.logger.record_epoch(epoch=epoch, train_loss=means[0], train_l1=means[1], train_mldp=means[2],
                                 val_mae=val_mae, val_psnr=val_psnr,
                                 lr=self.optimizer.param_groups[0]["lr"], epoch_time=epoch_time,
                                 data_wait=wait / epoch_time)
        payload = self.checkpoint_payload(epoch + 1)
        if self.dist.is_main:
            if val is not None and np.isfinite(val["mae"]) and (self.logger.best_val_mae is None
                                                                 or val["mae"] < self.logger.best_val_mae):
                self.logger.best_val_mae = float(val["mae"])
                payload["logger"] = self.logger.state_dict()
                ckpt.save_checkpoint(self.output_folder / "checkpoint_best.pth", payload)
                self.logger.print(f"new best validation MAE {val['mae']:.2f} HU -> checkpoint_best.pth")
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
        return torch.stack([total.detach(), parts["l1"].detach(), parts["mldp"].detach()]).float()

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
            "network_weights": {k: v.detach().cpu() for k, v in self.network.state_dict().items()},
            "optimizer_state": self.optimizer.state_dict(),
            "epoch": int(next_epoch),
            "plans": self.plans,
            "trainer_name": self.variant.name,
            "dinov3_source": self.dinov3_source,
            "settings": asdict(self.settings),
            "logger": self.logger.state_dict(),
            "rng_state": rng,
            "dataloader_state": {"seed": self.settings.seed, "batches_done": batches},
        }

    def training_config(self) -> dict:
        return {"trainer_name": self.variant.name, "paper_row": self.variant.paper_row,
                "architecture": self.variant.architecture, "dinov3_source": self.dinov3_source,
                "dinov3_random": self.dinov3_source == "random", "settings": asdict(self.settings),
                "world_size": self.dist.world_size, "batch_size_per_process": self.local_batch_size,
                "device": str(self.device), "bf16_autocast": self.autocast_dtype is not None, **self.run_info,
                "train_cases": [c.name for c in self.train_cases], "val_cases": [c.name for c in self.val_cases],
                "plans": self.plans}

    def _log_start(self) -> None:
        s, log = self.settings, self.logger
        weights = self.plans["training"]
        log.print(f"{self.variant.name} ({self.variant.paper_row}); network {self.variant.architecture}, "
                  f"L1 weight {weights['l1_weight']}, MLDP weight {weights['mldp_weight']}")
        log.print(f"{len(self.train_cases)} training / {len(self.val_cases)} validation cases; {s.epochs} epochs x "
                  f"{s.iterations_per_epoch} iterations, batch {s.batch_size} ({self.local_batch_size} per process "
                  f"x {self.dist.world_size}), device {self.device}, bf16 {self.autocast_dtype is not None}, compile {s.compile}")
        if self.dinov3_source == "random":
            log.print("WARNING: DINOv3 is RANDOMLY INITIALISED (--dinov3-random); results do not reproduce the paper")
        if not self.val_cases:
            log.print("this fold has no validation cases: no validation, no checkpoint_best.pth")
