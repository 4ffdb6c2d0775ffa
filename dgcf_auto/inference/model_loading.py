"""Find trained folds in DGCF_results and turn their checkpoints back into networks."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from dgcf_auto import checkpoint as checkpoint_format
from dgcf_auto import paths
from dgcf_auto.atomic import recover_swaps
from dgcf_auto.errors import DGCFError
from dgcf_auto.plans import DEFAULT_CONFIGURATION

if TYPE_CHECKING:
    from dgcf_auto.network.dinov3 import FrozenDINOv3

VIT_PREFIX = checkpoint_format.VIT_PREFIX


def trained_datasets() -> list[Path]:
    """Dataset folders in DGCF_results that hold at least one fold with a checkpoint."""
    root = paths.results_root()
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir()
                  if d.is_dir() and paths.DATASET_PATTERN.match(d.name) and any(d.glob("*/fold_*/checkpoint_*.pth")))


def model_dataset(model_folder: str | Path, plans: dict) -> str:
    """The dataset a model was trained on: its plans' `dataset_name`, which a model folder copied or renamed
    under another dataset folder keeps (said once per command); the folder's name for plans without one."""
    from dgcf_auto.log import get_logger

    folder = Path(model_folder)
    name = plans.get("dataset_name") if isinstance(plans, dict) else None
    if not isinstance(name, str) or not paths.DATASET_PATTERN.match(name):
        return folder.parent.name
    if name != folder.parent.name:
        get_logger(__name__).warning(f"model folder {folder} lies under {folder.parent.name}, but its plans say it "
                                     f"was trained on {name}: reported as {name}")
    return name


def resolve_model_folder(dataset: str | int | None, trainer: str, plans: str,
                         configuration: str = DEFAULT_CONFIGURATION) -> Path:
    """`<results>/<Dataset>/<trainer>__<plans>__<configuration>`; with no dataset, the single trained one."""
    if dataset is None:
        candidates = trained_datasets()
        if len(candidates) != 1:
            names = ", ".join(c.name for c in candidates) or "none"
            raise DGCFError(f"-d is required: {len(candidates)} trained datasets in "
                            f"DGCF_results={paths.results_root()} ({names})")
        dataset_folder = candidates[0]
    else:
        dataset_folder = paths.results_dataset(dataset)
    folder = dataset_folder / paths.model_folder_name(trainer, plans, configuration)
    recover_swaps(dataset_folder)  # an install killed between its renames: finish it first
    if not folder.is_dir():
        trained = sorted(p.name for p in dataset_folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise DGCFError(f"no trained model {folder.name} in {dataset_folder} "
                        f"(trained: {', '.join(trained) or 'none'}); check -tr/-p or run dgcf_train")
    return folder


def resolve_folds(model_folder: Path, folds: list[str] | None, checkpoint_name: str) -> list[Path]:
    """Checkpoint files for the requested folds. Default: the cross-validation folds (fold_0..fold_4) that
    have the checkpoint, as nnU-Net ensembles them; fold_all only when no numbered fold exists."""
    if not Path(model_folder).is_dir():
        raise DGCFError(f"model folder {model_folder}: not found")
    if not folds:
        found = sorted(model_folder.glob(f"fold_*/{checkpoint_name}"))
        numbered = [p for p in found if p.parent.name != "fold_all"]
        if not found:
            raise DGCFError(f"no {checkpoint_name} in any fold of {model_folder}; "
                            f"training unfinished? try -chk checkpoint_latest.pth or checkpoint_best.pth")
        return sorted(numbered, key=lambda p: int(p.parent.name[5:])) or found
    files = []
    for fold in folds:
        name = "fold_all" if str(fold) == "all" else f"fold_{int(str(fold).replace('fold', ''))}"
        path = model_folder / name / checkpoint_name
        if not path.is_file():
            raise DGCFError(f"fold {fold}: {path} not found")
        files.append(path)
    return files


def load_checkpoint(path: Path, merge_shared_vit: bool = True) -> dict:
    """A fold's checkpoint, for prediction: only the weights and the plans are needed. The frozen ViT kept
    once per model folder (`shared_vit`, verified by its SHA-256) is merged back in."""
    return checkpoint_format.load_checkpoint(path, required=checkpoint_format.PREDICTION_KEYS,
                                             merge_shared_vit=merge_shared_vit)


def build_trained_network(checkpoint: dict, device: torch.device | str = "cpu",
                          dinov3: FrozenDINOv3 | None = None) -> torch.nn.Module:
    """The registered network of a checkpoint; the frozen ViT's weights come from the checkpoint itself.
    `dinov3`: an existing FrozenDINOv3 holding these very weights (another fold's), shared, not built again."""
    from dgcf_auto.network import build_network, network_needs_dinov3
    from dgcf_auto.network.dinov3 import empty_dinov3
    from dgcf_auto.plans import network_plans

    plans = network_plans(checkpoint["plans"])
    if dinov3 is None and network_needs_dinov3(plans):
        # An empty ViT of the right shape; load_state_dict below fills in the trained run's weights.
        dinov3 = empty_dinov3(plans.dinov3, str(checkpoint.get("dinov3_source", "checkpoint")))
    network = build_network(plans, dinov3, for_checkpoint=True)
    try:
        network.load_state_dict(checkpoint["network_weights"])
    except RuntimeError as exc:
        raise DGCFError(f"checkpoint weights do not fit the network its plans describe: "
                        f"{str(exc).splitlines()[0][:160]}") from None
    return network.to(device).eval()


def load_network(checkpoint_path: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Public entry point (`dgcf_auto.load_network`): the eval-mode generator of a fold checkpoint.

    The module maps a normalised source batch B x C x H x W in [-1, 1] to the normalised CT (B x 1 x H x W),
    with the frozen ViT (weights from the checkpoint) inside. Keep this name and signature stable.
    """
    return build_trained_network(load_checkpoint(Path(checkpoint_path)), device)
