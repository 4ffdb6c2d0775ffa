"""One case -> normalised slice stacks, and the way back. Preprocessing and prediction both call these.

`preprocess_case(source, ct, mask, plans)`:
  1. slice grid of the case (`slicing.slice_grid_reference`: canonical orientation, planned in-plane
     spacing and size, centred on the mask's bounding box, the mask's slice range);
  2. source: per-case normalisation values from the ORIGINAL voxels inside the mask (the MR p99), then
     resampling onto the slice grid (planned interpolator; outside the image: the source's minimum) and
     normalisation;
  3. CT (when given): resampling (outside: -1024 HU), `normalize_ct` with the planned window;
  4. mask: nearest-neighbour resampling; without a mask, the part of the grid inside the source's field of
     view.
`restore_ct(slices, properties, plans)`: `denormalize_ct`, then `slicing.from_slice_grid` onto exactly the
original grid (size, spacing, origin, direction from the properties); outside the slice grid: -1024 HU.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from dgcf_auto.errors import DGCFError
from dgcf_auto.imageio import geometry, geometry_mismatch
from dgcf_auto.preprocessing.normalization import (CT_AIR_HU, apply_source_normalization, ct_window,
                                                   denormalize_ct, normalize_ct, source_normalization_params)
from dgcf_auto.preprocessing.slicing import (from_slice_grid, interpolator, slice_grid_reference, slices_to_image,
                                             to_slice_grid)

PROPERTIES_VERSION = 1


@dataclass
class PreprocessedCase:
    source: np.ndarray                 # (S, H, W) float32 in [-1, 1]
    ct: np.ndarray | None              # (S, H, W) float32 in [-1, 1], None at prediction time
    mask: np.ndarray                   # (S, H, W) uint8
    properties: dict = field(default_factory=dict)


def _array(image: sitk.Image, dtype=np.float32) -> np.ndarray:
    return sitk.GetArrayFromImage(image).astype(dtype, copy=False)


def _check_same_grid(source: sitk.Image, other: sitk.Image | None, what: str, case: str) -> None:
    if other is not None:
        problem = geometry_mismatch(source, other)
        if problem:
            raise DGCFError(f"case {case}: {what} is not on the source's grid ({problem})")


def preprocess_case(source: sitk.Image, ct: sitk.Image | None, mask: sitk.Image | None, plans: dict,
                    case_name: str = "case") -> PreprocessedCase:
    """Normalised (S, H, W) stacks on the case's slice grid plus everything `restore_ct` needs."""
    if source.GetDimension() != 3:
        raise DGCFError(f"case {case_name}: source must be a 3D image, got {source.GetDimension()}D")
    _check_same_grid(source, ct, "CT", case_name)
    _check_same_grid(source, mask, "mask", case_name)
    if mask is not None:
        # The mask shares the source's grid (within tolerance): give it the exact geometry.
        mask = sitk.Cast(mask != 0, sitk.sitkUInt8)
        mask.CopyInformation(source)
    reference = slice_grid_reference(source, mask, plans)
    smooth = _intensity_interpolator(plans)

    source_array = _array(source)
    mask_array = _array(mask, np.uint8) if mask is not None else None
    params = source_normalization_params(source_array, mask_array, plans["source_normalization"])
    background = float(source_array.min())
    del source_array, mask_array
    source_slices = _array(to_slice_grid(source, reference, smooth, background))
    source_slices = apply_source_normalization(source_slices, params)

    ct_slices = None
    if ct is not None:
        ct = sitk.Cast(ct, sitk.sitkFloat32)
        ct.CopyInformation(source)
        ct_slices = normalize_ct(_array(to_slice_grid(ct, reference, smooth, CT_AIR_HU)),
                                 *ct_window(plans))

    if mask is None:
        # Prediction without a mask: the field of view of the source on the slice grid.
        mask = sitk.Image(source.GetSize(), sitk.sitkUInt8) + 1
        mask.CopyInformation(source)
    mask_slices = _array(to_slice_grid(mask, reference, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8), np.uint8)

    properties = {
        "version": PROPERTIES_VERSION,
        "case": case_name,
        "original_geometry": geometry(source),
        "slice_grid": geometry(reference),
        "shape": list(source_slices.shape),
        "source_normalization": params,
        "source_background": background,
        "ct_normalization": dict(plans["ct_normalization"]),
        "has_ct": ct is not None,
        "foreground_voxels": int(mask_slices.sum()),
    }
    return PreprocessedCase(source_slices, ct_slices, mask_slices, properties)


def _intensity_interpolator(plans: dict) -> int:
    return interpolator(plans["configurations"]["2d"].get("interpolation", "bspline"))


def restore_ct(normalised_slices: np.ndarray, properties: dict, plans: dict) -> sitk.Image:
    """(S, H, W) normalised sCT -> float32 HU image on exactly the case's original grid."""
    hu = denormalize_ct(np.asarray(normalised_slices), *ct_window(plans))
    slices = slices_to_image(hu, properties["slice_grid"])
    restored = from_slice_grid(slices, properties["original_geometry"], _intensity_interpolator(plans), CT_AIR_HU,
                               sitk.sitkFloat32)
    return restored
