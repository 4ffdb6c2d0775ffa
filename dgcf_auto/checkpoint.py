"""The fold checkpoint format, shared by training (writes it) and inference (reads it).

A checkpoint is a dict that `torch.load(..., weights_only=True)` reads: only tensors and plain containers.
Keys: network_weights (the generator's state dict), epoch, plans (as the run used them), trainer_name,
dinov3_source; training adds its resumable state (RNG, data stream, logger, scheduler) and, in
checkpoint_latest.pth only, optimizer_state. Files are written atomically, so a kill leaves the previous
checkpoint intact.

Lean model folders: the frozen DINOv3 ViT (state-dict keys `dinov3.*`, 343 MB for ViT-B/16) never changes,
so it is kept out of every checkpoint and stored ONCE per model folder (`<trainer>__<plans>__2d/`, beside
the fold_<k> folders) as `dinov3_<first 16 hex digits of its SHA-256>.pth`. A checkpoint names that file
(`shared_vit`) and its full SHA-256 (`shared_vit_sha256`); loading verifies the hash and merges the ViT back
in, so every reader sees complete network weights. Checkpoints written before (ViT inside) load unchanged;
installed models of format 1 name `dinov3_vit.pth` without a hash (their zip manifest verified it).
"""
from __future__ import annotations

import functools
import hashlib
import io
from pathlib import Path

import torch

from dgcf_auto.atomic import torch_save, write_bytes
from dgcf_auto.errors import DGCFError
from dgcf_auto.hashing import file_sha256
from dgcf_auto.plans import DEFAULT_CONFIGURATION, upgrade_plans
from dgcf_auto.plans_schema import check_plans

CHECKPOINT_KEYS = ("network_weights", "epoch", "plans", "trainer_name", "dinov3_source")
PREDICTION_KEYS = ("network_weights", "plans")
VIT_PREFIX = "dinov3."  # the networks' state-dict keys of their FrozenDINOv3


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write a checkpoint; a frozen ViT still inside `network_weights` goes to the model folder's shared file."""
    missing = [k for k in CHECKPOINT_KEYS if k not in payload]
    assert not missing, f"checkpoint payload lacks {missing}"
    weights = payload["network_weights"]
    vit = {k[len(VIT_PREFIX):]: v for k, v in weights.items() if k.startswith(VIT_PREFIX)}
    if vit:
        payload = {**payload, **store_shared_vit(Path(path).parent.parent, vit),
                   "network_weights": {k: v for k, v in weights.items() if not k.startswith(VIT_PREFIX)}}
    torch_save(payload, path)


def store_shared_vit(model_folder: Path, vit: dict[str, torch.Tensor]) -> dict:
    """Write the ViT weights (keys without `dinov3.`) once into `model_folder`, named by their SHA-256;
    returns the checkpoint keys that refer to it. An existing file of that name is kept when it verifies."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in vit.items()}, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    target = Path(model_folder) / f"dinov3_{digest[:16]}.pth"
    if not (target.is_file() and file_sha256(target) == digest):
        write_bytes(data, target, suffix=".pth")
    return {"shared_vit": target.name, "shared_vit_sha256": digest}


def load_checkpoint(path: Path, required: tuple[str, ...] = CHECKPOINT_KEYS, merge_shared_vit: bool = True) -> dict:
    """Read a checkpoint (training: every key; prediction asks only for weights and plans), with its shared
    ViT merged back into network_weights; a missing, truncated, foreign or corrupt file is one clear
    DGCFError line."""
    path = Path(path)
    checkpoint = _load_weights_only(path)
    if not isinstance(checkpoint, dict) or any(k not in checkpoint for k in required):
        raise DGCFError(f"checkpoint {path} is not a dgcf_auto checkpoint (missing keys)")
    if not isinstance(checkpoint.get("plans"), dict):
        raise DGCFError(f"checkpoint {path}: its plans are not a plans object")
    # plans of any version, resolved for the one configuration the fold trained
    checkpoint["plans"] = upgrade_plans(checkpoint["plans"])
    if checkpoint["plans"].get("configurations"):
        checkpoint["plans"].setdefault("configuration", DEFAULT_CONFIGURATION)  # written before there were others
    check_plans(checkpoint["plans"], f"checkpoint {path}: plans", complete=False)
    if merge_shared_vit and "shared_vit" in checkpoint:
        vit = load_shared_vit(path, checkpoint["shared_vit"], checkpoint.get("shared_vit_sha256"))
        checkpoint["network_weights"] = {**{VIT_PREFIX + k: v for k, v in vit.items()},
                                         **checkpoint["network_weights"]}
    return checkpoint


def shared_vit_path(checkpoint_path: Path, name: str) -> Path:
    """Where a checkpoint's shared ViT file lives: the model folder, one level above the fold."""
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise DGCFError(f"checkpoint {checkpoint_path}: invalid shared ViT file name {name!r}")
    return Path(checkpoint_path).parent.parent / name


def load_shared_vit(checkpoint_path: Path, name: str, sha256: str | None = None) -> dict:
    """The ViT weights a checkpoint names, verified against its SHA-256 (when recorded)."""
    vit_path = shared_vit_path(checkpoint_path, name)
    if not vit_path.is_file():
        raise DGCFError(f"checkpoint {checkpoint_path}: its frozen DINOv3 weights {vit_path} are missing; copy "
                        f"them from the original model folder or reinstall the model")
    stat = vit_path.stat()
    return _load_vit_file(str(vit_path.resolve()), stat.st_mtime_ns, stat.st_size, sha256, str(checkpoint_path))


@functools.lru_cache(maxsize=1)
def _load_vit_file(path: str, mtime_ns: int, size: int, sha256: str | None, checkpoint_path: str) -> dict:
    """Cached: every checkpoint of a model names the same file (the key changes when the file does)."""
    if sha256 is not None and file_sha256(Path(path)) != sha256:
        raise DGCFError(f"checkpoint {checkpoint_path}: the frozen DINOv3 weights {path} do not match the SHA-256 "
                        f"the checkpoint records ({sha256[:16]}...); the file was changed or damaged")
    vit = _load_weights_only(Path(path))
    if not isinstance(vit, dict) or not all(isinstance(v, torch.Tensor) for v in vit.values()):
        raise DGCFError(f"{path} is not a DINOv3 weights file (expected a state dict of tensors)")
    return vit


def _load_weights_only(path: Path):
    if not path.is_file():
        raise DGCFError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated (killed mid-copy), garbage, or pickled foreign objects
        raise DGCFError(f"checkpoint {path} is corrupt or not a dgcf_auto checkpoint (torch.load with "
                        f"weights_only=True failed: {type(exc).__name__}); move it aside and rerun, or use "
                        f"another checkpoint of this fold") from None
