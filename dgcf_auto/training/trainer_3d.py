"""DGCFTrainer3d: the 3d_fullres trainer (nnU-Net's recipe on our data flow).

What differs from the slice trainer (`trainer.DGCFTrainer`, whose epoch loop, validation schedule,
checkpoints, resume and logging it keeps):
- batches are 3D patches (`patch_loader.PatchDataLoader`, body-mask oversampling) of the preset's patch size;
- the network is the plans' 3D U-Net (`network/unet3d.py`), topology from `planning/plan_3d.py`;
- the loss gets the body mask (masked L1, nnsyn's), gradients are clipped at norm 12 (nnU-Net);
- the optimiser and scheduler are the plans' (`training/optimizers.py`): the 3d plans name nnU-Net's "sgd"
  (momentum 0.99, Nesterov, weight decay 3e-5) with "poly" (lr x (1 - epoch / epochs)^0.9, stepped per epoch);
- validation predicts each preprocessed validation volume with the sliding window (inference/sliding_window.py).
"""
from __future__ import annotations

import torch

from dgcf_auto.errors import DGCFError
from dgcf_auto.inference.sliding_window import predict_sliding_window
from dgcf_auto.network.execution import autocast
from dgcf_auto.planning.plan_3d import apply_preset, volume_patch_size
from dgcf_auto.plans import TrainingPlans, configuration_plans, network_plans, training_plans
from dgcf_auto.training.optimizers import build_optimizer, build_scheduler
from dgcf_auto.training.patch_loader import PatchDataLoader
from dgcf_auto.training.trainer import VALIDATION_BATCH_SIZE, DGCFTrainer, EpochLosses
from dgcf_auto.training.validation import validate_cases

GRADIENT_CLIP_NORM = 12.0                     # nnUNetTrainer.train_step


def prepare_volume_plans(plans: dict, architecture: str) -> dict:
    """The resolved 3d_fullres plans with `architecture`'s planned preset (topology, batch size) in place."""
    prepared, _ = apply_preset(plans, configuration_plans(plans), architecture)
    return prepared


class DGCFTrainer3d(DGCFTrainer):
    def initialize(self) -> None:
        from dgcf_auto.losses import CompositeLoss, loss_needs_dinov3
        from dgcf_auto.network import build_network, network_needs_dinov3

        s, net_plans, training = self.settings, network_plans(self.plans), training_plans(self.plans)
        if network_needs_dinov3(net_plans) or loss_needs_dinov3(training.loss):
            raise DGCFError(f"trainer {self.variant.name}: 3d_fullres trains without the DINOv3 encoder; "
                            f"network {net_plans.architecture!r} / loss {training.loss} need it")
        torch.manual_seed(s.seed)
        self.dinov3, self.dinov3_source = None, "none (not used by this trainer)"
        self.patch_size = volume_patch_size(self.plans)
        self.network = build_network(net_plans, None).to(self.device)
        self.loss = CompositeLoss(training.loss, None, training.loss_options).to(self.device)
        self.optimizer = build_optimizer(self.network.parameters(), training)
        self.scheduler = build_scheduler(self.optimizer, training, int(training.epochs if s.epochs is None
                                                                           else s.epochs))
        self._wrap_and_start()

    def make_loader(self, training: TrainingPlans) -> PatchDataLoader:
        return PatchDataLoader(self.train_cases, self.patch_size, self.local_batch_size, self.settings.seed,
                               self.dist.rank, training.foreground_slice_fraction, start_batch=self.batches_done,
                               num_workers=self.settings.num_workers)

    def train_step(self, batch: dict) -> torch.Tensor:
        source, ct, mask = (torch.from_numpy(batch[k]).to(self.device, non_blocking=True)
                            for k in ("source", "ct", "mask"))
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.autocast_dtype):
            prediction = self.model(source)
            total, parts = self.loss(prediction.float(), ct, mask=mask)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), GRADIENT_CLIP_NORM)
        self.optimizer.step()
        return torch.stack([total.detach()] + [parts[name] for name in self.loss.names]).float()

    def validation_numbers(self) -> dict:
        def predict(volume):
            return predict_sliding_window([self.network], volume, self.patch_size, self.device,
                                          dtype=self.autocast_dtype)[0]
        return validate_cases(self.network, self.val_cases, self.plans, self.device, VALIDATION_BATCH_SIZE,
                              self.autocast_dtype, predict=predict)

    def _write_tensorboard(self, epoch: int, trained: EpochLosses, val: dict | None) -> None:
        """Scalars only (the slice trainer's validation image is a 2D slice prediction)."""
        assert self.tensorboard is not None  # called only when it is open
        self.tensorboard.epoch(epoch, trained.total, trained.terms, self.optimizer.param_groups[0]["lr"], val)
