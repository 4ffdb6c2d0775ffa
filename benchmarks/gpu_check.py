"""GPU check for the three configurations, ready for a lent GPU: within --budget_s (default 480 s = 8 min)

1. training throughput, slices/s (2d, 2.5d) and patches/s (3d_fullres), for fp32 and bf16 autocast, torch.compile
   off and on (each: warm-up steps, then timed steps, synchronised);
2. inference time of a 512 x 512 x 100 volume in each configuration: the network part on the preprocessed
   array (2d: 100 slices of the planned slice size; 2.5d: 100 slabs of 5; 3d_fullres: the sliding window over
   the volume at the planned patch, step 0.5, Gaussian weighting), bf16, no TTA.

    python benchmarks/gpu_check.py                 # on the GPU machine, prints a table, writes --output JSON
    python benchmarks/gpu_check.py --dry_run       # tiny sizes on CPU: checks the script runs (no figures)

Networks: 2d DGCN (cross_fusion) with a randomly initialised ViT-B/16 (weights do not change the time), loss
L1 + MLDP; 2.5d the same DGCN with 5 input channels (or, if this build's DGCN does not take slabs, the CNN-only
U-Net, named in the table), L1; 3d_fullres nnU-Net's plain 3D U-Net and ResEnc L at the patch and batch the
3D planner gives for a 512 x 512 x 100 CT at 1 x 1 x 3 mm, masked L1, SGD. Runs that would pass the budget are
listed as skipped, never silently dropped.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import numpy as np
import torch

from dgcf_auto.losses import CompositeLoss
from dgcf_auto.network import build_dinov3, build_network
from dgcf_auto.network.execution import autocast
from dgcf_auto.planning import plan_3d
from dgcf_auto.plans import DinoV3Plans, NetworkPlans

SLAB = 5
TINY_VIT = {"layers": [1, 2, 3, 4], "model_kwargs": {"embed_dim": 48, "depth": 4, "num_heads": 2}}


@dataclass
class Setup:
    configuration: str
    network_name: str
    build: callable        # () -> network
    loss: dict
    batch: int
    input_shape: tuple     # one sample, channels first
    unit: str


def _fingerprint_512(slices: int = 100, body=(450, 400)) -> dict:
    """A 512 x 512 x slices CT at 1 x 1 x 3 mm, body filling 450 x 400 mm, 8 such cases."""
    case = {"lps": {"spacing": [1.0, 1.0, 3.0]}, "mask_bbox_voxels_lps": [*body, slices]}
    return {"cases": [case] * 8}


def setups(dry_run: bool) -> list[Setup]:
    device_vit = DinoV3Plans(**TINY_VIT) if dry_run else DinoV3Plans()
    features = [4, 8, 16, 32] if dry_run else [64, 128, 256, 512]
    size = 32 if dry_run else 256
    vit = {}

    def dgcn(in_channels: int):
        def build():
            if "vit" not in vit:
                vit["vit"] = build_dinov3(device_vit, random=True)
            plans = NetworkPlans(architecture="cross_fusion", features=features, in_channels=in_channels,
                                 dinov3=device_vit)
            return build_network(plans, vit["vit"])
        return build

    result = [Setup("2d", "cross_fusion", dgcn(1), {"l1": 1.0, "mldp": 1.0}, 4, (1, size, size), "slices/s")]
    result[0].loss_options = {"mldp": {"layers": list(device_vit.layers), "reduction": "sum"}}
    slab_name, slab_build = "cross_fusion", dgcn(SLAB)
    try:
        probe = slab_build()
        with torch.no_grad():
            probe(torch.zeros(1, SLAB, size, size))
    except Exception:  # this build's DGCN does not take slabs: the CNN-only U-Net stands in, and says so
        slab_name = "cnn_only"
        slab_build = lambda: build_network(NetworkPlans(architecture="cnn_only", features=features,  # noqa: E731
                                                        in_channels=SLAB), None)
    result.append(Setup("2.5d", slab_name, slab_build, {"l1": 1.0}, 4, (SLAB, size, size), "slices/s"))
    fingerprint = _fingerprint_512(12, (48, 40)) if dry_run else _fingerprint_512(100)
    cfg = plan_3d.plan_3d_fullres(fingerprint, "LPS", "axial", "GPUCheck", {"memory_budget_gb": 0.5} if dry_run else {})
    for name in ("plain_unet_3d", "resenc_unet_3d_l"):
        preset = cfg["extra"]["presets"][name]
        feats = [min(f, 8) for f in preset["features"]] if dry_run else preset["features"]
        plans = NetworkPlans(architecture=name, features=feats, options=preset["options"])
        result.append(Setup("3d_fullres", name, lambda p=plans: build_network(p, None), {"masked_l1": 1.0},
                            preset["batch_size"], (1, *preset["patch_size"]), "patches/s"))
    return result


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_rate(setup: Setup, device, precision: str, compile: bool, warmup: int, steps: int) -> float:
    torch.manual_seed(0)
    network = setup.build().to(device).train()
    dinov3 = getattr(network, "dinov3", None)
    loss = CompositeLoss(setup.loss, dinov3, getattr(setup, "loss_options", None)).to(device)
    optimizer = torch.optim.SGD([p for p in network.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    model = torch.compile(network) if compile else network
    dtype = torch.bfloat16 if precision == "bf16" else None
    x = torch.rand(setup.batch, *setup.input_shape, device=device) * 2 - 1
    y = torch.rand(setup.batch, 1, *setup.input_shape[1:], device=device) * 2 - 1
    mask = (torch.rand_like(y) > 0.3).to(torch.uint8)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            total, _ = (loss(model(x).float(), y, mask=mask) if "masked_l1" in setup.loss
                        else loss(model(x).float(), y))
        total.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return setup.batch * steps / (time.perf_counter() - start)


@torch.inference_mode()
def volume_seconds(setup: Setup, device, volume_shape, dry_run: bool) -> float:
    """The network part of predicting one volume (see the module docstring), bf16 on a GPU."""
    from dgcf_auto.inference.sliding_window import predict_sliding_window
    from dgcf_auto.network.execution import predict_slice_stack

    torch.manual_seed(0)
    network = setup.build().to(device).eval()
    dtype = torch.bfloat16 if device.type == "cuda" else None
    _sync(device)
    start = time.perf_counter()
    if setup.configuration == "3d_fullres":
        volume = np.random.default_rng(0).uniform(-1, 1, volume_shape).astype(np.float32)
        predict_sliding_window([network], volume, setup.input_shape[1:], device, dtype=dtype)
    else:
        slices = np.random.default_rng(0).uniform(-1, 1, (volume_shape[0], *setup.input_shape)).astype(np.float32)
        if setup.input_shape[0] == 1:
            predict_slice_stack([network], slices[:, 0], device, 8 if dry_run else 32, dtype)
        else:  # slabs: k slices as channels, batches of 32
            for first in range(0, len(slices), 32):
                with autocast(device, dtype):
                    network(torch.from_numpy(slices[first:first + 32]).to(device)).float().cpu()
    _sync(device)
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry_run", action="store_true", help="tiny sizes on CPU: check the script, no figures")
    parser.add_argument("--budget_s", type=float, default=480.0)
    parser.add_argument("--output", default="gpu_check.json")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    warmup, steps = (1, 2) if args.dry_run else (3, 10)
    combos = [("fp32", False), ("bf16", False)] if args.dry_run else \
        [("fp32", False), ("bf16", False), ("fp32", True), ("bf16", True)]  # compile last: the slowest to start
    volume_shape = (12, 48, 48) if args.dry_run else (100, 512, 512)
    start, rows = time.perf_counter(), []
    all_setups = setups(args.dry_run)
    for precision, compiled in combos:
        for setup in all_setups:
            row = {"configuration": setup.configuration, "network": setup.network_name, "precision": precision,
                   "compile": compiled, "batch": setup.batch, "input": list(setup.input_shape), "unit": setup.unit}
            if time.perf_counter() - start > args.budget_s:
                row["skipped"] = "time budget"
            else:
                try:
                    row["rate"] = train_rate(setup, device, precision, compiled, warmup, steps)
                except Exception as exc:  # e.g. out of memory, or no compiler for torch.compile: say so
                    row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
            rows.append(row)
    inference = []
    for setup in all_setups:
        row = {"configuration": setup.configuration, "network": setup.network_name, "volume": list(volume_shape)}
        if time.perf_counter() - start > args.budget_s:
            row["skipped"] = "time budget"
        else:
            try:
                row["seconds"] = volume_seconds(setup, device, volume_shape, args.dry_run)
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        inference.append(row)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (dry run)" if args.dry_run else "cpu"
    print(f"device {name}, torch {torch.__version__}, {time.perf_counter() - start:.0f} s")
    print("| configuration | network | batch x input | precision | compile | training rate |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        rate = (f"{r['rate']:.1f} {r['unit']}" if "rate" in r else r.get("skipped") or r.get("error"))
        print(f"| {r['configuration']} | {r['network']} | {r['batch']} x {tuple(r['input'])} | {r['precision']} | "
              f"{'on' if r['compile'] else 'off'} | {rate} |")
    print(f"| configuration | network | {' x '.join(map(str, volume_shape))} volume, network part |")
    print("|---|---|---|")
    for r in inference:
        value = f"{r['seconds']:.2f} s" if "seconds" in r else r.get("skipped") or r.get("error")
        print(f"| {r['configuration']} | {r['network']} | {value} |")
    with open(args.output, "w") as f:
        json.dump({"device": name, "torch": torch.__version__, "training": rows, "inference": inference,
                   "dry_run": args.dry_run}, f, indent=1)


if __name__ == "__main__":
    main()
