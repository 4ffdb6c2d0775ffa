"""What `dgcf_predict -i` accepts: SynthRAD2023 case folders, a folder of source images, or one file.
Sources may be DICOM: `<case>/mr/` in a case folder, a folder of DICOM series folders (one case each), or
one bare DICOM folder (one case).

Inputs become `dataset.Case`s (CT left out: prediction never reads it) and are checked by the dataset
package's own validation, so prediction rejects exactly what training would (NaN in NIfTI, truncated files,
masks on another grid, ...).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from dgcf_auto.dataset.discovery import SOURCE_MODALITIES, Case, read_case_folder
from dgcf_auto.dataset.validation import validate_cases
from dgcf_auto.dicomio import is_dicom_folder
from dgcf_auto.errors import DGCFError, DGCFInputErrors
from dgcf_auto.imageio import IMAGE_SUFFIXES, find_image, image_suffix, strip_suffix


def collect_inputs(path: str | Path, series_uids: tuple[str, ...] = ()) -> list[Case]:
    """Cases under `path`, sorted by name; an error when there is nothing to predict. `series_uids` picks
    the series in DICOM folders that hold several."""
    path = Path(path)
    series_uids = tuple(series_uids or ())
    if path.is_file():
        if image_suffix(path) is None:
            raise DGCFError(f"file {path}: not an image ({', '.join(IMAGE_SUFFIXES)}) nor a DICOM folder")
        return [Case(strip_suffix(path), None, path)]
    if not path.is_dir():
        raise DGCFError(f"input {path}: no such file or folder")
    if is_dicom_folder(path):
        return [Case(path.name, None, path, series_uids=series_uids)]
    folders = [d for d in sorted(path.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    cases = [replace(read_case_folder(d), ct=None, series_uids=series_uids) if _holds_source(d)
             else Case(d.name, None, d, series_uids=series_uids)
             for d in folders if _holds_source(d) or is_dicom_folder(d)]
    flat = [Case(strip_suffix(f), None, f) for f in sorted(path.iterdir())
            if f.is_file() and image_suffix(f) and not f.name.startswith(".")]
    if cases and flat:
        raise DGCFError(f"input {path}: holds both case folders and image files; give one kind")
    inputs = cases or flat
    if not inputs:
        raise DGCFError(f"input {path}: no images found (expected <case>/mr|cbct.nii.gz folders, "
                        f"image files {', '.join(IMAGE_SUFFIXES)} or DICOM folders)")
    names = [i.name for i in inputs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DGCFError(f"input {path}: several images share a case name: {', '.join(duplicates)}")
    return inputs


def check_inputs(cases: list[Case], source_modality: str | None) -> None:
    """Every problem of every input at once, before anything is written."""
    problems = validate_cases(cases, require_ct=False, require_mask=False)
    for case in cases:
        if case.modality and source_modality and case.modality != source_modality:
            problems.append(f"case {case.name}: file {case.source.name}: a {case.modality} source, but the "
                            f"model was trained on {source_modality}")
    if problems:
        raise DGCFInputErrors(problems)


def reference_ct(case: Case) -> Path | None:
    """The CT beside a SynthRAD2023-format source (for figures only)."""
    if case.modality is None:
        return None
    found = find_image(case.source.parent, "ct")
    return found[0] if found else None


def _holds_source(folder: Path) -> bool:
    return any(find_image(folder, modality) for modality in SOURCE_MODALITIES)
