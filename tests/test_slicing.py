"""The specification of preprocessing/slicing.py: the slice and volume grids of a case, the transform onto them
and back, the slices placed on their grid. Tiny SimpleITK images built here; every expected value is worked out
from the image's own geometry (origin + direction * spacing * index), by hand, or by SimpleITK directly."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from dgcf_auto.errors import DGCFError
from dgcf_auto.imageio import geometry
from dgcf_auto.plans import ConfigurationPlans
from dgcf_auto.preprocessing.slicing import (
    INTERPOLATORS,
    VOLUME_MARGIN_MM,
    from_slice_grid,
    grid_configuration,
    grid_reference,
    interpolator,
    slice_grid_reference,
    slices_to_image,
    to_slice_grid,
    volume_grid_reference,
)

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def image(size, spacing, origin, direction=IDENTITY, values=None) -> sitk.Image:
    """A float32 image of `size` (x, y, z); `values`: a function of the (z, y, x) index grids, default 0."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in reversed(size)), indexing="ij")
    array = np.zeros_like(z, np.float32) if values is None else values(z, y, x).astype(np.float32)
    result = sitk.GetImageFromArray(array)
    result.SetSpacing(spacing)
    result.SetOrigin(origin)
    result.SetDirection(direction)
    return result


def mask_like(reference: sitk.Image, lower, upper) -> sitk.Image:
    """uint8 mask on `reference`'s grid, 1 in the index box lower..upper (x, y, z, inclusive)."""
    array = np.zeros(tuple(reversed(reference.GetSize())), np.uint8)
    array[lower[2]:upper[2] + 1, lower[1]:upper[1] + 1, lower[0]:upper[0] + 1] = 1
    mask = sitk.GetImageFromArray(array)
    mask.CopyInformation(reference)
    return mask


def node(grid: sitk.Image, index) -> np.ndarray:
    """Physical position of a grid node, from the definition: origin + direction @ (spacing * index)."""
    direction = np.array(grid.GetDirection()).reshape(3, 3)
    return np.array(grid.GetOrigin()) + direction @ (np.array(grid.GetSpacing()) * np.array(index, float))


def slice_plans(patch_size, inplane_spacing, orientation="LPS", **extra) -> dict:
    return {"orientation": orientation, "patch_size": list(patch_size), "inplane_spacing": list(inplane_spacing),
            **extra}


def plans_with(**configurations) -> dict:
    return {"configurations": configurations}


def geometry_of(grid: sitk.Image) -> tuple:
    return grid.GetSize(), grid.GetSpacing(), grid.GetOrigin(), grid.GetDirection()


# ---------------------------------------------------------------------------------------------------------------
# grid_configuration


def test_grid_configuration_passes_typed_plans_through():
    typed = ConfigurationPlans(name="2.5d", kind="slabs", orientation="LPS", slab_size=3)
    assert grid_configuration(typed) is typed
    assert grid_configuration(typed, "3d_fullres") is typed


def test_grid_configuration_reads_the_named_or_resolved_configuration_of_a_plans_dict():
    plans = plans_with(**{"2d": slice_plans([8, 6], [1.0, 1.0]),
                          "3d_fullres": {"orientation": "LIP", "spacing": [2.0, 1.0, 1.0], "patch_size": [4, 4, 4]}})
    assert grid_configuration(plans).name == "2d"  # nothing resolved: 2d
    assert grid_configuration(plans).patch_size == [8, 6]
    volume = grid_configuration(plans, "3d_fullres")
    assert (volume.name, volume.kind, volume.orientation) == ("3d_fullres", "volume", "LIP")
    assert grid_configuration({**plans, "configuration": "3d_fullres"}).name == "3d_fullres"
    with pytest.raises(DGCFError, match="not in plans"):
        grid_configuration(plans, "2.5d")


def test_grid_configuration_of_a_bare_section():
    section = slice_plans([8, 6], [1.5, 0.5])
    bare = grid_configuration(section)
    assert bare.name == "2d" and bare.inplane_spacing == [1.5, 0.5] and bare.kind == "slices"
    assert grid_configuration(section, "2.5d").name == "2.5d"


# ---------------------------------------------------------------------------------------------------------------
# slice_grid_reference


def test_slice_grid_of_an_lps_image_without_mask_worked_by_hand():
    # 21 x 13 x 5 voxels of 0.6 x 0.9 x 2.5 mm. Image centre from the origin: (10*0.6, 6*0.9) = (6.0, 5.4) mm.
    # First node: x 6.0 - 4.5*0.7 = 2.85 -> 4.75 voxels -> 5 -> 3.0 mm; y 5.4 - 2.5*1.1 = 2.65 -> 2.94 -> 3 -> 2.7 mm.
    ct = image((21, 13, 5), (0.6, 0.9, 2.5), (-7.3, 11.2, 40.0))
    grid = slice_grid_reference(ct, None, slice_plans([6, 10], [1.1, 0.7]))
    assert grid.GetSize() == (10, 6, 5)
    np.testing.assert_allclose(grid.GetSpacing(), (0.7, 1.1, 2.5))
    np.testing.assert_allclose(grid.GetOrigin(), (-7.3 + 3.0, 11.2 + 2.7, 40.0), atol=1e-9)
    assert grid.GetDirection() == IDENTITY
    assert grid.GetPixelID() == sitk.sitkUInt8


def test_slice_grid_without_mask_second_case_worked_by_hand():
    # 9 x 16 x 3 voxels of 1.0 x 0.5 x 4.0 mm: centre (4.0, 3.75) mm. W=5 at 0.75: x 4.0 - 2*0.75 = 2.5 -> 2.5 voxels
    # (ties to even) -> 2 -> 2.0 mm; H=7 at 0.4: y 3.75 - 3*0.4 = 2.55 -> 5.1 voxels -> 5 -> 2.5 mm.
    ct = image((9, 16, 3), (1.0, 0.5, 4.0), (3.0, -2.0, -11.0))
    grid = slice_grid_reference(ct, None, slice_plans([7, 5], [0.4, 0.75]))
    assert grid.GetSize() == (5, 7, 3)
    np.testing.assert_allclose(grid.GetSpacing(), (0.75, 0.4, 4.0))
    np.testing.assert_allclose(grid.GetOrigin(), (5.0, 0.5, -11.0), atol=1e-9)


@pytest.mark.parametrize("patch, spacing", [([6, 10], [1.1, 0.7]), ([9, 4], [0.65, 1.45]), ([5, 5], [2.0, 2.0])])
def test_slice_grid_is_centred_on_the_mask_box(patch, spacing):
    """Fine case voxels (0.1 mm): snapping moves the grid by at most 0.05 mm, so its centre must sit on the box's."""
    ct = image((120, 100, 9), (0.1, 0.1, 3.0), (4.0, -6.5, 17.0))
    lower, upper = (31, 12, 2), (80, 55, 6)
    grid = slice_grid_reference(ct, mask_like(ct, lower, upper), slice_plans(patch, spacing))
    height, width = patch
    assert grid.GetSize() == (width, height, upper[2] - lower[2] + 1)  # the mask's slices only
    box_centre = 0.5 * (node(ct, lower) + node(ct, upper))
    grid_centre = 0.5 * (node(grid, (0, 0, 0)) + node(grid, (width - 1, height - 1, 0)))
    np.testing.assert_allclose(grid_centre[:2], box_centre[:2], atol=0.05 + 1e-9)
    np.testing.assert_allclose(node(grid, (0, 0, 0))[2], node(ct, lower)[2], atol=1e-9)  # first mask slice
    np.testing.assert_allclose(node(grid, (0, 0, grid.GetSize()[2] - 1))[2], node(ct, upper)[2], atol=1e-9)


def test_slice_grid_with_mask_worked_by_hand():
    # 0.6 x 0.9 x 2.5 mm; mask box x 4..13, y 2..9, z 1..3: centre (8.5*0.6, 5.5*0.9) = (5.1, 4.95) mm.
    # W=4 at 0.7: x 5.1 - 1.05 = 4.05 -> 6.75 voxels -> 7 -> 4.2 mm; H=3 at 1.1: y 4.95 - 1.1 = 3.85 -> 4.28 -> 4 -> 3.6
    ct = image((21, 13, 5), (0.6, 0.9, 2.5), (-7.3, 11.2, 40.0))
    grid = slice_grid_reference(ct, mask_like(ct, (4, 2, 1), (13, 9, 3)), slice_plans([3, 4], [1.1, 0.7]))
    assert grid.GetSize() == (4, 3, 3)
    np.testing.assert_allclose(grid.GetOrigin(), (-7.3 + 4.2, 11.2 + 3.6, 40.0 + 2.5), atol=1e-9)


def test_slice_grid_first_node_is_a_voxel_centre_of_the_case():
    ct = image((23, 17, 4), (0.7, 0.45, 2.0), (1.5, 2.5, 3.5))
    for mask in (None, mask_like(ct, (3, 5, 1), (20, 9, 2))):
        grid = slice_grid_reference(ct, mask, slice_plans([7, 9], [0.93, 1.37]))
        index = ct.TransformPhysicalPointToContinuousIndex(grid.GetOrigin())
        np.testing.assert_allclose(index, np.round(index), atol=1e-9)


def test_an_empty_mask_gives_the_grid_without_mask():
    ct = image((21, 13, 5), (0.6, 0.9, 2.5), (-7.3, 11.2, 40.0))
    plans = slice_plans([6, 10], [1.1, 0.7])
    empty = mask_like(ct, (1, 1, 1), (0, 0, 0))
    assert geometry_of(slice_grid_reference(ct, empty, plans)) == geometry_of(slice_grid_reference(ct, None, plans))


def oblique_case() -> sitk.Image:
    """Stored RAS-like with permuted axes: image x runs anterior, y runs left, z runs inferior (flips on 2 axes)."""
    direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # columns: x -> -P (A), y -> L, z -> -S (I)
    return image((11, 14, 6), (0.8, 0.6, 2.5), (12.5, -40.25, 7.0), direction,
                 lambda z, y, x: 1000.0 * z + 10.0 * y + x)


def test_slice_grid_of_an_oblique_case_copies_the_oriented_voxels():
    """Planned spacing = the case's in-plane spacing: the slices are the voxels of sitk.DICOMOrient(case, 'LPS')."""
    ct = oblique_case()
    oriented = sitk.DICOMOrient(ct, "LPS")
    assert oriented.GetSize() == (14, 11, 6) and oriented.GetSpacing() == (0.6, 0.8, 2.5)
    mask = mask_like(ct, (2, 3, 1), (8, 12, 4))  # image index box; slices 1..4 are oriented slices 1..4 (6-1-4..6-1-1)
    grid = slice_grid_reference(ct, mask, slice_plans([5, 6], [0.8, 0.6]))
    np.testing.assert_allclose(grid.GetDirection(), oriented.GetDirection(), atol=1e-12)
    assert grid.GetSize() == (6, 5, 4)
    np.testing.assert_allclose(grid.GetSpacing(), (0.6, 0.8, 2.5))
    slices = sitk.GetArrayFromImage(to_slice_grid(ct, grid, sitk.sitkLinear, -1.0))
    start = np.round(oriented.TransformPhysicalPointToContinuousIndex(grid.GetOrigin())).astype(int)
    # mask box in oriented index space: x (L) = image y 3..12, y (P) = 10-8..10-2 = 2..8, slices 6-1-4..6-1-1 = 1..4
    # centre (7.5, 5) -> W=6 from 7.5-2.5=5, H=5 from 5-2=3
    assert tuple(start) == (5, 3, 1)
    expected = sitk.GetArrayFromImage(oriented)[1:5, 3:8, 5:11]
    np.testing.assert_array_equal(slices, expected)


def test_slice_grid_through_plane_follows_a_flipped_slice_axis():
    ct = oblique_case()
    grid = slice_grid_reference(ct, None, slice_plans([4, 4], [1.0, 1.0]))
    assert grid.GetSize()[2] == 6
    # canonical slice 0 is the most inferior stored slice (image z index 5), slice 5 the most superior (index 0)
    np.testing.assert_allclose(node(grid, (0, 0, 0))[2], node(ct, (0, 0, 5))[2], atol=1e-9)
    np.testing.assert_allclose(node(grid, (0, 0, 5))[2], node(ct, (0, 0, 0))[2], atol=1e-9)


@pytest.mark.parametrize("orientation", ["LIP", "PIL"])
def test_slice_grid_in_coronal_and_sagittal_orientations(orientation):
    ct = image((12, 10, 8), (0.5, 0.5, 0.5), (0.0, 0.0, 0.0), values=lambda z, y, x: 100.0 * z + 10.0 * y + x)
    oriented = sitk.DICOMOrient(ct, orientation)
    grid = slice_grid_reference(ct, None, slice_plans([4, 4], [0.5, 0.5], orientation))
    np.testing.assert_allclose(grid.GetDirection(), oriented.GetDirection(), atol=1e-12)
    assert grid.GetSize()[2] == oriented.GetSize()[2]
    slices = sitk.GetArrayFromImage(to_slice_grid(ct, grid))
    start = np.round(oriented.TransformPhysicalPointToContinuousIndex(grid.GetOrigin())).astype(int)
    assert start[2] == 0
    np.testing.assert_array_equal(slices, sitk.GetArrayFromImage(oriented)[:, start[1]:start[1] + 4,
                                                                          start[0]:start[0] + 4])


# ---------------------------------------------------------------------------------------------------------------
# volume_grid_reference


def volume_plans(spacing, orientation="LPS") -> dict:
    return {"kind": "volume", "orientation": orientation, "spacing": list(spacing), "patch_size": [4, 4, 4]}


def test_volume_grid_without_mask_spans_the_whole_image():
    # extent (29*0.8, 19*1.0, 7*2.0) = (23.2, 19, 14) mm; planned (col, row, slice) spacing (1.2, 1.5, 2.0):
    # 23.2/1.2 = 19.33 -> 20 steps, 19/1.5 = 12.67 -> 13 steps, 14/2 = 7 exactly -> 7 steps (no extra node).
    ct = image((30, 20, 8), (0.8, 1.0, 2.0), (5.0, -3.0, 100.0))
    grid = volume_grid_reference(ct, None, volume_plans([2.0, 1.5, 1.2]))
    assert grid.GetSize() == (21, 14, 8)
    np.testing.assert_allclose(grid.GetSpacing(), (1.2, 1.5, 2.0))
    np.testing.assert_allclose(grid.GetOrigin(), (5.0, -3.0, 100.0), atol=1e-9)
    assert grid.GetDirection() == IDENTITY and grid.GetPixelID() == sitk.sitkUInt8


def test_volume_grid_exact_multiple_gets_no_extra_node():
    # extent (10*0.5, 6*1.0, 4*3.0) = (5, 6, 12) mm on (0.5, 2.0, 3.0): 10, 3, 4 steps exactly.
    ct = image((11, 7, 5), (0.5, 1.0, 3.0), (0.0, 0.0, 0.0))
    grid = volume_grid_reference(ct, None, volume_plans([3.0, 2.0, 0.5]))
    assert grid.GetSize() == (11, 4, 5)


def test_volume_grid_is_the_mask_box_plus_margin_inside_the_image():
    assert VOLUME_MARGIN_MM == 10.0
    # 70 x 50 x 14 voxels of 0.7 x 0.6 x 2.5 mm, extent (48.3, 29.4, 32.5) mm.
    # mask x 20..40 -> 14..28 mm -> 4..38 mm (4/0.7 = 5.71 -> 6 voxels -> 4.2 mm): 33.8 mm on 1.3 -> 26 steps exactly
    # mask y 10..45 -> 6..27 mm -> 0 (clipped)..29.4 (clipped): 29.4 on 1.1 = 26.7 -> 27 steps
    # mask z 5..8 -> 12.5..20 mm -> 2.5..30 mm (2.5/2.5 = 1 voxel): 27.5 on 2.0 = 13.75 -> 14 steps
    ct = image((70, 50, 14), (0.7, 0.6, 2.5), (-3.0, 8.0, 1.0))
    grid = volume_grid_reference(ct, mask_like(ct, (20, 10, 5), (40, 45, 8)), volume_plans([2.0, 1.1, 1.3]))
    assert grid.GetSize() == (27, 28, 15)
    np.testing.assert_allclose(grid.GetSpacing(), (1.3, 1.1, 2.0))
    np.testing.assert_allclose(grid.GetOrigin(), (-3.0 + 4.2, 8.0, 1.0 + 2.5), atol=1e-9)


def test_volume_grid_margin_clipped_at_the_far_end():
    # 40 x 30 x 10 voxels of 1 x 1 x 2 mm, extent (39, 29, 18). mask x 25..35 -> 15..39 (45 clipped) mm,
    # y 0..5 -> 0 (clipped)..15, z 6..9 -> 2..18 (28 clipped): on 2 mm: 12 steps, 7.5 -> 8, 8 steps.
    ct = image((40, 30, 10), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    grid = volume_grid_reference(ct, mask_like(ct, (25, 0, 6), (35, 5, 9)), volume_plans([2.0, 2.0, 2.0]))
    assert grid.GetSize() == (13, 9, 9)
    np.testing.assert_allclose(grid.GetOrigin(), (15.0, 0.0, 2.0), atol=1e-9)


def test_volume_grid_of_an_oblique_case_in_the_canonical_frame():
    ct = oblique_case()
    oriented = sitk.DICOMOrient(ct, "LPS")  # 14 x 11 x 6 of 0.6 x 0.8 x 2.5 mm: extent (7.8, 8.0, 12.5)
    grid = volume_grid_reference(ct, None, volume_plans([2.5, 0.8, 0.6]))
    assert geometry_of(grid)[:1] == (oriented.GetSize(),)
    np.testing.assert_allclose(grid.GetDirection(), oriented.GetDirection(), atol=1e-12)
    np.testing.assert_allclose(grid.GetOrigin(), oriented.GetOrigin(), atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(to_slice_grid(ct, grid)), sitk.GetArrayFromImage(oriented))


# ---------------------------------------------------------------------------------------------------------------
# grid_reference


def test_grid_reference_picks_the_grid_by_kind():
    ct = image((30, 20, 8), (0.8, 1.0, 2.0), (5.0, -3.0, 100.0))
    mask = mask_like(ct, (3, 4, 2), (20, 15, 6))
    plans = plans_with(**{"2d": slice_plans([6, 10], [1.1, 0.7]), "3d_fullres": volume_plans([2.0, 1.5, 1.2])})
    for configuration, build in (("2d", slice_grid_reference), ("3d_fullres", volume_grid_reference)):
        expected = geometry_of(build(ct, mask, plans, configuration))
        assert geometry_of(grid_reference(ct, mask, plans, configuration)) == expected
    assert grid_reference(ct, None, plans).GetSize() == (10, 6, 8)
    assert grid_reference(ct, None, plans, "3d_fullres").GetSize() == (21, 14, 8)


def test_grid_reference_of_plans_read_from_json():
    """Kinds read from a plans file are equal to, not the same object as, the planner's constants."""
    ct = image((30, 20, 8), (0.8, 1.0, 2.0), (5.0, -3.0, 100.0))
    plans = json.loads(json.dumps(plans_with(**{"2d": slice_plans([6, 10], [1.1, 0.7]),
                                               "3d_fullres": volume_plans([2.0, 1.5, 1.2])})))
    assert grid_reference(ct, None, plans, "3d_fullres").GetSize() == (21, 14, 8)
    assert grid_reference(ct, None, plans, "2d").GetSize() == (10, 6, 8)


@pytest.mark.parametrize("kind", ["slices", "slabs", "wedges"])
def test_every_kind_but_volume_gets_the_slice_grid(kind):
    """2d and 2.5d both see slices; a typed configuration is not re-validated here, so any other kind is sliced."""
    ct = image((30, 20, 8), (0.8, 1.0, 2.0), (5.0, -3.0, 100.0))
    typed = ConfigurationPlans(name="x", kind="".join(kind), orientation="LPS", patch_size=[6, 10],
                               inplane_spacing=[1.1, 0.7], spacing=[2.0, 1.5, 1.2])
    assert geometry_of(grid_reference(ct, None, typed)) == geometry_of(slice_grid_reference(ct, None, typed))
    assert grid_reference(ct, None, typed).GetSize() == (10, 6, 8)


def test_grids_refuse_a_configuration_without_its_geometry():
    """The plans schema requires orientation and spacing; a section without them stops before any geometry."""
    ct = image((30, 20, 8), (0.8, 1.0, 2.0), (5.0, -3.0, 100.0))
    with pytest.raises(AssertionError):
        slice_grid_reference(ct, None, {"orientation": "LPS", "patch_size": [6, 10]})
    with pytest.raises(AssertionError):
        slice_grid_reference(ct, None, {"inplane_spacing": [1.0, 1.0], "patch_size": [6, 10]})
    with pytest.raises(AssertionError):
        volume_grid_reference(ct, None, {"orientation": "LPS", "patch_size": [4, 4, 4]})
    with pytest.raises(AssertionError):
        volume_grid_reference(ct, None, {"spacing": [2.0, 1.0, 1.0], "patch_size": [4, 4, 4]})


# ---------------------------------------------------------------------------------------------------------------
# interpolator


def test_interpolator_names():
    assert interpolator("bspline") == sitk.sitkBSpline
    assert interpolator("linear") == sitk.sitkLinear
    assert interpolator("nearest") == sitk.sitkNearestNeighbor
    assert set(INTERPOLATORS) == {"bspline", "linear", "nearest"}
    with pytest.raises(DGCFError, match=r"unknown interpolation 'cubic' \(expected one of bspline, linear, nearest\)"):
        interpolator("cubic")


# ---------------------------------------------------------------------------------------------------------------
# to_slice_grid / from_slice_grid


def ramp_case() -> sitk.Image:
    """A linear HU ramp on an anisotropic, flipped, off-origin grid: linear interpolation reproduces it exactly."""
    direction = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    return image((25, 19, 6), (0.7, 1.1, 2.5), (30.0, -12.0, 55.0), direction,
                 lambda z, y, x: -900.0 + 60.0 * x + 25.0 * y + 100.0 * z)


def ramp_at(points: np.ndarray, case: sitk.Image) -> np.ndarray:
    """The ramp's value at physical points, from its definition in index space (inverse of origin + D*s*i)."""
    direction = np.array(case.GetDirection()).reshape(3, 3)
    index = (np.linalg.solve(direction, (points - np.array(case.GetOrigin())).T).T) / np.array(case.GetSpacing())
    return -900.0 + 60.0 * index[:, 0] + 25.0 * index[:, 1] + 100.0 * index[:, 2]


@pytest.mark.parametrize("reference_as", ["image", "dict"])
def test_to_slice_grid_equals_sitk_resample(reference_as):
    case = ramp_case()
    grid = slice_grid_reference(case, None, slice_plans([11, 13], [1.3, 0.9]))
    reference = grid if reference_as == "image" else geometry(grid)
    for method, default in ((sitk.sitkLinear, -1024.0), (sitk.sitkBSpline, -7.5), (sitk.sitkNearestNeighbor, 3.0)):
        result = to_slice_grid(case, reference, method, default)
        expected = sitk.Resample(case, grid, sitk.Transform(), method, default, sitk.sitkFloat32)
        assert geometry_of(result) == geometry_of(grid) and result.GetPixelID() == sitk.sitkFloat32
        np.testing.assert_array_equal(sitk.GetArrayFromImage(result), sitk.GetArrayFromImage(expected))
    as_int = to_slice_grid(case, reference, sitk.sitkNearestNeighbor, 0, sitk.sitkInt16)
    assert as_int.GetPixelID() == sitk.sitkInt16


def test_to_slice_grid_values_and_border():
    """Nodes inside the case hold the ramp at their physical position; nodes past the case the default value."""
    case = ramp_case()
    grid = slice_grid_reference(case, None, slice_plans([24, 30], [1.3, 0.9]))  # wider than the case (17.5 x 19.8 mm)
    slices = sitk.GetArrayFromImage(to_slice_grid(case, grid, sitk.sitkLinear, -1024.0))
    assert slices.shape == (6, 24, 30)
    k, j, i = np.meshgrid(*(np.arange(n) for n in slices.shape), indexing="ij")
    points = np.stack([node(grid, idx) for idx in zip(i.ravel(), j.ravel(), k.ravel())])
    index = np.array([case.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in p)) for p in points])
    size = np.array(case.GetSize())
    inside = np.all((index >= -1e-6) & (index <= size - 1 + 1e-6), axis=1)
    # SimpleITK samples up to half a voxel past the last centre (the voxel's own extent); beyond: the default
    outside = np.any((index < -0.5 - 1e-6) | (index > size - 0.5 + 1e-6), axis=1)
    assert inside.sum() > 300 and outside.sum() > 300
    np.testing.assert_allclose(slices.ravel()[inside], ramp_at(points[inside], case), atol=2e-3)
    assert np.all(slices.ravel()[outside] == -1024.0)


def test_to_and_from_slice_grid_defaults_linear_zero_float32():
    case = ramp_case()
    grid = slice_grid_reference(case, None, slice_plans([24, 30], [1.3, 0.9]))
    there = to_slice_grid(case, grid)
    expected = sitk.Resample(case, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    assert there.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(there), sitk.GetArrayFromImage(expected))
    assert (sitk.GetArrayFromImage(there) == 0.0).any()  # the border is 0 by default
    wide = image((40, 40, 8), (1.0, 1.0, 2.5), (0.0, -40.0, 40.0), values=lambda z, y, x: 5.0 + x)
    back = from_slice_grid(to_slice_grid(wide, grid, sitk.sitkLinear, 1.0), geometry(wide))
    expected_back = sitk.Resample(to_slice_grid(wide, grid, sitk.sitkLinear, 1.0), wide, sitk.Transform(),
                                  sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    assert back.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(expected_back))
    assert (sitk.GetArrayFromImage(back) == 0.0).any()


def test_round_trip_of_a_linear_ramp_keeps_hu_where_the_slice_grid_covers_the_case():
    """Linear interpolation reproduces a ramp exactly: a case voxel within the slice grid's span comes back with its
    HU; one more than half a grid step outside it gets the default value."""
    case = ramp_case()
    mask = mask_like(case, (3, 2, 1), (20, 15, 4))
    grid = slice_grid_reference(case, mask, slice_plans([12, 15], [1.3, 0.9]))  # inside the case in-plane
    slices = to_slice_grid(case, grid, sitk.sitkLinear, -1024.0)
    assert not (sitk.GetArrayFromImage(slices) == -1024.0).any()
    back = from_slice_grid(slices, geometry(case), sitk.sitkLinear, -2000.0, sitk.sitkFloat32)
    assert geometry_of(back) == geometry_of(case)
    restored, original = sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(case)
    k, j, i = np.meshgrid(*(np.arange(n) for n in original.shape), indexing="ij")
    where = np.array([grid.TransformPhysicalPointToContinuousIndex(case.TransformIndexToPhysicalPoint(
        (int(a), int(b), int(c)))) for a, b, c in zip(i.ravel(), j.ravel(), k.ravel())])
    size = np.array(grid.GetSize())
    within = np.all((where >= -1e-6) & (where <= size - 1 + 1e-6), axis=1)
    outside = np.any((where < -0.5 - 1e-6) | (where > size - 0.5 + 1e-6), axis=1)
    assert within.sum() > 300 and outside.sum() > 300
    np.testing.assert_allclose(restored.ravel()[within], original.ravel()[within], atol=2e-3)
    assert np.all(restored.ravel()[outside] == -2000.0)
    assert np.all(restored[[0, 5]] == -2000.0)  # the slices outside the mask's range


def test_from_slice_grid_onto_an_image_reference_and_a_pixel_type():
    case = ramp_case()
    grid = slice_grid_reference(case, None, slice_plans([11, 13], [0.7, 1.1]))
    slices = to_slice_grid(case, grid, sitk.sitkNearestNeighbor, 0.0)
    for reference in (case, geometry(case)):
        back = from_slice_grid(slices, reference, sitk.sitkNearestNeighbor, 77.0, sitk.sitkInt32)
        expected = sitk.Resample(slices, case, sitk.Transform(), sitk.sitkNearestNeighbor, 77.0, sitk.sitkInt32)
        assert back.GetPixelID() == sitk.sitkInt32 and geometry_of(back) == geometry_of(case)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(expected))
        assert (sitk.GetArrayFromImage(back) == 77).any()


# ---------------------------------------------------------------------------------------------------------------
# slices_to_image


def test_slices_to_image_places_the_stack_on_its_grid():
    case = ramp_case()
    grid = geometry(slice_grid_reference(case, None, slice_plans([5, 7], [1.3, 0.9])))
    stack = np.arange(6 * 5 * 7, dtype=np.float32).reshape(6, 5, 7)
    placed = slices_to_image(stack[:, :, ::-1][:, :, ::-1], grid)  # a non-contiguous view is accepted
    assert geometry(placed) == grid
    np.testing.assert_array_equal(sitk.GetArrayFromImage(placed), stack)
    assert placed.GetPixelID() == sitk.sitkFloat32
    assert placed.TransformIndexToPhysicalPoint((6, 4, 5)) == pytest.approx(tuple(node(
        slice_grid_reference(case, None, slice_plans([5, 7], [1.3, 0.9])), (6, 4, 5))))


@pytest.mark.parametrize("shape", [(6, 7, 5), (5, 5, 7), (6, 5, 7, 1), (6, 5)])
def test_slices_to_image_rejects_a_stack_of_another_shape(shape):
    grid = {"size": [7, 5, 6], "spacing": [1.0, 1.0, 1.0], "origin": [0.0, 0.0, 0.0], "direction": list(IDENTITY)}
    with pytest.raises(DGCFError, match=rf"slice stack has shape \({', '.join(map(str, shape))},?\), "
                                        r"the case's slice grid needs \(6, 5, 7\)"):
        slices_to_image(np.zeros(shape, np.float32), grid)
