"""`dgcf_plan_and_preprocess`: validate -> fingerprint -> plans -> splits -> preprocessed slice stacks.

Everything that can be checked is checked before the first file is written (dataset validation, plan
overrides, an existing splits file), so bad input leaves DGCF_preprocessed untouched.

Output, in $DGCF_preprocessed/Dataset<id>_<Name>/:
  dataset.json, dataset_fingerprint.json, <plans>.json, splits_final.json,
  <data_identifier>/<case>_source.npy, <case>_ct.npy, <case>_mask.npy, <case>.json (properties),
one array folder per configuration's data identifier (`<plans>_2d`: (S, H, W) slices, shared by 2.5d, which
inherits 2d's grid; `<plans>_3d_fullres`: (Z, Y, X) volumes), where <plans> is the planner's identifier
(`-pl default`: DGCFPlans, `-pl release`: DGCFReleasePlans; planning/planners.py). `PREPROCESSORS` maps a
configuration's kind to the function that preprocesses one case for it. Fingerprint, folds and dataset.json
are shared by every planner.
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dgcf_auto.atomic import check_writable, folder_lock, read_json, write_json, write_npy
from dgcf_auto.dataset.discovery import Case, modality_of
from dgcf_auto.dataset.source_checks import MODALITY_NAMES, check_sources, dataset_expectation
from dgcf_auto.dataset.validation import load_case, validate_dataset
from dgcf_auto.errors import DGCFError
from dgcf_auto.paths import DATASET_PATTERN, DEFAULT_PLANS, parse_dataset_id, preprocessed_root, raw_dataset
from dgcf_auto.planning.fingerprint import FINGERPRINT_FILE, fingerprint_dataset, input_signature
from dgcf_auto.planning.planner import preprocessing_signature_fields
from dgcf_auto.planning.planners import get_planner
from dgcf_auto.planning.splits import SPLIT_MODES, SPLITS_FILE, write_splits
from dgcf_auto.plans import (
    DEFAULT_CONFIGURATION,
    KIND_SLABS,
    KIND_SLICES,
    KIND_VOLUME,
    configuration_names,
    configuration_plans,
)
from dgcf_auto.plans_schema import load_plans
from dgcf_auto.preprocessing.pipeline import PROPERTIES_VERSION, preprocess_case
from dgcf_auto.workers import map_cases

ARRAY_KEYS = ("source", "ct", "mask")
LOCK_FILE = ".dgcf_plan_and_preprocess.lock"
# Configuration kind -> (source, ct, mask, plans, case_name, configuration) -> PreprocessedCase.
PREPROCESSORS = {KIND_SLICES: preprocess_case, KIND_SLABS: preprocess_case, KIND_VOLUME: preprocess_case}


def case_files(folder: Path, name: str) -> dict[str, Path]:
    files = {key: folder / f"{name}_{key}.npy" for key in ARRAY_KEYS}
    files["properties"] = folder / f"{name}.json"
    return files


def case_signature(case: Case, plans: dict, configuration: str) -> str:
    payload = {"version": PROPERTIES_VERSION, "plans": preprocessing_signature_fields(plans, configuration),
               "inputs": input_signature([case])}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def is_up_to_date(case: Case, plans: dict, folder: Path, configuration: str) -> bool:
    """Its json carries the current signature, and every array exists with the shape the json and the plans say."""
    files = case_files(folder, case.name)
    needed = [files["source"], files["mask"], files["properties"]] + ([files["ct"]] if case.ct else [])
    if not all(p.is_file() for p in needed):
        return False
    try:
        properties = read_json(files["properties"])
        if properties.get("signature") != case_signature(case, plans, configuration):
            return False
        shape = tuple(properties["shape"])
        arrays = [np.load(files[key], mmap_mode="r") for key in ARRAY_KEYS if key != "ct" or case.ct]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    cfg = configuration_plans(plans, configuration)
    shape_ok = shape[1:] == tuple(int(v) for v in cfg.patch_size) if cfg.kind in (KIND_SLICES, KIND_SLABS) else True
    return shape_ok and all(a.shape == shape for a in arrays)


@dataclass
class _Job:
    case: Case
    plans: dict
    folder: Path
    configuration: str


def preprocess_one(job: _Job) -> dict:
    """Worker: one case from raw files to its four output files (json last)."""
    start = time.perf_counter()
    source, ct, mask = load_case(job.case)
    preprocess = PREPROCESSORS[configuration_plans(job.plans, job.configuration).kind]
    result = preprocess(source, ct, mask, job.plans, job.case.name, job.configuration)
    del source, ct, mask
    files = case_files(job.folder, job.case.name)
    write_npy(result.source, files["source"])
    if result.ct is not None:
        write_npy(result.ct, files["ct"])
    write_npy(result.mask, files["mask"])
    properties = dict(result.properties, signature=case_signature(job.case, job.plans, job.configuration),
                      files={k: str(getattr(job.case, k)) for k in ARRAY_KEYS
                             if getattr(job.case, k) is not None})
    write_json(properties, files["properties"])
    return {"case": job.case.name, "shape": list(result.source.shape), "seconds": time.perf_counter() - start}


def preprocess_dataset(cases: list[Case], plans: dict, folder: Path, num_processes: int = 1, overwrite: bool = False,
                       progress: bool = True, configuration: str = DEFAULT_CONFIGURATION) -> dict:
    """Preprocess one configuration's arrays for the cases that are not up to date; returns
    {'done': [...], 'skipped': [...]}."""
    todo = [c for c in cases if overwrite or not is_up_to_date(c, plans, folder, configuration)]
    skipped = [c.name for c in cases if c not in todo]
    jobs = [_Job(c, plans, folder, configuration) for c in todo]
    done = list(map_cases(preprocess_one, jobs, num_processes, f"preprocessing {configuration}", progress))
    return {"done": done, "skipped": skipped}


def array_owners(plans: dict, configurations: list[str] | None = None) -> dict[str, str]:
    """data identifier -> the configuration that preprocesses its arrays (a configuration inheriting another's
    grid shares its arrays: 2.5d reads 2d's). `configurations`: the ones asked for (default: all planned); a
    name not planned is one DGCFError."""
    owners: dict[str, str] = {}
    for name in configurations or configuration_names(plans):
        cfg = configuration_plans(plans, name)
        owner = name
        while cfg.inherits_from is not None and \
                configuration_plans(plans, cfg.inherits_from).data_identifier == cfg.data_identifier:
            owner = cfg.inherits_from
            cfg = configuration_plans(plans, owner)
        owners.setdefault(cfg.data_identifier, owner)
    return owners


def _edited_planner(plans_name: str):
    """A stand-in planner for a plans file edited by hand: no planning function; describes the plans."""
    from dgcf_auto.planning.planners import Planner

    def describe(plans: dict) -> str:
        return f"plans {plans_name} as edited ({', '.join(configuration_names(plans))})"

    return Planner(plans_name, None, describe, lambda overrides: None)


def _check_edited(plans: dict, plans_file: Path, plans_name: str) -> None:
    """An edited copy must carry its own name and array folders, so it never overwrites another plans' arrays."""
    if plans.get("plans_name") != plans_name:
        raise DGCFError(f"plans file {plans_file}: field plans_name: {plans.get('plans_name')!r} must be the file's "
                        f"name {plans_name!r} (a copy keeps its own arrays apart)")
    for name in configuration_names(plans):
        identifier = configuration_plans(plans, name).data_identifier
        if not identifier.startswith(f"{plans_name}_"):
            raise DGCFError(f"plans file {plans_file}: field configurations.{name}.data_identifier: {identifier!r} "
                            f"must start with {plans_name + '_'!r} (arrays of another plans file would be replaced)")


def _existing_plans(plans_file: Path) -> dict:
    """The plans file a rerun would replace. One that no longer reads as JSON was broken by hand or by a crash
    of something else: it is refused rather than silently replaced (--overwrite replaces it)."""
    try:
        return read_json(plans_file)
    except (OSError, ValueError) as exc:
        raise DGCFError(f"plans file {plans_file}: not valid JSON ({exc}); restore it, or pass --overwrite to "
                        f"plan afresh") from None


def _output_folder(raw_dir: Path) -> Path:
    """$DGCF_preprocessed/<raw folder name>; another folder with the same id there is an error."""
    root = preprocessed_root()
    did = parse_dataset_id(raw_dir.name)  # a raw dataset folder's name holds its id
    if root.is_dir():
        for other in root.iterdir():
            match = DATASET_PATTERN.match(other.name)
            if match and int(match.group(1)) == did and other.name != raw_dir.name and other.is_dir():
                raise DGCFError(f"dataset {did}: DGCF_preprocessed already holds {other} for this id "
                                f"(raw folder is {raw_dir.name}); remove or rename one of them")
    return root / raw_dir.name


def plan_and_preprocess(dataset_id: str | int, num_processes: int = 2, overwrite: bool = False,
                        split: str = "5fold", overrides: dict | None = None, preprocess: bool = True,
                        progress: bool = True, force: bool = False, planner: str = "default",
                        configurations: list[str] | None = None, plans_name: str | None = None) -> dict:
    """The whole command; returns a summary (paths, plans, preprocessing counts, `forced`: what the source
    checks let pass with `force`, also recorded in the preprocessed dataset.json). `planner`: a key of
    planning.planners.PLANNERS (`-pl`). `configurations`: which planned configurations to preprocess
    (default: every one the planner planned). `plans_name`: preprocess an existing plans file of that name
    (nnU-Net's `-plans_name`: plans edited by hand and saved under a new name) instead of planning."""
    if split not in SPLIT_MODES:
        raise DGCFError(f"unknown split {split!r} (expected one of {', '.join(SPLIT_MODES)})")
    if int(num_processes) < 1:
        raise DGCFError(f"-np must be at least 1, got {num_processes}")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    chosen = get_planner(planner)
    chosen.check_overrides(overrides)
    if plans_name is not None:
        if overrides:
            raise DGCFError(f"plans overrides ({', '.join(sorted(overrides))}) apply to planning; plans "
                            f"{plans_name!r} are preprocessed as written: edit its file instead")
        chosen = _edited_planner(plans_name)
    else:
        chosen.check_configurations(configurations)
    raw_dir = raw_dataset(dataset_id)
    out_dir = check_writable(_output_folder(raw_dir), "preprocessed folder")
    cases = validate_dataset(raw_dir, progress=progress)
    modality = modality_of(cases)  # validation guarantees one source modality
    forced = check_sources(cases, dataset_expectation(cases, modality), force, "dgcf_plan_and_preprocess",
                           f"its file name says {MODALITY_NAMES[modality]}")
    # One run at a time per dataset: two runs with different plans would mix their arrays.
    with folder_lock(out_dir, LOCK_FILE, waiting=f"dgcf_plan_and_preprocess: {out_dir} is in use by another run; "
                                                 f"waiting for it to finish (Ctrl-C to give up)"):
        return _plan_and_preprocess_locked(raw_dir, out_dir, cases, num_processes, overwrite, split, overrides,
                                           preprocess, progress, chosen, forced, configurations)


def _plan_and_preprocess_locked(raw_dir: Path, out_dir: Path, cases: list[Case], num_processes: int,
                                overwrite: bool, split: str, overrides: dict, preprocess: bool,
                                progress: bool, chosen, forced: Sequence[dict] = (),
                                configurations: list[str] | None = None) -> dict:
    names = [c.name for c in cases]
    plans_file = out_dir / f"{chosen.plans_name}.json"
    if chosen.plan is None and not plans_file.is_file():
        raise DGCFError(f"plans file {plans_file}: not found (-p names an existing plans file, e.g. a copy of "
                        f"{DEFAULT_PLANS}.json edited and saved under that name)")
    if plans_file.is_file() and not overwrite:
        _existing_plans(plans_file)  # a broken plans file stops the run before anything is written
    # Checked (and drawn) before anything is written; the planner sizes an epoch by the folds' training share.
    folds = write_splits(names, out_dir / SPLITS_FILE, split, overwrite, dry_run=True)
    fraction = sum(len(f["train"]) for f in folds) / (len(folds) * len(names))

    edited = chosen.plan is None
    if edited:  # plans edited by hand: read (and checked) as they are, never rewritten
        plans = load_plans(plans_file)
        _check_edited(plans, plans_file, chosen.plans_name)
        owners = array_owners(plans, configurations)
    fingerprint = fingerprint_dataset(cases, out_dir / FINGERPRINT_FILE, num_processes, overwrite, progress)
    if not edited:
        plans = chosen.plan(fingerprint, raw_dir.name, overrides, fraction)
        owners = array_owners(plans, configurations)
        if overwrite or not plans_file.is_file() or _existing_plans(plans_file) != json.loads(json.dumps(plans)):
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
        per_configuration = {owner: preprocess_dataset(cases, plans, out_dir / identifier, num_processes, overwrite,
                                                       progress, owner)
                             for identifier, owner in owners.items()}
        # done/skipped: the first configuration's (2d unless -c says otherwise); every one's under "configurations"
        first = next(iter(per_configuration.values()))
        summary["preprocessed"] = {**first, "configurations": per_configuration}
    return summary


def _json_or_none(path: Path):
    """The JSON in `path`, or None when it is missing or unreadable (a file this module rewrites anyway)."""
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None
