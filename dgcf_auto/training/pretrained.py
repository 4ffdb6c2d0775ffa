"""`dgcf_train ... -pretrained_weights CHECKPOINT`: start from another run's network (fine-tuning, e.g. a pelvis
MR model for brain MR), as nnU-Net's load_pretrained_weights.

Every trainable weight of this run's network must exist in the checkpoint with the same shape; the frozen
DINOv3 is left out of the comparison (it comes from --dinov3_weights, and lean checkpoints do not hold it).
The checkpoint is read through dgcf_auto/checkpoint.py, so every checkpoint format it reads works here.
"""
from __future__ import annotations

from pathlib import Path

import torch

from dgcf_auto import checkpoint as checkpoint_format
from dgcf_auto.checkpoint import VIT_PREFIX as FROZEN_PREFIX  # the frozen DINOv3's state-dict keys
from dgcf_auto.errors import DGCFError


def load_pretrained_weights(network: torch.nn.Module, path: str | Path) -> int:
    """Copy the checkpoint's weights into `network` (in place); returns how many tensors were copied."""
    path = Path(path)
    checkpoint = checkpoint_format.load_checkpoint(path, required=("network_weights",))
    source = {k: v for k, v in checkpoint["network_weights"].items() if not k.startswith(FROZEN_PREFIX)}
    target = {k: v for k, v in network.state_dict().items() if not k.startswith(FROZEN_PREFIX)}
    problems = mismatch(source, target)
    if problems:
        architecture = (checkpoint.get("plans") or {}).get("network", {}).get("architecture", "unknown")
        raise DGCFError(f"-pretrained_weights {path}: does not fit this network (checkpoint architecture "
                        f"{architecture}): {problems}")
    missing, _ = network.load_state_dict(source, strict=False)
    assert all(k.startswith(FROZEN_PREFIX) for k in missing), missing  # every other key was checked above
    return len(source)


def mismatch(source: dict, target: dict, shown: int = 3) -> str | None:
    """What keeps `source` weights from loading into `target`, in one line; None when they fit."""
    missing = [k for k in target if k not in source]
    unexpected = [k for k in source if k not in target]
    shapes = [f"{k} {tuple(source[k].shape)} vs {tuple(target[k].shape)}" for k in target
              if k in source and source[k].shape != target[k].shape]
    parts = [f"{len(items)} {what} (e.g. {', '.join(items[:shown])})"
             for what, items in (("key(s) missing in the checkpoint", missing),
                                 ("key(s) this network lacks", unexpected),
                                 ("shape mismatch(es): checkpoint vs network", shapes)) if items]
    return "; ".join(parts) or None
