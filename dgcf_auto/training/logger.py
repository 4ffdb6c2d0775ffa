"""Per-epoch history, the plain-text training log and progress.png (rank 0 only writes)."""
from __future__ import annotations

import logging
import math
from datetime import datetime
from pathlib import Path

from dgcf_auto.atomic import atomic_path, png_complete
from dgcf_auto.log import get_logger

log = get_logger(__name__)

HISTORY_KEYS = ("epoch", "train_loss", "val_mae", "val_psnr", "val_ssim", "lr", "epoch_time", "data_wait")
TERM_PREFIX = "train_"  # one history series per loss term: train_l1, train_mldp, ...


class TrainingLogger:
    def __init__(self, output_folder: Path | None, enabled: bool = True):
        self.history: dict[str, list] = {k: [] for k in HISTORY_KEYS}
        # checkpoint_best.pth so far: {"metric": "mae" | "ssim", "value": v, "epoch": e}, or None
        self.best: dict | None = None
        self.output_folder = Path(output_folder) if output_folder is not None else None
        self.log_file: Path | None = None
        if enabled and self.output_folder is not None:
            stamp = datetime.now().strftime("%Y_%m_%d_%H_%M_%S")
            self.output_folder.mkdir(parents=True, exist_ok=True)
            self.log_file = self.output_folder / f"training_log_{stamp}.txt"
        self.enabled = self.log_file is not None

    def print(self, message: str, level: int = logging.INFO) -> None:
        """A message through logging (stderr) and a time-stamped line in the log file (rank 0 only)."""
        if self.log_file is None:  # not enabled
            return
        log.log(level, message)
        prefix = "WARNING: " if level >= logging.WARNING else ""
        with open(self.log_file, "a") as f:  # appended line by line: a crash keeps everything so far
            f.write(f"{datetime.now():%Y-%m-%d %H:%M:%S}: {prefix}{message}\n")

    def warning(self, message: str) -> None:
        self.print(message, logging.WARNING)

    @property
    def term_names(self) -> list[str]:
        return [k[len(TERM_PREFIX):] for k in self.history if k.startswith(TERM_PREFIX) and k not in HISTORY_KEYS]

    def record_epoch(self, terms: dict[str, float], **values) -> None:
        """One epoch's values; `terms` holds the mean of each loss term (whatever the plans name)."""
        for key in HISTORY_KEYS:
            self.history[key].append(values.get(key))
        for name, value in terms.items():
            self.history.setdefault(TERM_PREFIX + name, []).append(value)
        mae, psnr, ssim = values.get("val_mae"), values.get("val_psnr"), values.get("val_ssim")
        val = f"val MAE {mae:.2f} HU, PSNR {psnr:.2f} dB" if mae is not None else "val -"
        if ssim is not None:
            val += f", 2D SSIM {ssim:.4f}"
        parts = ", ".join(f"{name} {value:.4f}" for name, value in terms.items())
        self.print(f"epoch {values['epoch']}: train loss {values['train_loss']:.4f} ({parts}), {val}, "
                   f"lr {values['lr']:.2e}, {values['epoch_time']:.1f} s "
                   f"({100 * values.get('data_wait', 0.0):.0f}% waiting for data)")

    def state_dict(self) -> dict:
        return {"history": {k: list(v) for k, v in self.history.items()}, "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        epochs = len(state["history"].get("epoch", []))
        # a series a run written before it existed lacks (val_ssim) reads as None per epoch
        self.history = {k: list(state["history"].get(k, [None] * epochs)) for k in HISTORY_KEYS}
        self.history.update({k: list(v) for k, v in state["history"].items() if k.startswith(TERM_PREFIX)})
        self.best = state.get("best")
        if self.best is None and state.get("best_val_mae") is not None:  # checkpoints before --best_metric
            self.best = {"metric": "mae", "value": float(state["best_val_mae"]), "epoch": None}

    def is_better(self, metric: str, value: float | None) -> bool:
        """Whether `value` of `metric` beats the best so far (MAE: lower; SSIM: higher); non-finite never does."""
        if value is None or not math.isfinite(value):
            return False
        if self.best is None or self.best["metric"] != metric:
            return True
        return value < self.best["value"] if metric == "mae" else value > self.best["value"]

    def plot_progress(self) -> None:
        folder = self.output_folder
        if not self.enabled or folder is None or not self.history["epoch"]:  # enabled: a folder is set
            return
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        h, epochs = self.history, self.history["epoch"]
        fig, axes = plt.subplots(2, 2, figsize=(12, 8))
        ax = axes[0, 0]
        ax.plot(epochs, h["train_loss"], label="total")
        for name in self.term_names:
            ax.plot(epochs, h[TERM_PREFIX + name], label=name)
        ax.set(title="training loss", xlabel="epoch")
        ax.legend()
        ax = axes[0, 1]
        val = [(e, m, p) for e, m, p in zip(epochs, h["val_mae"], h["val_psnr"]) if m is not None]
        if val:
            ax.plot([v[0] for v in val], [v[1] for v in val], "o-", color="tab:red", label="MAE (HU)")
            ax.set_ylabel("MAE (HU)", color="tab:red")
            twin = ax.twinx()
            twin.plot([v[0] for v in val], [v[2] for v in val], "s-", color="tab:blue", label="PSNR (dB)")
            twin.set_ylabel("PSNR (dB)", color="tab:blue")
        else:
            ax.text(0.5, 0.5, "no validation cases in this fold", ha="center", transform=ax.transAxes)
        ax.set(title="validation (body mask, HU)", xlabel="epoch")
        axes[1, 0].plot(epochs, h["lr"])
        axes[1, 0].set(title="learning rate", xlabel="epoch")
        axes[1, 1].plot(epochs, h["epoch_time"])
        axes[1, 1].set(title="epoch time (s)", xlabel="epoch")
        fig.tight_layout()
        with atomic_path(folder / "progress.png", suffix=".png", verify=png_complete) as tmp:
            fig.savefig(tmp, dpi=80)
        plt.close(fig)

