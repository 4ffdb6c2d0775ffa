"""What `dgcf_predict -i` accepts: one case folder (`<case>/mr.nii.gz` with optional mask.nii.gz and
ct.nii.gz: one case named after the folder, using its mask; any other file there is ignored), a folder of case
folders, a folder of source images, or one file. Files named ct.* or mask.* are never predicted as sources.
Sources may be DICOM: `<case>/mr/` in a case folder, a folder of DICOM series folders (one case each), or
one bare DICOM folder (one case).

Inputs become `dataset.Case`s (CT left out: prediction never reads it) and are checked by the dataset
package's own validation, so prediction rejects exactly what training would (NaN in NIfTI, truncated files,
masks on another grid, ...).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import SimpleITK as sitk

from dgcf_auto.dataset.discovery import SOURCE_MODALITIES, Case, expected_names, read_case_folder, role_files
from dgcf_auto.dataset.source_checks import check_sources
from dgcf_auto.dataset.validation import validate_cases
from dgcf_auto.dicomio import check_series_uids, is_dicom_folder
from dgcf_auto.errors import DGCFError, DGCFInputErrors
from dgcf_auto.imageio import IMAGE_SUFFIXES, find_image, image_suffix, strip_suffix
from dgcf_auto.log import get_logger
from dgcf_auto.plans import source_signature

TARGET_ROLES = ("ct", "mask")  # a case's files that are never sources
log = get_logger(__name__)


def collect_inputs(path: str | Path, series_uids: tuple[str, ...] = (), mask_roi: str | None = None) -> list[Case]:
    """Cases under `path`, sorted by name; an error when there is nothing to predict. `series_uids` picks
    the series in DICOM folders that hold several; `mask_roi` names the RTSTRUCT ROI to use as body mask."""
    inputs = _collect(Path(path), tuple(series_uids or ()))
    check_series_uids([c.source for c in inputs if c.source is not None and c.source.is_dir()], series_uids,
                      f"input {path}")
    return [replace(case, mask_roi=mask_roi) for case in inputs] if mask_roi else inputs


def _collect(path: Path, series_uids: tuple[str, ...]) -> list[Case]:
    if path.is_file():
        if image_suffix(path) is None:
            raise DGCFError(f"file {path}: not an image ({', '.join(IMAGE_SUFFIXES)}) nor a DICOM folder")
        _refuse_target_role(path)
        return [Case(strip_suffix(path), None, path)]
    if not path.is_dir():
        raise DGCFError(f"input {path}: no such file or folder")
    if _holds_source(path):  # before the DICOM test: a case folder may hold an RTSTRUCT file
        return [_case_folder(path, series_uids)]
    if is_dicom_folder(path):
        _refuse_target_role(path)
        return [Case(path.resolve().name, None, path, series_uids=series_uids)]
    folders = [d for d in sorted(path.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    cases = [replace(read_case_folder(d), ct=None, series_uids=series_uids) if _holds_source(d)
             else Case(d.name, None, d, series_uids=series_uids)
             for d in folders if _holds_source(d) or is_dicom_folder(d)]
    flat = [Case(strip_suffix(f), None, f) for f in sorted(path.iterdir())
            if f.is_file() and image_suffix(f) and not f.name.startswith(".")]
    targets = [c.source_path.name for c in flat if c.name.lower() in TARGET_ROLES]
    if targets:
        raise DGCFError(f"input {path}: {', '.join(targets)} {'are' if len(targets) > 1 else 'is'} a case's CT or "
                        f"mask, not sources; a case folder needs a source {expected_names('mr')} or cbct.* "
                        f"(or a DICOM folder mr/ or cbct/)")
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


def _case_folder(path: Path, series_uids: tuple[str, ...]) -> Case:
    """`-i <case>`: a folder with exactly one source (mr.* or cbct.*) is one case, named after it, with its own
    mask; its CT is never predicted. Everything else a clinic keeps there (structures, RTSTRUCT, JSON, README,
    sub-folders, other images) is ignored and named in one line at --verbose. Two sources are ambiguous
    (`read_case_folder` says so)."""
    roles = role_files(path)
    used = {p for role in (*SOURCE_MODALITIES, *TARGET_ROLES) for p in roles[role]}
    ignored = [p.name + ("/" if p.is_dir() else "") for p in sorted(path.iterdir())
               if p not in used and not p.name.startswith(".")]
    if ignored:
        shown = ", ".join(ignored[:8]) + (", ..." if len(ignored) > 8 else "")
        log.debug(f"input {path}: one case; ignored {len(ignored)} other entr{'y' if len(ignored) == 1 else 'ies'}: "
                  f"{shown}")
    return replace(read_case_folder(path.resolve()), ct=None, series_uids=series_uids)


def _refuse_target_role(path: Path) -> None:
    """A case's ct.* or mask.* (file or DICOM folder) given as the input is never predicted as a source."""
    role = strip_suffix(path).lower()
    if role in TARGET_ROLES:
        what = "CT" if role == "ct" else "mask"
        raise DGCFError(f"file {path.name}: a case's {what}, not a source; give the source (mr.* or cbct.*) or "
                        f"its case folder {path.parent}")


def check_inputs(cases: list[Case], plans: dict, force: bool = False) -> list[dict]:
    """Every problem of every input at once, before anything is written: readable, intact files first, then
    sources that look like the model's training sources (`dataset.source_checks`; `force` lets those pass
    and returns what was forced, for the run's record)."""
    source_modality = plans.get("source_modality")
    problems = validate_cases(cases, require_ct=False, require_mask=False)
    problems += [p for case in cases if case.mask_roi and (p := _roi_problem(case, case.mask_roi))]
    for case in cases:
        if case.modality and source_modality and case.modality != source_modality:
            problems.append(f"case {case.name}: file {case.source_path.name}: a {case.modality} source, but the "
                            f"model was trained on {source_modality}")
    if problems:
        raise DGCFInputErrors(problems)
    return check_sources(cases, source_signature(plans), force)


def read_roi_mask(case: Case, roi: str, source: sitk.Image) -> sitk.Image:
    """The case's `mask_roi` (`roi`) from an RTSTRUCT in its DICOM source folder or its case folder, on the
    source grid."""
    from dgcf_auto.dicomio import open_series, roi_mask

    files = _rtstruct_candidates(case)
    where = f"case {case.name}"
    if not files:
        raise DGCFError(f"{where}: --mask_roi {roi}: no RTSTRUCT file in {case.source_path.name}/ or beside it")
    frame, series = None, None
    if case.source_path.is_dir():
        series = open_series(case.source_path, case.name, case.series_uids)
        frame = str(getattr(series.headers[0], "FrameOfReferenceUID", "") or "") or None
    return roi_mask(files, roi, source, where, frame, series)


def _roi_problem(case: Case, roi: str) -> str | None:
    """Before any prediction: an RTSTRUCT holding the --mask_roi ROI (`roi`) exists for the case."""
    import pydicom

    files = _rtstruct_candidates(case)
    names = []
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        names += [str(r.ROIName) for r in getattr(ds, "StructureSetROISequence", [])]
    if not files:
        return f"case {case.name}: --mask_roi {roi}: no RTSTRUCT file in {case.source_path.name}/ or beside it"
    if roi.strip().lower() not in {n.strip().lower() for n in names}:
        return (f"case {case.name}: no RTSTRUCT ROI named '{roi}' (ROIs found: "
                f"{', '.join(sorted(set(names))) or 'none'})")
    return None


def _rtstruct_candidates(case: Case) -> list[Path]:
    from dgcf_auto.dicomio import rtstruct_files

    source = case.source_path
    folders = [source] + ([source.parent] if case.modality else [])
    if case.modality:  # a case folder: RTSTRUCTs may also sit in a sub-folder of their own (rtstruct/, RS/)
        folders += [d for d in sorted(source.parent.iterdir()) if d.is_dir() and d != source]
    return rtstruct_files(folders)


def reference_ct(case: Case) -> Path | None:
    """The CT beside a SynthRAD2023-format source (for figures only)."""
    if case.modality is None:
        return None
    found = find_image(case.source_path.parent, "ct")
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


def prediction_inputs(input_path, output, split: str | None, dataset, folds, trainer: str, plans: str,
                      configuration: str):
    """What `dgcf_predict` predicts and where to: (-i, -o) as given, or with --split the fold's cases and
    their default output folder."""
    if (input_path is None) == (split is None) or (input_path is not None and output is None):
        raise DGCFError("give either -i IN -o OUT, or -d ID -f F --split val|test")
    if split is None:
        return input_path, output
    return split_inputs(dataset, split, folds, trainer, plans, configuration, output)
