"""What a training run adds to the checkpoint format (dgcf_auto/checkpoint.py): RNG state and the --c checks.

RNG states are converted to tensors/lists (numpy's state tuple holds an ndarray, python's a tuple of ints),
so `torch.load(..., weights_only=True)` reads them, and back on resume.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from dgcf_auto.checkpoint import (  # noqa: F401
    CHECKPOINT_KEYS,
    VIT_PREFIX,
    load_checkpoint,
    save_checkpoint,
    store_shared_vit,  # (re-exported)
)
from dgcf_auto.errors import DGCFError


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def capture_rng_state() -> dict:
    numpy_state = np.random.get_state(legacy=True)
    assert isinstance(numpy_state, tuple)  # the legacy global stream's state is the MT19937 tuple
    kind, keys, pos, has_gauss, cached = numpy_state
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in states])


def check_compatible(checkpoint: dict, path: Path, trainer_name: str, plans: dict) -> None:
    """--c must continue the same experiment: same trainer and the same effective plans (epochs may grow)."""
    if checkpoint["trainer_name"] != trainer_name:
        raise DGCFError(f"checkpoint {path} was written by trainer {checkpoint['trainer_name']}, not {trainer_name}")
    old, new = _without_epochs(checkpoint["plans"]), _without_epochs(plans)
    if old != new:
        differing = [f"training.{k}" for k in sorted(set(old["training"]) | set(new["training"]))
                     if old["training"].get(k) != new["training"].get(k)]
        differing += sorted(k for k in set(old) | set(new) if k != "training" and old.get(k) != new.get(k))
        detail = ", ".join(differing)
        raise DGCFError(f"checkpoint {path} was trained with different plans ({detail}); "
                        f"start over without --c or use the original settings")


def _without_epochs(plans: dict) -> dict:
    """Plans minus the fields --c may change (more epochs) and the override record."""
    import copy

    result = copy.deepcopy(plans)
    result.get("training", {}).pop("epochs", None)
    result.pop("overrides", None)
    return result
