"""One case -> normalised slice stacks, and the way back. Preprocessing and prediction both call these.

`preprocess_case(source, ct, mask, plans)`:
  1. slice grid of the case (`slicing.slice_grid_reference`: canonical orientation, planned in-plane
     spacing and size, centred on the mask's bounding box, the mask's slice range); for a 3d_fullres
     configuration the volume grid instead (`slicing.volume_grid_reference`: the planned 3D spacing over the
     body's bounding box), so the arrays are (Z, Y, X) volumes and everything below is the same;
  2. source: per-case normalisation values from the ORIGINAL voxels inside the mask (the MR p99), clipping
     of the original voxels to the range the normalisation keeps (`source_clip_range`), then resampling onto
     the grid (planned interpolator; outside the image: the clipped minimum) and normalisation;
  3. CT (when given): clipping to the planned window, resampling (outside: -1024 HU), `normalize_ct`;
  Clipping comes before resampling so that the spline never spreads an outlier voxel over its slice.
  4. mask: nearest-neighbour resampling; without a mask, the part of the grid inside the source's field of
     view.
`restore_ct(slices, properties, plans)`: `denormalize_ct`, then `slicing.from_slice_grid` onto exactly the
original grid (size, spacing, origin, direction from the properties); outside the slice grid: -1024 HU.

Plans whose configuration says `"grid": "stretch"` (the release plans, planning/release_planner.py) take the
authors' path instead: every stored slice of the volume, normalised on the original voxels (whole-volume
percentiles, no mask) and stretched to the patch size (`stretch.py`); `restore_ct` resizes back onto each
slice's own size, so the sCT lies on the input's exact grid.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from dgcf_auto.errors import DGCFError
from dgcf_auto.imageio import from_array, geometry, geometry_mismatch, to_array
from dgcf_auto.plans import ConfigurationPlans
from dgcf_auto.preprocessing.normalization import (
    CT_AIR_HU,
    apply_source_normalization,
    clip_to_range,
    ct_window,
    denormalize_ct,
    normalize_ct,
    source_clip_range,
    source_normalization_params,
)
from dgcf_auto.preprocessing.slicing import (
    from_slice_grid,
    grid_configuration,
    grid_reference,
    interpolator,
    slices_to_image,
    to_slice_grid,
)
from dgcf_auto.preprocessing.stretch import stretch_slices, unstretch_slices

PROPERTIES_VERSION = 2  # 2: sources and CTs clipped before resampling


@dataclass
class PreprocessedCase:
    source: np.ndarray                 # (S, H, W) float32 in [-1, 1]
    ct: np.ndarray | None              # (S, H, W) float32 in [-1, 1], None at prediction time
    mask: np.ndarray                   # (S, H, W) uint8
    properties: dict = field(default_factory=dict)


def _check_same_grid(source: sitk.Image, other: sitk.Image | None, what: str, case: str) -> None:
    if other is not None:
        problem = geometry_mismatch(source, other)
        if problem:
            raise DGCFError(f"case {case}: {what} is not on the source's grid ({problem})")


def preprocess_case(source: sitk.Image, ct: sitk.Image | None, mask: sitk.Image | None, plans: dict,
                    case_name: str = "case", configuration: str | None = None) -> PreprocessedCase:
    """Normalised (S, H, W) stacks on the case's slice grid plus everything `restore_ct` needs.
    `configuration`: whose grid (default: the one the plans are resolved for, else 2d)."""
    cfg = grid_configuration(plans, configuration)
    if source.GetDimension() != 3:
        raise DGCFError(f"case {case_name}: source must be a 3D image, got {source.GetDimension()}D")
    _check_same_grid(source, ct, "CT", case_name)
    _check_same_grid(source, mask, "mask", case_name)
    if mask is not None:
        # The mask shares the source's grid (within tolerance): give it the exact geometry.
        mask = sitk.Cast(mask != 0, sitk.sitkUInt8)
        mask.CopyInformation(source)
    if cfg.is_stretched:
        return _preprocess_stretched(source, ct, mask, plans, case_name, cfg)
    reference = grid_reference(source, mask, cfg)  # slices or a volume, by the configuration's kind
    smooth = interpolator(cfg.interpolation)

    stored = sitk.GetArrayViewFromImage(source)
    mask_array = to_array(mask, np.uint8) if mask is not None else None
    params = source_normalization_params(stored, mask_array, plans["source_normalization"])
    clipped = clip_to_range(stored, *source_clip_range(params))
    background = float(clipped.min())
    del stored, mask_array
    source_slices = to_array(to_slice_grid(from_array(clipped, source), reference, smooth, background))
    del clipped
    source_slices = apply_source_normalization(source_slices, params)

    ct_slices = None
    if ct is not None:
        ct = from_array(clip_to_range(sitk.GetArrayViewFromImage(ct), *ct_window(plans)), source)
        ct_slices = normalize_ct(to_array(to_slice_grid(ct, reference, smooth, CT_AIR_HU)),
                                 *ct_window(plans))

    if mask is None:
        # Prediction without a mask: the field of view of the source on the slice grid.
        mask = sitk.Image(source.GetSize(), sitk.sitkUInt8) + 1
        mask.CopyInformation(source)
    mask_slices = to_array(to_slice_grid(mask, reference, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8), np.uint8)

    properties = {
        "version": PROPERTIES_VERSION,
        "case": case_name,
        "configuration": cfg.name,
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


def _preprocess_stretched(source: sitk.Image, ct: sitk.Image | None, mask: sitk.Image | None, plans: dict,
                          case_name: str, cfg: ConfigurationPlans) -> PreprocessedCase:
    """The release plans: normalise the stored voxels, then stretch every stored slice (see stretch.py).

    Normalising first equals their clip -> resize -> linear map: bilinear weights sum to 1, so the linear map
    commutes with the resize, while the clip must come first (it does, inside the normalisation)."""
    size = (int(cfg.patch_size[0]), int(cfg.patch_size[1]))
    source_array = to_array(source)
    params = source_normalization_params(source_array, None, plans["source_normalization"])
    source_slices = stretch_slices(apply_source_normalization(source_array, params), size)
    del source_array
    ct_slices = None
    if ct is not None:
        ct_slices = stretch_slices(normalize_ct(to_array(ct), *ct_window(plans)), size)
    if mask is None:
        mask_slices = np.ones(source_slices.shape, np.uint8)
    else:  # their bilinear resize of the mask, binarised at one half (their code uses it nowhere else)
        mask_slices = (stretch_slices(to_array(mask), size) >= 0.5).astype(np.uint8)
    properties = {
        "version": PROPERTIES_VERSION,
        "case": case_name,
        "configuration": cfg.name,
        "original_geometry": geometry(source),
        "grid": "stretch",
        "shape": list(source_slices.shape),
        "source_normalization": params,
        "ct_normalization": dict(plans["ct_normalization"]),
        "has_ct": ct is not None,
        "foreground_voxels": int(mask_slices.sum()),
    }
    return PreprocessedCase(source_slices, ct_slices, mask_slices, properties)


def restore_ct(normalised_slices: np.ndarray, properties: dict, plans: dict) -> sitk.Image:
    """(S, H, W) normalised sCT -> float32 HU image on exactly the case's original grid."""
    clip = bool(plans["ct_normalization"].get("clip_output", True))
    hu = denormalize_ct(np.asarray(normalised_slices), *ct_window(plans), clip=clip)
    return restore_slices(hu, properties, plans, CT_AIR_HU)


def restore_slices(slices: np.ndarray, properties: dict, plans: dict, default_value: float,
                   interpolation: int | None = None) -> sitk.Image:
    """Any (S, H, W) map on the case's slices (HU, a spread in HU) -> float32 image on the original grid;
    outside the slice grid: `default_value`. `interpolation`: a SimpleITK interpolator (default: the plans');
    stretched slices always go back with their own bilinear resize."""
    original = properties["original_geometry"]
    if properties.get("grid") == "stretch":
        shape = tuple(int(v) for v in reversed(original["size"]))
        image = sitk.GetImageFromArray(unstretch_slices(slices, (shape[1], shape[2])))
        image.SetSpacing([float(v) for v in original["spacing"]])
        image.SetOrigin([float(v) for v in original["origin"]])
        image.SetDirection([float(v) for v in original["direction"]])
        return image
    grid_image = slices_to_image(np.asarray(slices, np.float32), properties["slice_grid"])
    if interpolation is None:
        interpolation = interpolator(grid_configuration(plans, properties.get("configuration")).interpolation)
    return from_slice_grid(grid_image, original, interpolation, default_value, sitk.sitkFloat32)
