"""Running a network on slice stacks: precision choice, memory layout, batching. Shared by the trainer's
validation and the predictor, so both see exactly the same numbers.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch

from dgcf_auto.errors import DGCFError
from dgcf_auto.log import get_logger, progress_bar
from dgcf_auto.plans import check_slab_size
from dgcf_auto.slabs import gather_slabs

log = get_logger(__name__)
PRECISIONS = ("auto", "fp32", "bf16")


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """bf16 where the hardware computes it natively (CUDA; CPUs with AVX512-BF16/AMX), else fp32 (None).

    On a CPU without native bf16, autocast would emulate it and run slower than fp32.
    """
    if precision not in PRECISIONS:
        raise DGCFError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return None
    if precision == "bf16" or device.type == "cuda":
        return torch.bfloat16
    if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """A fresh autocast context (or a no-op for fp32)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def to_network_input(slices: np.ndarray, device: torch.device) -> torch.Tensor:
    """(B, H, W) slices (a read-only memmap too) or (B, k, H, W) slabs -> B x 1|k x H x W float32,
    channels_last (cuDNN and oneDNN both run convolutions faster in it; measured 18 % on CPU)."""
    x = torch.from_numpy(np.array(slices, dtype=np.float32))
    x = x[:, None] if x.ndim == 3 else x
    return x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)


def network_input(slices: np.ndarray, start: int, stop: int, slab_size: int, device: torch.device) -> torch.Tensor:
    """The network input predicting slices start..stop-1 of the (S, H, W) stack: the slices themselves, or with
    `slab_size` k > 1 their 2.5D slabs (`dgcf_auto.slabs`: each slice with its k - 1 neighbours)."""
    if slab_size == 1:
        return to_network_input(slices[start:stop], device)
    return to_network_input(gather_slabs(slices, np.arange(start, stop), slab_size), device)


CPU_BATCH_SIZE = 16
ViTEncoder = Callable[[torch.Tensor], list[torch.Tensor]]  # a network's `encode_dino`: the frozen ViT's maps
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


class BatchSizer:
    """Slices per network pass. Fixed when given; on CUDA otherwise sized from free memory
    (`torch.cuda.mem_get_info`) and a measured per-slice footprint; halved on every out-of-memory error."""

    def __init__(self, device: torch.device, fixed: int | None = None, fraction: float = 0.7, maximum: int = 256,
                 free_memory=None):
        if fixed is not None and int(fixed) < 1:
            raise DGCFError(f"`batch_size` must be at least 1, got {fixed}")
        self.device = torch.device(device)
        self.size = int(fixed) if fixed is not None else None
        self.automatic = fixed is None
        self.fraction, self.maximum = fraction, maximum
        self.back_offs = 0
        self._free_memory = free_memory or (lambda: torch.cuda.mem_get_info(self.device)[0])

    def choose(self, slice_bytes: int, free_bytes: int) -> int:
        """`fraction` of the free memory divided by one slice's footprint, within [1, maximum]."""
        return int(min(self.maximum, max(1, (free_bytes * self.fraction) // max(int(slice_bytes), 1))))

    def ensure(self, measure_slice_bytes) -> int:
        """The batch size, sizing it on first use (`measure_slice_bytes()` runs only on CUDA)."""
        if self.size is None:
            self.size = self.choose(measure_slice_bytes(), self._free_memory()) if self.device.type == "cuda" \
                else CPU_BATCH_SIZE
        return self.size

    def back_off(self) -> int:
        assert self.size is not None, "ensure() sizes the batch before any pass"
        if self.size <= 1:
            raise DGCFError(f"out of memory on {self.device} even with one slice per network pass; free the "
                            f"device (other processes?) or use -device cpu")
        self.size = max(1, self.size // 2)
        self.back_offs += 1
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        log.info(f"out of memory on {self.device}: slice batch reduced to {self.size}")
        return self.size


def _accumulate_batch(networks, x: torch.Tensor, device: torch.device, dtype, flips, shared_encoder):
    """Sum (and sum of squares) over networks x flips of one batch's predictions, float64 on the host.
    With `shared_encoder` the frozen ViT runs once per flip for every network."""
    total = total_sq = None
    for dims in flips:
        xin = torch.flip(x, dims) if dims else x
        features = None
        if shared_encoder is not None:
            with autocast(device, dtype):
                features = shared_encoder(xin)
        for network in networks:
            with autocast(device, dtype):
                out = network(xin, features) if features is not None else network(xin)
            out = (torch.flip(out, dims) if dims else out).float()[:, 0].cpu().numpy().astype(np.float64)
            total = out if total is None else total + out
            total_sq = out ** 2 if total_sq is None else total_sq + out ** 2
    return total, total_sq


def _measure_slice_bytes(networks, slices, device, dtype, flips, shared_encoder, slab_size) -> int:
    """Peak CUDA memory of a 2-slice pass, per slice (an over-estimate: fixed costs count too)."""
    probe = min(2, len(slices))
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    _accumulate_batch(networks, network_input(slices, 0, probe, slab_size, device), device, dtype, flips,
                      shared_encoder)
    torch.cuda.synchronize(device)
    return max(1, (torch.cuda.max_memory_allocated(device) - base) // probe)


@torch.inference_mode()
def predict_slice_stack(networks: list[torch.nn.Module], slices: np.ndarray, device: torch.device,
                        batch_size: int | BatchSizer | None, dtype: torch.dtype | None = None, flips=((),),
                        with_std: bool = False, desc: str | None = None,
                        shared_encoder: ViTEncoder | None = None,
                        slab_size: int = 1) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean (and std) over networks x flips of the prediction of every (S, H, W) slice, in float32.

    `flips`: tuples of dims to mirror before the network and back after (test-time augmentation).
    `batch_size`: slices per pass, or a BatchSizer (None: sized for the device); out-of-memory halves it.
    `shared_encoder`: `encode_dino` of the frozen ViT every network holds (one instance): its maps are computed once per
    batch and flip and passed to each network, instead of each network running it again.
    `slab_size` k > 1 (2.5d): each slice is predicted from its slab of k slices (`dgcf_auto.slabs`).
    """
    device = torch.device(device)
    slab_size = check_slab_size(slab_size)
    sizer = batch_size if isinstance(batch_size, BatchSizer) else BatchSizer(device, batch_size)
    size = sizer.ensure(lambda: _measure_slice_bytes(networks, slices, device, dtype, flips, shared_encoder,
                                                     slab_size))
    total = np.zeros(slices.shape, np.float64)
    total_sq = np.zeros(slices.shape, np.float64) if with_std else None
    bar = progress_bar(total=slices.shape[0], desc=desc, unit="slice", leave=False, disable=desc is None)
    start = 0
    while start < slices.shape[0]:
        stop = min(start + size, slices.shape[0])
        try:
            out, out_sq = _accumulate_batch(networks, network_input(slices, start, stop, slab_size, device), device,
                                            dtype, flips, shared_encoder)
        except OUT_OF_MEMORY:
            size = sizer.back_off()
            continue
        total[start:stop] += out
        if total_sq is not None:
            total_sq[start:stop] += out_sq
        bar.update(stop - start)
        start = stop
    bar.close()
    n = len(networks) * len(flips)
    mean = total / n
    std = None if total_sq is None else np.sqrt(np.maximum(total_sq / n - mean ** 2, 0.0)).astype(np.float32)
    return mean.astype(np.float32), std
