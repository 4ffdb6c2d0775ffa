"""Cross-validation folds (`splits_final.json`), nnU-Net's shape: a list of {"train": [...], "val": [...]}.

- "5fold" (default): case names sorted, shuffled with seed 12345, cut into 5 near-equal validation folds
  (KFold-like; fewer folds when there are fewer than 5 cases).
- "paper": one split, 7:1:2 train/validation/test as in the paper; the test cases are recorded under "test"
  and are never trained or validated on.
An existing file is kept (folds must stay stable across runs and machines) unless `overwrite`; if it no
longer matches the dataset's cases, that is an error rather than a silent re-split.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dgcf_auto.atomic import write_json
from dgcf_auto.errors import DGCFError
from dgcf_auto.schema import read_checked

SPLITS_FILE = "splits_final.json"
SPLIT_MODES = ("5fold", "paper")
SEED = 12345
NUM_FOLDS = 5
PAPER_RATIO = (0.7, 0.1, 0.2)
_NAMES = {"type": "array", "items": {"type": "string", "minLength": 1}}
SPLITS_SCHEMA = {"type": "array", "minItems": 1,
                 "items": {"type": "object", "required": ["train", "val"],
                           "properties": {"train": _NAMES, "val": _NAMES, "test": _NAMES}}}


def read_splits(splits_file: Path) -> list[dict]:
    """The folds of `splits_file`, checked: a truncated or edited file is one line naming it and the field."""
    return read_checked(splits_file, SPLITS_SCHEMA, f"splits file {splits_file}")


def kfold_splits(case_names: list[str], num_folds: int = NUM_FOLDS, seed: int = SEED) -> list[dict]:
    names = sorted(case_names)
    if len(names) < 2:
        # One case: it has to serve as both training and validation case (documented; demo-sized data only).
        return [{"train": list(names), "val": list(names)}]
    folds = min(num_folds, len(names))
    order = np.random.RandomState(seed).permutation(len(names))
    chunks = np.array_split(order, folds)
    splits = []
    for chunk in chunks:
        val = sorted(names[i] for i in chunk)
        splits.append({"train": [n for n in names if n not in val], "val": val})
    return splits


def paper_split(case_names: list[str], seed: int = SEED, ratio=PAPER_RATIO) -> list[dict]:
    names = sorted(case_names)
    n = len(names)
    if n < 3:
        raise DGCFError(f"--split paper needs at least 3 cases (train/val/test), the dataset has {n}")
    n_test = max(1, int(round(ratio[2] * n)))
    n_val = max(1, int(round(ratio[1] * n)))
    order = [names[i] for i in np.random.RandomState(seed).permutation(n)]
    test, val = sorted(order[:n_test]), sorted(order[n_test:n_test + n_val])
    train = sorted(order[n_test + n_val:])
    return [{"train": train, "val": val, "test": test}]


def make_splits(case_names: list[str], mode: str = "5fold") -> list[dict]:
    if mode == "5fold":
        return kfold_splits(case_names)
    if mode == "paper":
        return paper_split(case_names)
    raise DGCFError(f"unknown split {mode!r} (expected one of {', '.join(SPLIT_MODES)})")


def split_mode_of(splits: list[dict]) -> str:
    return "paper" if any("test" in s for s in splits) else "5fold"


def check_splits(splits: list[dict], case_names: list[str], where: str) -> None:
    """A clear error when an existing splits file does not cover exactly the dataset's cases."""
    known = set(case_names)
    listed = set()
    for split in splits:
        for key in ("train", "val", "test"):
            listed.update(split.get(key, []))
    missing, extra = sorted(known - listed), sorted(listed - known)
    if missing or extra:
        parts = ([f"cases not in any fold: {', '.join(missing[:5])}"] if missing else []) + \
                ([f"unknown cases: {', '.join(extra[:5])}"] if extra else [])
        raise DGCFError(f"{where}: does not match the dataset ({'; '.join(parts)}); "
                        f"pass --overwrite to re-split (this changes the folds)")


def write_splits(case_names: list[str], out_file: Path, mode: str = "5fold", overwrite: bool = False,
                 dry_run: bool = False) -> list[dict]:
    """Existing folds are kept (and checked); new ones are written atomically (not with `dry_run`)."""
    out_file = Path(out_file)
    if out_file.is_file() and not overwrite:
        existing = read_splits(out_file)
        if split_mode_of(existing) != mode:
            raise DGCFError(f"{out_file}: holds a {split_mode_of(existing)} split, --split {mode} was asked; "
                            f"pass --overwrite to replace it (this changes the folds)")
        check_splits(existing, case_names, str(out_file))
        return existing
    splits = make_splits(case_names, mode)
    if not dry_run:
        write_json(splits, out_file)
    return splits


SPLIT_CHOICES = ("val", "test")


def split_cases(dataset_id, split: str, fold: int | str):
    """The raw cases (source, CT, mask) that fold `fold` records under `split` ('val' or 'test').

    One function for `dgcf_predict --split` and `dgcf_evaluate --split`, so both see the same cases. Returns
    (raw dataset folder, [dataset.Case]); a DGCFError for a missing splits file, fold, test set or case.
    """
    from dgcf_auto.dataset.discovery import read_case_folder
    from dgcf_auto.paths import parse_dataset_id, preprocessed_dataset, raw_dataset

    if split not in SPLIT_CHOICES:
        raise DGCFError(f"unknown split {split!r} (expected one of {', '.join(SPLIT_CHOICES)})")
    did = parse_dataset_id(dataset_id)
    splits_file = preprocessed_dataset(did) / SPLITS_FILE
    if not splits_file.is_file():
        raise DGCFError(f"dataset {did}: {splits_file} not found; run dgcf_plan_and_preprocess -d {did} first")
    splits = read_splits(splits_file)
    if str(fold) == "all" or not str(fold).isdigit() or int(fold) >= len(splits):
        raise DGCFError(f"dataset {did}: fold {fold} is not in {splits_file} (folds 0 to {len(splits) - 1})")
    recorded = splits[int(fold)]
    if split not in recorded:
        raise DGCFError(f"dataset {did}: {splits_file} records no {split} cases (a {split_mode_of(splits)} split); "
                        f"the test set exists only with --split paper: dgcf_plan_and_preprocess -d {did} "
                        f"--split paper --overwrite (this changes the folds)")
    raw = raw_dataset(did)
    missing = [name for name in recorded[split] if not (raw / name).is_dir()]
    if missing:
        raise DGCFError(f"dataset {did}: case {missing[0]}: folder {raw / missing[0]} not found "
                        f"({len(missing)} recorded {split} case(s) missing from the raw dataset)")
    return raw, [read_case_folder(raw / name) for name in recorded[split]]
