"""Throughput of the real training loop: DGCFTrainer.train_step fed by the batchgenerators slice stream.

Data loading is included: slices come from memory-mapped (S, H, W) arrays written to a temporary folder,
through `SliceDataLoader` and background workers, exactly as `dgcf_train` reads them. The network is the
paper's DGCN (features 64/128/256/512) with the real ViT-B/16 DINOv3, random weights (cost does not depend
on them), loss L1 + MLDP (or L1 only with -tr). Reports slices/s, the share of step time spent waiting for the
next batch, and peak memory (CUDA: max allocated; CPU: peak resident set of the process). Prints markdown.

    python benchmarks/train.py                                  # CPU, 256x256, batch 4
    python benchmarks/train.py --device cuda --iterations 100   # bf16 vs fp32 at batch 4 + largest batch
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from dgcf_auto.network.execution import autocast_dtype

from dgcf_auto.plans import NetworkPlans, TrainingPlans
from dgcf_auto.training.dataloading import SliceDataLoader, close_batch_stream, make_batch_stream, open_case
from dgcf_auto.training.trainer import DGCFTrainer, TrainingSettings
from dgcf_auto.training.variants import TRAINERS, effective_plans


def write_cases(folder: Path, size: int, n_cases: int = 4, slices: int = 32) -> list:
    rng = np.random.default_rng(0)
    for i in range(n_cases):
        body = np.zeros((slices, size, size), np.uint8)
        body[:, size // 8:-size // 8, size // 8:-size // 8] = 1
        np.save(folder / f"c{i}_source.npy", rng.uniform(-1, 1, (slices, size, size)).astype(np.float32))
        np.save(folder / f"c{i}_ct.npy", rng.uniform(-1, 1, (slices, size, size)).astype(np.float32))
        np.save(folder / f"c{i}_mask.npy", body)
    return [open_case(folder, f"c{i}") for i in range(n_cases)]


def make_trainer(trainer_name: str, batch: int, device: torch.device, cases: list, out: Path,
                 compile: bool) -> DGCFTrainer:
    plans = {"network": NetworkPlans().to_dict(), "training": {**TrainingPlans().to_dict(), "iterations_per_epoch": 1}}
    variant = TRAINERS[trainer_name]
    plans = effective_plans(plans, variant, {"batch_size": batch})
    settings = TrainingSettings(epochs=1, batch_size=batch, iterations_per_epoch=1, dinov3_random=True,
                                compile=compile)
    trainer = DGCFTrainer(variant, plans, settings, cases, [], out, device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.initialize()
    return trainer


def measure(trainer: DGCFTrainer, cases: list, batch: int, iterations: int, warmup: int, workers: int) -> dict:
    device = trainer.device
    stream = make_batch_stream(SliceDataLoader(cases, batch, seed=0, num_workers=workers), workers)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    try:
        for _ in range(warmup):
            trainer.train_step(next(stream))
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        wait, start = 0.0, time.perf_counter()
        for _ in range(iterations):
            t0 = time.perf_counter()
            batch_data = next(stream)
            wait += time.perf_counter() - t0
            trainer.train_step(batch_data)
        sync()  # the step's work is queued asynchronously on CUDA: the wall time includes it
        elapsed = time.perf_counter() - start
    finally:
        close_batch_stream(stream)
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"slices_per_s": iterations * batch / elapsed, "step_ms": 1000 * elapsed / iterations,
            "data_wait": wait / elapsed, "peak_gib": peak / 2**30}


def largest_batch(args, device, cases, out) -> int:
    """Double the batch until CUDA runs out of memory; the last one that trained."""
    best, batch = 0, 4
    while batch <= 1024:
        trainer = None
        try:
            trainer = make_trainer(args.trainer, batch, device, cases, out, False)
            measure(trainer, cases, batch, 2, 1, 0)
            best = batch
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            trainer = None
            torch.cuda.empty_cache()
        batch *= 2
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--iterations", type=int, default=None, help="timed steps (default: cpu 4, cuda 100)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default: cpu 1, cuda 10)")
    p.add_argument("--num-workers", type=int, default=None, help="data workers (default: cpu 1, cuda 4)")
    p.add_argument("-tr", "--trainer", default="DGCFTrainer", choices=list(TRAINERS))
    p.add_argument("--compile", action="store_true")
    p.add_argument("--no-max-batch", action="store_true", help="CUDA: skip the largest-batch search")
    args = p.parse_args()
    cuda = args.device == "cuda"
    iterations = args.iterations or (100 if cuda else 4)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    workers = args.num_workers if args.num_workers is not None else (4 if cuda else 1)
    device = torch.device(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = write_cases(Path(tmp), args.size)
        native_bf16 = autocast_dtype(device, "auto") is not None  # CUDA, or a CPU with AVX512-BF16/AMX
        precisions = ["bf16", "fp32"] if native_bf16 else ["fp32"]
        for precision in precisions:
            trainer = make_trainer(args.trainer, args.batch_size, device, cases, Path(tmp) / "out", args.compile)
            trainer.autocast_dtype = torch.bfloat16 if precision == "bf16" else None
            r = measure(trainer, cases, args.batch_size, iterations, warmup, workers)
            rows.append((precision, args.batch_size, r))
            del trainer
            if cuda:
                torch.cuda.empty_cache()
        if cuda and not args.no_max_batch:
            batch = largest_batch(args, device, cases, Path(tmp) / "out")
            if batch:
                trainer = make_trainer(args.trainer, batch, device, cases, Path(tmp) / "out", args.compile)
                rows.append(("bf16 (largest batch)", batch,
                             measure(trainer, cases, batch, max(10, iterations // 4), 3, workers)))
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\n{args.trainer} at {args.size}x{args.size}, DINOv3 ViT-B/16 (random weights), device {name}, "
          f"{workers} data worker(s), {iterations} timed steps after {warmup} warm-up, compile {args.compile}\n")
    print("| precision | batch | slices/s | ms/step | waiting for data | peak memory (GiB) |")
    print("|---|---|---|---|---|---|")
    for precision, batch, r in rows:
        print(f"| {precision} | {batch} | {r['slices_per_s']:.2f} | {r['step_ms']:.0f} | "
              f"{100 * r['data_wait']:.1f}% | {r['peak_gib']:.2f} |")


if __name__ == "__main__":
    main()
