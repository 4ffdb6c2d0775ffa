"""What `dgcf_predict -i` accepts: SynthRAD2023 case folders, a folder of source images, or one file.

Inputs become `dataset.Case`s (CT left out: prediction never reads it) and are checked by the dataset
package's own validation, so prediction rejects exactly what training would (NaN in NIfTI, truncated files,
masks on another grid, ...).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from dgcf_auto.dataset.discovery import SOURCE_MODALITIES, Case, read_case_folder
from dgcf_auto.dataset.validation import validate_cases
from dgcf_auto.errors import DGCFError, DGCFInputErrors
from dgcf_auto.imageio import IMAGE_SUFFIXES, find_image, image_suffix, strip_suffix


def collect_inputs(path: str | Path) -> list[Case]:
    """Cases under `path`, sorted by name; an error when there is nothing to predict."""
    path = Path(path)
    if path.is_file():
        if image_suffix(path) is None:
            raise DGCFError(f"file {path}: not an image ({', '.join(IMAGE_SUFFIXES)})")
        return [Case(strip_suffix(path), None, path)]
    if not path.is_dir():
        raise DGCFError(f"input {path}: no such file or folder")
    folders = [d for d in sorted(path.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    cases = [replace(read_case_folder(d), ct=None) for d in folders if _holds_source(d)]
    flat = [Case(strip_suffix(f), None, f) for f in sorted(path.iterdir())
            if f.is_file() and image_suffix(f) and not f.name.startswith(".")]
    if cases and flat:
        raise DGCFError(f"input {path}: holds both case folders and image files; give one kind")
    inputs = cases or flat
    if not inputs:
        raise DGCFError(f"input {path}: no images found (expected <case>/mr|cbct.nii.gz folders "
                        f"or image files {', '.join(IMAGE_SUFFIXES)})")
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


def split_inputs(dataset, split: str, folds: list[str] | None, trainer: str, plans: str, configuration: str,
                 output: str | None) -> tuple[list[Case], Path]:
    """`dgcf_predict --split`: the fold's recorded cases from the raw dataset, and where their sCTs go
    (`-o`, else the fold's validation/ or test/ folder)."""
    from dgcf_auto.paths import split_prediction_folder
    from dgcf_auto.planning.splits import split_cases

    if dataset is None or not folds or len(folds) != 1:
        raise DGCFError(f"--split {split} needs a dataset and exactly one fold: -d ID -f F")
    raw, cases = split_cases(dataset, split, folds[0])
    folder = Path(output) if output else split_prediction_folder(raw.name, trainer, plans, configuration,
                                                                 folds[0], split)
    return [replace(case, ct=None) for case in cases], folder
