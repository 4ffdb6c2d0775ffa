"""Validate SynthRAD2023-format cases before any work, and report every problem at once.

Rules (one line per problem, `case <name>: file <file>: <what>`):
- each case has exactly one source (mr.* or cbct.*), a CT and a mask (CT/mask optional where the caller
  says so), one file per role; all cases of a dataset share one task;
- every file declares no more voxels than --max_voxels, the memory left (the measured peak per voxel,
  `dgcf_auto.memory`) and its own bytes allow, and a
  compressed .mha block decompresses (zlib) to exactly the declared size (`imageio.voxel_problem`);
- every file's header declares a positive, finite spacing in its own field (NIfTI pixdim, MetaImage
  ElementSpacing; `imageio.header_spacing_problem`), checked first: readers silently turn a 0 into 1 mm;
- every file is readable (header and voxels, a truncated .nii.gz included), a 3D scalar image with an
  orthonormal direction matrix, with finite voxels (NaN/inf rejected; NIfTI voxels are read with nibabel,
  since SimpleITK reads NaN as 0 and accepts a short voxel block);
- the mask has at least one non-zero voxel;
- CT and mask share the source's grid: size exactly, spacing/origin/direction within the tolerances of
  `dgcf_auto.imageio.geometry_mismatch`.
Cases are read one at a time (header first, then voxels, each file once), so memory does not grow with the
dataset.
"""
from __future__ import annotations

import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from dgcf_auto.dataset.discovery import Case, expected_names, find_cases, mixed_task_message
from dgcf_auto.errors import DGCFError, DGCFInputErrors
from dgcf_auto.imageio import (
    IMAGE_SUFFIXES,
    ImageGrid,
    geometry_mismatch,
    header_spacing_problem,
    image_suffix,
    load_nifti,
    read_image,
    voxel_problem,
)
from dgcf_auto.log import progress_bar


def validate_cases(cases: list[Case], require_ct: bool = True, require_mask: bool = True,
                   progress: bool = False) -> list[str]:
    """Every problem of every case, one line each; an empty list means the cases are usable."""
    if not cases:
        return ["dataset: no cases found (expected one folder per case holding "
                "{mr|cbct}.nii.gz, ct.nii.gz and mask.nii.gz)"]
    problems: list[str] = []
    mixed = mixed_task_message(cases)
    if mixed:
        problems.append(mixed)
    for case in progress_bar(cases, desc="validating", unit="case", disable=not progress):
        problems.extend(validate_case(case, require_ct, require_mask))
    return problems


def validate_case(case: Case, require_ct: bool = True, require_mask: bool = True) -> list[str]:
    problems = list(case.problems)
    for role, path, required in (("ct", case.ct, require_ct), ("mask", case.mask, require_mask)):
        if path is None and required:
            problems.append(f"case {case.name}: file {role}.nii.gz: missing (expected {expected_names(role)})")

    headers: dict[str, ImageGrid] = {}
    for role, path in (("source", case.source), ("ct", case.ct), ("mask", case.mask)):
        if path is None:
            continue
        reader, problem = check_image_file(path, _where(case.name, path), is_mask=(role == "mask"),
                                           series_uids=case.series_uids)
        if problem:
            problems.append(problem)
        elif reader is not None:
            headers[role] = reader

    if "source" in headers:
        for role in ("ct", "mask"):
            if role in headers:
                mismatch = geometry_mismatch(headers[role], headers["source"])
                if mismatch:
                    path = getattr(case, role)
                    problems.append(f"case {case.name}: file {path.name}: grid does not match "
                                    f"{case.source_path.name}: {mismatch}")
    return problems


def _where(case_name: str, path: Path) -> str:
    return f"case {case_name}: {'folder' if path.is_dir() else 'file'} {path.name}{'/' if path.is_dir() else ''}"


def check_image_file(path: Path, where: str, is_mask: bool = False,
                     series_uids=()) -> tuple[ImageGrid | None, str | None]:
    """(header reader, None) when `path` is a usable 3D scalar image, else (None, '<where>: <problem>').
    A folder is a DICOM series (`_check_dicom_folder`).

    The voxels are read once: by nibabel for NIfTI (it raises on a short voxel block or a cut gzip stream and
    keeps NaN/inf, which SimpleITK reads as 0), by SimpleITK otherwise. The header comes from SimpleITK, the
    reader every later stage uses, so that geometry checks see what they will see.
    """
    if Path(path).is_dir():
        return _check_dicom_folder(Path(path), where, is_mask, series_uids)
    if image_suffix(path) is None:
        return None, f"{where}: unsupported format (use {', '.join(IMAGE_SUFFIXES)})"
    if problem := header_spacing_problem(path):  # first: readers take a zero pixdim as 1 mm
        return None, f"{where}: {problem}"
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        return None, f"{where}: cannot be read as an image ({_reason(exc)})"
    if problem := header_spacing_problem(path, reader):
        return None, f"{where}: {problem}"
    if reader.GetDimension() != 3 or len(reader.GetSize()) != 3:
        size = "x".join(str(s) for s in reader.GetSize())
        return None, f"{where}: is {reader.GetDimension()}D (size {size}); expected a 3D volume"
    if reader.GetNumberOfComponents() != 1:
        return None, f"{where}: has {reader.GetNumberOfComponents()} components per voxel; expected a scalar image"
    if 0 in reader.GetSize():
        return None, f"{where}: is empty (size {reader.GetSize()})"
    if problem := voxel_problem(path, reader):  # before nibabel or ITK allocate what the header declares
        return None, f"{where}: {problem}"
    nifti = image_suffix(path) in (".nii", ".nii.gz")
    try:
        if nifti:
            loaded = load_nifti(path)
            array = np.asarray(loaded.dataobj)
            matrix = np.asarray(loaded.affine, np.float64)[:3, :3]  # RAS world
        else:
            image = reader.Execute()
            array = sitk.GetArrayViewFromImage(image)
            matrix = None
    except (OSError, EOFError, ValueError, zlib.error, RuntimeError, nib.filebasedimages.ImageFileError) as exc:
        return None, f"{where}: is truncated or corrupt ({_reason(exc)})"
    direction = np.array(reader.GetDirection(), float).reshape(3, 3)
    if matrix is not None:  # NIfTI: SimpleITK coerces a sheared affine silently; look at the file's own
        direction = np.diag([-1.0, -1.0, 1.0]) @ matrix / np.linalg.norm(matrix, axis=0)  # LPS, unit columns
    if problem := direction_problem(direction):
        return None, f"{where}: {problem}"
    if array.dtype.kind == "f":
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            return None, f"{where}: {bad} NaN/inf voxels; every voxel must be finite"
    if is_mask and not np.any(array):
        return None, f"{where}: mask is empty (all voxels are 0)"
    return reader, None


def _check_dicom_folder(path: Path, where: str, is_mask: bool,
                        series_uids=()) -> tuple[ImageGrid | None, str | None]:
    """(series header, None) when the folder's series reads as one regular volume, else (None, problem)."""
    from dgcf_auto.dicomio import open_series, read_checked_series, series_header

    try:
        series = open_series(path, series_uids=series_uids, where=where)
        image = read_checked_series(series, where=where)
    except DGCFError as exc:
        return None, str(exc)
    direction = np.array(image.GetDirection(), float).reshape(3, 3)
    if problem := direction_problem(direction):
        return None, f"{where}: {problem}"
    if is_mask and not np.any(sitk.GetArrayViewFromImage(image)):
        return None, f"{where}: mask is empty (all voxels are 0)"
    return series_header(series), None


def direction_problem(direction: np.ndarray, tolerance: float = 1e-3) -> str | None:
    """None for an orthonormal direction matrix (a rotation, possibly with flips), else the problem in words."""
    gram = direction.T @ direction
    if np.all(np.isfinite(gram)) and np.abs(gram - np.eye(3)).max() <= tolerance:
        return None
    shown = ", ".join(f"{v:.4g}" for v in direction.ravel())
    return (f"direction matrix ({shown}) is not orthonormal (sheared or scaled axes); the geometry would "
            f"change silently; fix the file's orientation")


def _reason(exc: Exception) -> str:
    if "Unable to determine ImageIO reader" in str(exc):
        return "not a valid NIfTI or MetaImage file"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    meaningful = [line for line in lines if "error" in line.lower() or "exception" in line.lower()]
    text = (meaningful or lines or ["unreadable"])[-1]
    # ITK prefixes messages with source locations; keep only the human part.
    text = " ".join((text.split(": ", 1)[-1] if text.startswith("/") else text).split())
    return text if len(text) <= 120 else text[:117] + "..."


def load_case(case: Case) -> tuple[sitk.Image, sitk.Image | None, sitk.Image | None]:
    """(source, ct, mask) as SimpleITK images; ct/mask are None when the case has none."""
    if case.source is None:
        raise DGCFError(case.problems[0] if case.problems else f"case {case.name}: no source image")
    source = read_image(case.source, case.name, case.series_uids)
    ct = read_image(case.ct, case.name, case.series_uids) if case.ct is not None else None
    mask = read_image(case.mask, case.name, case.series_uids) if case.mask is not None else None
    return source, ct, mask


def validate_dataset(dataset_dir: str | os.PathLike, require_ct: bool = True, require_mask: bool = True,
                     progress: bool = True) -> list[Case]:
    """The dataset's cases; a DGCFInputErrors listing every problem when anything is wrong."""
    dataset_dir = Path(dataset_dir)
    cases = find_cases(dataset_dir)
    if not cases:
        loose = ([p.name for p in dataset_dir.iterdir() if p.is_file() and image_suffix(p)]
                 if dataset_dir.is_dir() else [])
        hint = (f"; found loose image files ({', '.join(sorted(loose)[:3])}...), but each case needs its own "
                f"folder <case>/{{mr|cbct,ct,mask}}.nii.gz") if loose else \
            "; expected one folder per case holding {mr|cbct}.nii.gz, ct.nii.gz and mask.nii.gz"
        raise DGCFError(f"dataset {dataset_dir}: no cases found{hint}")
    problems = validate_cases(cases, require_ct, require_mask, progress=progress)
    if problems:
        noun = "problem" if len(problems) == 1 else "problems"
        raise DGCFInputErrors(problems, header=f"dataset {dataset_dir}: {len(problems)} {noun} in "
                                               f"{len(cases)} cases (nothing was done):")
    return cases


__all__ = ["validate_cases", "validate_case", "validate_dataset", "load_case", "check_image_file", "direction_problem"]
