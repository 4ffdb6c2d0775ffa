"""Prediction from Python: `dgcf_auto.predict(input, output=None, model=..., folds=..., device=..., tta=...)`.

`dgcf_predict` is a thin argparse wrapper around `predict`. Inputs are what `dgcf_predict -i` accepts (a case
folder tree, a folder of images, one image file, a DICOM folder) or a SimpleITK image; with `output=None`
the sCT comes back as a SimpleITK image (a {case: image} dict for several cases) and nothing is written.
"""
from __future__ import annotations

import os
from pathlib import Path

import SimpleITK as sitk

from dgcf_auto.errors import DGCFError
from dgcf_auto.log import get_logger
from dgcf_auto.paths import DEFAULT_PLANS, DEFAULT_TRAINER

log = get_logger(__name__)
PathLike = str | os.PathLike


def resolve_model(model: PathLike | int | None = None, trainer: str = DEFAULT_TRAINER,
                  plans: str = DEFAULT_PLANS) -> Path:
    """A trained-model folder (`<Trainer>__<Plans>__2d`, holding fold_*), from a folder path or a dataset
    id/name in DGCF_results (None: the only trained dataset there)."""
    from dgcf_auto.inference.model_loading import resolve_model_folder

    if model is not None and Path(str(model)).expanduser().is_dir():
        folder = Path(str(model)).expanduser()
        if not any(folder.glob("fold_*")):
            raise DGCFError(f"model folder {folder}: holds no fold_* folders (give the <Trainer>__<Plans>__2d "
                            f"folder of a trained or installed model)")
        return folder
    if model is not None and any(sep in str(model) for sep in ("/", os.sep)):
        raise DGCFError(f"model folder {model}: not found")
    return resolve_model_folder(model, trainer, plans)


def load_predictor(model: PathLike | int | None = None, folds=None, device: str | None = None, tta: bool = True,
                   trainer: str = "DGCFTrainer", plans: str = "DGCFPlans", checkpoint: str = "checkpoint_final.pth",
                   precision: str = "auto", batch_size: int | None = None, keep_background: bool = False,
                   mask_from: str = "plans", progress: bool = True):
    """An SCTPredictor for the model's folds (default: cross-validation folds 0..4 that exist)."""
    from dgcf_auto.devices import resolve_device
    from dgcf_auto.inference.model_loading import resolve_folds
    from dgcf_auto.inference.predictor import SCTPredictor

    folder = resolve_model(model, trainer, plans)
    files = resolve_folds(folder, [str(f) for f in folds] if folds is not None else None, checkpoint)
    return SCTPredictor(files, device=resolve_device(device), use_tta=tta, batch_size=batch_size,
                        mask_background=not keep_background, precision=precision, mask_from=mask_from,
                        progress=progress)


def predict(input, output: PathLike | None = None, model: PathLike | int | None = None, folds=None,
            device: str | None = None, tta: bool = True, *, mask: sitk.Image | PathLike | None = None,
            trainer: str = "DGCFTrainer", plans: str = "DGCFPlans", checkpoint: str = "checkpoint_final.pth",
            precision: str = "auto", batch_size: int | None = None, output_format: str = ".nii.gz",
            series_uids=(), mask_roi: str | None = None, mask_from: str = "plans", keep_background: bool = False,
            save_uncertainty: bool = False, continue_prediction: bool = False, reading_threads: int = 1,
            writing_threads: int = 1, png_dir: PathLike | None = None, dicom_uid_prefix: str | None = None, num_parts: int = 1,
            part_id: int = 0, progress: bool = True, verbose: bool = False, force: bool = False,
            max_voxels: int | None = None, predictor=None, save_probabilities: bool = False,
            new_frame_of_reference: bool = False):
    """Synthetic CT for `input` (see the module doc, or a list of dataset Cases: `dgcf_predict --split`). `model`: a trained-model folder, or a dataset id/name
    in DGCF_results. `folds`: e.g. [0, 1] or ["all"]. `device`: cpu, cuda, cuda:N or mps (default: cuda when
    available). `force`: predict sources that do not look like the model's training sources (recorded).
    `max_voxels`: the largest image read (default 2**31 voxels). `save_probabilities`: also keep each case's
    normalised sCT before rounding (`<case>.npz` + `<case>.json`, for `dgcf_ensemble`).
    `new_frame_of_reference`: DICOM sources without a Frame of Reference UID get one derived from the series.
    Returns the sCT image(s) when `output` is None, else the list of written outputs."""
    from dgcf_auto.imageio import voxel_limit

    options = dict(locals())  # every argument, passed on by name
    del options["max_voxels"], options["voxel_limit"]
    if save_probabilities and (output is None or isinstance(input, sitk.Image)):
        raise DGCFError("save_probabilities needs an output folder and case inputs (it writes <case>.npz there)")
    with voxel_limit(max_voxels):
        return _predict(**options)


def _predict(*, input, output, model, folds, device, tta, mask, trainer, plans, checkpoint, precision, batch_size,
             output_format, series_uids, mask_roi, mask_from, keep_background, save_uncertainty,
             continue_prediction, reading_threads, writing_threads, png_dir, dicom_uid_prefix, num_parts, part_id, progress, verbose,
             force, predictor, save_probabilities, new_frame_of_reference):
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise DGCFError(f"-part_id must be in 0..{num_parts - 1} and -num_parts at least 1, got part {part_id} "
                        f"of {num_parts}")
    from dgcf_auto.inference.run import warn_derived_masks

    if isinstance(input, sitk.Image):
        if num_parts != 1:
            raise DGCFError("-num_parts splits a set of input cases; a single image cannot be split")
        predictor = predictor or load_predictor(model, folds, device, tta, trainer, plans, checkpoint, precision,
                                                batch_size, keep_background, mask_from, progress)
        warn_derived_masks(predictor, int(mask is None))
        return _predict_image(predictor, input, mask, output, output_format, dicom_uid_prefix)
    if mask is not None:
        raise DGCFError("mask= is for a SimpleITK image input; put mask.nii.gz beside the source in a case folder")
    from dgcf_auto.inference.run import check_outputs, predict_inputs
    from dgcf_auto.inference.sources import check_inputs, collect_inputs

    if isinstance(input, list):  # cases already resolved (dgcf_predict --split): their dataset is the input root
        everything, input_root = input, input[0].folder.parent if input else None
    else:
        everything, input_root = collect_inputs(input, tuple(series_uids or ()), mask_roi), Path(input)
    inputs = everything[part_id::num_parts]
    if not inputs:
        raise DGCFError(f"part {part_id} of {num_parts}: no cases (only {len(everything)} in {input})")
    if output is not None:  # where outputs go (of every part: names must not collide) is checked before loading
        from dgcf_auto.inference.saved_predictions import SAVED_OUTPUTS

        check_outputs(everything, Path(output), output_format, input_root, Path(png_dir) if png_dir else None,
                      save_uncertainty, SAVED_OUTPUTS if save_probabilities else None)
    predictor = predictor or load_predictor(model, folds, device, tta, trainer, plans, checkpoint, precision,
                                            batch_size, keep_background, mask_from, progress)
    if verbose:
        _announce(predictor, inputs, num_parts, part_id)
    if output is None:
        from dgcf_auto.inference.run import _read

        check_inputs(inputs, predictor.plans, force)
        warn_derived_masks(predictor, sum(item.mask is None and not item.mask_roi for item in inputs))
        images = {item.name: predictor.predict_volume(*_read(item), item.name)[0] for item in inputs}
        return next(iter(images.values())) if len(images) == 1 else images
    return predict_inputs(predictor, inputs, Path(output), output_format, continue_prediction,
                          save_uncertainty, Path(png_dir) if png_dir else None, input_root=input_root,
                          dicom_uid_prefix=dicom_uid_prefix, part=(part_id, num_parts), progress=progress,
                          force=force, save_probabilities=save_probabilities,
                          new_frame_of_reference=new_frame_of_reference,
                          threads=(reading_threads, writing_threads))


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
    folder = predictor.checkpoint_files[0].parent.parent
    part = f" (part {part_id} of {num_parts})" if num_parts > 1 else ""
    vit = ", ViT shared by the folds" if predictor.shared_encoder is not None and len(predictor.networks) > 1 else ""
    log.info(f"{len(inputs)} case(s){part}, {len(predictor.networks)} fold(s) of "
             f"{folder.parent.name}/{folder.name}, {predictor.passes_per_slice} network pass(es) per slice{vit}, "
             f"device {predictor.device}, {predictor.options['precision']}")
