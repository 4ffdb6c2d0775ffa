"""Preprocessing speed and peak memory for 5 and 20 example cases (peak RSS must not grow with N).

    python benchmarks/preprocess.py [--cases 5 20] [-np 2] [--size-scale 1.0] [--task mr2ct]

Each N runs `plan_and_preprocess` (validation, fingerprint, plans, splits, preprocessing) in a fresh
child process on a fresh example dataset, so the peak RSS figures belong to that N alone:
main = the child's own peak (resource.getrusage RUSAGE_SELF), workers = the largest worker's peak
(RUSAGE_CHILDREN: the maximum over the finished worker processes, not a sum). Dataset generation is not
timed. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measure(dataset_root: str, num_processes: int) -> None:
    """Child mode: run the whole command once and print one JSON line of figures."""
    from dgcf_auto.preprocessing.run import plan_and_preprocess

    start = time.perf_counter()
    summary = plan_and_preprocess(999, num_processes=num_processes, progress=False)
    total = time.perf_counter() - start
    done = summary["preprocessed"]["done"]
    print(json.dumps({
        "total_s": total, "cases": len(done),
        "preprocess_s_per_case": sum(d["seconds"] for d in done) / len(done),
        "slices": sum(d["shape"][0] for d in done), "patch": summary["plans"]["configurations"]["2d"]["patch_size"],
        "rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_workers_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


def run_one(n: int, num_processes: int, size_scale: float, task: str) -> dict:
    from dgcf_auto.dataset.example import make_example_dataset

    with tempfile.TemporaryDirectory(prefix="dgcf_bench_") as tmp:
        env = dict(os.environ, DGCF_raw=f"{tmp}/raw", DGCF_preprocessed=f"{tmp}/pre", DGCF_results=f"{tmp}/res")
        make_example_dataset(Path(tmp) / "raw" / "Dataset999_Bench", task, n=n, seed=0, size_scale=size_scale)
        out = subprocess.run([sys.executable, __file__, "--measure", tmp, "-np", str(num_processes)],
                             env=env, capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, nargs="+", default=[5, 20])
    parser.add_argument("-np", "--num-processes", type=int, default=2)
    parser.add_argument("--size-scale", type=float, default=1.0)
    parser.add_argument("--task", default="mr2ct", choices=("mr2ct", "cbct2ct"))
    parser.add_argument("--measure", metavar="TMP", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure, args.num_processes)
        return
    print(f"task {args.task}, size_scale {args.size_scale}, -np {args.num_processes}\n")
    print("| cases | slice grid | slices | total s | total s/case | preprocess s/case (worker) "
          "| peak RSS main (MB) | peak RSS worker (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.cases:
        r = run_one(n, args.num_processes, args.size_scale, args.task)
        print(f"| {n} | {r['patch'][0]}x{r['patch'][1]} | {r['slices']} | {r['total_s']:.1f} | "
              f"{r['total_s'] / n:.2f} | {r['preprocess_s_per_case']:.2f} | {r['rss_main_mb']:.0f} | "
              f"{r['rss_workers_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
