"""Evaluation speed and memory per case: seconds and peak RSS, the numpy reference (before) vs the fast path (after).

Each row runs in a fresh child process (so its peak RSS is its own) on a synthetic pelvis-like pair: an
elliptic body (about 45 % of each slice) with soft tissue and bone, air around it, sCT = CT + smooth error +
noise, the body as mask. "before" = `metrics.evaluate_pair` (the numpy transcription of the official code that
dgcf_evaluate used until now: MAE, PSNR, SSIM, MS-SSIM, per-tissue MAE); "after" = the same metrics through the
fast path (profile synthrad2023 + fast MS-SSIM); the profile rows are what `dgcf_evaluate --profile P` computes.
Prints a markdown table.

    python benchmarks/evaluate.py                                  # 256x256x100 and 512x512x100, CPU
    python benchmarks/evaluate.py --rows before after               # the comparison only
    python benchmarks/evaluate.py --device cuda                    # the torch path on a GPU
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROWS = ("before", "after", "synthrad2023", "synthrad2025", "dgcf-paper")


def synthetic_case(x: int, y: int, z: int):
    """float32 CT, sCT and a bool body mask, built slice by slice so that building them costs no extra memory."""
    import numpy as np

    rng = np.random.default_rng(0)
    yy, xx = np.ogrid[:y, :x]
    body = ((yy - y / 2) / (0.38 * y)) ** 2 + ((xx - x / 2) / (0.45 * x)) ** 2 < 1
    bone = body & ((((yy - 0.6 * y) / (0.08 * y)) ** 2 + ((np.abs(xx - x / 2) - 0.2 * x) / (0.05 * x)) ** 2) < 1)
    ct, sct = np.empty((z, y, x), np.float32), np.empty((z, y, x), np.float32)
    for k in range(z):
        ct[k] = np.where(body, 40.0 + 60.0 * np.sin(xx / 9.0) * np.cos(yy / 11.0) + 0.5 * k, -1000.0)
        ct[k][bone] = 900.0 + 400.0 * np.cos(k / 7.0)
        sct[k] = ct[k] + 40.0 * np.sin(xx / 5.0 + k / 3.0) + rng.normal(0.0, 25.0, (y, x))
    return ct, sct, np.broadcast_to(body, (z, y, x)).copy()


def measure(row: str, volume: str, device: str | None) -> dict:
    import resource

    import numpy as np

    from dgcf_auto.evaluation import metrics, ssim_fast
    from dgcf_auto.evaluation.profiles import get_profile

    x, y, z = (int(v) for v in volume.split("x"))
    ct, sct, mask = synthetic_case(x, y, z)
    before_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start, cpu_start = time.perf_counter(), time.process_time()
    if row == "before":
        values = metrics.evaluate_pair(ct, sct, mask)
    elif row == "after":
        values = get_profile("synthrad2023").compute(ct, sct, mask, device)
        values["ms_ssim"] = ssim_fast.ms_ssim(ct, sct, mask, device=device)
    else:
        values = get_profile(row).compute(ct, sct, mask, device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {"row": row, "volume": volume, "seconds": seconds, "cpu_seconds": cpu_seconds, "inputs_rss_mb": before_rss,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "ms_ssim": values.get("ms_ssim"), "ssim": values.get("ssim"),
            "metrics": len([v for v in values.values() if v is not None and np.isfinite(v)])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volumes", nargs="+", default=["256x256x100", "512x512x100"], help="XxYxZ voxels")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--threads", type=int, default=1, help="threads of the child process (OpenMP); the numpy reference uses one, the fast CPU path one "
                        "per case (cases run in parallel with dgcf_evaluate -np)")
    parser.add_argument("--device", default=None, help="torch device of the fast path (default: cuda if available)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        row, volume = args.child.split(":")
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(measure(row, volume, args.device)))
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    print(f"threads {args.threads}, device {args.device or 'auto'}, load average {os.getloadavg()[0]:.1f}")
    print("| volume (x*y*z) | row | metrics | s/case (wall) | CPU s/case | peak RSS (MB) | RSS before the metrics (MB) "
          "| SSIM | MS-SSIM |")
    print("|---|---|---|---|---|---|---|---|---|")
    for volume in args.volumes:
        for row in args.rows:
            command = [sys.executable, __file__, "--child", f"{row}:{volume}", "--threads", str(args.threads)]
            if args.device:
                command += ["--device", args.device]
            out = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            fmt = lambda v: "-" if v is None else f"{v:.7f}"  # noqa: E731
            print(f"| {volume} | {row} | {r['metrics']} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | "
                  f"{r['peak_rss_mb']:.0f} | "
                  f"{r['inputs_rss_mb']:.0f} | {fmt(r['ssim'])} | {fmt(r['ms_ssim'])} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
