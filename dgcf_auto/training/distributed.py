"""torchrun support: one process per device, detected from RANK / WORLD_SIZE / LOCAL_RANK.

Rank 0 alone writes files, logs and progress bars; every rank samples its own slices (seed offset by rank)
and takes batch_size / world_size of the global batch, so the optimisation matches a single-process run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dgcf_auto.errors import DGCFError


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast_object(self, obj):
        """rank 0's `obj` on every rank (e.g. the validation result that decides checkpoint_best)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def mean(self, value: float, device: torch.device) -> float:
        """Mean of a float over ranks (the logged training loss covers the global batch)."""
        if not self.enabled:
            return value
        dtype = torch.float32 if device.type == "mps" else torch.float64  # mps has no float64
        tensor = torch.tensor([value], dtype=dtype, device=device)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size


def init_distributed(device_type: str) -> DistributedContext:
    """Join the process group torchrun set up (env://); a plain launch is a world of one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if "TORCHELASTIC_RUN_ID" in os.environ:  # started by torchrun's agent: die with it, however it ends
        from dgcf_auto.workers import die_with_parent

        die_with_parent(os.getppid())
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise DGCFError(f"rank {rank}: LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs visible")
        torch.cuda.set_device(local_rank)
    elif device_type == "mps":
        raise DGCFError("distributed training on mps is not supported; use -device cuda or cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistributedContext(rank, world_size, local_rank)


def shutdown_distributed(ctx: DistributedContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def resolve_device(name: str | None, ctx: DistributedContext | None = None) -> torch.device:
    """cuda if available unless told otherwise; under torchrun each rank takes cuda:LOCAL_RANK."""
    from dgcf_auto.devices import resolve_device as resolve

    device = resolve(name)  # the shared device words: cpu, cuda, cuda:N, mps
    if device.type == "cuda" and ctx is not None and ctx.enabled:
        return torch.device("cuda", ctx.local_rank)  # torchrun: every rank its own GPU
    return device


def split_batch_size(global_batch: int, world_size: int) -> int:
    if global_batch % world_size:
        raise DGCFError(f"batch size {global_batch} is not divisible by the {world_size} processes "
                        f"(each takes batch_size / world_size slices); choose --batch_size accordingly")
    return global_batch // world_size
