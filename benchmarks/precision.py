"""Inference precision: fp32 vs bf16 (and fp16 on a GPU) speed and HU difference per network.

Each network at paper size (features 64..512; the real ViT-B/16 architecture with random weights, whose
values do not change the cost) predicts the same random slices through `network.execution.predict_slice_stack`
(the predictor's own path) in each precision. The HU difference is |reduced - fp32| times the CT window's
half width (SynthRAD's [-1024, 2000] HU: 1512 HU per normalised unit), mean and p99 over every voxel. With
random weights the difference only shows how far the arithmetic alone moves an output; a trained model's
own figure is what `precision_check.json` records at the end of its training on a GPU. Prints a markdown table.

    python benchmarks/precision.py                       # CPU, 4 slices of 256 x 256
    python benchmarks/precision.py --device cuda --slices 32
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

HU_PER_UNIT = (2000.0 + 1024.0) / 2.0
DINOV3 = {"model": "vit_base_patch16_dinov3", "layers": [3, 6, 9, 12], "model_kwargs": {}}
NETWORKS = {
    "DGCN (cross fusion)": {"architecture": "cross_fusion", "features": [64, 128, 256, 512], "dinov3": DINOV3},
    "release DGCN": {"architecture": "dgcn_release", "features": [64, 128, 256, 512],
                     "dinov3": {**DINOV3, "input_mode": "release"}},
    "UNet (resunet)": {"architecture": "resunet", "features": [64, 128, 256, 512]},
}


def run(name: str, plans: dict, slices: np.ndarray, device: str, precisions, repeats: int) -> list[dict]:
    import torch

    from dgcf_auto.inference.precision import REDUCED
    from dgcf_auto.network import build_dinov3, build_network, network_needs_dinov3
    from dgcf_auto.plans import network_plans

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        typed = network_plans({"network": plans})
        dinov3 = build_dinov3(plans["dinov3"], random=True) if network_needs_dinov3(typed) else None
        network = build_network(typed, dinov3).to(device).eval().to(memory_format=torch.channels_last)
    from dgcf_auto.network.execution import predict_slice_stack

    rows, reference = [], None
    for precision in ("fp32", *precisions):
        dtype = REDUCED.get(precision)
        predict_slice_stack([network], slices[:1], torch.device(device), len(slices), dtype)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            out = predict_slice_stack([network], slices, torch.device(device), len(slices), dtype)[0]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / repeats / len(slices)
        if reference is None:
            reference = out
        diff = np.abs(out.astype(np.float64) - reference) * HU_PER_UNIT
        rows.append({"network": name, "precision": precision, "ms_per_slice": 1000 * seconds,
                     "mean_hu": float(diff.mean()), "p99_hu": float(np.percentile(diff, 99)),
                     "max_hu": float(diff.max())})
    return rows


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--slices", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    args = parser.parse_args()
    precisions = ("bf16", "fp16") if args.device.startswith("cuda") else ("bf16",)
    rng = np.random.default_rng(0)
    slices = rng.uniform(-1, 1, (args.slices, args.size, args.size)).astype(np.float32)
    device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else \
        f"cpu, {torch.get_num_threads()} threads, native bf16: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}"
    print(f"device: {device_name}; {args.slices} slices of {args.size} x {args.size}, random weights\n")
    print("| network | precision | ms / slice | mean abs diff (HU) | p99 (HU) | max (HU) |")
    print("|---|---|---|---|---|---|")
    for name in args.networks:
        for row in run(name, NETWORKS[name], slices, args.device, precisions, args.repeats):
            print(f"| {row['network']} | {row['precision']} | {row['ms_per_slice']:.1f} | {row['mean_hu']:.2f} | "
                  f"{row['p99_hu']:.2f} | {row['max_hu']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
