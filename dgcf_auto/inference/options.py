"""What a prediction runs with (`PredictionOptions`) and what it writes (`OutputOptions`).

`dgcf_predict` builds both from its flags; `dgcf_auto.predict(..., tta=False, output_format="dicom")` maps
each keyword onto the field of the same name (`split_keywords`). A new option is one field here (with its
`doc`) plus one argparse line: `predict`'s signature and docstring are generated from these fields.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field, fields, replace
from typing import Any


def _option(default: Any, doc: str):
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class PredictionOptions:
    """How the sCT is computed: which model checkpoints, on what, with what precision and masks."""

    folds: Any = _option(None, "e.g. [0, 1] or ['all'] (default: the cross-validation folds 0..4 that exist, "
                               "else fold_all)")
    device: str | None = _option(None, "cpu, cuda, cuda:N or mps (default: cuda when available)")
    tta: bool = _option(True, "left-right mirror test-time augmentation (doubles the network passes)")
    trainer: str = _option("DGCFTrainer", "trainer name of the model folder <trainer>__<plans>__2d")
    plans: str = _option("DGCFPlans", "plans identifier of the model folder")
    checkpoint: str = _option("checkpoint_final.pth", "checkpoint file in each fold")
    precision: str = _option("auto", "auto, fp32 or bf16 (network.execution.autocast_dtype)")
    batch_size: int | None = _option(None, "slices per network pass (default: sized from free memory)")
    mask_from: str = _option("plans", "cases without a mask: 'plans' or 'otsu' threshold, or 'none'")
    keep_background: bool = _option(False, "do not set voxels outside the body mask to -1000 HU")
    mask_roi: str | None = _option(None, "body mask = this RTSTRUCT ROI (DICOM sources)")
    series_uids: tuple = _option((), "in DICOM folders holding several series, the series to use")
    force: bool = _option(False, "predict sources that do not look like the model's training sources (recorded)")
    max_voxels: int | None = _option(None, "the largest image read (default 2**31 voxels)")
    num_parts: int = _option(1, "split the cases into this many parts (machines/GPUs)")
    part_id: int = _option(0, "which part this run predicts (0..num_parts-1)")
    reading_threads: int = _option(1, "threads reading cases ahead of the network")
    progress: bool = _option(True, "progress bars on a terminal")
    verbose: bool = _option(False, "one info line on the model, folds, passes and device")

    def predictor_keywords(self) -> dict:
        """What `load_predictor` needs (the model and how it runs)."""
        return {name: getattr(self, name) for name in PREDICTOR_FIELDS}


PREDICTOR_FIELDS = ("folds", "device", "tta", "trainer", "plans", "checkpoint", "precision", "batch_size",
                    "keep_background", "mask_from", "progress")


@dataclass(frozen=True)
class OutputOptions:
    """What is written beside each sCT and how (used when `output` is given)."""

    output_format: str = _option(".nii.gz", ".nii.gz, .nii, .mha, 'dicom' (a CT series per case) or 'same'")
    save_uncertainty: bool = _option(False, "also <case>_uncertainty (std over folds and TTA, HU)")
    save_probabilities: bool = _option(False, "also <case>.npz/.json before rounding, for dgcf_ensemble")
    dicom_uid_prefix: str | None = _option(None, "root for new DICOM UIDs (default: pydicom's)")
    new_frame_of_reference: bool = _option(False, "DICOM sources without a Frame of Reference UID get one "
                                                   "derived from the series")
    png_dir: Any = _option(None, "a report figure per case into this folder")
    continue_prediction: bool = _option(False, "skip cases whose output this same model already wrote")
    writing_threads: int = _option(1, "threads writing finished sCTs (and figures)")


def field_names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def split_keywords(caller: str, prediction: PredictionOptions | None, output: OutputOptions | None,
                   keywords: dict) -> tuple[PredictionOptions, OutputOptions]:
    """Keyword arguments onto the two option objects (a keyword replaces the given object's field); an unknown
    keyword is a TypeError, as Python's own."""
    prediction, output = prediction or PredictionOptions(), output or OutputOptions()
    unknown = sorted(set(keywords) - set(field_names(PredictionOptions)) - set(field_names(OutputOptions)))
    if unknown:
        raise TypeError(f"{caller}() got an unexpected keyword argument {unknown[0]!r}")
    own = field_names(PredictionOptions)
    prediction = replace(prediction, **{k: v for k, v in keywords.items() if k in own})
    output = replace(output, **{k: v for k, v in keywords.items() if k not in own})
    return prediction, output


def with_option_keywords(*classes):
    """Decorator: the function's `**keywords` shown as the keyword-only fields of `classes` (inspect.signature,
    help(), IDEs), and their docs appended to its docstring."""
    def decorate(func):
        signature = inspect.signature(func)
        params = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
                   for cls in classes for f in fields(cls)]
        func.__signature__ = signature.replace(parameters=params)
        docs = []
        for cls in classes:
            docs.append(f"{cls.__name__} keywords:")
            docs += [f"    {f.name} (default {f.default!r}): {f.metadata['doc']}" for f in fields(cls)]
        func.__doc__ = inspect.cleandoc(func.__doc__ or "") + "\n\n" + "\n".join(docs) + "\n"
        return func

    return decorate
