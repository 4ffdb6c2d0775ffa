"""Prediction from Python: `dgcf_auto.predict(input, output=None, model=..., folds=..., device=..., tta=...)`.

Keywords map onto `PredictionOptions` / `OutputOptions` (inference/options.py), which may also be given whole.

`dgcf_predict` is a thin argparse wrapper around `predict`. Inputs are what `dgcf_predict -i` accepts (a case
folder tree, a folder of images, one image file, a DICOM folder) or a SimpleITK image; with `output=None`
the sCT comes back as a SimpleITK image (a {case: image} dict for several cases) and nothing is written.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import SimpleITK as sitk

from dgcf_auto.errors import DGCFError
from dgcf_auto.inference.options import OutputOptions, PredictionOptions, split_keywords
from dgcf_auto.log import get_logger
from dgcf_auto.options import apply_keywords, with_option_keywords
from dgcf_auto.paths import DEFAULT_PLANS, DEFAULT_TRAINER
from dgcf_auto.plans import DEFAULT_CONFIGURATION

log = get_logger(__name__)
PathLike = str | os.PathLike


def resolve_model(model: PathLike | int | None = None, trainer: str = DEFAULT_TRAINER, plans: str = DEFAULT_PLANS,
                  configuration: str = DEFAULT_CONFIGURATION) -> Path:
    """A trained-model folder (`<Trainer>__<Plans>__<configuration>`, holding fold_*), from a folder path or a
    dataset id/name in DGCF_results (None: the only trained dataset there)."""
    from dgcf_auto.inference.model_loading import resolve_model_folder

    if model is not None and Path(str(model)).expanduser().is_dir():
        folder = Path(str(model)).expanduser()
        if not any(folder.glob("fold_*")):
            raise DGCFError(f"model folder {folder}: holds no fold_* folders (give the <Trainer>__<Plans>__2d "
                            f"folder of a trained or installed model)")
        return folder
    if model is not None and any(sep in str(model) for sep in ("/", os.sep)):
        raise DGCFError(f"model folder {model}: not found")
    return resolve_model_folder(model if model is None or isinstance(model, int) else str(model), trainer, plans,
                                configuration)


@with_option_keywords(PredictionOptions)
def load_predictor(model: PathLike | int | None = None, options: PredictionOptions | None = None, **keywords):
    """An SCTPredictor for the model's folds (default: cross-validation folds 0..4 that exist), to reuse over
    calls (`predict(..., predictor=)`). It uses the options on the model and how it runs (folds, device, tta,
    precision, batch_size, mask_from, keep_background, trainer, plans, checkpoint, progress)."""
    from dgcf_auto.devices import resolve_device
    from dgcf_auto.inference.model_loading import resolve_folds
    from dgcf_auto.inference.predictor import SCTPredictor

    (options,) = apply_keywords("load_predictor", (options or PredictionOptions(),), keywords)
    folder = resolve_model(model, options.trainer, options.plans, options.configuration or DEFAULT_CONFIGURATION)
    folds = [str(f) for f in options.folds] if options.folds is not None else None
    files = resolve_folds(folder, folds, options.checkpoint)
    return SCTPredictor(files, device=resolve_device(options.device), use_tta=options.tta,
                        batch_size=options.batch_size, mask_background=not options.keep_background,
                        precision=options.precision, mask_from=options.mask_from, progress=options.progress,
                        configuration=options.configuration)


@with_option_keywords(PredictionOptions, OutputOptions)
def predict(input, output: PathLike | None = None, model: PathLike | int | None = None, *,
            mask: sitk.Image | PathLike | None = None, options: PredictionOptions | None = None,
            output_options: OutputOptions | None = None, predictor=None, **keywords):
    """Synthetic CT for `input`: a case folder tree, a folder of images, one image file, a DICOM folder, a
    SimpleITK image, or a list of dataset Cases (`dgcf_predict --split`). `model`: a trained-model folder, or a
    dataset id/name in DGCF_results. `mask`: a body mask (image or file) for a one-volume input (an image, an
    image file, a DICOM folder or one case folder; it replaces the case folder's mask). `predictor`: one made
    by `load_predictor`, reused. Every other keyword is a field of `options` (PredictionOptions) or
    `output_options` (OutputOptions), listed below; a keyword replaces the field of the object given.
    Returns the sCT image(s) when `output` is None (a {case: image} dict for several cases), else the list of
    written outputs."""
    from dgcf_auto.imageio import voxel_limit

    options, output_options = split_keywords("predict", options, output_options, keywords)
    if output_options.save_probabilities and (output is None or isinstance(input, sitk.Image)):
        raise DGCFError("save_probabilities needs an output folder and case inputs (it writes <case>.npz there)")
    with voxel_limit(options.max_voxels):
        return _predict(input, output, model, mask, options, output_options, predictor)


def _predict(input, output, model, mask, options: PredictionOptions, output_options: OutputOptions, predictor):
    num_parts, part_id = options.num_parts, options.part_id
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise DGCFError(f"-part_id must be in 0..{num_parts - 1} and -num_parts at least 1, got part {part_id} "
                        f"of {num_parts}")
    from dgcf_auto.inference.run import warn_derived_masks

    if isinstance(input, sitk.Image):
        if num_parts != 1:
            raise DGCFError("-num_parts splits a set of input cases; a single image cannot be split")
        predictor = predictor or load_predictor(model, options)
        warn_derived_masks(predictor, int(mask is None))
        return _predict_image(predictor, input, mask, output, output_options.output_format,
                              output_options.dicom_uid_prefix)
    from dgcf_auto.inference.run import check_outputs, predict_inputs
    from dgcf_auto.inference.sources import check_inputs, collect_inputs

    if isinstance(input, list):  # cases already resolved (dgcf_predict --split): their dataset is the input root
        everything, input_root = input, input[0].folder.parent if input else None
    else:
        everything, input_root = collect_inputs(input, tuple(options.series_uids or ()), options.mask_roi), Path(input)
    with _given_mask(everything, mask, input, options.mask_roi) as everything:
        inputs = everything[part_id::num_parts]
        if not inputs:
            raise DGCFError(f"part {part_id} of {num_parts}: no cases (only {len(everything)} in {input})")
        if output is not None:  # where outputs go (of every part: names must not collide) is checked before loading
            from dgcf_auto.inference.saved_predictions import SAVED_OUTPUTS

            png_dir = Path(output_options.png_dir) if output_options.png_dir else None
            check_outputs(everything, Path(output), output_options.output_format, input_root, png_dir,
                          output_options.save_uncertainty,
                          SAVED_OUTPUTS if output_options.save_probabilities else None)
        predictor = predictor or load_predictor(model, options)
        if options.verbose:
            _announce(predictor, inputs, num_parts, part_id)
        if output is None:
            from dgcf_auto.inference.run import read_case

            check_inputs(inputs, predictor.plans, options.force)
            warn_derived_masks(predictor, sum(item.mask is None and not item.mask_roi for item in inputs))
            images = {item.name: predictor.predict_volume(*read_case(item), item.name)[0] for item in inputs}
            return next(iter(images.values())) if len(images) == 1 else images
        return predict_inputs(predictor, inputs, Path(output), output_options, options, input_root)


@contextlib.contextmanager
def _given_mask(cases: list, mask, input, mask_roi: str | None):
    """`mask=` for a one-volume input: that case's mask (an image is written to a temporary file, so that it
    gets the same checks as a mask file and is read the same way)."""
    if mask is None:
        yield cases
        return
    if mask_roi:
        raise DGCFError("give either mask= or mask_roi=, not both")
    if len(cases) != 1:
        raise DGCFError(f"input {input}: holds {len(cases)} cases; mask= is for one volume (an image, an image "
                        f"file, a DICOM folder or one case folder): put mask.nii.gz beside each source instead")
    if not isinstance(mask, sitk.Image):
        if not Path(mask).exists():
            raise DGCFError(f"case {cases[0].name}: mask {mask}: no such file or folder")
        yield [replace(cases[0], mask=Path(mask))]
        return
    from dgcf_auto.imageio import write_image

    with tempfile.TemporaryDirectory(prefix="dgcf_mask_") as folder:
        path = Path(folder) / "mask.nii.gz"
        write_image(mask, path)
        yield [replace(cases[0], mask=path)]


def _predict_image(predictor, image: sitk.Image, mask, output, output_format: str, uid_prefix: str | None):
    from dgcf_auto.dicomio import DEFAULT_UID_PREFIX, write_ct_series
    from dgcf_auto.imageio import image_suffix, read_image, write_image
    from dgcf_auto.inference.run import dicom_description

    if mask is not None and not isinstance(mask, sitk.Image):
        mask = read_image(mask)
    sct, _ = predictor.predict_volume(image, mask, "image")
    if output is not None:
        if output_format == "dicom" or image_suffix(output) is None:
            write_ct_series(sct, output, None, uid_prefix=uid_prefix or DEFAULT_UID_PREFIX,
                            **dicom_description(predictor))
        else:
            write_image(sct, output)
    return sct


def _announce(predictor, inputs, num_parts: int, part_id: int) -> None:
    from dgcf_auto.inference.model_loading import model_dataset

    folder = predictor.checkpoint_files[0].parent.parent
    part = f" (part {part_id} of {num_parts})" if num_parts > 1 else ""
    vit = ", ViT shared by the folds" if predictor.shared_encoder is not None and len(predictor.networks) > 1 else ""
    log.info(f"{len(inputs)} case(s){part}, {len(predictor.networks)} fold(s) of "
             f"{model_dataset(folder, predictor.plans)}/{folder.name}, {predictor.passes_per_slice} network pass(es) "
             f"per slice{vit}, "
             f"device {predictor.device}, {predictor.options['precision']}")
