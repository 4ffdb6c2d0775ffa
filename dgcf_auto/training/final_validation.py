"""nnU-Net's last training step: the fold predicts its validation cases and scores them.

The validation cases are predicted from the raw dataset on their original grids, through the same
predictor and API as `dgcf_predict` (so the numbers are what a user of the model gets, not the trainer's
slice-grid validation), into `fold_X/validation/<case>.nii.gz`, and scored with the default metric profile
into `fold_X/validation/summary.json` (every metric per case and the means, each with its N).
`dgcf_train ... --val` reruns only this step; `--val_best` uses `checkpoint_best.pth`. With `--npz` the float
predictions are kept as well (`<case>.npz` + `<case>.json`, see inference/saved_predictions.py), which
`dgcf_find_best_configuration` needs to score ensembles of trainers.
"""
from __future__ import annotations

from pathlib import Path

from dgcf_auto import paths
from dgcf_auto.errors import DGCFError
from dgcf_auto.log import get_logger

log = get_logger(__name__)

SUMMARY_FILE = "summary.json"


def validate_fold(dataset: str | int, trainer: str, plans_name: str, configuration: str, fold: int | str,
                  checkpoint: str = "checkpoint_final.pth", device: str | None = None,
                  precision: str = "auto", save_probabilities: bool = False) -> Path | None:
    """Predict and score the fold's validation cases; returns the summary file (None for fold 'all').
    `save_probabilities` (dgcf_train --npz): keep the float predictions too, for dgcf_find_best_configuration's
    ensembles."""
    from dgcf_auto.evaluation.evaluate import evaluate_split
    from dgcf_auto.inference.api import predict
    from dgcf_auto.planning.splits import split_cases

    if str(fold) == "all":
        log.info("fold 'all' has no validation cases; no final validation")
        return None
    raw, cases = split_cases(dataset, "val", fold)
    model_folder = paths.training_output_folder(raw.name, trainer, plans_name, configuration, fold).parent
    if not (model_folder / f"fold_{fold}" / checkpoint).is_file():
        raise DGCFError(f"fold {fold}: {model_folder / f'fold_{fold}' / checkpoint} does not exist; train the fold "
                        f"first (--val reruns only the final validation)")
    output = paths.split_prediction_folder(raw.name, trainer, plans_name, configuration, fold, "val")
    log.info(f"final validation of fold {fold} with {checkpoint}: predicting {len(cases)} validation case(s) "
             f"into {output}")
    predict(cases, output, model=model_folder, folds=[fold], device=device, trainer=trainer, plans=plans_name,
            checkpoint=checkpoint, precision=precision, save_probabilities=save_probabilities,
            configuration=configuration)
    summary_file = output / SUMMARY_FILE
    (_, summary), = evaluate_split(dataset, "val", fold, trainers=[trainer], plans=plans_name,
                                   configuration=configuration, pred_dir=output, output_json=summary_file)
    means = ", ".join(f"{k} {v:.4g}" for k, v in summary.get("mean", {}).items() if isinstance(v, (int, float)))
    log.info(f"validation summary {summary_file}: {means}")
    return summary_file
