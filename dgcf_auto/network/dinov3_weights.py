"""Find and load DINOv3 weights, offline only.

Resolution order: an explicit path (`--dinov3_weights`), then $DGCF_DINOV3_WEIGHTS, then the local Hugging
Face cache entry of timm's `timm/vit_base_patch16_dinov3.lvd1689m` (found through huggingface_hub's cache
lookup; nothing is ever downloaded). Formats: Meta's original release (`dinov3_vitb16_pretrain_lvd1689m-*.pth`,
keys like `storage_tokens`, `blocks.0.ls1.gamma`) converted with timm's own `checkpoint_filter_fn`, and timm
state dicts as `.safetensors`, `.bin` or `.pth`. Every key and shape must match the model (strict).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import torch
import torch.nn as nn

from dgcf_auto.errors import DGCFError

WEIGHTS_ENV = "DGCF_DINOV3_WEIGHTS"
WHERE_TO_GET = ("get Meta's dinov3_vitb16_pretrain_lvd1689m-*.pth from the DINOv3 release page "
                "(https://github.com/facebookresearch/dinov3, licence acceptance needed) or timm's "
                "model.safetensors from Hugging Face 'timm/vit_base_patch16_dinov3.lvd1689m', then pass "
                f"--dinov3_weights <file> or set {WEIGHTS_ENV}=<file>; --dinov3_random runs with random "
                "weights (tests/demo only)")


def _hf_cache_dir() -> str:
    # Read the environment now (huggingface_hub freezes its constants at import time).
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if not cache:
        hf_home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface")
        cache = os.path.join(hf_home, "hub")
    return os.path.expanduser(cache)


def find_in_hf_cache(repo_id: str) -> Path | None:
    """The cached weight file of `repo_id` (revision 'main'), or None. Pure file-system lookup."""
    from huggingface_hub import try_to_load_from_cache

    cache_dir = _hf_cache_dir()
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def resolve_weights(model_name: str, weights: str | None, pretrained_cfg: dict | None) -> tuple[Path, str]:
    """(file, source label). Raises DGCFError saying where to get weights when none is found."""
    for given, origin in ((weights, "--dinov3_weights"), (os.environ.get(WEIGHTS_ENV), WEIGHTS_ENV)):
        if given:
            path = Path(given).expanduser()
            if not path.is_file():
                raise DGCFError(f"DINOv3 weights file {path} (from {origin}) does not exist")
            return path, str(path.resolve())
    repo_id = (pretrained_cfg or {}).get("hf_hub_id") or f"timm/{model_name}.lvd1689m"
    cached = find_in_hf_cache(repo_id)
    if cached is not None:
        return cached, f"hf-cache:{cached}"
    raise DGCFError(f"no DINOv3 weights for {model_name} found (not given, {WEIGHTS_ENV} unset, not in the "
                    f"Hugging Face cache {_hf_cache_dir()} as {repo_id}): {WHERE_TO_GET}")


def read_state_dict(path: Path, label: str = "DINOv3 weights") -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, or of a torch file (weights_only) with optional wrapper keys.
    `label` names the file's role in error messages."""
    state: object
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt/unknown files surface in many exception types
        raise DGCFError(f"cannot read {label} file {path}: {type(exc).__name__}: {exc}") from exc
    for wrapper in ("model_ema", "model", "module", "state_dict", "teacher"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DGCFError(f"{label} file {path} does not hold a state dict of tensors")
    # Meta's training checkpoints prefix the ViT with 'backbone.'; released weights do not.
    if state and all(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items()}
    return state


def given_weight_file(candidates, label: str, where_to_get: str) -> Path | None:
    """The first file named in `candidates` ((value, where it came from), in priority order, e.g. a plans
    option then an environment variable), or None when none is named; a named file must exist."""
    for given, origin in candidates:
        if given:
            path = Path(given).expanduser()
            if not path.is_file():
                raise DGCFError(f"{label} file {path} (from {origin}) does not exist: {where_to_get}")
            return path
    return None


def load_encoder_state(module: nn.Module, state: dict, path: Path, label: str, target: str,
                       stem: str | None = None, hint: str = "") -> None:
    """Load an encoder's pretrained `state` into `module` strictly (every key, no extra key, every shape). `stem`:
    the first convolution's key, adapted to the module's input channels as timm does (summed for 1 channel, RGB
    repeated and scaled by 3/k for k)."""
    from timm.models import adapt_input_conv

    expected = module.state_dict()
    if stem in state and stem in expected and state[stem].ndim == 4 and state[stem].shape[1] != expected[stem].shape[1]:
        state[stem] = adapt_input_conv(expected[stem].shape[1], state[stem])
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if problems:
        raise DGCFError(f"{label} {path} do not fit {target} ({len(problems)} problems, e.g. "
                        f"{'; '.join(problems[:3])}){hint}")
    module.load_state_dict(state, strict=True)


class EncoderWeights(Protocol):
    """A network whose pretrained encoder loads from a weight file (TransUNet, UNet++)."""

    def load_encoder_weights(self, path: Path) -> None: ...


def load_encoder_or_warn(network: EncoderWeights, path: Path | None, random_words: str) -> None:
    """`network.load_encoder_weights(path)`, or one warning that the encoder starts random (`random_words`: whose
    encoder and why, e.g. "UNet++'s ResNet-34 encoder ... (no weight file; ...)")."""
    if path is None:
        from dgcf_auto.log import get_logger

        get_logger(__name__).warning(f"{random_words}; a trained checkpoint loaded afterwards replaces them")
    else:
        network.load_encoder_weights(path)


def _drop_zero_qkv_bias(state: dict, vit: nn.Module, path: Path) -> dict:
    """Meta's ViT-B stores an all-zero (masked) qkv bias that timm's bias-free model omits; never drop real ones."""
    has_q_bias = any(name.endswith("q_bias") for name, _ in vit.named_parameters())
    if has_q_bias or not any(k.endswith("qkv.bias") for k in state):
        return state
    out = {}
    for key, value in state.items():
        if key.endswith("qkv.bias"):
            mask = state.get(key + "_mask")
            effective = value * torch.nan_to_num(mask, nan=1.0) if mask is not None else value
            if effective.abs().max() > 0:
                raise DGCFError(f"DINOv3 weights {path}: {key} is non-zero but the model has no qkv bias; "
                                f"use model 'vit_base_patch16_dinov3_qkvb'")
            continue
        out[key] = value
    return out


def convert_to_timm(state: dict, vit: nn.Module, path: Path) -> dict:
    """Meta's original key names -> timm's, using timm's own converter (identity for timm files)."""
    from timm.models.eva import checkpoint_filter_fn

    state = _drop_zero_qkv_bias(state, vit, path)
    try:
        return checkpoint_filter_fn(state, vit)
    except Exception as exc:  # timm's converter assumes well-formed files; report, don't trace back
        raise DGCFError(f"DINOv3 weights {path} cannot be converted for {type(vit).__name__}: "
                        f"{type(exc).__name__}: {exc}") from exc


def _depth(vit: nn.Module) -> int | str:
    """The ViT's number of blocks (timm: a ModuleList in Eva, a Sequential in VisionTransformer), '?' without."""
    blocks = getattr(vit, "blocks", None)
    return len(blocks) if isinstance(blocks, (nn.ModuleList, nn.Sequential)) else "?"


def load_weights_into(vit: nn.Module, path: Path) -> None:
    """Load `path` into `vit`, strictly: every key present, no extra key, every shape equal."""
    state = convert_to_timm(read_state_dict(path), vit, path)
    expected = vit.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                parts.append(f"{len(items)} {label} (e.g. {', '.join(items[:3])})")
        raise DGCFError(f"DINOv3 weights {path} do not fit {type(vit).__name__} "
                        f"(embed {getattr(vit, 'embed_dim', '?')}, depth {_depth(vit)}): {'; '.join(parts)}")
    vit.load_state_dict(state, strict=True)
