"""Data folders, nnU-Net style: DGCF_raw, DGCF_preprocessed, DGCF_results, and dataset id -> folder.

When a variable is unset we fall back to `./DGCF_data/<variable>` (relative to the working directory)
and say so once on stderr, so a first run never scatters data silently.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from dgcf_auto.errors import DGCFError
from dgcf_auto.log import get_logger

ENV_VARS = ("DGCF_raw", "DGCF_preprocessed", "DGCF_results")
DEFAULT_ROOT = Path("DGCF_data")
DATASET_PATTERN = re.compile(r"^Dataset(\d{3})_([A-Za-z0-9_\-]+)$")
DEFAULT_TRAINER = "DGCFTrainer"   # -tr when none is given
DEFAULT_PLANS = "DGCFPlans"       # -p when none is given: the default planner's plans identifier
_warned: set[str] = set()


def data_root(variable: str) -> Path:
    """The folder named by `variable` (one of ENV_VARS), or the documented default when unset."""
    if variable not in ENV_VARS:
        raise ValueError(f"unknown data folder variable {variable!r}")
    value = os.environ.get(variable)
    if value:
        return Path(value).expanduser()
    default = (DEFAULT_ROOT / variable).resolve()
    if variable not in _warned:
        _warned.add(variable)
        get_logger(__name__).warning(f"{variable} is not set; using {default}")
    return default


def raw_root() -> Path:
    return data_root("DGCF_raw")


def preprocessed_root() -> Path:
    return data_root("DGCF_preprocessed")


def results_root() -> Path:
    return data_root("DGCF_results")


def dataset_folder_name(dataset_id: int, name: str) -> str:
    if not 0 < int(dataset_id) < 1000:
        raise DGCFError(f"dataset id must be between 1 and 999, got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise DGCFError(f"dataset name {name!r} may only hold letters, digits, '_' and '-'")
    return f"Dataset{int(dataset_id):03d}_{name}"


def parse_dataset_id(value: str | int) -> int:
    """Accept 1, '1', '001' or 'Dataset001_Name' (the nnU-Net spellings)."""
    text = str(value)
    match = DATASET_PATTERN.match(text)
    if match:
        return int(match.group(1))
    if text.isdigit():
        return int(text)
    raise DGCFError(f"'{value}' is not a dataset id (expected e.g. 1, 001 or Dataset001_Name)")


def find_dataset(root: Path, dataset_id: str | int, variable: str = "DGCF_raw") -> Path:
    """The single `Dataset<id>_*` folder under `root`; a clear error for none or several."""
    did = parse_dataset_id(dataset_id)
    root = Path(root)
    if not root.is_dir():
        raise DGCFError(f"dataset {did}: {variable} folder {root} does not exist (set {variable})")
    matches = sorted(p for p in root.iterdir() if p.is_dir() and _id_of(p.name) == did)
    if not matches:
        available = sorted(p.name for p in root.iterdir() if p.is_dir() and _id_of(p.name) is not None)
        hint = f"; available: {', '.join(available)}" if available else f"; {root} holds no Dataset<id>_<Name> folder"
        raise DGCFError(f"dataset {did}: no folder Dataset{did:03d}_* in {variable}={root}{hint}")
    if len(matches) > 1:
        raise DGCFError(f"dataset {did}: several folders share this id in {root}: "
                        f"{', '.join(m.name for m in matches)}; rename or remove all but one")
    if DATASET_PATTERN.match(str(dataset_id)) and matches[0].name != str(dataset_id):
        # A full name must match exactly: 'Dataset001_Wrong' never silently selects Dataset001_Right.
        raise DGCFError(f"dataset {dataset_id}: no such folder in {variable}={root}; id {did} is "
                        f"{matches[0].name} (pass -d {did} or -d {matches[0].name})")
    return matches[0]


def _id_of(folder_name: str) -> int | None:
    match = DATASET_PATTERN.match(folder_name)
    return int(match.group(1)) if match else None


def raw_dataset(dataset_id: str | int) -> Path:
    return find_dataset(raw_root(), dataset_id, "DGCF_raw")


def preprocessed_dataset(dataset_id: str | int) -> Path:
    """Preprocessed folder; its name is taken from the raw dataset when that exists, else looked up."""
    root = preprocessed_root()
    try:
        return find_dataset(root, dataset_id, "DGCF_preprocessed")
    except DGCFError as exc:
        if "no such folder" in str(exc):  # a wrong full name for an existing id: say that, not "run it"
            raise
        did = parse_dataset_id(dataset_id)
        raise DGCFError(f"dataset {did}: not preprocessed in DGCF_preprocessed={root}; "
                        f"run dgcf_plan_and_preprocess -d {did} first") from None


def results_dataset(dataset_id: str | int) -> Path:
    return find_dataset(results_root(), dataset_id, "DGCF_results")


def model_folder_name(trainer: str, plans: str, configuration: str) -> str:
    """`<Trainer>__<Plans>__<configuration>`: a trained model's folder under its dataset (nnU-Net's layout)."""
    return f"{trainer}__{plans}__{configuration}"


def training_output_folder(dataset_folder: str, trainer: str, plans: str, configuration: str, fold: int | str) -> Path:
    """$DGCF_results/<Dataset>/<Trainer>__<Plans>__<configuration>/fold_<k> (nnU-Net's layout)."""
    fold_name = "fold_all" if str(fold) == "all" else f"fold_{int(fold)}"
    return results_root() / dataset_folder / model_folder_name(trainer, plans, configuration) / fold_name


SPLIT_FOLDERS = {"val": "validation", "test": "test"}  # where a fold's predictions of a split go


def split_prediction_folder(dataset_folder: str, trainer: str, plans: str, configuration: str, fold: int | str,
                            split: str) -> Path:
    """fold_<k>/validation or fold_<k>/test of a trained model: `dgcf_predict --split` writes there."""
    return training_output_folder(dataset_folder, trainer, plans, configuration, fold) / SPLIT_FOLDERS[split]


def summary_file_name(profile: str) -> str:
    """The summary `dgcf_evaluate --split` writes beside the predictions, one per metric profile."""
    return f"summary_{profile}.json"
