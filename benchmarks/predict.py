"""Prediction speed and memory: seconds per volume and peak RSS, with and without mirror TTA.

The network is the paper's (DGCN cross fusion, features 64..512, the real ViT-B/16 with random weights, whose
values do not change the cost) on a 256x256 slice grid; the input volumes are synthetic. Each row runs in a
fresh child process so its peak RSS is its own. Prints a markdown table.

    python benchmarks/predict.py                                   # CPU: 256x256x100 and 512x512x200
    python benchmarks/predict.py --precision fp32 auto --tta off   # fp32 vs bf16 (where the CPU has it)
    python benchmarks/predict.py --device cuda --volumes 256x256x100 512x512x100 512x512x200
"""
from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

PLANS = {
    "plans_name": "DGCFPlans", "task": "mr2ct", "source_modality": "mr",
    "ct_normalization": {"clip_low": -1024.0, "clip_high": 2000.0},
    "source_normalization": {"scheme": "percentile", "percentile": 99.0, "clip_max": 1.0},
    "configurations": {"2d": {"slice_axis": "axial", "orientation": "LPS", "inplane_spacing": [1.95, 1.95],
                              "patch_size": [256, 256], "interpolation": "bspline"}},
    "network": {"architecture": "cross_fusion", "features": [64, 128, 256, 512],
                "dinov3": {"model": "vit_base_patch16_dinov3", "layers": [3, 6, 9, 12], "model_kwargs": {}}},
}


def measure(volume: str, device: str, tta: bool, batch_size: int, threads: int, precision: str) -> dict:
    """One row, in this process: build the model, predict one synthetic volume, report time and memory."""
    import resource

    import numpy as np
    import SimpleITK as sitk
    import torch

    from dgcf_auto.atomic import torch_save
    from dgcf_auto.inference.predictor import SCTPredictor
    from dgcf_auto.network import build_dinov3, build_network

    torch.set_num_threads(threads)
    x, y, z = (int(v) for v in volume.split("x"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        network = build_network(PLANS["network"], build_dinov3(PLANS["network"]["dinov3"], random=True))
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "checkpoint_final.pth"
        torch_save({"network_weights": network.state_dict(), "plans": PLANS, "dinov3_source": "random"}, checkpoint)
        del network
        predictor = SCTPredictor([checkpoint], device=device, use_tta=tta, batch_size=batch_size,
                                 precision=precision)
    rng = np.random.default_rng(0)
    source = sitk.GetImageFromArray(rng.uniform(0, 500, (z, y, x)).astype(np.float32))
    source.SetSpacing((480.0 / x, 480.0 / y, 2.5))  # a 48 cm field of view, like SynthRAD pelvis
    mask = sitk.GetImageFromArray(np.ones((z, y, x), np.uint8))
    mask.CopyInformation(source)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    predictor.predict_volume(source, mask, "bench")
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    row = {"volume": volume, "device": device, "precision": "bf16" if predictor.autocast_dtype else "fp32",
           "tta": tta, "seconds": round(seconds, 2),
           "slices_per_s": round(z * predictor.passes_per_slice / seconds, 2),
           "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    if device == "cuda":
        row["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volumes", nargs="+", default=["256x256x100", "512x512x200"], help="XxYxZ voxels")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tta", choices=["both", "on", "off"], default="both")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", nargs="+", default=["auto"], choices=["auto", "fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one measurement in a fresh process
        spec = json.loads(args.child)
        print(json.dumps(measure(**spec)))
        return
    tta_modes = {"both": [False, True], "on": [True], "off": [False]}[args.tta]
    rows = []
    for volume, precision, tta in itertools.product(args.volumes, args.precision, tta_modes):
        spec = {"volume": volume, "device": args.device, "tta": tta, "batch_size": args.batch_size,
                "threads": args.threads, "precision": precision}
        done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                              text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"  measured {rows[-1]}", file=sys.stderr)
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")


if __name__ == "__main__":
    main()
