"""Find trained folds in DGCF_results and turn their checkpoints back into networks."""
from __future__ import annotations

from pathlib import Path

import torch

from dgcf_auto import checkpoint as checkpoint_format
from dgcf_auto import paths
from dgcf_auto.errors import DGCFError

CONFIGURATION = "2d"
DEFAULT_TRAINER = "DGCFTrainer"
DEFAULT_PLANS = "DGCFPlans"


def trained_datasets() -> list[Path]:
    """Dataset folders in DGCF_results that hold at least one fold with a checkpoint."""
    root = paths.results_root()
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir()
                  if d.is_dir() and paths.DATASET_PATTERN.match(d.name) and any(d.glob("*/fold_*/checkpoint_*.pth")))


def resolve_model_folder(dataset: str | int | None, trainer: str, plans: str) -> Path:
    """`<results>/<Dataset>/<trainer>__<plans>__2d`; with no dataset, the single trained one."""
    if dataset is None:
        candidates = trained_datasets()
        if len(candidates) != 1:
            names = ", ".join(c.name for c in candidates) or "none"
            raise DGCFError(f"-d is required: {len(candidates)} trained datasets in "
                            f"DGCF_results={paths.results_root()} ({names})")
        dataset_folder = candidates[0]
    else:
        dataset_folder = paths.results_dataset(dataset)
    folder = dataset_folder / f"{trainer}__{plans}__{CONFIGURATION}"
    if not folder.is_dir():
        trained = sorted(p.name for p in dataset_folder.iterdir() if p.is_dir())
        raise DGCFError(f"no trained model {folder.name} in {dataset_folder} "
                        f"(trained: {', '.join(trained) or 'none'}); check -tr/-p or run dgcf_train")
    return folder


def resolve_folds(model_folder: Path, folds: list[str] | None, checkpoint_name: str) -> list[Path]:
    """Checkpoint files for the requested folds (default: every fold that has the checkpoint)."""
    if not folds:
        found = sorted(model_folder.glob(f"fold_*/{checkpoint_name}"))
        if not found:
            raise DGCFError(f"no {checkpoint_name} in any fold of {model_folder}; "
                            f"training unfinished? try -chk checkpoint_latest.pth or checkpoint_best.pth")
        return found
    files = []
    for fold in folds:
        name = "fold_all" if str(fold) == "all" else f"fold_{int(str(fold).replace('fold', ''))}"
        path = model_folder / name / checkpoint_name
        if not path.is_file():
            raise DGCFError(f"fold {fold}: {path} not found")
        files.append(path)
    return files


def load_checkpoint(path: Path) -> dict:
    """A fold's checkpoint, for prediction: only the weights and the plans are needed."""
    return checkpoint_format.load_checkpoint(path, required=checkpoint_format.PREDICTION_KEYS)


def build_trained_network(checkpoint: dict, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The registered network of a checkpoint; the frozen ViT's weights come from the checkpoint itself."""
    from dgcf_auto.network import build_network, network_needs_dinov3
    from dgcf_auto.network.dinov3 import empty_dinov3
    from dgcf_auto.plans import network_plans

    plans = network_plans(checkpoint["plans"])
    dinov3 = None
    if network_needs_dinov3(plans):
        # An empty ViT of the right shape; load_state_dict below fills in the trained run's weights.
        dinov3 = empty_dinov3(plans.dinov3, str(checkpoint.get("dinov3_source", "checkpoint")))
    network = build_network(plans, dinov3)
    try:
        network.load_state_dict(checkpoint["network_weights"])
    except RuntimeError as exc:
        raise DGCFError(f"checkpoint weights do not fit the network its plans describe: "
                        f"{str(exc).splitlines()[0][:160]}") from None
    return network.to(device).eval()
