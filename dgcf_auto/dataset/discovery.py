"""Find SynthRAD2023-format cases in a dataset folder.

A dataset folder holds one sub-folder per case:

    <dataset>/<case>/{mr|cbct}.{nii.gz,nii,mha}   the source; its file name gives the task
                     ct.{nii.gz,nii,mha}           the target (absent on cases to predict)
                     mask.{nii.gz,nii,mha}         the body mask

`mr/`, `cbct/`, `ct/` (or `mask/`) may instead be a folder of DICOM files holding the series.

Discovery only looks at file names (case-insensitively) and records what it cannot resolve into paths
(both sources present, no source, two files for one role) in `Case.problems`; reading the images is
validation's job (`dgcf_auto.dataset.validation`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from dgcf_auto.dicomio import is_dicom_folder
from dgcf_auto.errors import DGCFError
from dgcf_auto.imageio import IMAGE_SUFFIXES, image_suffix, strip_suffix

SOURCE_MODALITIES = ("mr", "cbct")
TASK_OF_MODALITY = {"mr": "mr2ct", "cbct": "cbct2ct"}
ROLES = SOURCE_MODALITIES + ("ct", "mask")
DATASET_FILES = {"dataset.json"}  # written beside the cases by our own converters; not worth a note


@dataclass
class Case:
    name: str
    modality: str | None          # "mr" | "cbct"; None when the case has no (or an ambiguous) source
    source: Path | None
    ct: Path | None = None
    mask: Path | None = None
    problems: list[str] = field(default_factory=list)  # one line each, naming case and file
    series_uids: tuple[str, ...] = ()  # DICOM folders holding several series: read the one with this UID
    mask_roi: str | None = None        # the body mask is this RTSTRUCT ROI (dgcf_predict --mask_roi)

    @property
    def folder(self) -> Path | None:
        return next((p.parent for p in (self.source, self.ct, self.mask) if p is not None), None)

    @property
    def task(self) -> str | None:
        return TASK_OF_MODALITY.get(self.modality) if self.modality is not None else None

    @property
    def source_path(self) -> Path:
        """`source` where discovery found exactly one (every case validation passes, every prediction input);
        a DGCFError naming the case otherwise."""
        if self.source is None:
            raise DGCFError(f"case {self.name}: no source image")
        return self.source


def expected_names(stem: str) -> str:
    """'ct' -> 'ct.nii.gz, ct.nii or ct.mha' (for messages)."""
    names = [f"{stem}{s}" for s in IMAGE_SUFFIXES]
    return ", ".join(names[:-1]) + " or " + names[-1]


def role_files(folder: Path) -> dict[str, list[Path]]:
    """Image files (and DICOM folders) in `folder` by role ('mr', 'cbct', 'ct', 'mask'); file stems match
    case-insensitively."""
    found: dict[str, list[Path]] = {role: [] for role in ROLES}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            if path.name.lower() in found and is_dicom_folder(path):
                found[path.name.lower()].append(path)
            continue
        if image_suffix(path) is None or not path.is_file():
            continue
        stem = strip_suffix(path).lower()
        if stem in found:
            found[stem].append(path)
    return found


def read_case_folder(folder: str | os.PathLike) -> Case:
    folder = Path(folder)
    name = folder.name
    files = role_files(folder)
    problems: list[str] = []
    for role, paths in files.items():
        if len(paths) > 1:
            listed = " and ".join(p.name for p in paths)
            problems.append(f"case {name}: files {listed}: several files for '{role}'; keep exactly one")

    sources = [m for m in SOURCE_MODALITIES if files[m]]
    modality: str | None = None
    source: Path | None = None
    if len(sources) == 2:
        problems.append(f"case {name}: files {files['mr'][0].name} and {files['cbct'][0].name}: both an MR and a "
                        f"CBCT source; a case holds exactly one source (mr.* for MR->CT, cbct.* for CBCT->CT)")
    elif not sources:
        problems.append(f"case {name}: file mr.nii.gz or cbct.nii.gz: no source image "
                        f"(expected {expected_names('mr')} or a DICOM folder mr/, or the same names for cbct)")
    else:
        modality = sources[0]
        source = files[modality][0]
    return Case(name=name, modality=modality, source=source,
                ct=files["ct"][0] if files["ct"] else None,
                mask=files["mask"][0] if files["mask"] else None,
                problems=problems)


def case_folders(dataset_dir: str | os.PathLike) -> list[Path]:
    """Sub-folders of `dataset_dir` that are cases (hidden folders skipped), sorted by name."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise DGCFError(f"dataset folder {dataset_dir} does not exist or is not a folder")
    return sorted(p for p in dataset_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def find_cases(dataset_dir: str | os.PathLike, note=None) -> list[Case]:
    """Every case folder of a dataset, in name order.

    Entries that hold no image at all (an official download's `overview/` spreadsheets, copied hidden
    files, notes) are skipped with one note line; a folder with some images is a case, and what it lacks
    is a problem of that case.
    """
    folders: list[str] = []
    skipped: list[str] = []
    for folder in case_folders(dataset_dir):
        (folders if any(image_suffix(p) for p in folder.iterdir() if p.is_file()) else skipped).append(folder.name)
    skipped += sorted(p.name for p in Path(dataset_dir).iterdir()
                      if p.is_file() and p.name not in DATASET_FILES and not image_suffix(p))
    if skipped:
        (note or _note)(f"note: {dataset_dir}: skipped {len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} "
                        f"holding no case images: {', '.join(skipped[:8])}{', ...' if len(skipped) > 8 else ''}")
    return [read_case_folder(Path(dataset_dir) / name) for name in folders]


def _note(message: str) -> None:
    from dgcf_auto.log import get_logger

    get_logger(__name__).info(message)


def task_of(cases: list[Case]) -> str:
    """'mr2ct' or 'cbct2ct'; a DGCFError for no cases or a mix of tasks."""
    return TASK_OF_MODALITY[modality_of(cases)]


def modality_of(cases: list[Case]) -> str:
    """The cases' one source modality, 'mr' or 'cbct'; a DGCFError for no cases or a mix of modalities."""
    modalities = sorted({c.modality for c in cases if c.modality is not None})
    if not modalities:
        raise DGCFError("no case with a source image (mr.* or cbct.*) found; cannot tell the task")
    if len(modalities) > 1:
        raise DGCFError(mixed_task_message(cases))
    return modalities[0]


def mixed_task_message(cases: list[Case]) -> str | None:
    """None when all cases share one source modality, else one line saying which cases differ."""
    by_modality: dict[str, list[str]] = {}
    for case in cases:
        if case.modality is not None:
            by_modality.setdefault(case.modality, []).append(case.name)
    if len(by_modality) < 2:
        return None
    parts = []
    for modality, names in sorted(by_modality.items()):
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        parts.append(f"{len(names)} with {modality} ({shown})")
    return "dataset mixes tasks: " + "; ".join(parts) + "; a dataset holds either MR or CBCT cases"
