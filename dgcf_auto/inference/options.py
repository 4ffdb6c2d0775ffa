"""What a prediction runs with (`PredictionOptions`) and what it writes (`OutputOptions`).

`dgcf_predict` builds both from its flags; `dgcf_auto.predict(..., tta=False, output_format="dicom")` maps
each keyword onto the field of the same name (`split_keywords`). A new option is one field here (with its
`doc`) plus one argparse line: `predict`'s signature and docstring are generated from these fields.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dgcf_auto.options import apply_keywords, option
from dgcf_auto.paths import DEFAULT_PLANS, DEFAULT_TRAINER


@dataclass(frozen=True)
class PredictionOptions:
    """How the sCT is computed: which model checkpoints, on what, with what precision and masks."""

    folds: Any = option(None, "e.g. [0, 1] or ['all'] (default: the cross-validation folds 0..4 that exist, "
                              "else fold_all)")
    device: str | None = option(None, "cpu, cuda, cuda:N or mps (default: cuda when available)")
    tta: bool = option(True, "left-right mirror test-time augmentation (doubles the network passes)")
    trainer: str = option(DEFAULT_TRAINER, "trainer name of the model folder <trainer>__<plans>__<configuration>")
    plans: str = option(DEFAULT_PLANS, "plans identifier of the model folder")
    configuration: str | None = option(None, "the model's configuration: 2d, 2.5d or 3d_fullres (default: 2d for a "
                                             "dataset id; whatever a model folder given by path was trained on)")
    checkpoint: str = option("checkpoint_final.pth", "checkpoint file in each fold")
    precision: str = option("auto", "auto, fp32 or bf16 (network.execution.autocast_dtype)")
    batch_size: int | None = option(None, "slices per network pass (default: sized from free memory)")
    mask_from: str = option("plans", "cases without a mask: 'plans' or 'otsu' threshold, or 'none'")
    keep_background: bool = option(False, "do not set voxels outside the body mask to -1000 HU")
    mask_roi: str | None = option(None, "body mask = this RTSTRUCT ROI (DICOM sources)")
    series_uids: tuple = option((), "in DICOM folders holding several series, the series to use")
    force: bool = option(False, "predict sources that do not look like the model's training sources (recorded)")
    max_voxels: int | None = option(None, "the largest image read (default 2**31 voxels)")
    num_parts: int = option(1, "split the cases into this many parts (machines/GPUs)")
    part_id: int = option(0, "which part this run predicts (0..num_parts-1)")
    reading_threads: int = option(1, "threads reading cases ahead of the network")
    progress: bool = option(True, "progress bars on a terminal")
    verbose: bool = option(False, "one info line on the model, folds, passes and device")


@dataclass(frozen=True)
class OutputOptions:
    """What is written beside each sCT and how (used when `output` is given)."""

    output_format: str = option(".nii.gz", ".nii.gz, .nii, .mha, 'dicom' (a CT series per case) or 'same'")
    save_uncertainty: bool = option(False, "also <case>_uncertainty (std over folds and TTA, HU)")
    save_probabilities: bool = option(False, "also <case>.npz/.json before rounding, for dgcf_ensemble")
    dicom_uid_prefix: str | None = option(None, "root for new DICOM UIDs (default: pydicom's)")
    new_frame_of_reference: bool = option(False, "DICOM sources without a Frame of Reference UID get one "
                                                  "derived from the series")
    derived_uids: bool = option(False, "a DICOM sCT of a DICOM source gets Series and SOP Instance UIDs derived "
                                       "from the source series and the model id, the same on every run "
                                       "(dgcf_dicom_node: a retry replaces, never duplicates)")
    png_dir: Any = option(None, "a report figure per case into this folder")
    continue_prediction: bool = option(False, "skip cases whose output this same model already wrote")
    writing_threads: int = option(1, "threads writing finished sCTs (and figures)")


def split_keywords(caller: str, prediction: PredictionOptions | None, output: OutputOptions | None,
                   keywords: dict) -> tuple[PredictionOptions, OutputOptions]:
    """Keyword arguments onto the two option objects (a keyword replaces the given object's field)."""
    return apply_keywords(caller, (prediction or PredictionOptions(), output or OutputOptions()), keywords)
