"""The fold checkpoint format, shared by training (writes it) and inference (reads it).

A checkpoint is a dict that `torch.load(..., weights_only=True)` reads: only tensors and plain containers.
Keys: network_weights (the generator's state dict, frozen ViT included, so prediction needs no weight
file), optimizer_state, epoch, plans (as the run used them), trainer_name, dinov3_source; training adds
its resumable state (RNG, data stream, logger, scheduler). Files are written atomically, so a kill leaves
the previous checkpoint intact.
"""
from __future__ import annotations

from pathlib import Path

import torch

from dgcf_auto.atomic import torch_save
from dgcf_auto.errors import DGCFError

CHECKPOINT_KEYS = ("network_weights", "optimizer_state", "epoch", "plans", "trainer_name", "dinov3_source")
PREDICTION_KEYS = ("network_weights", "plans")


def save_checkpoint(path: Path, payload: dict) -> None:
    missing = [k for k in CHECKPOINT_KEYS if k not in payload]
    assert not missing, f"checkpoint payload lacks {missing}"
    torch_save(payload, path)


def load_checkpoint(path: Path, required: tuple[str, ...] = CHECKPOINT_KEYS) -> dict:
    """Read a checkpoint (training: every key; prediction asks only for weights and plans); a missing,
    truncated, foreign or corrupt file is one clear DGCFError line."""
    path = Path(path)
    if not path.is_file():
        raise DGCFError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated (killed mid-copy), garbage, or pickled foreign objects
        raise DGCFError(f"checkpoint {path} is corrupt or not a dgcf_auto checkpoint (torch.load with "
                        f"weights_only=True failed: {type(exc).__name__}); delete it to start over") from None
    if not isinstance(checkpoint, dict) or any(k not in checkpoint for k in required):
        raise DGCFError(f"checkpoint {path} is not a dgcf_auto checkpoint (missing keys)")
    return checkpoint
