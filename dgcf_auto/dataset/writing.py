"""Create a whole `$DGCF_raw/Dataset<id>_<Name>/` folder atomically.

The folder is built under a hidden temporary name beside its target and renamed into place only when
every case is written, so a crash or a bad input never leaves a half-built dataset that later stages
would pick up by its id.
"""
from __future__ import annotations

from pathlib import Path

from dgcf_auto.atomic import atomic_folder as atomic_dataset_folder  # noqa: F401 (re-exported)
from dgcf_auto.errors import DGCFError
from dgcf_auto.paths import DATASET_PATTERN, dataset_folder_name, raw_root


def existing_dataset_folders(root: Path, dataset_id: int) -> list[Path]:
    """Folders under `root` that already carry this dataset id (any name)."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = DATASET_PATTERN.match(path.name)
        if match and int(match.group(1)) == int(dataset_id) and path.is_dir():
            found.append(path)
    return sorted(found)


def check_target_free(dataset_id: int, name: str, overwrite: bool = False, root: Path | None = None,
                      can_overwrite: bool = True) -> Path:
    """The target folder; a DGCFError when the id is taken (unless `overwrite` and it is the same name).

    `can_overwrite=False` is for commands without an --overwrite flag, so the hint does not offer one.
    """
    root = raw_root() if root is None else Path(root)
    target = root / dataset_folder_name(dataset_id, name)
    existing = existing_dataset_folders(root, dataset_id)
    others = [p for p in existing if p.name != target.name]
    if others:
        raise DGCFError(f"dataset {int(dataset_id)}: id already used by {others[0]} in DGCF_raw; "
                        f"choose another id with -d or remove that folder")
    if existing and not overwrite:
        raise DGCFError(f"dataset {int(dataset_id)}: {target} already exists; "
                        f"choose another id with -d or remove it first" +
                        (" (or pass --overwrite)" if can_overwrite else ""))
    return target
