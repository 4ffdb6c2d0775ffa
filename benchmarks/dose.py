"""Dose evaluation speed and memory per case: seconds and peak RSS of `dgcf_evaluate --dose` for one modality.

Each row runs in a fresh child process (its peak RSS is its own) on the example pelvis phantom resampled onto
a 512 x 512 x 100 grid over the same extent (linear for HU, nearest for the structures), with
sCT = CT + 80 HU inside the body. A row covers what one case costs: planning on the CT (influence matrix and
optimisation; no cache), the influence matrix on the sCT, the metrics (gamma included) and the files and PNGs.
Prints a markdown table.

    python benchmarks/dose.py                          # photon and proton, 3 mm dose grid
    python benchmarks/dose.py --modalities proton --dose_grid 5
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZE = (512, 512, 100)  # x, y, z


def phantom(folder: Path) -> tuple[Path, Path]:
    """<folder>/ref/BENCH/{ct,structures}.nii.gz (+ legend) and <folder>/pred/BENCH.nii.gz on a SIZE grid."""
    import numpy as np
    import SimpleITK as sitk

    from dgcf_auto.atomic import write_json
    from dgcf_auto.dataset import example as ex

    images = ex.make_example_case(np.random.default_rng([0, 0]), "mr2ct", 0, size_scale=4.0)
    ct = images["ct"]
    extent = np.array(ct.GetSize()) * np.array(ct.GetSpacing())
    grid = sitk.Image(SIZE, sitk.sitkUInt8)
    grid.SetSpacing(tuple(float(e / n) for e, n in zip(extent, SIZE)))
    grid.SetOrigin(ct.GetOrigin())
    grid.SetDirection(ct.GetDirection())
    ct = sitk.Resample(ct, grid, sitk.Transform(), sitk.sitkLinear, -1000.0, sitk.sitkInt16)
    labels = sitk.Resample(images["structures"], grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    case = folder / "ref" / "BENCH"
    case.mkdir(parents=True)
    sitk.WriteImage(ct, str(case / "ct.nii.gz"))
    sitk.WriteImage(labels, str(case / "structures.nii.gz"))
    write_json(ex.STRUCTURES, case / "structures.json")
    hu = sitk.GetArrayFromImage(ct).astype(np.float32)
    hu[hu > -400] += 80.0
    sct = sitk.GetImageFromArray(hu)
    sct.CopyInformation(ct)
    (folder / "pred").mkdir()
    sitk.WriteImage(sct, str(folder / "pred" / "BENCH.nii.gz"))
    return case / "ct.nii.gz", folder / "pred" / "BENCH.nii.gz"


def measure(folder: str, modality: str, grid_mm: float, beams: int) -> dict:
    import resource

    from dgcf_auto.evaluation.dose.plan import DoseSettings
    from dgcf_auto.evaluation.dose.run import DoseJob, evaluate_case

    root = Path(folder)
    settings = DoseSettings(modalities=(modality,), dose_grid_mm=grid_mm, photon_beams=beams, rx_gy=2.0)
    job = DoseJob("BENCH", root / "ref" / "BENCH" / "ct.nii.gz", root / "pred" / "BENCH.nii.gz", settings,
                  root / f"out_{modality}", None, None, progress=False)
    start = time.perf_counter()
    result = evaluate_case(job)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"modality": modality, "seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024,
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "metrics": result.get("metrics"), "not_evaluated": result.get("not_evaluated")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--modalities", nargs="+", default=["photon", "proton"], choices=("photon", "proton"))
    parser.add_argument("--dose_grid", type=float, default=3.0, help="dose grid in mm (default 3)")
    parser.add_argument("--photon_beams", type=int, default=5)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.dose_grid, args.photon_beams)))
        return
    with tempfile.TemporaryDirectory(prefix="dgcf_dose_bench_") as tmp:
        phantom(Path(tmp))
        print("| modality | CT voxels | dose grid | seconds (wall) | CPU s (process) | peak RSS (MB) | dose MAE / Rx "
              "| DVH metric | gamma (%) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for modality in args.modalities:
            out = subprocess.run([sys.executable, __file__, "--child", tmp, modality, "--dose_grid",
                                  str(args.dose_grid), "--photon_beams", str(args.photon_beams)],
                                 capture_output=True, text=True, env={**os.environ}, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            m = row["metrics"] or {}
            print(f"| {modality} | {'x'.join(map(str, SIZE))} | {args.dose_grid:g} mm | {row['seconds']:.1f} | "
                  f"{row['cpu_seconds']:.1f} | {row['peak_rss_mb']:.0f} | {m.get(f'dose_mae_target_{modality}', float('nan')):.4f} | "
                  f"{m.get(f'dvh_{modality}', float('nan')):.4f} | {m.get(f'gamma_{modality}', float('nan')):.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
