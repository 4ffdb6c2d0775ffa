"""Predict a list of cases into an output folder: checks first, then read-ahead / write-behind threads.

Reruns follow nnU-Net: existing outputs are overwritten, unless `continue_prediction`, which skips a case
only when its output is exactly the file this model wrote for this very source (SHA-256 of output and
source recorded in the folder's provenance JSON, see `provenance.py`) and lies on the source's grid.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Collection
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import SimpleITK as sitk

from dgcf_auto.atomic import check_writable, folder_lock, write_json
from dgcf_auto.dataset.discovery import Case
from dgcf_auto.dicomio import DEFAULT_UID_PREFIX, frame_of_reference, open_series, write_ct_series
from dgcf_auto.errors import DGCFError, DGCFInputErrors
from dgcf_auto.imageio import IMAGE_SUFFIXES, geometry_mismatch, image_suffix, read_header, read_image, write_image
from dgcf_auto.inference.model_loading import model_dataset
from dgcf_auto.inference.options import OutputOptions, PredictionOptions
from dgcf_auto.inference.predictor import SCTPredictor
from dgcf_auto.inference.provenance import (
    PROVENANCE_FILE,
    build_provenance,
    case_record,
    file_sha256,
    output_bytes,
    read_provenance,
)
from dgcf_auto.inference.report import REPORT_FILE, PeakMemory, RunReport, report_name
from dgcf_auto.inference.saved_predictions import (
    PLANS_FILE,
    SAVED_OUTPUTS,
    saved_files,
    write_folder_plans,
    write_saved_prediction,
)
from dgcf_auto.inference.sources import check_inputs, read_roi_mask, reference_ct
from dgcf_auto.log import get_logger, progress_bar

log = get_logger(__name__)

OUTPUT_FORMATS = IMAGE_SUFFIXES + ("dicom", "same")


def output_path(item: Case, output_dir: Path, output_format: str) -> Path:
    """`<case>.nii.gz` and the like, or the folder `<case>/` of a DICOM series ('same' for a DICOM source)."""
    suffix = (image_suffix(item.source_path) or "dicom") if output_format == "same" else output_format
    return output_dir / (item.name if suffix == "dicom" else f"{item.name}{suffix}")


def uncertainty_path(item: Case, target: Path) -> Path:
    """Beside the sCT in its format; a DICOM sCT gets a NIfTI map (a float map is no CT series)."""
    suffix = target.name[len(item.name):] or ".nii.gz"
    return target.parent / f"{item.name}_uncertainty{suffix}"


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


def case_outputs(item: Case, output_dir: Path, output_format: str, save_uncertainty: bool = False,
                 extra_outputs: dict[str, str] | None = None) -> dict[Path, str]:
    """Every path predicting `item` writes, with what it is: the sCT, its uncertainty map, and one per entry of
    `extra_outputs` ({suffix after the case name: what it is}, e.g. {".npz": "probabilities"})."""
    target = output_path(item, output_dir, output_format)
    outputs = {target: "its sCT"}
    if save_uncertainty:
        outputs[uncertainty_path(item, target)] = "its uncertainty map"
    for suffix, what in (extra_outputs or {}).items():
        outputs[Path(output_dir) / f"{item.name}{suffix}"] = f"its {what}"
    return outputs


def check_output_collisions(inputs: list[Case], output_dir: Path, output_format: str, save_uncertainty: bool = False,
                            extra_outputs: dict[str, str] | None = None) -> None:
    """Two cases that would write one name (foo's uncertainty map and the sCT of a case foo_uncertainty) would
    overwrite each other, and --continue_prediction would then trust the wrong file: refuse in one line naming
    both inputs. `inputs`: every case of the run (all parts)."""
    output_dir = Path(output_dir)
    writers: dict[Path, str] = {}
    for item in inputs:
        for path, what in case_outputs(item, output_dir, output_format, save_uncertainty, extra_outputs).items():
            mine = f"case {item.name} ({what}, from {item.source})"
            if path in writers:
                raise DGCFError(f"output {path}: both {writers[path]} and {mine} would write it; "
                                f"rename one of the inputs")
            writers[path] = mine
    reserved = [(PROVENANCE_FILE, "this run's provenance record"), (REPORT_FILE, "this run's report")]
    if extra_outputs == SAVED_OUTPUTS:
        reserved.append((PLANS_FILE, "the folder's plans for dgcf_ensemble"))
    for name, what in reserved:
        if output_dir / name in writers:
            raise DGCFError(f"output {output_dir / name}: both {writers[output_dir / name]} and {what} would write "
                            f"it; rename that input")


def check_outputs(inputs: list[Case], output_dir: Path, output_format: str, input_root: Path | None = None,
                  png_dir: Path | None = None, save_uncertainty: bool = False,
                  extra_outputs: dict[str, str] | None = None) -> None:
    """Everything about where outputs go, checked before any expensive work. `inputs`: every case of the run
    (all parts); `extra_outputs` as in `case_outputs`."""
    if output_format not in OUTPUT_FORMATS:
        raise DGCFError(f"output format {output_format!r} is not one of {', '.join(OUTPUT_FORMATS)}")
    check_output_location(inputs, output_dir, output_format, input_root)
    check_output_collisions(inputs, output_dir, output_format, save_uncertainty, extra_outputs)
    check_writable(output_dir)
    if png_dir is not None:
        check_writable(png_dir, "figure folder")


def check_frames_of_reference(inputs: list[Case], output_dir: Path, output_format: str, uid_prefix: str,
                              new_frame_of_reference: bool) -> None:
    """Before any prediction: every DICOM source written as a DICOM sCT has a Frame of Reference UID, or
    --new_frame_of_reference asks for one (dicomio.frame_of_reference)."""
    problems = []
    for item in inputs:
        if item.source_path.is_dir() and image_suffix(output_path(item, output_dir, output_format)) is None:
            series = open_series(item.source_path, item.name, item.series_uids)
            try:
                frame_of_reference(series, uid_prefix, new_frame_of_reference)
            except DGCFError as exc:
                problems.append(f"case {item.name}: {exc}")
    if problems:
        raise DGCFInputErrors(problems)


def predict_inputs(predictor: SCTPredictor, inputs: list[Case], output_dir: Path,
                   output_options: OutputOptions = OutputOptions(), options: PredictionOptions = PredictionOptions(),
                   input_root: Path | None = None) -> list[Path]:
    """Predict every case (or, with `output_options.continue_prediction`, those not already done); returns the
    files written. `output_options`: what is written and how (format, uncertainty, probabilities with the
    folder's plans.json (saved_predictions.py), DICOM UIDs and frame of reference, figures, writing threads).
    `options`: of the run's PredictionOptions, `part_id`/`num_parts` name this run's report when a large input
    set is split across machines; `force` predicts sources that do not look like the model's (recorded as
    `forced` in report and provenance); `reading_threads` cases are read ahead of the network at once;
    `progress`. (The predictor already holds the others.)"""
    output_dir = Path(output_dir)
    output_format, save_uncertainty = output_options.output_format, output_options.save_uncertainty
    save_probabilities = output_options.save_probabilities
    new_frame_of_reference = output_options.new_frame_of_reference
    png_dir = Path(output_options.png_dir) if output_options.png_dir else None
    check_outputs(inputs, output_dir, output_format, input_root, png_dir, save_uncertainty,
                  SAVED_OUTPUTS if save_probabilities else None)
    forced = check_inputs(inputs, predictor.plans, options.force)
    uid_prefix = output_options.dicom_uid_prefix or DEFAULT_UID_PREFIX
    check_frames_of_reference(inputs, output_dir, output_format, uid_prefix, new_frame_of_reference)

    model_folder = predictor.checkpoint_files[0].parent.parent
    provenance = build_provenance(model_folder, predictor.checkpoint_files, predictor.options,
                                  dataset=model_dataset(model_folder, predictor.plans))
    if forced:
        provenance["forced"] = forced
    previous = _read_record(output_dir)
    if previous is not None and previous.get("model_id") == provenance["model_id"]:
        provenance["cases"] = previous["cases"]  # outputs of this same model stay on record
    todo = inputs
    if output_options.continue_prediction:
        todo = _cases_to_redo(inputs, output_dir, output_format, save_uncertainty, provenance, save_probabilities)
    for item in todo:
        provenance["cases"].pop(item.name, None)
    recorder = _ProvenanceRecorder(provenance, output_dir / PROVENANCE_FILE, {item.name for item in todo})
    recorder.save()
    if save_probabilities:
        write_folder_plans(output_dir, predictor.plans)
    part = (options.part_id, options.num_parts)
    report = RunReport(output_dir / report_name(part[1], part[0]), provenance, predictor, part)
    if forced:
        report.report["forced"] = forced
    dicom = dict(uid_prefix=uid_prefix, new_frame_of_reference=new_frame_of_reference,
                 uid_seed=provenance["model_id"] if output_options.derived_uids else None,
                 **dicom_description(predictor))
    warn_derived_masks(predictor, sum(item.mask is None and not item.mask_roi for item in todo))

    written = []
    ahead = max(1, options.reading_threads)
    with ThreadPoolExecutor(ahead) as readers, ThreadPoolExecutor(max(1, output_options.writing_threads)) as pool:
        pending_reads = [readers.submit(read_case, item) for item in todo[:ahead]]
        writes: list[Future] = []
        for index, item in enumerate(progress_bar(todo, desc="cases", unit="case", disable=not options.progress)):
            if index + ahead < len(todo):  # read the next cases while this one is predicted
                pending_reads.append(readers.submit(read_case, todo[index + ahead]))
            for job in writes:  # a failed write (full disk) stops the run now, not after every prediction
                if job.done():
                    job.result()
            source, mask = pending_reads[index].result()
            started = time.perf_counter()
            with PeakMemory(predictor.device) as memory:
                prediction = predictor.predict_case(source, mask, item.name, save_uncertainty)
            sct, uncertainty = prediction.sct, prediction.uncertainty
            report.add_case(item.name, seconds=round(time.perf_counter() - started, 3), slices=sct.GetSize()[2],
                            peak_rss_mb=round(memory.peak_rss / 2**20, 1),
                            peak_vram_mb=None if memory.peak_vram is None else round(memory.peak_vram / 2**20, 1))
            target = output_path(item, output_dir, output_format)
            writes.append(pool.submit(_write_case, item, sct, uncertainty, target, recorder, report, dicom,
                                      prediction if save_probabilities else None))
            if png_dir is not None:
                writes.append(pool.submit(_figure, item, source, sct, mask, png_dir))
            written.append(target)
        for job in writes:
            job.result()
    report.save()
    return written


def warn_derived_masks(predictor: SCTPredictor, unmasked: int) -> None:
    """Said wherever a prediction derives its own body mask (CLI and Python API): the mask changes the
    normalisation and which voxels are set to air, so the result differs from one made with the case's mask."""
    if predictor.derives_masks and unmasked:
        log.warning(f"no body mask given for {unmasked} case(s): masks derived from the source "
                    f"({predictor.mask_from}); see documentation/prediction.md")


def _cases_to_redo(inputs: list[Case], output_dir: Path, output_format: str, save_uncertainty: bool,
                   provenance: dict, save_probabilities: bool = False) -> list[Case]:
    """The cases whose existing output cannot be trusted; prints how many are skipped and why the rest are not."""
    reasons: dict[str, int] = {}
    todo = []
    for item in inputs:
        reason = _why_redo(item, output_path(item, output_dir, output_format), save_uncertainty, provenance,
                           save_probabilities)
        if reason:
            reasons[reason] = reasons.get(reason, 0) + 1
            todo.append(item)
    skipped = len(inputs) - len(todo)
    why = "; ".join(f"{n} {reason}" for reason, n in reasons.items())
    log.info(f"--continue_prediction: {skipped} case(s) already predicted by this model, skipped; "
             f"{len(todo)} to predict" + (f" ({why})" if why else ""))
    return todo


def _why_redo(item: Case, target: Path, save_uncertainty: bool, provenance: dict,
              save_probabilities: bool = False) -> str | None:
    """None when `target` is this model's complete output for this source; else the reason to redo it."""
    if not target.exists():
        return "without output"
    record = provenance["cases"].get(item.name)
    if record is None or record.get("output") != target.name:
        return "written by another model, other options or unknown"
    try:
        if (record.get("source") != str(item.source_path.resolve())
                or record.get("source_sha256") != file_sha256(item.source_path)):
            return "whose source changed"
        if record.get("bytes") != output_bytes(target) or record.get("sha256") != file_sha256(target):
            return "changed or incomplete since written"
        if save_uncertainty:
            extra = uncertainty_path(item, target)
            if not extra.is_file() or record.get("uncertainty_sha256") != file_sha256(extra):
                return "without uncertainty map"
        if save_probabilities:
            npz, meta = saved_files(target.parent, item.name)
            if not (npz.is_file() and meta.is_file()) or record.get("probabilities_sha256") != file_sha256(npz):
                return "without saved probabilities"
        mismatch = geometry_mismatch(read_header(target), read_header(item.source_path))
    except (OSError, DGCFError):
        return "unreadable"
    return "not on the source's grid" if mismatch else None


def _read_record(folder: Path) -> dict | None:
    """The output folder's provenance (checked); a broken one stops the run before it trusts or merges anything."""
    try:
        return read_provenance(folder)
    except DGCFError as exc:
        raise DGCFError(f"{exc}; remove the file to predict every case again") from None


class _ProvenanceRecorder:
    """The provenance JSON, rewritten (atomically) after every case so that a killed run leaves a true record."""

    def __init__(self, provenance: dict, path: Path, pending: Collection[str] = frozenset()):
        self.provenance, self.path, self.lock = provenance, path, threading.Lock()
        self.pending = set(pending)  # this run's cases not yet written: their old records are dropped

    def add(self, name: str, record: dict) -> None:
        with self.lock:
            self.provenance["cases"][name] = record
            self.pending.discard(name)
            self.save()

    def save(self) -> None:
        # Parts of one input set (-num_parts) may share the output folder: under a lock on the folder, keep
        # the records other processes wrote for this same model, and add ours.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with folder_lock(self.path.parent, name=None):
            on_disk = _read_record(self.path.parent)
            if on_disk is not None and on_disk.get("model_id") == self.provenance["model_id"]:
                others = {k: v for k, v in on_disk["cases"].items() if k not in self.pending}
                self.provenance["cases"] = {**others, **self.provenance["cases"]}
                for name in self.pending:
                    self.provenance["cases"].pop(name, None)
            write_json(self.provenance, self.path)


def dicom_description(predictor: SCTPredictor) -> dict:
    """SeriesDescription (64 characters at most) and DerivationDescription of a DICOM sCT series."""
    folder = predictor.checkpoint_files[0].parent.parent
    folds = [p.parent.name.replace("fold_", "") for p in predictor.checkpoint_files]
    checkpoint = predictor.checkpoint_files[0].name.replace(".pth", "").replace("checkpoint_", "chk ")
    dataset = model_dataset(folder, predictor.plans)
    description = f"dgcf_auto sCT {dataset} {folder.name.split('__')[0]} f{','.join(folds)} {checkpoint}"
    derivation = (f"Synthetic CT predicted by dgcf_auto from the source series; model {dataset}/{folder.name}, "
                  f"folds {', '.join(folds)}, {predictor.checkpoint_files[0].name}, TTA "
                  f"{'on' if predictor.options['tta'] else 'off'}, {predictor.options['precision']}. "
                  f"Not an acquired image.")
    return {"series_description": description[:64], "derivation": derivation}


def _write_case(item: Case, sct, uncertainty, target: Path, recorder: _ProvenanceRecorder, report, dicom: dict,
                prediction=None) -> None:
    started = time.perf_counter()
    if image_suffix(target) is None:  # a folder: the DICOM series
        source = item.source_path
        source_series = open_series(source, item.name, item.series_uids) if source.is_dir() else None

        def say(note: str) -> None:  # repaired source values, a new Frame of Reference: once per case
            log.warning(f"case {item.name}: {note}")

        write_ct_series(sct, target, source_series, notify=say, **dicom)
    else:
        write_image(sct, target)
    report.add_case(item.name, write_seconds=round(time.perf_counter() - started, 3), output=target.name)
    record = dict(case_record(item.source_path, target), source_sha256=file_sha256(item.source_path))
    if uncertainty is not None:
        extra = uncertainty_path(item, target)
        write_image(uncertainty, extra)
        record["uncertainty_sha256"] = file_sha256(extra)
    if prediction is not None:  # --save_probabilities
        write_saved_prediction(target.parent, item.name, prediction.normalised, prediction.properties,
                               prediction.background_mask)
        record["probabilities_sha256"] = file_sha256(saved_files(target.parent, item.name)[0])
    recorder.add(item.name, record)
    report.save()


def read_case(item: Case) -> tuple[sitk.Image, sitk.Image | None]:
    """A case's source and body mask (its mask file, its RTSTRUCT ROI, or None)."""
    source = read_image(item.source_path, item.name, item.series_uids)
    if item.mask_roi:
        return source, read_roi_mask(item, item.mask_roi, source)
    mask = read_image(item.mask, item.name, item.series_uids) if item.mask is not None else None
    return source, mask


def _figure(item: Case, source, sct, mask, png_dir: Path) -> None:
    from dgcf_auto.figures import save_case_figure

    ct_file = reference_ct(item)
    ct = read_image(ct_file, item.name) if ct_file else None
    save_case_figure(source, sct, ct, mask, png_dir / f"{item.name}.png", title=item.name)
