"""Validate SynthRAD2023-format cases before any work, and report every problem at once.

Rules (one line per problem, `case <name>: file <file>: <what>`):
- each case has exactly one source (mr.* or cbct.*), a CT and a mask (CT/mask optional where the caller
  says so), one file per role; all cases of a dataset share one task;
- every file is readable (header and voxels, a truncated .nii.gz included), a 3D scalar image, with
  finite voxels (NaN/inf rejected; for NIfTI the raw bytes are checked, since SimpleITK reads NaN as 0);
- the mask has at least one non-zero voxel;
- CT and mask share the source's grid: size exactly, spacing/origin/direction within the tolerances of
  `dgcf_auto.imageio.geometry_mismatch`.
Cases are read one at a time (header first, then voxels), so memory does not grow with the dataset.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from dgcf_auto.dataset.discovery import Case, expected_names, find_cases, mixed_task_message
from dgcf_auto.dataset.nifti_raw import nifti_voxel_problem
from dgcf_auto.errors import DGCFError, DGCFInputErrors
from dgcf_auto.imageio import IMAGE_SUFFIXES, geometry_mismatch, image_suffix, read_image

_FLOAT_TYPES = {sitk.sitkFloat32, sitk.sitkFloat64}


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
    for case in tqdm(cases, desc="validating", unit="case", disable=not progress):
        problems.extend(validate_case(case, require_ct, require_mask))
    return problems


def validate_case(case: Case, require_ct: bool = True, require_mask: bool = True) -> list[str]:
    problems = list(case.problems)
    for role, path, required in (("ct", case.ct, require_ct), ("mask", case.mask, require_mask)):
        if path is None and required:
            problems.append(f"case {case.name}: file {role}.nii.gz: missing (expected {expected_names(role)})")

    headers: dict[str, sitk.ImageFileReader] = {}
    for role, path in (("source", case.source), ("ct", case.ct), ("mask", case.mask)):
        if path is None:
            continue
        if path.is_dir():
            reader, problem = _check_dicom_folder(case, path, is_mask=(role == "mask"))
        else:
            reader, problem = _check_file(case.name, path, is_mask=(role == "mask"))
        if problem:
            problems.append(problem)
        else:
            headers[role] = reader

    if "source" in headers:
        for role in ("ct", "mask"):
            if role in headers:
                mismatch = geometry_mismatch(headers[role], headers["source"])
                if mismatch:
                    path = getattr(case, role)
                    problems.append(f"case {case.name}: file {path.name}: grid does not match "
                                    f"{case.source.name}: {mismatch}")
    return problems


def _check_file(case_name: str, path: Path, is_mask: bool) -> tuple[sitk.ImageFileReader | None, str | None]:
    """(header reader, None) when the file is fine, else (None, the problem line)."""
    where = f"case {case_name}: file {path.name}"
    if image_suffix(path) is None:
        return None, f"{where}: unsupported format (use {', '.join(IMAGE_SUFFIXES)})"
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        return None, f"{where}: cannot be read as an image ({_reason(exc)})"
    if reader.GetDimension() != 3 or len(reader.GetSize()) != 3:
        size = "x".join(str(s) for s in reader.GetSize())
        return None, f"{where}: is {reader.GetDimension()}D (size {size}); expected a 3D volume"
    if reader.GetNumberOfComponents() != 1:
        return None, f"{where}: has {reader.GetNumberOfComponents()} components per voxel; expected a scalar image"
    if 0 in reader.GetSize():
        return None, f"{where}: is empty (size {reader.GetSize()})"

    # Voxels: catches truncated files whose header is fine, NaN/inf, and empty masks.
    try:
        image = reader.Execute()
        array = sitk.GetArrayViewFromImage(image)
    except RuntimeError as exc:
        return None, f"{where}: voxel data cannot be read ({_reason(exc)})"
    if reader.GetPixelID() in _FLOAT_TYPES or array.dtype.kind == "f":
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            return None, f"{where}: {bad} NaN/inf voxels; every voxel must be finite"
    if is_mask and not np.any(array):
        return None, f"{where}: mask is empty (all voxels are 0)"
    del array, image
    if image_suffix(path) in (".nii", ".nii.gz"):
        # SimpleITK zeroes NaN/inf in NIfTI and accepts truncated .gz files; look at the raw bytes.
        problem = nifti_voxel_problem(path)
        if problem:
            return None, f"{where}: {problem}"
    return reader, None


def _check_dicom_folder(case: Case, path: Path, is_mask: bool):
    """(series header, None) when the folder's series reads as one regular volume, else (None, problem)."""
    from dgcf_auto.dicomio import open_series, read_checked_series, series_header

    try:
        series = open_series(path, case.name, case.series_uids)
        image = read_checked_series(series, case.name)
    except DGCFError as exc:
        return None, str(exc)
    if is_mask and not np.any(sitk.GetArrayViewFromImage(image)):
        return None, f"case {case.name}: folder {path.name}/: mask is empty (all voxels are 0)"
    return series_header(series, image), None


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
        loose = [p.name for p in dataset_dir.iterdir() if p.is_file() and image_suffix(p)] if dataset_dir.is_dir() else []
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


__all__ = ["validate_cases", "validate_case", "validate_dataset", "load_case"]
