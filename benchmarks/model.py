"""Cost of every trainer variant's network and loss, with the real ViT-B/16 (random weights: cost does not
depend on them).

Per trainer (-tr): the registered network and loss terms; trainable and frozen parameter counts, FLOPs
per slice of a forward pass and of a full training step (forward, every loss term, backward;
torch.utils.flop_counter), and the wall time of a training step (+ Adam) at batch B in fp32 and under
bf16 autocast; on CUDA also slices/s. Prints a markdown table.

    python benchmarks/model.py                                   # 256x256, batch 1, CPU, every trainer
    python benchmarks/model.py --trainers DGCFTrainer DGCFTrainer_cnnOnly_L1 --batch 4
    python benchmarks/model.py --device cuda --batch 4 --iterations 20
"""
from __future__ import annotations

import argparse
import contextlib
import time
import warnings

import torch
from torch.utils.flop_counter import FlopCounterMode

from dgcf_auto.errors import DGCFError
from dgcf_auto.losses import CompositeLoss, loss_needs_dinov3
from dgcf_auto.network import build_dinov3, build_network, network_needs_dinov3
from dgcf_auto.plans import NetworkPlans, TrainingPlans, network_plans, training_plans
from dgcf_auto.training.variants import TRAINERS, effective_plans


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def training_step(net, loss_fn, optimizer, source, target, autocast_dtype=None):
    context = (torch.autocast(source.device.type, dtype=autocast_dtype) if autocast_dtype
               else contextlib.nullcontext())
    optimizer.zero_grad(set_to_none=True)
    with context:
        total, _ = loss_fn(net(source).float(), target)
    total.backward()
    optimizer.step()


def time_steps(net, loss_fn, optimizer, source, target, iterations, warmup, autocast_dtype=None) -> float:
    """Mean seconds per training step after `warmup` untimed steps."""
    def sync():
        if source.device.type == "cuda":
            torch.cuda.synchronize()
    for _ in range(warmup):
        training_step(net, loss_fn, optimizer, source, target, autocast_dtype)
    sync()
    start = time.perf_counter()
    for _ in range(iterations):
        training_step(net, loss_fn, optimizer, source, target, autocast_dtype)
    sync()
    return (time.perf_counter() - start) / iterations


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="slice height = width")
    parser.add_argument("--batch", type=int, default=1, help="batch size of the timed training step")
    parser.add_argument("--iterations", type=int, default=2, help="timed training steps per precision")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--trainers", nargs="+", default=list(TRAINERS), choices=list(TRAINERS))
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, size {args.size}x{args.size}, "
          f"batch {args.batch}, {args.iterations} timed steps after {args.warmup} per precision")
    header = ["trainer", "network", "loss", "trainable params", "frozen params", "fwd GFLOP/slice",
              "train-step GFLOP/slice", "fp32 step s", "bf16 step s"]
    if device.type == "cuda":
        header += ["fp32 slices/s", "bf16 slices/s"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    default_plans = {"source_modality": "mr", "network": NetworkPlans().to_dict(),  # MR: the paper's Task 1
                     "training": TrainingPlans().to_dict()}
    for name in args.trainers:
        plans = effective_plans(default_plans, TRAINERS[name], {})
        net_plans, training = network_plans(plans), training_plans(plans)
        torch.manual_seed(0)
        dinov3 = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if network_needs_dinov3(net_plans) or loss_needs_dinov3(training.loss):
                dinov3 = build_dinov3(net_plans.dinov3, random=True).to(device)
            try:
                net = build_network(net_plans, dinov3).to(device).to(memory_format=torch.channels_last)
                loss_fn = CompositeLoss(training.loss, dinov3, training.loss_options).to(device)
            except DGCFError as exc:  # e.g. a loss term whose weight file is not installed here
                print(f"| {name} | skipped: {exc} |")
                continue
        optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=2e-4)
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in net.parameters() if not p.requires_grad)
        frozen += sum(p.numel() for p in loss_fn.parameters()) if dinov3 is None else 0

        one = torch.rand(1, 1, args.size, args.size, device=device) * 2 - 1
        net.eval()
        with torch.no_grad():
            forward_flops = flops(lambda: net(one))
        net.train()
        step_flops = flops(lambda: loss_fn(net(one), one.flip(-1))[0].backward())
        net.zero_grad(set_to_none=True)

        source = (torch.rand(args.batch, 1, args.size, args.size, device=device) * 2 - 1)
        source = source.to(memory_format=torch.channels_last)
        target = torch.rand_like(source) * 2 - 1
        fp32 = time_steps(net, loss_fn, optimizer, source, target, args.iterations, args.warmup)
        bf16 = time_steps(net, loss_fn, optimizer, source, target, args.iterations, args.warmup, torch.bfloat16)
        loss = " + ".join(f"{w:g} {t}" for t, w in loss_fn.weights.items())
        row = [name, net_plans.architecture, loss, f"{trainable / 1e6:.2f} M", f"{frozen / 1e6:.2f} M",
               f"{forward_flops / 1e9:.1f}", f"{step_flops / 1e9:.1f}", f"{fp32:.2f}", f"{bf16:.2f}"]
        if device.type == "cuda":
            row += [f"{args.batch / fp32:.1f}", f"{args.batch / bf16:.1f}"]
        print("| " + " | ".join(row) + " |", flush=True)
        del net, optimizer, loss_fn, dinov3


if __name__ == "__main__":
    main()
