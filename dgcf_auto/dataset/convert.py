"""SynthRAD2023 download -> `$DGCF_raw/Dataset<id>_<Name>/`.

The official release unzips to `Task1/pelvis/1PA001/{mr,ct,mask}.nii.gz` (MR->CT) and
`Task2/pelvis/2PA001/{cbct,ct,mask}.nii.gz` (CBCT->CT), with an `overview/` folder of spreadsheets beside
the cases. A role may also be a DICOM folder (`mr/`, `ct/`): its chosen series' files are linked or copied.
Every case is validated before anything is written; the dataset folder is then built under a temporary name
(symlinks to the original files by default, copies with `copy=True`) and renamed into place.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

from dgcf_auto.atomic import write_json
from dgcf_auto.dataset.discovery import TASK_OF_MODALITY, Case, read_case_folder, task_of
from dgcf_auto.dataset.validation import validate_cases
from dgcf_auto.dataset.writing import atomic_dataset_folder, check_target_free
from dgcf_auto.dicomio import check_series_uids, is_dicom_folder, open_series
from dgcf_auto.errors import DGCFError, DGCFInputErrors
from dgcf_auto.imageio import image_suffix
from dgcf_auto.log import progress_bar

SKIPPED_FOLDERS = {"overview"}  # SynthRAD ships its per-case spreadsheets here


def synthrad_cases(input_dir: str | os.PathLike, series_uids: tuple[str, ...] = ()) -> list[Case]:
    """Case folders of a SynthRAD2023 anatomy folder (e.g. Task1/pelvis), in name order."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise DGCFError(f"input folder {input_dir} does not exist or is not a folder")
    folders = [p for p in sorted(input_dir.iterdir())
               if p.is_dir() and not p.name.startswith(".") and p.name.lower() not in SKIPPED_FOLDERS]
    cases = [replace(read_case_folder(f), series_uids=tuple(series_uids)) for f in folders if _has_images(f)]
    if cases:
        images = [path for case in cases for path in (case.source, case.ct, case.mask) if path and path.is_dir()]
        check_series_uids(images, series_uids, f"input folder {input_dir}")
        return cases
    # A parent such as Task1/ holds anatomy folders, not cases: point at the right level.
    nested = [f.name for f in folders if any(_has_images(g) for g in f.iterdir() if g.is_dir())]
    if nested:
        example = input_dir / nested[0]
        raise DGCFError(f"input folder {input_dir} holds {', '.join(nested)} rather than cases; "
                        f"pass one of them, e.g. -i {example}")
    raise DGCFError(f"input folder {input_dir}: no case folders found (expected <case>/"
                    f"{{mr|cbct}}.nii.gz, ct.nii.gz, mask.nii.gz as in SynthRAD2023's Task1/pelvis)")


def default_name(input_dir: Path, task: str) -> str:
    """'pelvis' + MR -> 'PelvisMR'; falls back to 'SynthRAD' when the folder name is unusable."""
    anatomy = re.sub(r"[^A-Za-z0-9]", "", Path(input_dir).resolve().name).capitalize() or "SynthRAD"
    return anatomy + ("MR" if task == "mr2ct" else "CBCT")


def convert_synthrad2023(input_dir: str | os.PathLike, dataset_id: int, name: str | None = None,
                         copy: bool = False, require_ct: bool = True, progress: bool = True,
                         series_uids: tuple[str, ...] = ()) -> Path:
    """Validate every case, then write the dataset folder atomically; returns its path."""
    input_dir = Path(input_dir)
    cases = synthrad_cases(input_dir, series_uids)
    # The target check is cheap and needs only file names, so it comes before reading every image.
    modality = next((c.modality for c in cases if c.modality), "mr")
    name = name or default_name(input_dir, TASK_OF_MODALITY[modality])
    target = check_target_free(dataset_id, name, overwrite=False, can_overwrite=False)
    problems = validate_cases(cases, require_ct=require_ct, require_mask=True, progress=progress)
    if problems:
        noun = "problem" if len(problems) == 1 else "problems"
        raise DGCFInputErrors(problems, header=f"input {input_dir}: {len(problems)} {noun} in {len(cases)} "
                                               f"cases; nothing was written:")
    task = task_of(cases)
    with atomic_dataset_folder(target) as tmp:
        for case in progress_bar(cases, desc="copying" if copy else "linking", unit="case", disable=not progress):
            for role, path in ((case.modality, case.source), ("ct", case.ct), ("mask", case.mask)):
                if path is not None and path.is_dir():
                    _place_series(case, path, tmp / case.name / role, copy)
                elif path is not None:
                    _place(path, tmp / case.name / f"{role}{image_suffix(path)}", copy)
        write_json({"name": target.name, "task": task, "source_modality": cases[0].modality,
                    "num_cases": len(cases), "converted_from": str(input_dir.resolve()),
                    "files": "copied" if copy else "symlinked"}, tmp / "dataset.json")
    return target


def _place(source: Path, target: Path, copy: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        shutil.copy2(source, target)
    else:
        # Absolute links survive the rename of the temporary folder and moves of the dataset folder.
        os.symlink(source.resolve(), target)


def _place_series(case: Case, folder: Path, target: Path, copy: bool) -> None:
    """A DICOM folder: only the chosen series' files, so the dataset folder holds exactly one series."""
    for path in open_series(folder, case.name, case.series_uids).files:
        _place(path, target / path.name, copy)


def _has_images(folder: Path) -> bool:
    try:
        return any((p.is_file() and image_suffix(p)) or (p.is_dir() and is_dicom_folder(p)) for p in folder.iterdir())
    except OSError:
        return False
