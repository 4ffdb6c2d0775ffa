"""Predict a list of cases into an output folder: checks first, then read-ahead / write-behind threads.

Reruns follow nnU-Net: existing outputs are overwritten, unless `continue_prediction`, which skips a case
only when its output is exactly the file this model wrote for this very source (SHA-256 of output and
source recorded in the folder's provenance JSON, see `provenance.py`) and lies on the source's grid.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import SimpleITK as sitk
from tqdm import tqdm

from dgcf_auto.atomic import check_writable, write_json
from dgcf_auto.dataset.discovery import Case
from dgcf_auto.errors import DGCFError
from dgcf_auto.imageio import IMAGE_SUFFIXES, geometry_mismatch, image_suffix, read_header, read_image, write_image
from dgcf_auto.inference.predictor import SCTPredictor
from dgcf_auto.inference.provenance import (PROVENANCE_FILE, build_provenance, case_record, file_sha256,
                                            read_provenance)
from dgcf_auto.inference.sources import check_inputs, reference_ct


def output_path(item: Case, output_dir: Path, output_format: str) -> Path:
    suffix = image_suffix(item.source) if output_format == "same" else output_format
    return output_dir / f"{item.name}{suffix}"


def uncertainty_path(item: Case, target: Path) -> Path:
    return target.parent / f"{item.name}_uncertainty{target.name[len(item.name):]}"


def check_output_location(inputs: list[Case], output_dir: Path, output_format: str,
                          input_root: Path | None = None) -> None:
    """Refuse an output folder that is a file, is (or lies inside) the input folder, or would overwrite an input."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise DGCFError(f"output {output_dir}: is a file, not a folder; give a folder for the sCT volumes")
    resolved = output_dir.resolve()
    if input_root is not None and Path(input_root).is_dir():
        root = Path(input_root).resolve()
        if resolved == root or root in resolved.parents:
            where = "is the input folder" if resolved == root else f"lies inside the input folder {input_root}"
            raise DGCFError(f"output {output_dir}: {where}; choose a separate output folder")
    input_files = {p.resolve() for c in inputs for p in (c.source, c.ct, c.mask) if p is not None}
    for item in inputs:
        target = output_path(item, output_dir, output_format)
        for path in (target, uncertainty_path(item, target)):
            if path.resolve() in input_files:
                raise DGCFError(f"output {path}: is an input file and would be overwritten; "
                                f"choose a separate output folder")


def check_outputs(inputs: list[Case], output_dir: Path, output_format: str, input_root: Path | None = None,
                  png_dir: Path | None = None) -> None:
    """Everything about where outputs go, checked before any expensive work."""
    if output_format not in IMAGE_SUFFIXES + ("same",):
        raise DGCFError(f"output format {output_format!r} is not one of {', '.join(IMAGE_SUFFIXES)} or 'same'")
    check_output_location(inputs, output_dir, output_format, input_root)
    check_writable(output_dir)
    if png_dir is not None:
        check_writable(png_dir, "figure folder")


def predict_inputs(predictor: SCTPredictor, inputs: list[Case], output_dir: Path,
                   output_format: str = ".nii.gz", continue_prediction: bool = False, num_workers: int = 2,
                   save_uncertainty: bool = False, png_dir: Path | None = None,
                   input_root: Path | None = None) -> list[Path]:
    """Predict every case (or, with `continue_prediction`, those not already done); returns the files written."""
    output_dir = Path(output_dir)
    check_outputs(inputs, output_dir, output_format, input_root, png_dir)
    check_inputs(inputs, predictor.plans.get("source_modality"))

    provenance = build_provenance(predictor.checkpoint_files[0].parent.parent, predictor.checkpoint_files,
                                  predictor.options)
    previous = read_provenance(output_dir)
    if previous is not None and previous.get("model_id") == provenance["model_id"]:
        provenance["cases"] = previous["cases"]  # outputs of this same model stay on record
    todo = inputs
    if continue_prediction:
        todo = _cases_to_redo(inputs, output_dir, output_format, save_uncertainty, provenance)
    for item in todo:
        provenance["cases"].pop(item.name, None)
    recorder = _ProvenanceRecorder(provenance, output_dir / PROVENANCE_FILE)
    recorder.save()
    if predictor.derives_masks and any(item.mask is None for item in todo):
        tqdm.write(f"dgcf_predict: no body mask given for {sum(i.mask is None for i in todo)} case(s): masks "
                   f"derived from the source ({predictor.mask_from}); see documentation/prediction.md")

    written = []
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        pending_reads = [pool.submit(_read, item) for item in todo[:1]]
        writes = []
        for index, item in enumerate(tqdm(todo, desc="cases", unit="case")):
            if index + 1 < len(todo):  # read the next case while this one is predicted
                pending_reads.append(pool.submit(_read, todo[index + 1]))
            for job in writes:  # a failed write (full disk) stops the run now, not after every prediction
                if job.done():
                    job.result()
            source, mask = pending_reads[index].result()
            sct, uncertainty = predictor.predict_volume(source, mask, item.name, save_uncertainty)
            target = output_path(item, output_dir, output_format)
            writes.append(pool.submit(_write_case, item, sct, uncertainty, target, recorder))
            if png_dir is not None:
                writes.append(pool.submit(_figure, item, source, sct, mask, png_dir))
            written.append(target)
        for job in writes:
            job.result()
    return written


def _cases_to_redo(inputs: list[Case], output_dir: Path, output_format: str, save_uncertainty: bool,
                   provenance: dict) -> list[Case]:
    """The cases whose existing output cannot be trusted; prints how many are skipped and why the rest are not."""
    reasons: dict[str, int] = {}
    todo = []
    for item in inputs:
        reason = _why_redo(item, output_path(item, output_dir, output_format), save_uncertainty, provenance)
        if reason:
            reasons[reason] = reasons.get(reason, 0) + 1
            todo.append(item)
    skipped = len(inputs) - len(todo)
    why = "; ".join(f"{n} {reason}" for reason, n in reasons.items())
    tqdm.write(f"dgcf_predict: --continue-prediction: {skipped} case(s) already predicted by this model, skipped; "
               f"{len(todo)} to predict" + (f" ({why})" if why else ""))
    return todo


def _why_redo(item: Case, target: Path, save_uncertainty: bool, provenance: dict) -> str | None:
    """None when `target` is this model's complete output for this source; else the reason to redo it."""
    if not target.is_file():
        return "without output"
    record = provenance["cases"].get(item.name)
    if record is None or record.get("output") != target.name:
        return "written by another model, other options or unknown"
    try:
        if record.get("source") != str(item.source.resolve()) or record.get("source_sha256") != file_sha256(item.source):
            return "whose source changed"
        if record.get("bytes") != target.stat().st_size or record.get("sha256") != file_sha256(target):
            return "changed or incomplete since written"
        if save_uncertainty:
            extra = uncertainty_path(item, target)
            if not extra.is_file() or record.get("uncertainty_sha256") != file_sha256(extra):
                return "without uncertainty map"
        mismatch = geometry_mismatch(read_header(target), read_header(item.source))
    except (OSError, DGCFError):
        return "unreadable"
    return "not on the source's grid" if mismatch else None


class _ProvenanceRecorder:
    """The provenance JSON, rewritten (atomically) after every case so that a killed run leaves a true record."""

    def __init__(self, provenance: dict, path: Path):
        self.provenance, self.path, self.lock = provenance, path, threading.Lock()

    def add(self, name: str, record: dict) -> None:
        with self.lock:
            self.provenance["cases"][name] = record
            self.save()

    def save(self) -> None:
        write_json(self.provenance, self.path)


def _write_case(item: Case, sct, uncertainty, target: Path, recorder: _ProvenanceRecorder) -> None:
    write_image(sct, target)
    record = dict(case_record(item.source, target), source_sha256=file_sha256(item.source))
    if uncertainty is not None:
        extra = uncertainty_path(item, target)
        write_image(uncertainty, extra)
        record["uncertainty_sha256"] = file_sha256(extra)
    recorder.add(item.name, record)


def _read(item: Case) -> tuple[sitk.Image, sitk.Image | None]:
    source = read_image(item.source, item.name)
    mask = read_image(item.mask, item.name) if item.mask is not None else None
    return source, mask


def _figure(item: Case, source, sct, mask, png_dir: Path) -> None:
    from dgcf_auto.evaluation.report import save_case_figure

    ct_file = reference_ct(item)
    ct = read_image(ct_file, item.name) if ct_file else None
    save_case_figure(source, sct, ct, mask, png_dir / f"{item.name}.png", title=item.name)
