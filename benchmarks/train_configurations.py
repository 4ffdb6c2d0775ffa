"""Training seconds per iteration of the slice configurations, 2d and 2.5d, side by side in one run.

The real loop as `dgcf_train` runs it: `DGCFTrainer.train_step` (forward, loss, backward, Adam) fed by the
batchgenerators stream of `SliceDataLoader` from memory-mapped arrays (benchmarks/train.py's synthetic cases),
with the configuration's plans resolved as the trainer resolves them (`resolve_configuration`: 2.5d's network
takes `slab_size` input channels and its loader builds slabs). Real ViT-B/16 with random weights where the
trainer needs one (the cost does not depend on the weights). Prints a markdown table.

    python benchmarks/train_configurations.py                        # CPU, 256x256, batch 4, 2d and 2.5d
    python benchmarks/train_configurations.py -tr DGCFTrainer_unetppResNet34_L1 --slab_size 5
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

import torch

from dgcf_auto.plans import NetworkPlans, TrainingPlans, configuration_plans, resolve_configuration
from dgcf_auto.training.dataloading import SliceDataLoader, close_batch_stream, make_batch_stream
from dgcf_auto.training.trainer import DGCFTrainer, TrainingSettings
from dgcf_auto.training.variants import TRAINERS, effective_plans
from train import write_cases  # benchmarks/train.py: the same synthetic memory-mapped cases


def plans_for(configuration: str, trainer_name: str, size: int, batch: int, slab_size: int) -> dict:
    plans = {"plans_version": 2,
             "configurations": {"2d": {"kind": "slices", "data_identifier": "bench", "patch_size": [size, size]},
                                "2.5d": {"kind": "slabs", "inherits_from": "2d", "slab_size": slab_size}},
             "network": NetworkPlans().to_dict(), "training": {**TrainingPlans().to_dict(), "iterations_per_epoch": 1}}
    return effective_plans(resolve_configuration(plans, configuration), TRAINERS[trainer_name], {"batch_size": batch})


def seconds_per_iteration(configuration: str, trainer_name: str, cases: list, out: Path, args) -> tuple[float, str]:
    plans = plans_for(configuration, trainer_name, args.size, args.batch_size, args.slab_size)
    settings = TrainingSettings(epochs=1, batch_size=args.batch_size, iterations_per_epoch=1, dinov3_random=True,
                                num_workers=args.num_workers)
    trainer = DGCFTrainer(TRAINERS[trainer_name], plans, settings, cases, [], out, torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.initialize()
    slab = configuration_plans(plans).slab_size
    loader = SliceDataLoader(cases, args.batch_size, seed=0, num_workers=args.num_workers, slab_size=slab)
    stream = make_batch_stream(loader, args.num_workers)
    try:
        for _ in range(args.warmup):
            trainer.train_step(next(stream))
        start = time.perf_counter()
        for _ in range(args.iterations):
            trainer.train_step(next(stream))
        elapsed = time.perf_counter() - start
    finally:
        close_batch_stream(stream)
    precision = "bf16" if trainer.autocast_dtype is not None else "fp32"
    return elapsed / args.iterations, precision


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--configurations", nargs="+", default=["2d", "2.5d"], choices=["2d", "2.5d"])
    p.add_argument("-tr", "--trainers", nargs="+", default=["DGCFTrainer", "DGCFTrainer_unetppResNet34_L1"],
                   choices=list(TRAINERS))
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--slab_size", type=int, default=5)
    p.add_argument("--iterations", type=int, default=3, help="timed steps (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps (default 1)")
    p.add_argument("--num-workers", type=int, default=1, help="data workers (default 1)")
    args = p.parse_args()
    logging.disable(logging.WARNING)  # the random-weights warnings, once per trainer
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = write_cases(Path(tmp), args.size)
        for trainer_name in args.trainers:
            for configuration in args.configurations:
                seconds, precision = seconds_per_iteration(configuration, trainer_name, cases, Path(tmp) / "out", args)
                rows.append((trainer_name, configuration, precision, seconds))
    print(f"\n{args.size}x{args.size}, batch {args.batch_size}, 2.5d slab {args.slab_size}, CPU "
          f"({torch.get_num_threads()} threads), {args.num_workers} data worker(s), {args.iterations} timed steps "
          f"after {args.warmup} warm-up\n")
    print("| trainer | configuration | precision | s/iteration | slices/s |")
    print("|---|---|---|---|---|")
    for trainer_name, configuration, precision, seconds in rows:
        print(f"| {trainer_name} | {configuration} | {precision} | {seconds:.2f} | {args.batch_size / seconds:.2f} |")


if __name__ == "__main__":
    main()
