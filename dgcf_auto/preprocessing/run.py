"""`dgcf_plan_and_preprocess`: validate -> fingerprint -> plans -> splits -> preprocessed slice stacks.

Everything that can be checked is checked before the first file is written (dataset validation, plan
overrides, an existing splits file), so bad input leaves DGCF_preprocessed untouched.

Output, in $DGCF_preprocessed/Dataset<id>_<Name>/:
  dataset.json, dataset_fingerprint.json, <plans>.json, splits_final.json,
  <plans>_2d/<case>_source.npy, <case>_ct.npy, <case>_mask.npy (S, H, W), <case>.json (properties),
where <plans> is the planner's identifier (`-pl default`: DGCFPlans, `-pl release`: DGCFReleasePlans;
planning/planners.py). Fingerprint, folds and dataset.json are shared by every planner.
A case is up to date when its four files exist, the signature stored in its json (a hash of the
preprocessing-relevant plans and the input files' paths, sizes and mtimes) matches, and every array has the
shape its json and the plans give; such cases are skipped. A lock file in the output folder keeps a second
run on the same dataset waiting until the first is done.
The json is written last, so a case interrupted half-way is redone on the next run.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dgcf_auto.atomic import check_writable, folder_lock, read_json, write_json, write_npy
from dgcf_auto.dataset.discovery import Case
from dgcf_auto.dataset.source_checks import MODALITY_NAMES, check_sources, dataset_expectation
from dgcf_auto.dataset.validation import load_case, validate_dataset
from dgcf_auto.errors import DGCFError
from dgcf_auto.paths import DATASET_PATTERN, preprocessed_root, raw_dataset
from dgcf_auto.planning.fingerprint import FINGERPRINT_FILE, fingerprint_dataset, input_signature
from dgcf_auto.planning.planner import CONFIGURATION, preprocessing_signature_fields
from dgcf_auto.planning.planners import data_identifier, get_planner
from dgcf_auto.planning.splits import SPLIT_MODES, SPLITS_FILE, write_splits
from dgcf_auto.preprocessing.pipeline import PROPERTIES_VERSION, preprocess_case
from dgcf_auto.workers import map_cases

ARRAY_KEYS = ("source", "ct", "mask")
LOCK_FILE = ".dgcf_plan_and_preprocess.lock"


def case_files(folder: Path, name: str) -> dict[str, Path]:
    files = {key: folder / f"{name}_{key}.npy" for key in ARRAY_KEYS}
    files["properties"] = folder / f"{name}.json"
    return files


def case_signature(case: Case, plans: dict) -> str:
    payload = {"version": PROPERTIES_VERSION, "plans": preprocessing_signature_fields(plans),
               "inputs": input_signature([case])}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def is_up_to_date(case: Case, plans: dict, folder: Path) -> bool:
    """Its json carries the current signature, and every array exists with the shape the json and the plans say."""
    files = case_files(folder, case.name)
    needed = [files["source"], files["mask"], files["properties"]] + ([files["ct"]] if case.ct else [])
    if not all(p.is_file() for p in needed):
        return False
    try:
        properties = read_json(files["properties"])
        if properties.get("signature") != case_signature(case, plans):
            return False
        shape = tuple(properties["shape"])
        arrays = [np.load(files[key], mmap_mode="r") for key in ARRAY_KEYS if key != "ct" or case.ct]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    patch = tuple(int(v) for v in plans["configurations"][CONFIGURATION]["patch_size"])
    return shape[1:] == patch and all(a.shape == shape for a in arrays)


@dataclass
class _Job:
    case: Case
    plans: dict
    folder: Path


def preprocess_one(job: _Job) -> dict:
    """Worker: one case from raw files to its four output files (json last)."""
    start = time.perf_counter()
    source, ct, mask = load_case(job.case)
    result = preprocess_case(source, ct, mask, job.plans, job.case.name)
    del source, ct, mask
    files = case_files(job.folder, job.case.name)
    write_npy(result.source, files["source"])
    if result.ct is not None:
        write_npy(result.ct, files["ct"])
    write_npy(result.mask, files["mask"])
    properties = dict(result.properties, signature=case_signature(job.case, job.plans),
                      files={k: str(getattr(job.case, k)) for k in ARRAY_KEYS
                             if getattr(job.case, k) is not None})
    write_json(properties, files["properties"])
    return {"case": job.case.name, "shape": list(result.source.shape), "seconds": time.perf_counter() - start}


def preprocess_dataset(cases: list[Case], plans: dict, folder: Path, num_processes: int = 1,
                       overwrite: bool = False, progress: bool = True) -> dict:
    """Preprocess the cases that are not up to date; returns {'done': [...], 'skipped': [...]}."""
    todo = [c for c in cases if overwrite or not is_up_to_date(c, plans, folder)]
    skipped = [c.name for c in cases if c not in todo]
    jobs = [_Job(c, plans, folder) for c in todo]
    done = list(map_cases(preprocess_one, jobs, num_processes, "preprocessing", progress))
    return {"done": done, "skipped": skipped}


def _output_folder(raw_dir: Path) -> Path:
    """$DGCF_preprocessed/<raw folder name>; another folder with the same id there is an error."""
    root = preprocessed_root()
    did = int(DATASET_PATTERN.match(raw_dir.name).group(1))
    if root.is_dir():
        for other in root.iterdir():
            match = DATASET_PATTERN.match(other.name)
            if match and int(match.group(1)) == did and other.name != raw_dir.name and other.is_dir():
                raise DGCFError(f"dataset {did}: DGCF_preprocessed already holds {other} for this id "
                                f"(raw folder is {raw_dir.name}); remove or rename one of them")
    return root / raw_dir.name


def plan_and_preprocess(dataset_id: str | int, num_processes: int = 2, overwrite: bool = False,
                        split: str = "5fold", overrides: dict | None = None, preprocess: bool = True,
                        progress: bool = True, force: bool = False, planner: str = "default") -> dict:
    """The whole command; returns a summary (paths, plans, preprocessing counts, `forced`: what the source
    checks let pass with `force`, also recorded in the preprocessed dataset.json). `planner`: a key of
    planning.planners.PLANNERS (`-pl`)."""
    if split not in SPLIT_MODES:
        raise DGCFError(f"unknown split {split!r} (expected one of {', '.join(SPLIT_MODES)})")
    if int(num_processes) < 1:
        raise DGCFError(f"-np must be at least 1, got {num_processes}")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    chosen = get_planner(planner)
    chosen.check_overrides(overrides)
    raw_dir = raw_dataset(dataset_id)
    out_dir = check_writable(_output_folder(raw_dir), "preprocessed folder")
    cases = validate_dataset(raw_dir, progress=progress)
    modality = cases[0].modality  # validation guarantees one source modality
    forced = check_sources(cases, dataset_expectation(cases, modality), force, "dgcf_plan_and_preprocess",
                           f"its file name says {MODALITY_NAMES[modality]}")
    # One run at a time per dataset: two runs with different plans would mix their arrays.
    with folder_lock(out_dir, LOCK_FILE, waiting=f"dgcf_plan_and_preprocess: {out_dir} is in use by another run; "
                                                 f"waiting for it to finish (Ctrl-C to give up)"):
        return _plan_and_preprocess_locked(raw_dir, out_dir, cases, num_processes, overwrite, split, overrides,
                                           preprocess, progress, chosen, forced)


def _plan_and_preprocess_locked(raw_dir: Path, out_dir: Path, cases: list[Case], num_processes: int,
                                overwrite: bool, split: str, overrides: dict, preprocess: bool,
                                progress: bool, chosen, forced: list[dict] = ()) -> dict:
    names = [c.name for c in cases]
    # Checked (and drawn) before anything is written; the planner sizes an epoch by the folds' training share.
    folds = write_splits(names, out_dir / SPLITS_FILE, split, overwrite, dry_run=True)
    fraction = sum(len(f["train"]) for f in folds) / (len(folds) * len(names))

    fingerprint = fingerprint_dataset(cases, out_dir / FINGERPRINT_FILE, num_processes, overwrite, progress)
    plans = chosen.plan(fingerprint, raw_dir.name, overrides, fraction)
    plans_file = out_dir / f"{chosen.plans_name}.json"
    if overwrite or not plans_file.is_file() or read_json(plans_file) != json.loads(json.dumps(plans)):
        write_json(plans, plans_file)
    splits = write_splits(names, out_dir / SPLITS_FILE, split, overwrite)
    # No raw folder path: dataset.json travels in model zips (the dataset's name says where it came from).
    info = {"name": raw_dir.name, "task": plans["task"], "source_modality": plans["source_modality"],
            "num_cases": len(names), "cases": names, **({"forced_sources": list(forced)} if forced else {})}
    if _json_or_none(out_dir / "dataset.json") != info:  # ours, derived: a damaged copy is simply rewritten
        write_json(info, out_dir / "dataset.json")

    summary = {"output_folder": str(out_dir), "plans": plans, "num_folds": len(splits),
               "preprocessed": None, "forced": list(forced), "description": chosen.describe(plans)}
    if preprocess:
        summary["preprocessed"] = preprocess_dataset(cases, plans, out_dir / data_identifier(plans), num_processes,
                                                     overwrite, progress)
    return summary


def _json_or_none(path: Path):
    """The JSON in `path`, or None when it is missing or unreadable (a file this module rewrites anyway)."""
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None
