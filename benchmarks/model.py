"""Cost of each generator variant with the real ViT-B/16 (random weights: cost does not depend on them).

Per variant: trainable and frozen parameter counts, FLOPs per slice of a forward pass and of a full
L1 + MLDP training step (forward, loss with both DINOv3 passes, backward; torch.utils.flop_counter), and
the wall time of a training step (+ Adam) at batch B on the chosen device; on CUDA also bf16 autocast
vs fp32 and slices/s. Prints a markdown table.

    python benchmarks/model.py                       # 256x256, batch 4, CPU, all four variants
    python benchmarks/model.py --device cuda --iterations 20
"""
from __future__ import annotations

import argparse
import contextlib
import time
import warnings

import torch
from torch.utils.flop_counter import FlopCounterMode

from dgcf_auto.losses import SynthesisLoss
from dgcf_auto.network import build_dinov3, build_network

VARIANTS = ["cross_fusion", "concat", "cnn_only", "vit_only"]


def count_params(net, dinov3) -> tuple[int, int]:
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in dinov3.parameters())  # the loss needs the ViT in every variant
    return trainable, frozen


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def training_step(net, loss_fn, optimizer, source, target, autocast_dtype=None):
    context = (torch.autocast(source.device.type, dtype=autocast_dtype) if autocast_dtype
               else contextlib.nullcontext())
    optimizer.zero_grad(set_to_none=True)
    with context:
        total, _ = loss_fn(net(source), target)
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
    parser.add_argument("--size", type=int, default=256, help="slice height = width (multiple of 16)")
    parser.add_argument("--batch", type=int, default=4, help="batch size of the timed training step")
    parser.add_argument("--iterations", type=int, default=2, help="timed training steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--features", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dinov3 = build_dinov3({"model": "vit_base_patch16_dinov3", "layers": [3, 6, 9, 12]}, random=True)
    dinov3.to(device)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, size {args.size}x{args.size}, "
          f"batch {args.batch}, features {args.features}, {args.iterations} timed steps after {args.warmup}")

    header = ["variant", "trainable params", "frozen params (ViT)", "fwd GFLOP/slice",
              "train-step GFLOP/slice", f"{device.type} fp32 step s (B={args.batch})"]
    if device.type == "cuda":
        header += ["bf16 step s", "fp32 slices/s", "bf16 slices/s"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for variant in args.variants:
        net = build_network({"architecture": variant, "features": args.features}, dinov3).to(device)
        net = net.to(memory_format=torch.channels_last)
        loss_fn = SynthesisLoss(dinov3, l1_weight=1.0, mldp_weight=1.0, layers=(3, 6, 9, 12))
        optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=2e-4)
        trainable, frozen = count_params(net, dinov3)

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
        row = [variant, f"{trainable / 1e6:.2f} M", f"{frozen / 1e6:.2f} M", f"{forward_flops / 1e9:.1f}",
               f"{step_flops / 1e9:.1f}", f"{fp32:.2f}"]
        if device.type == "cuda":
            bf16 = time_steps(net, loss_fn, optimizer, source, target, args.iterations, args.warmup,
                              autocast_dtype=torch.bfloat16)
            row += [f"{bf16:.3f}", f"{args.batch / fp32:.1f}", f"{args.batch / bf16:.1f}"]
        print("| " + " | ".join(row) + " |", flush=True)
        del net, optimizer


if __name__ == "__main__":
    main()
