"""Lookalike inputs: spacing read from the header's own field (a zero pixdim is not
1 mm), intensities far outside the training range or beyond what float32 carries, grid messages that show
what differs; clip before resampling, and a memory bound from the header."""
from __future__ import annotations

import gzip
import json
import struct
import warnings

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from dgcf_auto.dataset.validation import check_image_file
from test_sources import _err, _first_case, _one_case
from test_prediction import _predict  # the `trained` fixture (example MR data + 2 tiny folds) is in conftest.py


def _set_pixdim(path, values):
    """Rewrite pixdim[1..3] of a .nii.gz in its raw bytes (offset 80), as a broken writer leaves them."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    assert struct.unpack("<i", raw[:4])[0] == 348  # NIfTI-1, little-endian
    raw[80:92] = struct.pack("<3f", *values)
    path.write_bytes(gzip.compress(bytes(raw)))


# ------------------------------------------------------------------ spacing from the header

@pytest.mark.parametrize("pixdim,field", [((0.0, 1.0, 2.5), "pixdim[1] is 0"),
                                          ((1.0, 1.0, 0.0), "pixdim[3] is 0"),
                                          ((-1.0, 1.014, 2.527), "pixdim[1] is -1"),
                                          ((1.0, float("nan"), 2.5), "pixdim[2] is nan")])
def test_zero_negative_or_nan_pixdim_is_refused_naming_the_field(trained, tmp_path, capsys, pixdim, field):
    folder = _one_case(tmp_path, trained)
    _set_pixdim(folder / "mr.nii.gz", pixdim)
    out = tmp_path / "out"
    assert _predict(["-i", str(folder), "-o", str(out), "-device", "cpu", "--force"]) == 1
    err = _err(capsys)
    shown = ", ".join(f"{v:g}" for v in np.float32(pixdim))
    assert err.strip().splitlines()[-1].endswith(
        f"case 1PA001: file mr.nii.gz: header field {field} (spacing ({shown})); voxel spacing must be positive "
        f"and finite (readers silently take 0 as 1 mm); fix the file's header")
    assert "Traceback" not in err and "should be non-zero" not in err and "NiftiImageIO" not in err  # no reader chatter
    assert not out.exists()
    # The mask's header too, with its own name.
    folder2 = _one_case(tmp_path / "m", trained)
    _set_pixdim(folder2 / "mask.nii.gz", pixdim)
    _, problem = check_image_file(folder2 / "mask.nii.gz", "case 1PA001: file mask.nii.gz")
    assert problem.startswith(f"case 1PA001: file mask.nii.gz: header field {field} (")


def test_metaimage_with_zero_or_missing_spacing_is_refused(tmp_path):
    image = sitk.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    sitk.WriteImage(image, str(tmp_path / "a.mha"))
    text = (tmp_path / "a.mha").read_bytes()
    start = text.index(b"ElementSpacing")
    end = text.index(b"\n", start)
    (tmp_path / "zero.mha").write_bytes(text[:start] + b"ElementSpacing = 1 0 1" + text[end:])
    _, problem = check_image_file(tmp_path / "zero.mha", "file zero.mha")
    assert problem == ("file zero.mha: header field ElementSpacing[1] is 0 (spacing (1, 0, 1)); voxel spacing must "
                       "be positive and finite (readers silently take 0 as 1 mm); fix the file's header")
    (tmp_path / "none.mha").write_bytes(text[:start] + text[end + 1:])
    _, problem = check_image_file(tmp_path / "none.mha", "file none.mha")
    assert problem == ("file none.mha: header has no ElementSpacing; the voxel spacing is unknown (a reader would "
                       "assume 1 mm)")
    assert check_image_file(tmp_path / "a.mha", "file a.mha")[1] is None


# ------------------------------------------------------------------ grid messages

def test_grid_message_names_the_field_and_shows_the_difference():
    from dgcf_auto.imageio import geometry_mismatch

    a = sitk.Image([4, 4, 4], sitk.sitkUInt8)
    b = sitk.Image([4, 4, 4], sitk.sitkUInt8)
    a.SetSpacing([1.0, 1.014, 2.5271])
    b.SetSpacing([1.0, 1.014, 2.5311])  # 0.16 % apart: beyond the 0.1 % tolerance
    assert geometry_mismatch(a, b) == "spacing[2] differs: (1, 1.014, 2.527) vs (1, 1.014, 2.531) mm"
    b.SetSpacing(a.GetSpacing())
    b.SetOrigin([0.0, 0.0, 100.04])  # 0.04 mm: beyond the 0.01 mm tolerance, equal at 4 digits
    a.SetOrigin([0.0, 0.0, 100.0])
    assert geometry_mismatch(a, b) == "origin[2] differs: (0, 0, 100) vs (0, 0, 100.04) mm"
    b.SetOrigin(a.GetOrigin())
    b.SetDirection([1, 0, 0, 0, -1, 0, 0, 0, -1])
    assert geometry_mismatch(a, b) == ("direction[4], direction[8] differ: (1, 0, 0, 0, 1, 0, 0, 0, 1) vs "
                                       "(1, 0, 0, 0, -1, 0, 0, 0, -1)")


# ------------------------------------------------------------------ intensities

def _with_source(tmp_path, trained, name, edit, dtype):
    """A case whose mr.nii.gz holds the first case's voxels as `dtype`, changed by `edit(array)` in place."""
    original = sitk.ReadImage(str(_first_case(trained) / "mr.nii.gz"))
    array = sitk.GetArrayFromImage(original).astype(dtype)
    edit(array)
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(original)
    return _one_case(tmp_path / name, trained, source=image), array


def _training_range(trained):
    signature = trained["plans"]["source_signature"]
    return signature["volume_min"][0], signature["volume_max"][1]


@pytest.mark.parametrize("name,dtype,value,infinite", [
    ("f32max", np.float32, float(np.finfo(np.float32).max), False),
    ("int32max", np.int32, int(np.iinfo(np.int32).max), False),
    ("int32min", np.int32, int(np.iinfo(np.int32).min), False),
    ("f64huge", np.float64, 1e300, True)])
def test_a_voxel_beyond_what_float32_carries_is_refused_and_force_records_it(trained, tmp_path, capsys, name,
                                                                              dtype, value, infinite):
    def edit(array):
        array[array.shape[0] // 2, array.shape[1] // 2, array.shape[2] // 2] = value

    folder, array = _with_source(tmp_path, trained, name, edit, dtype)
    low, high = _training_range(trained)
    out = tmp_path / "out"
    assert _predict(["-i", str(folder), "-o", str(out), "-device", "cpu"]) == 1
    err = _err(capsys)
    expected = (f"case 1PA001: file mr.nii.gz: 1 voxel beyond +-16777216 (range {float(array.min()):.6g} to "
                f"{float(array.max()):.6g} in {np.dtype(dtype).name}"
                f"{', 1 of them infinite once cast to float32' if infinite else ''}), more than float32 carries "
                f"exactly; not image data; the training sources ranged {low:.6g} to {high:.6g}")
    assert err.strip().splitlines()[-1].endswith(": " + expected)
    assert "Warning" not in err and not out.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's "overflow encountered in cast" fails the run
        assert _predict(["-i", str(folder), "-o", str(out), "-device", "cpu", "--force", "--disable_tta"]) == 0
    err = _err(capsys)
    assert f"--force: {expected}" in err and "Warning" not in err and "overflow" not in err
    report = json.loads((out / "prediction_report.json").read_text())
    assert report["forced"] == [{"case": "1PA001", "reason": expected}]
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "1PA001.nii.gz")))).all()


def test_intensities_three_orders_above_training_are_refused_by_the_planned_rule(trained, tmp_path, capsys):
    low, high = _training_range(trained)
    rule = trained["plans"]["source_signature"]["intensity_rule"]
    assert rule == {"percentiles": [0.5, 99.5], "width_factor": 10.0}
    folder, array = _with_source(tmp_path, trained, "x1000", lambda a: a.__imul__(1000), np.float32)
    p_low, p_high = np.percentile(array.astype(np.float64), [0.5, 99.5])  # the volumes are below the sample size
    out = tmp_path / "out"
    assert _predict(["-i", str(folder), "-o", str(out), "-device", "cpu"]) == 1
    width = high - low
    assert _err(capsys).strip().splitlines()[-1].endswith(
        f"case 1PA001: file mr.nii.gz: intensities p0.5-p99.5 {p_low:.6g} to {p_high:.6g} lie far outside the "
        f"training range {low:.6g} to {high:.6g} (accepted: {low - 10 * width:.6g} to {high + 10 * width:.6g}, 10x "
        f"its width beyond it); wrong units or a corrupt file?")
    # Five times brighter is a scanner's different units, not an error.
    folder, _ = _with_source(tmp_path, trained, "x5", lambda a: a.__imul__(5), np.float32)
    from dgcf_auto.dataset.discovery import read_case_folder
    from dgcf_auto.dataset.source_checks import source_problems

    assert source_problems(read_case_folder(folder), trained["plans"]["source_signature"]) == []


def test_plan_time_refuses_a_case_far_outside_the_dataset_and_a_float32_max_voxel(tmp_path):
    from model_fixtures import data_folders

    with data_folders(tmp_path):
        from dgcf_auto.dataset.discovery import find_cases
        from dgcf_auto.dataset.example import write_example_dataset
        from dgcf_auto.errors import DGCFInputErrors
        from dgcf_auto.preprocessing.run import plan_and_preprocess

        raw = write_example_dataset(996, "cbct2ct", n=4, seed=2)
        cases = sorted(d for d in raw.iterdir() if d.is_dir())
        ranges = []
        for index, case in enumerate(cases):
            image = sitk.ReadImage(str(case / "cbct.nii.gz"))
            array = sitk.GetArrayFromImage(image).astype(np.float32)
            if index == 1:
                array *= 1000.0
            if index == 2:
                array[0, 0, 0] = np.finfo(np.float32).max
            ranges.append((float(array.min()), float(array.max())))
            edited = sitk.GetImageFromArray(array)
            edited.CopyInformation(image)
            sitk.WriteImage(edited, str(case / "cbct.nii.gz"))
        with pytest.raises(DGCFInputErrors) as info:
            plan_and_preprocess(996, num_processes=1, preprocess=False, progress=False)
        problems = info.value.problems
        assert len(problems) == 2
        assert problems[0].startswith(f"case {cases[1].name}: file cbct.nii.gz: intensities p0.5-p99.5 ")
        # The median case among the three readable ones (the float32-max case is left out).
        kept = [r for i, r in enumerate(ranges) if i != 2]
        median = (float(np.median([r[0] for r in kept])), float(np.median([r[1] for r in kept])))
        assert f"lie far outside the dataset's median case range {median[0]:.6g} to {median[1]:.6g}" in problems[0]
        assert problems[1].startswith(f"case {cases[2].name}: file cbct.nii.gz: 1 voxel beyond +-16777216 (range ")
        assert not (tmp_path / "DGCF_preprocessed").exists() or not any((tmp_path / "DGCF_preprocessed").rglob("*.json"))
        assert [c.name for c in find_cases(raw)] == [c.name for c in cases]


# ------------------------------------------------------------------ clip before resampling

BSPLINE_POLE = 2.0 - 3.0 ** 0.5  # |z| of the cubic B-spline prefilter: a coefficient's change decays by it per voxel


def _slice_points_in_source_index(properties: dict, source: sitk.Image, voxels: np.ndarray) -> np.ndarray:
    """(S, H, W) slice-grid voxels -> continuous (x, y, z) indices of the source grid, from the geometries."""
    grid = properties["slice_grid"]
    index = voxels[:, ::-1].astype(np.float64)  # (z, y, x) -> (x, y, z)
    grid_matrix = np.reshape(grid["direction"], (3, 3)) * np.asarray(grid["spacing"])
    points = np.asarray(grid["origin"]) + index @ grid_matrix.T
    source_matrix = np.reshape(source.GetDirection(), (3, 3)) * np.asarray(source.GetSpacing())
    return (points - np.asarray(source.GetOrigin())) @ np.linalg.inv(source_matrix).T


@pytest.mark.parametrize("value", [float(np.finfo(np.float32).max), 5e4])
def test_one_extreme_voxel_changes_at_most_its_bspline_neighbourhood(trained, value):
    import copy

    from dgcf_auto.preprocessing.pipeline import preprocess_case

    plans = copy.deepcopy(trained["plans"])
    grid = plans["configurations"]["2d"]
    grid["inplane_spacing"] = [s * 1.37 for s in grid["inplane_spacing"]]  # off the voxel centres: interpolation
    grid["interpolation"] = "bspline"
    case = _first_case(trained)
    source = sitk.Cast(sitk.ReadImage(str(case / "mr.nii.gz")), sitk.sitkFloat32)
    mask = sitk.ReadImage(str(case / "mask.nii.gz"))
    clean = preprocess_case(source, None, mask, plans, "clean")
    # The outlier sits just outside the body (the per-case p99 over the mask stays the same), mid-volume.
    inside = sitk.GetArrayFromImage(mask) > 0
    z = inside.shape[0] // 2
    y, x = np.argwhere(inside[z])[0]
    where = (z, y - 1, x)
    assert not inside[where]
    array = sitk.GetArrayFromImage(source)
    array[where] = value
    hostile = sitk.GetImageFromArray(array)
    hostile.CopyInformation(source)
    result = preprocess_case(hostile, None, mask, plans, "hostile")
    assert result.properties["source_normalization"] == clean.properties["source_normalization"]

    change = np.abs(result.source.astype(np.float64) - clean.source)
    tolerance = 1e-3  # normalised units ([-1, 1])
    changed = np.argwhere(change > tolerance)
    assert len(changed) > 0  # the clipped outlier (the range's top, +1) still shows where it is
    # A change of at most 2 (the whole normalised range) at one voxel moves the cubic spline's coefficients by
    # at most 2 * sqrt(3)**3 * |z|**(|dx| + |dy| + |dz|); a point reads coefficients within 2 voxels per axis.
    reach = np.log(tolerance / (2.0 * 3.0 ** 1.5)) / np.log(BSPLINE_POLE)
    offsets = _slice_points_in_source_index(result.properties, source, changed) - np.array(where[::-1])
    beyond_support = np.clip(np.abs(offsets) - 2.0, 0.0, None).sum(axis=1)
    assert beyond_support.max() <= reach, (beyond_support.max(), reach)
    assert np.isfinite(result.source).all() and np.abs(result.source).max() <= 1.0


# ------------------------------------------------------------------ memory bounded from the header

def _gzip_bomb(path, shape=(700, 700, 700)) -> int:
    """A .nii.gz declaring `shape` int16 (686 MB for 700**3) in well under 1 MB: concatenated gzip members
    of zeros, which every gzip reader reads as one stream. Returns the declared bytes."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header.set_zooms((1.0, 1.0, 1.0))
    header["vox_offset"] = 352
    nbytes = 2 * int(np.prod(shape))
    chunk = 8 << 20
    member = gzip.compress(b"\0" * chunk, 6)
    with open(path, "wb") as handle:
        handle.write(gzip.compress(header.binaryblock + b"\0" * 4))
        for _ in range(nbytes // chunk):
            handle.write(member)
        handle.write(gzip.compress(b"\0" * (nbytes % chunk)))
    return nbytes


def test_a_gzip_bomb_under_a_memory_limit_gets_one_line_and_writes_nothing(trained, tmp_path):
    import os
    import re
    import resource
    import subprocess
    import sys

    from dgcf_auto.memory import STAGE_PEAK_BYTES

    bomb = tmp_path / "bomb.nii.gz"
    nbytes = _gzip_bomb(bomb)
    assert bomb.stat().st_size < 1 << 20 and nbytes == 686_000_000
    out = tmp_path / "out"
    limit = 6 << 30  # address space: the imports take about 4 GB of it, the bomb's peak far more than the rest

    def limited():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="default")
    done = subprocess.run([sys.executable, "-m", "dgcf_auto.cli.predict", "-i", str(bomb), "-o", str(out),
                           "-d", str(trained["raw"].name), "-device", "cpu"], env=env, preexec_fn=limited,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr[-2000:]
    lines = [line for line in done.stderr.strip().splitlines() if "error" in line]
    voxels = 700 ** 3
    need = int(np.ceil(voxels * max(base + per_byte * 2 for base, per_byte in STAGE_PEAK_BYTES.values())))
    assert len(lines) == 1 and re.search(
        rf"case bomb: file bomb\.nii\.gz: header declares 700x700x700 voxels \({nbytes} bytes stored\); working on "
        rf"it takes about {need} bytes \(\d+ per voxel, measured\), more than the \d+ bytes left under this "
        rf"process's address-space limit \(ulimit -v\); use a machine with more memory, or crop or resample the "
        rf"image$", lines[0]), done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "MemoryError" not in done.stderr
    assert not out.exists()
