"""Volume <-> slice grid: one geometric transform, both directions, defined in physical space.

The slice grid of a case is a 3D grid whose third (SimpleITK) axis is the slice axis, so its numpy array
is (S, H, W) with slices first:
- direction: the case's own axes, permuted/flipped to the planned canonical orientation (what
  `sitk.DICOMOrient` would give: "LPS" for axial slices), so rows run anterior->posterior and columns
  right->left (radiological display) and no interpolation happens across slices;
- in-plane spacing and size (patch_size [H, W]) from the plans, centred on the body mask's bounding box
  (on the image centre when no mask is given);
- through-plane: the case's own slice positions, cropped to the mask's slice range (all slices without mask).

The volume grid of a `3d_fullres` configuration (`volume_grid_reference`) is the same construction with the
planned spacing on all three axes (numpy order (slice, row, col) = the plans' `spacing`), spanning the body
mask's bounding box plus VOLUME_MARGIN_MM per side, kept inside the image (the whole image without a mask):
nnU-Net's crop to the non-zero region followed by its resampling to the target spacing, in one resampling.
`grid_reference` picks the grid by the configuration's kind.

`to_slice_grid` and `from_slice_grid` are the same `sitk.Resample` call with the target grid swapped, so
direction, spacing and origin are exact both ways. Intensities use the planned interpolator (cubic B-spline
by default: on the example phantoms it roughly thirds the there-and-back HU error of linear interpolation at
sharp bone/air edges; the overshoot is removed by the clipping in normalisation), masks nearest neighbour.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from dgcf_auto.errors import DGCFError
from dgcf_auto.geometry import canonical_frame, mask_box
from dgcf_auto.plans import DEFAULT_CONFIGURATION, KIND_VOLUME, ConfigurationPlans, configuration_plans

INTERPOLATORS = {"bspline": sitk.sitkBSpline, "linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}
VOLUME_MARGIN_MM = 10.0  # per side around the body box (as the 2d plans' field-of-view margin)


def grid_configuration(plans: dict | ConfigurationPlans, configuration: str | None = None) -> ConfigurationPlans:
    """The configuration whose grid is meant: typed already, a plans dict (`configuration` of it, default the
    resolved one), or a bare configuration section."""
    if isinstance(plans, ConfigurationPlans):
        return plans
    if "configurations" in plans:
        return configuration_plans(plans, configuration)
    return ConfigurationPlans(name=configuration or DEFAULT_CONFIGURATION, **plans)


def slice_grid_reference(image: sitk.Image, mask: sitk.Image | None, plans: dict | ConfigurationPlans,
                         configuration: str | None = None) -> sitk.Image:
    """An empty (uint8) image carrying the case's slice-grid geometry; see the module docstring."""
    cfg = grid_configuration(plans, configuration)
    assert cfg.orientation is not None and cfg.inplane_spacing is not None  # the plans schema requires both
    frame = canonical_frame(image, cfg.orientation)
    height, width = (int(v) for v in cfg.patch_size)
    row_spacing, col_spacing = (float(v) for v in cfg.inplane_spacing)
    box = mask_box(mask, frame) if mask is not None else None
    if box is None:
        lower, upper = np.zeros(3), frame["size"] - 1.0
    else:
        lower, upper = box
    centre = 0.5 * (lower + upper) * frame["spacing"]  # mm along the canonical axes, from its origin
    first_slice, n_slices = int(lower[2]), int(upper[2] - lower[2]) + 1
    corner = np.array([centre[0] - 0.5 * (width - 1) * col_spacing, centre[1] - 0.5 * (height - 1) * row_spacing])
    # Snap the first grid node onto a voxel centre of the case: when the planned spacing equals (or is a
    # multiple of) the case's own, resampling then copies voxels instead of interpolating between them.
    corner = np.round(corner / frame["spacing"][:2]) * frame["spacing"][:2]
    local_origin = np.array([corner[0], corner[1], first_slice * frame["spacing"][2]])
    return _reference_in_frame(frame, local_origin, [width, height, n_slices],
                               [col_spacing, row_spacing, frame["spacing"][2]])


def volume_grid_reference(image: sitk.Image, mask: sitk.Image | None, plans: dict | ConfigurationPlans,
                          configuration: str | None = None) -> sitk.Image:
    """An empty (uint8) image carrying the case's volume-grid geometry; see the module docstring."""
    cfg = grid_configuration(plans, configuration)
    assert cfg.orientation is not None and cfg.spacing is not None  # the plans schema requires both
    frame = canonical_frame(image, cfg.orientation)
    spacing = np.array(cfg.spacing[::-1], float)  # numpy (slice, row, col) -> canonical axes (col, row, slice)
    extent = (frame["size"] - 1.0) * frame["spacing"]
    box = mask_box(mask, frame) if mask is not None else None
    if box is None:
        lower, upper = np.zeros(3), extent
    else:
        lower = np.maximum(box[0] * frame["spacing"] - VOLUME_MARGIN_MM, 0.0)
        upper = np.minimum(box[1] * frame["spacing"] + VOLUME_MARGIN_MM, extent)
    lower = np.round(lower / frame["spacing"]) * frame["spacing"]  # a voxel centre, as the slice grid's corner
    size = np.ceil((upper - lower) / spacing - 1e-6).astype(int) + 1
    return _reference_in_frame(frame, lower, size, spacing)


def grid_reference(image: sitk.Image, mask: sitk.Image | None, plans: dict | ConfigurationPlans,
                   configuration: str | None = None) -> sitk.Image:
    """The case's grid for the configuration's kind: a volume grid (3d_fullres) or a slice grid."""
    cfg = grid_configuration(plans, configuration)
    if cfg.kind == KIND_VOLUME:
        return volume_grid_reference(image, mask, cfg)
    return slice_grid_reference(image, mask, cfg)


def _reference_in_frame(frame: dict, local_origin: np.ndarray, size, spacing) -> sitk.Image:
    """An empty image on the canonical frame's axes, first node at `local_origin` (mm along those axes)."""
    reference = sitk.Image([int(v) for v in size], sitk.sitkUInt8)
    reference.SetDirection(frame["direction"].ravel().tolist())
    reference.SetSpacing([float(v) for v in spacing])
    reference.SetOrigin((frame["origin"] + frame["direction"] @ local_origin).tolist())
    return reference


def interpolator(name: str) -> int:
    if name not in INTERPOLATORS:
        raise DGCFError(f"unknown interpolation {name!r} (expected one of {', '.join(INTERPOLATORS)})")
    return INTERPOLATORS[name]


def _resample(image: sitk.Image, grid: sitk.Image | dict, interpolator: int, default_value: float,
              pixel_type: int) -> sitk.Image:
    """`image` sampled on `grid` (an image, or a geometry dict as written by imageio.geometry)."""
    f = sitk.ResampleImageFilter()
    if isinstance(grid, sitk.Image):
        f.SetReferenceImage(grid)
    else:
        f.SetSize([int(v) for v in grid["size"]])
        f.SetOutputSpacing([float(v) for v in grid["spacing"]])
        f.SetOutputOrigin([float(v) for v in grid["origin"]])
        f.SetOutputDirection([float(v) for v in grid["direction"]])
    f.SetInterpolator(interpolator)
    f.SetDefaultPixelValue(float(default_value))
    f.SetOutputPixelType(pixel_type)
    f.SetTransform(sitk.Transform())
    return f.Execute(image)


def to_slice_grid(image: sitk.Image, reference: sitk.Image | dict, interpolator: int = sitk.sitkLinear,
                  default_value: float = 0.0, pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
    """Volume -> slice grid (`reference` from `slice_grid_reference`, or its geometry dict)."""
    return _resample(image, reference, interpolator, default_value, pixel_type)


def from_slice_grid(slices_image: sitk.Image, original_reference: sitk.Image | dict,
                    interpolator: int = sitk.sitkLinear, default_value: float = 0.0,
                    pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
    """Slice grid -> the original volume grid; voxels outside the slice grid get `default_value`."""
    return _resample(slices_image, original_reference, interpolator, default_value, pixel_type)


def slices_to_image(slices: np.ndarray, grid: dict) -> sitk.Image:
    """An (S, H, W) array placed on the slice grid `grid` (a geometry dict)."""
    expected = tuple(int(v) for v in reversed(grid["size"]))
    if tuple(slices.shape) != expected:
        raise DGCFError(f"slice stack has shape {tuple(slices.shape)}, the case's slice grid needs {expected}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(slices))
    image.SetSpacing([float(v) for v in grid["spacing"]])
    image.SetOrigin([float(v) for v in grid["origin"]])
    image.SetDirection([float(v) for v in grid["direction"]])
    return image
