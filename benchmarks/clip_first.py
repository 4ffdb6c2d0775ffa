"""How much clipping before resampling changes an sCT, in HU: two prediction folders of the same cases.

    python benchmarks/clip_first.py RAW_DATASET BEFORE_FOLDER AFTER_FOLDER [CASE ...]

RAW_DATASET holds the cases (<case>/ct.nii.gz, mask.nii.gz); BEFORE/AFTER hold <case>.nii.gz from
`dgcf_predict` run with the code before and after the change (the same model, the same sources). Prints a
markdown table per case: mean and largest |after - before| inside the body mask, the share of body voxels
that changed, and each folder's MAE against the CT inside the mask.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("cases", nargs="*")
    args = parser.parse_args()
    cases = args.cases or sorted(p.name[: -len(".nii.gz")] for p in args.after.glob("*.nii.gz"))
    print("| case | mean abs change in body (HU) | largest abs change (HU) | body voxels changed | "
          "MAE before (HU) | MAE after (HU) |")
    print("|---|---|---|---|---|---|")
    rows = []
    for case in cases:
        body = _array(args.raw / case / "mask.nii.gz") > 0
        ct = _array(args.raw / case / "ct.nii.gz")[body]
        before, after = _array(args.before / f"{case}.nii.gz")[body], _array(args.after / f"{case}.nii.gz")[body]
        change = np.abs(after - before)
        row = (change.mean(), change.max(), np.mean(change > 0), np.abs(before - ct).mean(), np.abs(after - ct).mean())
        rows.append(row)
        print(f"| {case} | {row[0]:.3f} | {row[1]:.0f} | {100 * row[2]:.2f}% | {row[3]:.2f} | {row[4]:.2f} |")
    mean = np.mean(rows, axis=0)
    print(f"| mean | {mean[0]:.3f} | {mean[1]:.0f} | {100 * mean[2]:.2f}% | {mean[3]:.2f} | {mean[4]:.2f} |")


if __name__ == "__main__":
    main()
