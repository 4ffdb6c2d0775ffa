"""Images for the evaluation tests: a deterministic CT/sCT/mask pair, a writer, and a threshold segmenter standing
in for TotalSegmentator (the `folders` fixture in conftest.py writes a ref/pred pair of folders from them)."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

SPACING = (0.9, 1.1, 2.5)
ORIGIN = (10.0, -20.0, 5.0)
FLIP_Y = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def smooth_pair():
    """Deterministic CT/sCT/mask (12 x 40 x 40) with values beyond the HU range; no RNG, so pins stay valid."""
    z, y, x = np.meshgrid(np.arange(12), np.arange(40), np.arange(40), indexing="ij")
    body = (y - 20) ** 2 + (x - 20) ** 2 < 17 ** 2
    ct = np.where(body, 40.0 + 300.0 * np.sin(x / 3.0) * np.cos(y / 4.0) + 20.0 * z, -1000.0)
    ct[2:10, 15:20, 15:25] = 3400.0
    sct = ct + 90.0 * np.cos(x / 2.0 + z) - 30.0 * np.sin(y / 5.0)
    mask = (y - 20) ** 2 + (x - 20) ** 2 < 18 ** 2
    return ct.astype(np.float32), sct.astype(np.float32), mask.astype(np.uint8)


def write(array, path, direction=None, spacing=SPACING, dtype=np.int16):
    image = sitk.GetImageFromArray(np.asarray(array).astype(dtype))
    image.SetSpacing(spacing)
    image.SetOrigin(ORIGIN)
    if direction:
        image.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def fake_segmenter(image):
    """Thresholds -> TotalSegmentator 'total' ids: > 500 HU sacrum, -50..50 urinary bladder, 200..500 liver."""
    a = sitk.GetArrayFromImage(image)
    labels = np.zeros(a.shape, np.uint8)
    labels[a > 500] = 25
    labels[(a > -50) & (a < 50)] = 21
    labels[(a >= 200) & (a <= 500)] = 5  # liver: not pelvic, never scored
    return labels
