"""How much clipping before resampling changes what the network sees and the sCT, in HU.

    python benchmarks/clip_first.py sources RAW_DATASET PLANS_JSON
    python benchmarks/clip_first.py scts RAW_DATASET BEFORE_FOLDER AFTER_FOLDER [CASE ...]

`sources`: every case's preprocessed source, clipped first (`preprocess_case`) against the earlier order
(resampled onto the same slice grid unclipped, then normalised, which clips), inside the body mask, in source
units (HU for CBCT): mean and largest change, share of voxels changed by more than 0.5.
`scts`: BEFORE/AFTER hold <case>.nii.gz from `dgcf_predict` run with the code before and after the change
(the same model, the same sources); mean and largest |after - before| inside the body mask, the share of
body voxels that changed, and each folder's MAE against the CT inside the mask. Prints markdown tables.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float64)


def sources(raw: Path, plans_file: Path) -> None:
    import json

    from dgcf_auto.dataset.discovery import find_cases
    from dgcf_auto.dataset.validation import load_case
    from dgcf_auto.preprocessing.normalization import apply_source_normalization, denormalize_source
    from dgcf_auto.preprocessing.pipeline import preprocess_case
    from dgcf_auto.preprocessing.slicing import interpolator, slice_grid_reference, to_slice_grid

    plans = json.loads(plans_file.read_text())
    smooth = interpolator(plans["configurations"]["2d"].get("interpolation", "bspline"))
    print("| case | mean abs change in body (source units) | largest abs change | body voxels changed > 0.5 |")
    print("|---|---|---|---|")
    rows = []
    for case in find_cases(raw):
        source, _, mask = load_case(case)
        clipped_first = preprocess_case(source, None, mask, plans, case.name)
        params = clipped_first.properties["source_normalization"]
        body = sitk.Cast(mask != 0, sitk.sitkUInt8)
        body.CopyInformation(source)
        unclipped = to_slice_grid(source, slice_grid_reference(source, body, plans), smooth,
                                  float(sitk.GetArrayViewFromImage(source).min()))
        earlier = apply_source_normalization(sitk.GetArrayFromImage(unclipped), params)
        inside = clipped_first.mask > 0
        change = np.abs(denormalize_source(clipped_first.source, params).astype(np.float64)
                        - denormalize_source(earlier, params))[inside]
        rows.append((change.mean(), change.max(), np.mean(change > 0.5)))
        print(f"| {case.name} | {rows[-1][0]:.3f} | {rows[-1][1]:.1f} | {100 * rows[-1][2]:.2f}% |")
    mean = np.mean(rows, axis=0)
    print(f"| mean | {mean[0]:.3f} | {mean[1]:.1f} | {100 * mean[2]:.2f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    source_mode = modes.add_parser("sources")
    source_mode.add_argument("raw", type=Path)
    source_mode.add_argument("plans", type=Path)
    sct_mode = modes.add_parser("scts")
    sct_mode.add_argument("raw", type=Path)
    sct_mode.add_argument("before", type=Path)
    sct_mode.add_argument("after", type=Path)
    sct_mode.add_argument("cases", nargs="*")
    args = parser.parse_args()
    if args.mode == "sources":
        sources(args.raw, args.plans)
        return
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
