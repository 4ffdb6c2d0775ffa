"""`dgcf_train --tensorboard`: loss terms, validation metrics and one validation slice per epoch, written with
torch.utils.tensorboard into <fold>/tensorboard/ (view with `tensorboard --logdir <fold>/tensorboard`).

Optional: without the `tensorboard` package (pip install "dgcf_auto[tensorboard]") training says so in one
line and runs on without it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dgcf_auto.log import get_logger

log = get_logger(__name__)
FOLDER = "tensorboard"


class TensorBoardLog:
    def __init__(self, output_folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's module imports the tensorboard package
            log.warning("--tensorboard: the tensorboard package is not installed (pip install tensorboard); "
                        "training goes on without a TensorBoard log")
            self.writer = None
            return
        self.writer = SummaryWriter(log_dir=str(Path(output_folder) / FOLDER))

    def epoch(self, epoch: int, train_loss: float, terms: dict[str, float], lr: float,
              validation: dict | None) -> None:
        if self.writer is None:
            return
        self.writer.add_scalar("train/loss", train_loss, epoch)
        for name, value in terms.items():
            self.writer.add_scalar(f"train/{name}", value, epoch)
        self.writer.add_scalar("train/lr", lr, epoch)
        for name, value in (validation or {}).items():
            if value is not None:
                self.writer.add_scalar(f"val/{name}", value, epoch)
        self.writer.flush()

    def validation_image(self, epoch: int, case: str, source: np.ndarray, sct: np.ndarray,
                         ct: np.ndarray) -> None:
        """One slice as source | sCT | CT side by side, each normalised slice ([-1, 1]) shown as [0, 1]."""
        if self.writer is None:
            return
        panel = np.concatenate([np.clip((np.asarray(a, np.float32) + 1.0) / 2.0, 0.0, 1.0)
                                for a in (source, sct, ct)], axis=1)
        self.writer.add_image(f"val/{case}: source | sCT | CT", panel, epoch, dataformats="HW")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
