"""Peak memory per voxel of each stage that holds a whole image: what `dgcf_auto.memory` multiplies a
header's voxel count by before anything is decompressed.

    python benchmarks/peak_memory.py [--slices 32 128] [--dtypes int16 float32]

For each stored dtype, stage and volume size, a fresh child process imports everything, then runs the stage
once on a synthetic 256x256xS source (full body mask, on the planned in-plane spacing, so the slice grid is
as large as the input) and reports its peak RSS (VmHWM, reset before the stage through /proc/self/clear_refs,
so that the imports' own peak does not hide it; Linux only) above the RSS it had before the stage. The per-voxel factor is the slope between the two sizes (the stage's fixed cost cancels).
Stages:
  validate       dataset.validation.check_image_file (nibabel reads the voxels, finiteness checked)
  source_checks  dataset.source_checks.source_problems against the plans' source_signature
  predict        read source and mask, preprocess_case, `sct_from_normalised` of the slices (back onto the
                 original grid, int16 HU, background masked), write_image: prediction without the network,
                 which works per batch of slices
Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

STAGES = ("validate", "source_checks", "predict")


def _status_bytes(field: str) -> int:
    """VmRSS / VmHWM (the peak RSS) of this process, from /proc/self/status."""
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def _reset_peak() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM, so the imports' own peak does not hide the stage's."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def measure(stage: str, folder: str, plans_file: str) -> None:
    """Child mode: one stage on `folder`/mr.nii.gz, one JSON line."""
    import gc

    import numpy as np
    import SimpleITK as sitk

    from dgcf_auto.dataset.discovery import read_case_folder
    from dgcf_auto.dataset.source_checks import source_problems
    from dgcf_auto.dataset.validation import check_image_file
    from dgcf_auto.imageio import read_image, write_image
    from dgcf_auto.inference.predictor import sct_from_normalised
    from dgcf_auto.preprocessing.pipeline import preprocess_case

    plans = json.loads(Path(plans_file).read_text())
    case = read_case_folder(Path(folder))
    gc.collect()
    _reset_peak()
    before = _status_bytes("VmRSS")
    if stage == "validate":
        _, problem = check_image_file(case.source, "bench")
        assert problem is None, problem
    elif stage == "source_checks":
        source_problems(case, plans["source_signature"])
    else:
        source, mask = read_image(case.source), read_image(case.mask)
        result = preprocess_case(source, None, mask, plans, "bench")
        background = (sitk.GetArrayFromImage(mask) != 0).astype(np.uint8)
        del source, mask
        sct = sct_from_normalised(result.source, result.properties, plans, background)  # int16 HU
        del result, background
        write_image(sct, Path(folder) / "sct.nii.gz")
    peak = _status_bytes("VmHWM")
    print(json.dumps({"peak_above_start": peak - before, "start": before,
                      "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def _write_case(folder: Path, slices: int, dtype: str, spacing: list[float], seed: int = 0) -> int:
    import numpy as np
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    values = (300 + 200 * rng.standard_normal((slices, 256, 256))).clip(0, 2000).astype(dtype)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing([float(spacing[1]), float(spacing[0]), 2.5])
    mask = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    mask.CopyInformation(image)
    sitk.WriteImage(image, str(folder / "mr.nii.gz"))
    sitk.WriteImage(mask, str(folder / "mask.nii.gz"))
    return int(values.size)


def _plans(tmp: Path) -> Path:
    """Plans of a 2-case example MR dataset with a 256x256 patch (what the synthetic volumes are sized to)."""
    from dgcf_auto.dataset.discovery import find_cases
    from dgcf_auto.dataset.example import make_example_dataset
    from dgcf_auto.planning.fingerprint import extract_fingerprint
    from dgcf_auto.planning.planner import plan_experiment

    make_example_dataset(tmp / "example", "mr2ct", n=2, seed=0)
    fingerprint = extract_fingerprint(find_cases(tmp / "example"), progress=False)
    plans = plan_experiment(fingerprint, "Dataset999_Bench", {"patch_size": [256, 256]})
    path = tmp / "plans.json"
    path.write_text(json.dumps(plans))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, nargs=2, default=[32, 128])
    parser.add_argument("--dtypes", nargs="+", default=["int16", "float32"])
    parser.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        measure(*args._child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        plans_file = _plans(tmp)
        spacing = json.loads(plans_file.read_text())["configurations"]["2d"]["inplane_spacing"]
        print("| stored dtype | stage | peak above start, small (MB) | peak above start, large (MB) | "
              "peak bytes per voxel (slope) |")
        print("|---|---|---|---|---|")
        for dtype in args.dtypes:
            cases = {s: tmp / f"{dtype}_{s}" for s in args.slices}
            voxels = {s: _write_case(folder, s, dtype, spacing) for s, folder in cases.items()}
            for stage in STAGES:
                peaks = {}
                for s, folder in cases.items():
                    out = subprocess.run([sys.executable, __file__, "--_child", stage, str(folder), str(plans_file)],
                                         capture_output=True, text=True, check=True)
                    peaks[s] = json.loads(out.stdout.strip().splitlines()[-1])["peak_above_start"]
                small, large = args.slices
                slope = (peaks[large] - peaks[small]) / (voxels[large] - voxels[small])
                print(f"| {dtype} | {stage} | {peaks[small] / 2**20:.0f} | {peaks[large] / 2**20:.0f} | {slope:.1f} |",
                      flush=True)


if __name__ == "__main__":
    main()
