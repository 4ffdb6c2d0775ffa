"""The demo pipeline behind `dgcf_demo`: every stage through its public function, nothing re-implemented."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from dgcf_auto.atomic import check_writable
from dgcf_auto.errors import DGCFError
from dgcf_auto.log import get_logger
from dgcf_auto.paths import DEFAULT_TRAINER
from dgcf_auto.planning.splits import SPLITS_FILE, read_splits
from dgcf_auto.schema import read_checked

log = get_logger(__name__)

DEMO_DATASET_ID = 999
DEMO_TRAINER = DEFAULT_TRAINER


def run_demo(output: Path, task: str = "cbct2ct", num_cases: int = 10, epochs: int = 10,
             iterations_per_epoch: int = 50, patch_size=(64, 64), features=(16, 32, 64, 128),
             device: str | None = None, dinov3_weights: str | None = None, overwrite: bool = False,
             num_workers: int = 2, continue_training: bool = False, dose: bool = True) -> dict:
    """Run every stage into `output`; returns the evaluation summary. The example data and preprocessing are
    reused when up to date; training starts afresh with this call's schedule unless `continue_training`.
    `dose`: also the photon and proton dose evaluation (default plans) when the `dose` extra is installed."""
    from dgcf_auto.dataset.example import write_example_dataset
    from dgcf_auto.evaluation.evaluate import evaluate_folders, format_table
    from dgcf_auto.inference.model_loading import resolve_folds
    from dgcf_auto.inference.predictor import SCTPredictor
    from dgcf_auto.inference.run import predict_inputs
    from dgcf_auto.inference.sources import collect_inputs
    from dgcf_auto.preprocessing.run import plan_and_preprocess
    from dgcf_auto.training.run import run_training

    if num_cases < 5:
        raise DGCFError(f"the demo needs at least 5 cases for its 7:1:2 split, got {num_cases}")
    output = check_writable(Path(output).resolve(), "demo folder")
    if overwrite and output.exists():
        shutil.rmtree(output)
    existing = _existing_example(output, task, num_cases)  # before anything is written or trained
    for variable in ("DGCF_raw", "DGCF_preprocessed", "DGCF_results"):
        os.environ[variable] = str(output / variable)  # the demo never touches the user's own data folders
    started = time.time()

    _stage(1, "example dataset")
    raw_dataset = existing or write_example_dataset(DEMO_DATASET_ID, task, num_cases, seed=0)
    _stage(2, "plan and preprocess (paper split 7:1:2)")
    summary = plan_and_preprocess(DEMO_DATASET_ID, num_processes=2, split="paper",
                                  overrides={"patch_size": list(patch_size), "features": list(features),
                                             "epochs": epochs, "iterations_per_epoch": iterations_per_epoch},
                                  configurations=["2d"])  # the demo trains the paper's 2d DGCN only
    preprocessed = Path(summary["output_folder"])
    split = read_splits(preprocessed / SPLITS_FILE)[0]
    _stage(3, f"train fold 0 ({epochs} epochs x {iterations_per_epoch} iterations)")
    # without weights the encoder warns that DINOv3 is random (network/dinov3.py)
    fold_dir = run_training(DEMO_DATASET_ID, "2d", 0, DEMO_TRAINER, device=device,
                            continue_training=continue_training, start_over=not continue_training, epochs=epochs,
                            iterations_per_epoch=iterations_per_epoch, num_workers=num_workers,
                            dinov3_weights=dinov3_weights, dinov3_random=dinov3_weights is None)
    _stage(4, f"predict the {len(split['test'])} held-out test case(s)")
    test_input = output / "test_cases"
    _link_cases(raw_dataset, split["test"], test_input)
    predictions = output / "predictions"
    predictor = SCTPredictor(resolve_folds(fold_dir.parent, ["0"], "checkpoint_final.pth"),
                             device=device or _default_device())
    predict_inputs(predictor, collect_inputs(test_input), predictions, input_root=test_input)
    _stage(5, "evaluate and draw the report")
    figures = output / "figures"
    dose_settings = _dose_settings() if dose else None
    evaluation = evaluate_folders(test_input, predictions, output / "summary.json", png_dir=figures,
                                  dose=dose_settings)

    print("\n" + format_table(evaluation))
    log.info(f"finished in {time.time() - started:.0f} s")
    for what, where in (("example cases", raw_dataset), ("plans and slices", preprocessed),
                        ("trained fold", fold_dir), ("training curves", fold_dir / "progress.png"),
                        ("sCT volumes (HU)", predictions), ("metrics", output / "summary.json"),
                        ("figures", figures), *((("dose maps, DVHs", output / "dose"),) if dose_settings else ())):
        print(f"  {what:<18} {where}")
    return evaluation


_EXAMPLE_INFO = {"type": "object", "required": ["task", "num_cases"],
                 "properties": {"task": {"type": "string"}, "num_cases": {"type": "integer"}}}


def _existing_example(output: Path, task: str, num_cases: int) -> Path | None:
    """The demo folder's example dataset when it is this run's (task and number of cases), None when there is
    none yet; a DGCFError (one line) when the folder holds another demo's data, which it would otherwise use."""
    raw = output / "DGCF_raw"
    found = sorted(raw.glob(f"Dataset{DEMO_DATASET_ID:03d}_*")) if raw.is_dir() else []
    if not found:
        return None
    again = "pass --overwrite to start the demo folder afresh, or choose another -o"
    info_file = found[0] / "dataset.json"
    try:
        info = read_checked(info_file, _EXAMPLE_INFO, f"demo folder {output}: {info_file}")
    except DGCFError as exc:
        raise DGCFError(f"{exc}; {again}") from None
    cases = sum(1 for p in found[0].iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(found) > 1 or info["task"] != task or info["num_cases"] != num_cases or cases != num_cases:
        raise DGCFError(f"demo folder {output} holds the {info['task']} demo with {cases} cases ({found[0].name}); "
                        f"this run asks for --task {task} with -n {num_cases}: {again}")
    return found[0]


def _dose_settings():
    """Default plans when pyRadPlan and pymedphys are installed (`pip install -e ".[dose]"`), else None."""
    from importlib.util import find_spec

    if find_spec("pyRadPlan") is None or find_spec("pymedphys") is None:
        log.info('no dose evaluation (pip install -e ".[dose]" adds it)')
        return None
    from dgcf_auto.evaluation.dose.plan import DoseSettings

    return DoseSettings()


def _stage(number: int, text: str) -> None:
    log.info(f"[{number}/5] {text}")


def _link_cases(raw_dataset: Path, names: list[str], target: Path) -> None:
    """The held-out cases as a SynthRAD2023-format folder (symlinks, the raw data stays where it is)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        link = target / name
        if not link.exists():
            link.symlink_to(raw_dataset / name, target_is_directory=True)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
