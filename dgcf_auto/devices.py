"""One set of device words for every command: cpu, cuda, cuda:N, mps (default: cuda when available).

`-device` is parsed by `device_argument` (syntax only, so --help and argument errors need no torch) and
turned into a torch.device by `resolve_device`, which says in one line when the device is absent.
"""
from __future__ import annotations

import argparse
import re

from dgcf_auto.errors import DGCFError

DEVICE_HELP = "cpu, cuda, cuda:N or mps (default: cuda when available, else cpu)"
_PATTERN = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


def device_argument(value: str) -> str:
    """argparse `type=`: the device word, lower-cased; an argparse error for anything else."""
    word = str(value).strip().lower()
    if not _PATTERN.match(word):
        raise argparse.ArgumentTypeError(f"invalid device {value!r}; use {DEVICE_HELP}")
    return word


def resolve_device(name: str | None = None):
    """The torch.device for a device word (None: cuda when available, else cpu)."""
    import torch

    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if not _PATTERN.match(str(name)):
        raise DGCFError(f"-device {name}: invalid device; use {DEVICE_HELP}")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DGCFError(f"-device {name}: no CUDA device is available (use -device cpu)")
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise DGCFError(f"-device {name}: only {torch.cuda.device_count()} CUDA device(s) visible "
                            f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
        return torch.device("cuda", index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DGCFError(f"-device {name}: MPS is not available on this machine")
    return device
