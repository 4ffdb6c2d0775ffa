"""Import a generator trained with the authors' released code into a dgcf_auto fold checkpoint.

A tool across stages (like demo.py): it reads the dataset's plans, applies a `-tr` variant's plans as
training would, builds the network with the frozen DINOv3, loads their weights, and writes the checkpoint
the predictor reads (`checkpoint.py`).

Their training saves `DINOGuidedGenerator.state_dict()` (`<epoch>_net_G.pth`); the frozen DINOv3 is not in
it (their features were precomputed), so its weights come from a separate file. The key mapping is the
network's own `reference_key_map()` (dgcf_auto/network/dgcn_release.py) and strict both ways: every
tensor of ours must come from their file with the same shape, and every key in their file must be used,
except the fusion blocks their class builds but never runs when `use_cnn=False` ("ViT only"), which are
dropped by name and reported.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from dgcf_auto import paths
from dgcf_auto.errors import DGCFError
from dgcf_auto.log import get_logger
from dgcf_auto.planning.release_planner import PLANS_NAME as RELEASE_PLANS  # their preprocessing
from dgcf_auto.plans import CONFIGURATION_2D, resolve_configuration
from dgcf_auto.plans_schema import load_plans

if TYPE_CHECKING:
    from dgcf_auto.network.dgcn_release import DGCNRelease

DEFAULT_TRAINER = "DGCFTrainer_release"
CONFIGURATION = CONFIGURATION_2D  # their network sees single slices
CHECKPOINT_NAME = "checkpoint_final.pth"

# Their ViT-only generator (use_cnn=False) still builds fuse1..fuse4; its forward never calls them.
UNUSED_WITHOUT_CNN = re.compile(r"^fuse[1-4]\.")


def _plans_file(dataset: str | int, plans_name: str) -> Path:
    """`<preprocessed>/<Dataset>/<plans_name>.json`; release plans are made (planning only) when missing."""
    folder: Path | None
    try:
        folder = paths.preprocessed_dataset(dataset)
    except DGCFError:
        if plans_name != RELEASE_PLANS:
            raise
        folder = None
    if plans_name == RELEASE_PLANS and (folder is None or not (folder / f"{plans_name}.json").is_file()):
        from dgcf_auto.preprocessing.run import plan_and_preprocess

        try:
            paths.raw_dataset(dataset)
        except DGCFError as exc:
            raise DGCFError(f"{exc}; the import needs {RELEASE_PLANS}.json: make the raw dataset and run "
                            f"dgcf_plan_and_preprocess -d {paths.parse_dataset_id(dataset)} -pl release") from None
        get_logger(__name__).info(f"{RELEASE_PLANS}.json is missing: planning it now (dgcf_plan_and_preprocess "
                                  f"-d {paths.parse_dataset_id(dataset)} -pl release --no_pp)")
        summary = plan_and_preprocess(dataset, 1, preprocess=False, progress=False, planner="release")
        folder = Path(summary["output_folder"])
    assert folder is not None  # only release plans get past a missing dataset, and they were planned above
    return folder / f"{plans_name}.json"


def read_reference_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Their saved state_dict (weights_only); a missing/corrupt/foreign file is one DGCFError line."""
    path = Path(path)
    if not path.is_file():
        raise DGCFError(f"reference generator checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DGCFError(f"reference generator checkpoint {path} is corrupt or not a PyTorch state_dict "
                        f"(torch.load with weights_only=True failed: {type(exc).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise DGCFError(f"reference generator checkpoint {path} is not a state_dict of tensors "
                        f"(expected the file saved by their save_networks, e.g. best_net_G.pth)")
    return state


def _examples(keys: list[str], n: int = 3) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def convert_reference_state_dict(network: DGCNRelease, reference: dict[str, torch.Tensor],
                                 source: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Their generator state_dict -> ours (every tensor but the frozen ViT) and the keys dropped by name.

    Raises DGCFError (one line) for missing keys, keys we have no use for, and shape mismatches.
    """
    mapping = network.reference_key_map()  # ours -> theirs
    ours_by_theirs = {theirs: ours for ours, theirs in mapping.items()}
    missing = [theirs for theirs in ours_by_theirs if theirs not in reference]
    dropped = [k for k in reference if k not in ours_by_theirs and not network.use_cnn
               and UNUSED_WITHOUT_CNN.match(k)]
    unmatched = [k for k in reference if k not in ours_by_theirs and k not in dropped]
    if missing:
        raise DGCFError(f"{source}: {len(missing)} tensors of the released generator this -tr expects are "
                        f"missing: {_examples(missing)}; is it a checkpoint of another configuration (-tr)?")
    if unmatched:
        raise DGCFError(f"{source}: {len(unmatched)} keys match no layer of the released generator this -tr "
                        f"builds: {_examples(unmatched)}; is it a checkpoint of another configuration (-tr)?")
    target = network.state_dict()
    converted = {}
    for theirs, ours in ours_by_theirs.items():
        value = reference[theirs]
        if tuple(value.shape) != tuple(target[ours].shape):
            raise DGCFError(f"{source}: {theirs} has shape {list(value.shape)}, the released generator this "
                            f"-tr builds needs {list(target[ours].shape)} (other base channels or DINOv3 width?)")
        converted[ours] = value.to(target[ours].dtype)
    return converted, sorted(dropped)


def load_reference_weights(network: DGCNRelease, reference: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load their weights into `network` in place (strict for everything but the frozen ViT); returns the
    keys dropped by name."""
    converted, dropped = convert_reference_state_dict(network, reference, source)
    vit = {k: v for k, v in network.state_dict().items() if k.startswith("dinov3.")}
    network.load_state_dict({**converted, **vit}, strict=True)
    return dropped


def _base_width(reference: dict[str, torch.Tensor], fallback: int) -> int:
    """Their `ngf`: the input width of the head's ConvBNGELU (decoder.out.0), when the file has it."""
    weight = reference.get("decoder.out.0.block.0.weight")
    return int(weight.shape[1]) if weight is not None and weight.ndim == 4 else fallback


def import_reference_checkpoint(generator: str | Path, dinov3_weights: str | Path, dataset: str | int,
                                trainer: str = DEFAULT_TRAINER, fold: str | int = "all",
                                plans_name: str = RELEASE_PLANS) -> Path:
    """Write `<results>/<Dataset>/<trainer>__<plans>__2d/fold_<fold>/checkpoint_final.pth` from their
    generator state_dict and a DINOv3 weights file; returns its path. Every problem is one DGCFError line."""
    from dgcf_auto.checkpoint import load_checkpoint, save_checkpoint
    from dgcf_auto.network import build_dinov3, build_network, network_needs_dinov3
    from dgcf_auto.network.dgcn_release import DGCNRelease
    from dgcf_auto.plans import network_plans
    from dgcf_auto.training.run import parse_fold
    from dgcf_auto.training.variants import effective_plans, get_trainer_variant

    variant = get_trainer_variant(trainer)
    if not variant.network.startswith("dgcn_release"):
        raise DGCFError(f"trainer {trainer} trains {variant.network!r}, not the released DGCN; use one of the "
                        f"DGCFTrainer_release* trainers (-tr)")
    fold = parse_fold(fold)
    plans_file = _plans_file(dataset, plans_name)
    folder = plans_file.parent
    if not plans_file.is_file():
        raise DGCFError(f"dataset {folder.name}: {plans_file} is missing; run dgcf_plan_and_preprocess -d "
                        f"{paths.parse_dataset_id(folder.name)} first (the import needs its plans)")
    output = paths.training_output_folder(folder.name, trainer, plans_name, CONFIGURATION, fold) / CHECKPOINT_NAME
    if output.exists():
        raise DGCFError(f"{output} already exists; delete it to import again")

    reference = read_reference_state_dict(Path(generator))
    plans = effective_plans(resolve_configuration(load_plans(plans_file), CONFIGURATION), variant, {})
    base = _base_width(reference, int(plans["network"]["features"][0]))
    plans["network"]["features"] = [base * 2 ** i for i in range(4)]
    net_plans = network_plans(plans)
    dinov3 = None
    if network_needs_dinov3(net_plans):
        dinov3 = build_dinov3(net_plans.dinov3, weights=str(dinov3_weights))
    network = build_network(net_plans, dinov3)
    assert isinstance(network, DGCNRelease)  # every dgcn_release* network the variant check let through
    dropped = load_reference_weights(network, reference, str(generator))
    if dropped:
        get_logger(__name__).info(f"{len(dropped)} tensors of their ViT-only generator's unused fusion blocks "
                                  f"(fuse1-4) not imported")
    payload = {
        "network_weights": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        "epoch": 0,
        "plans": plans,
        "trainer_name": trainer,
        "dinov3_source": dinov3.weights_source if dinov3 is not None else "none (not used by this network)",
        "imported_from": {"generator": str(Path(generator).resolve()), "dropped_keys": dropped,
                          "dinov3_weights": str(Path(dinov3_weights).resolve()) if dinov3 is not None else None},
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(output, payload)
    load_checkpoint(output)  # read back as training and prediction will
    return output
