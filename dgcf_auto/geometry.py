"""Geometry of a case shared by planning (the fingerprint's body extents) and preprocessing (the slice grid):
the canonical orientation frame of an image and a mask's bounding box in it. Pure SimpleITK metadata;
no voxel is resampled here.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

# Slice axis name -> orientation code whose third axis is the slice axis (rows top->bottom = A->P or S->I).
ORIENTATIONS = {"axial": "LPS", "coronal": "LIP", "sagittal": "PIL"}
# Physical unit vectors (LPS world) of the orientation letters.
_LETTER = {"L": (1, 0, 0), "R": (-1, 0, 0), "P": (0, 1, 0), "A": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}


def canonical_frame(image: sitk.Image, orientation: str = "LPS") -> dict:
    """Geometry of `sitk.DICOMOrient(image, orientation)` without touching voxels.

    Each canonical axis takes the image axis best aligned with its letter (a permutation plus flips), so
    voxel centres stay where they are. Returns direction (3x3, columns = axes), origin, spacing, size, and
    `axes`/`flips`: canonical axis k is image axis axes[k], reversed when flips[k].
    """
    d = np.array(image.GetDirection(), float).reshape(3, 3)
    size, spacing = np.array(image.GetSize()), np.array(image.GetSpacing(), float)
    targets = np.array([_LETTER[c] for c in orientation.upper()], float)
    alignment = targets @ d  # [k, j]: canonical axis k vs image axis j
    axes, used = [-1, -1, -1], set()
    # Greedy on the strongest alignments first, so an oblique image still gets a permutation.
    for flat in np.argsort(-np.abs(alignment), axis=None):
        k, j = divmod(int(flat), 3)
        if axes[k] < 0 and j not in used:
            axes[k] = j
            used.add(j)
    flips = [bool(alignment[k, axes[k]] < 0) for k in range(3)]
    corner = [0] * 3
    for k in range(3):
        if flips[k]:
            corner[axes[k]] = int(size[axes[k]]) - 1
    direction = np.stack([d[:, axes[k]] * (-1 if flips[k] else 1) for k in range(3)], axis=1)
    return {"direction": direction, "origin": np.array(image.TransformIndexToPhysicalPoint(corner)),
            "spacing": spacing[axes], "size": size[axes], "axes": axes, "flips": flips}


def mask_box(mask: sitk.Image, frame: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """Bounding box of the mask's non-zero voxels in the canonical frame's index space: (lower, upper)."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(mask != 0, sitk.sitkUInt8))
    if not stats.HasLabel(1):
        return None
    box = stats.GetBoundingBox(1)  # (x0, y0, z0, sx, sy, sz) in the image's own index space
    lo, hi = np.array(box[:3]), np.array(box[:3]) + np.array(box[3:]) - 1
    lower, upper = np.empty(3), np.empty(3)
    for k, (j, flip) in enumerate(zip(frame["axes"], frame["flips"])):
        n = frame["size"][k]
        a, b = (n - 1 - hi[j], n - 1 - lo[j]) if flip else (lo[j], hi[j])
        lower[k], upper[k] = a, b
    return lower, upper
