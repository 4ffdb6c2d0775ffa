"""Which precision inference runs in, and the recorded check that allows a reduced one.

An sCT is a regression in HU: a reduced precision (bf16, fp16) changes every voxel, unlike a segmentation,
where an argmax hides small errors. Inference therefore runs in fp32 unless

- the user asks for bf16 or fp16 (`--precision bf16|fp16`), or
- `--precision auto` runs on a GPU and the model folder holds a passing check for every fold used:
  `precision_check.json`, written once per fold at the end of training on a GPU (`record_check`), compares
  fp32 and the reduced precision on the fold's validation slices inside the body and records the mean and
  the 99th percentile of |difference| in HU. A precision passes when mean <= 0.5 HU and p99 <= 5 HU.

The check names the fold's weights by a SHA-256 of its trained (non-ViT) tensors, so a model retrained, or
a check copied beside other weights, is not trusted; an exported and installed model keeps it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dgcf_auto.errors import DGCFError

CHECK_FILE = "precision_check.json"
CHECK_VERSION = 1
MEAN_LIMIT_HU = 0.5
P99_LIMIT_HU = 5.0
CHOICES = ("auto", "fp32", "bf16", "fp16")
REDUCED = {"bf16": torch.bfloat16, "fp16": torch.float16}
AUTO_ORDER = ("bf16", "fp16")   # under auto, the first reduced precision whose check passes
CHECK_SLICES = 64                # validation slices per fold the check runs


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str                   # what runs: fp32, bf16 or fp16
    reason: str                      # one line: why
    check: dict | None = None        # for a reduced precision chosen by auto: the recorded differences

    @property
    def dtype(self) -> torch.dtype | None:
        return REDUCED.get(self.precision)

    def record(self) -> dict:
        """What provenance and the run report keep."""
        out: dict[str, Any] = {"precision": self.precision, "reason": self.reason}
        if self.check is not None:
            out["recorded_difference_hu"] = self.check
        return out


def passes(entry: dict | None) -> bool:
    return (entry is not None and float(entry["mean_hu"]) <= MEAN_LIMIT_HU
            and float(entry["p99_hu"]) <= P99_LIMIT_HU)


def choose_precision(device_type: str, requested: str = "auto", fold_checks: list[dict | None] | None = None
                     ) -> PrecisionChoice:
    """The precision inference runs in. `fold_checks`: per fold used, its verified entry of the model's
    precision_check.json (None where there is none or it does not match the weights)."""
    if requested not in CHOICES:
        raise DGCFError(f"precision must be one of {', '.join(CHOICES)}, got {requested!r}")
    if requested != "auto":
        return PrecisionChoice(requested, "asked for")
    if device_type != "cuda":
        return PrecisionChoice("fp32", f"auto: fp32 on {device_type}")
    checks = list(fold_checks or [])
    if not checks or any(c is None for c in checks):
        return PrecisionChoice("fp32", f"auto: no verified {CHECK_FILE} for every fold; fp32")
    for name in AUTO_ORDER:
        entries = [c.get(name) for c in checks if c is not None]
        if all(passes(e) for e in entries):
            worst = {"mean_hu": max(float(e["mean_hu"]) for e in entries if e is not None),
                     "p99_hu": max(float(e["p99_hu"]) for e in entries if e is not None)}
            return PrecisionChoice(name, f"auto: recorded check passes (mean {worst['mean_hu']:.3g} HU <= "
                                         f"{MEAN_LIMIT_HU}, p99 {worst['p99_hu']:.3g} HU <= {P99_LIMIT_HU})", worst)
    return PrecisionChoice("fp32", f"auto: the recorded check allows no reduced precision (limits mean "
                                   f"{MEAN_LIMIT_HU} HU, p99 {P99_LIMIT_HU} HU); fp32")


def weights_digest(network_weights: dict) -> str:
    """SHA-256 of a fold's trained tensors (the frozen ViT left out: it is verified on its own), in key order."""
    from dgcf_auto.checkpoint import VIT_PREFIX

    digest = hashlib.sha256()
    for key in sorted(k for k in network_weights if not k.startswith(VIT_PREFIX)):
        tensor = network_weights[key].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def read_check(model_folder: Path) -> dict:
    """precision_check.json's folds ({} when absent or unreadable: then auto runs fp32)."""
    from dgcf_auto.atomic import read_json

    path = Path(model_folder) / CHECK_FILE
    try:
        record = read_json(path)
        return record.get("folds", {}) if record.get("check_version") == CHECK_VERSION else {}
    except (OSError, ValueError, AttributeError):
        return {}


def fold_check(model_folder: Path, fold: str, network_weights: dict) -> dict | None:
    """The fold's recorded check when it was measured on these very weights, else None."""
    entry = read_check(model_folder).get(fold)
    if entry is None or entry.get("weights_sha256") != weights_digest(network_weights):
        return None
    return entry


def differences_hu(fp32: np.ndarray, reduced: np.ndarray, mask: np.ndarray, hu_per_unit: float) -> dict:
    """Mean, p99 and max |reduced - fp32| in HU over the voxels of `mask`."""
    diff = np.abs(reduced.astype(np.float64) - fp32.astype(np.float64))[mask > 0] * hu_per_unit
    if diff.size == 0:
        raise DGCFError("precision check: no voxel inside the body in the validation slices")
    return {"mean_hu": float(diff.mean()), "p99_hu": float(np.percentile(diff, 99)), "max_hu": float(diff.max()),
            "voxels": int(diff.size)}


def measure(checkpoint_file: Path, slices: np.ndarray, mask: np.ndarray, device: str | torch.device,
            precisions=AUTO_ORDER) -> dict:
    """{precision: differences_hu} of one fold's checkpoint on (S, H, W) normalised slices, no TTA."""
    from dgcf_auto.inference.model_loading import build_trained_network, load_checkpoint
    from dgcf_auto.network.execution import predict_slice_stack
    from dgcf_auto.preprocessing.normalization import ct_window

    checkpoint = load_checkpoint(Path(checkpoint_file))
    network = build_trained_network(checkpoint, device).to(memory_format=torch.channels_last)
    low, high = ct_window(checkpoint["plans"])
    run = {name: predict_slice_stack([network], slices, torch.device(device), None, dtype)[0]
           for name, dtype in (("fp32", None), *((p, REDUCED[p]) for p in precisions))}
    out: dict[str, Any] = {p: differences_hu(run["fp32"], run[p], mask, (high - low) / 2.0) for p in precisions}
    out["weights_sha256"] = weights_digest(checkpoint["network_weights"])
    return out


def validation_slices(cases, limit: int = CHECK_SLICES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Up to `limit` slices (source, body mask) drawn evenly from preprocessed validation cases
    (training.dataloading.CaseArrays), only slices that hold body voxels."""
    picked = [(c, i) for c in cases for i in range(len(c.source)) if np.any(c.mask[i])]
    if not picked:
        raise DGCFError("precision check: the validation cases hold no slice with body voxels")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(picked), size=min(limit, len(picked)), replace=False))
    source = np.stack([np.asarray(picked[k][0].source[picked[k][1]], np.float32) for k in chosen])
    mask = np.stack([np.asarray(picked[k][0].mask[picked[k][1]]) for k in chosen])
    return source, mask


def record_check(model_folder: Path, checkpoint_file: Path, cases, device: str | torch.device) -> dict:
    """Measure one fold and add its entry to the model folder's precision_check.json (atomically)."""
    from dgcf_auto.atomic import folder_lock, write_json

    device = torch.device(device)
    source, mask = validation_slices(cases)
    entry = measure(checkpoint_file, source, mask, device)
    entry.update({"checkpoint": Path(checkpoint_file).name, "device": device.type,
                  "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  "slices": int(len(source)), "torch": torch.__version__})
    model_folder = Path(model_folder)
    with folder_lock(model_folder, ".precision_check.lock"):
        folds = read_check(model_folder)
        folds[Path(checkpoint_file).parent.name] = entry
        write_json({"check_version": CHECK_VERSION,
                    "limits_hu": {"mean": MEAN_LIMIT_HU, "p99": P99_LIMIT_HU}, "folds": folds},
                   model_folder / CHECK_FILE)
    return entry
