"""Cost of verified writes: `imageio.write_image` (temp file, fsync, full read-back, rename) against a bare
`sitk.WriteImage`, for one CT-sized int16 volume per format.

    python benchmarks/write.py [--size 512 512 100] [--repeats 3]

Prints a markdown table (best of the repeats, seconds). The volume is random HU with an air band, written
into a temporary folder under /tmp.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import SimpleITK as sitk

from dgcf_auto.imageio import write_image


def best_time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=3, default=[512, 512, 100], metavar=("X", "Y", "Z"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    x, y, z = args.size
    array = np.clip(np.random.default_rng(0).normal(0, 300, (z, y, x)), -1024, 3071).astype(np.int16)
    array[:, : y // 5] = -1000
    image = sitk.GetImageFromArray(array)
    folder = tempfile.mkdtemp(prefix="dgcf_write_bench_")
    print(f"| format | sitk.WriteImage (s) | verified write_image (s) |  ({x}x{y}x{z} int16)")
    print("|---|---|---|")
    for suffix in (".nii.gz", ".nii", ".mha"):
        plain = best_time(lambda: sitk.WriteImage(image, f"{folder}/plain{suffix}", True), args.repeats)
        verified = best_time(lambda: write_image(image, f"{folder}/verified{suffix}"), args.repeats)
        print(f"| {suffix} | {plain:.2f} | {verified:.2f} |")


if __name__ == "__main__":
    main()
