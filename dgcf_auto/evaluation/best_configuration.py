"""`dgcf_find_best_configuration -d 1 -c 2d 2.5d 3d_fullres -tr A B [-f 0 1 2 3 4] [--metric mae]`, after
nnU-Net's nnUNetv2_find_best_configuration.

The models are every trainer x configuration (nnU-Net's order: trainer by trainer, each in every configuration),
`<Trainer>__<Plans>__<configuration>`; nothing here depends on what a configuration is.
1. Per model, the folds' final-validation predictions (`fold_X/validation/`, dgcf_train) are gathered into
   `<Trainer>__<Plans>__<configuration>/crossval_results_folds_0_1_2_3_4/` and scored there against the raw
   dataset's CTs and masks with dgcf_evaluate's code: `summary.json` (every case of every fold, then the means).
2. Every ensemble of two or more models is averaged from the saved float predictions (`dgcf_train --npz`,
   see inference/saved_predictions.py) with dgcf_ensemble's code into
   `$DGCF_results/<Dataset>/ensembles/ensemble___<model 1>___<model 2>...___<folds>/` and scored the same way:
   on one shared grid (2d with 2.5d) the normalised predictions are averaged; across grids (with 3d_fullres)
   each member's float HU on the case's original grid. Averaging int16 sCTs instead would add up to 0.5 HU of
   rounding per member; the floats avoid that.
3. The best by the metric (its direction from the metric profile) wins; ties go to the first, singles before
   ensembles (the simpler). A paired test over the cases (compare.py's) says whether it beats the runner-up.
4. `$DGCF_results/<Dataset>/inference_information.json` and `inference_instructions.txt` give the exact
   dgcf_predict (and dgcf_ensemble) commands.
Every folder is rebuilt on each run (a rerun trusts nothing it has not recomputed).
"""
from __future__ import annotations

import itertools
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from dgcf_auto import paths
from dgcf_auto.atomic import atomic_folder, atomic_path, write_json
from dgcf_auto.errors import DGCFError
from dgcf_auto.log import get_logger
from dgcf_auto.plans import CONFIGURATION_KINDS, DEFAULT_CONFIGURATION

log = get_logger(__name__)

SUMMARY = "summary.json"
INFORMATION_FILE = "inference_information.json"
INSTRUCTIONS_FILE = "inference_instructions.txt"
DEFAULT_FOLDS = (0, 1, 2, 3, 4)


def folds_string(folds) -> str:
    return "_".join(str(f) for f in folds)


def model_identifier(trainer: str, plans: str, configuration: str = DEFAULT_CONFIGURATION) -> str:
    return paths.model_folder_name(trainer, plans, configuration)


def ensemble_identifier(members: list[str], folds) -> str:
    """nnU-Net's name: ensemble___<model 1>___<model 2>___<folds>."""
    return "___".join(["ensemble", *members, folds_string(folds)])


def _trains(trainer: str, configuration: str) -> bool:
    """Whether `trainer` trains `configuration`'s kind (a slice trainer has no 3d_fullres model, a 3D trainer no
    2d one: nnU-Net's trainers train every configuration, ours are made for one kind of input)."""
    from dgcf_auto.training.variants import get_trainer_variant

    kind = CONFIGURATION_KINDS.get(configuration)
    if kind is None or kind in get_trainer_variant(trainer).kinds:
        return True
    log.debug(f"trainer {trainer} does not train {configuration} ({kind}): left out of the comparison")
    return False


def find_best_configuration(dataset, trainers: list[str], plans: str = paths.DEFAULT_PLANS, folds=DEFAULT_FOLDS,
                            metric: str = "mae", profile: str | None = None, allow_ensembling: bool = True,
                            num_processes: int = 1, test: str = "ttest", progress: bool = True,
                            configurations=(DEFAULT_CONFIGURATION,)) -> dict:
    """Score every model (trainer x configuration) and ensemble of models on the cross-validation, write the
    instructions; returns the information dict (also written to inference_information.json)."""
    from dgcf_auto import paths
    from dgcf_auto.evaluation.profiles import DEFAULT_PROFILE, get_profile

    scoring = get_profile(profile or DEFAULT_PROFILE)
    if metric not in scoring.metrics:
        raise DGCFError(f"`metric` {metric}: not a metric of profile {scoring.name} "
                        f"({', '.join(scoring.metrics)}); pick one or another `profile`")
    trainers, folds = list(dict.fromkeys(trainers)), [int(f) for f in dict.fromkeys(folds)]
    configurations = list(dict.fromkeys(configurations))
    if not trainers or not folds or not configurations:
        raise DGCFError("give at least one trainer (-tr), one configuration (-c) and one fold (-f)")
    results_dataset = paths.results_dataset(dataset)
    models = [Model(t, c, plans) for t in trainers for c in configurations if _trains(t, c)]
    if not models:
        raise DGCFError(f"none of the trainers {', '.join(trainers)} trains the configurations "
                        f"{', '.join(configurations)}")
    members = {m.identifier: _fold_validation(dataset, results_dataset / m.identifier, m, folds) for m in models}
    ensembles = [list(c) for k in range(2, len(models) + 1) for c in itertools.combinations(models, k)]
    if allow_ensembling and ensembles:
        _check_saved_predictions(members, models, dataset)
    cases = [c for entry in members[models[0].identifier].values() for c in entry["reference"]]  # every fold's
    common = {"dataset": results_dataset.name, "task": _task(dataset, folds[0]), "split": "val (cross-validation)",
              "plans": plans, "folds": folds}
    results: dict[str, dict] = {}
    for model in models:
        folder = results_dataset / model.identifier / f"crossval_results_folds_{folds_string(folds)}"
        log.info(f"{model.identifier}: gathering {len(folds)} fold(s) into {folder}")
        gather_folds(members[model.identifier], folder)
        results[model.identifier] = {"folder": folder, "models": [model], "summary": _score(
            folder, cases, scoring.name, num_processes,
            {**common, "trainer": model.trainer, "configuration": model.configuration})}
    if allow_ensembling:
        from dgcf_auto.inference.ensemble import ensemble_folders

        for combination in ensembles:
            identifier = ensemble_identifier([m.identifier for m in combination], folds)
            folder = results_dataset / "ensembles" / identifier
            log.info(f"ensemble of {', '.join(m.identifier for m in combination)} into {folder}")
            with atomic_folder(folder) as tmp:
                ensemble_folders([results[m.identifier]["folder"] for m in combination], tmp,
                                 num_processes=num_processes, progress=progress)
            configuration = "+".join(dict.fromkeys(m.configuration for m in combination))
            summary = _score(folder, cases, scoring.name, num_processes,
                             {**common, "trainer": "ensemble", "configuration": configuration,
                              "members": [m.identifier for m in combination]})
            results[identifier] = {"folder": folder, "summary": summary, "models": combination}
    information = _choose(results, dataset, results_dataset, models, folds, metric, scoring, allow_ensembling, test)
    write_json(information, results_dataset / INFORMATION_FILE)
    text = inference_instructions(information)
    with atomic_path(results_dataset / INSTRUCTIONS_FILE) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return information


@dataclass(frozen=True)
class Model:
    """One trained model of the comparison: a trainer in a configuration, with one plans identifier."""
    trainer: str
    configuration: str
    plans: str

    @property
    def identifier(self) -> str:
        return model_identifier(self.trainer, self.plans, self.configuration)

    def describe(self) -> str:
        return f"trainer {self.trainer} ({self.configuration})"

    def as_dict(self) -> dict:
        return {"trainer": self.trainer, "plans_identifier": self.plans, "configuration": self.configuration}


def _fold_validation(dataset, model_folder: Path, model: Model, folds: list[int]) -> dict[int, dict]:
    """{fold: {"folder": fold_X/validation, "reference": EvalCases}}; one line for a fold not validated."""
    from dgcf_auto.evaluation.evaluate import flat_images, split_reference

    trainer = model.describe()
    if not model_folder.is_dir():
        raise DGCFError(f"{trainer}: no trained model {model_folder}; run dgcf_train {dataset} "
                        f"{model.configuration} FOLD -tr {model.trainer} first")
    per_fold = {}
    for fold in folds:
        folder = model_folder / f"fold_{fold}" / "validation"
        _, _, reference = split_reference(dataset, "val", fold)
        found = flat_images(folder) if folder.is_dir() else {}
        if missing := [c.name for c in reference if c.name not in found]:
            raise DGCFError(f"{trainer} fold {fold}: {folder} lacks the validation prediction of case "
                            f"{missing[0]} ({len(missing)} missing); run dgcf_train {dataset} {model.configuration} "
                            f"{fold} -tr {model.trainer} --val --npz")
        per_fold[fold] = {"folder": folder, "reference": reference, "images": found}
    return per_fold


def _check_saved_predictions(members: dict, models: list[Model], dataset) -> None:
    """Ensembles average float predictions: every validation case needs its <case>.npz/.json (--npz), and
    they must be the floats of the sCT beside them (the folder's provenance record holds both hashes), not
    leftovers of an earlier validation."""
    from dgcf_auto.hashing import file_sha256
    from dgcf_auto.inference.provenance import read_provenance
    from dgcf_auto.inference.saved_predictions import PLANS_FILE, saved_cases, saved_files

    for model in models:
        trainer = model.describe()
        for fold, entry in members[model.identifier].items():
            folder = entry["folder"]
            rerun = (f"rerun dgcf_train {dataset} {model.configuration} {fold} -tr {model.trainer} -p {model.plans} "
                     f"--val --npz, or pass --disable_ensembling")
            saved = set(saved_cases(folder))
            lacking = [c.name for c in entry["reference"] if c.name not in saved]
            if lacking or not (folder / PLANS_FILE).is_file():
                what = f"case {lacking[0]}" if lacking else PLANS_FILE
                raise DGCFError(f"{trainer} fold {fold}: {folder} has no saved float prediction "
                                f"({what}) to ensemble; {rerun}")
            records = (read_provenance(folder) or {}).get("cases", {})
            for case in entry["reference"]:
                record = records.get(case.name) or {}
                if (record.get("probabilities_sha256") != file_sha256(saved_files(folder, case.name)[0])
                        or record.get("sha256") != file_sha256(entry["images"][case.name])):
                    raise DGCFError(f"case {case.name}: {saved_files(folder, case.name)[0]} is not the float "
                                    f"prediction of the sCT beside it (not in {folder.name}'s provenance record: "
                                    f"left from an earlier validation?); {rerun}")


def gather_folds(per_fold: dict, folder: Path) -> None:
    """Copy every fold's validation predictions (sCTs, saved floats, plans) into a fresh `folder`."""
    from dgcf_auto.inference.saved_predictions import PLANS_FILE, saved_files

    with atomic_folder(folder) as tmp:
        for fold, entry in per_fold.items():
            for case in entry["reference"]:
                image = entry["images"][case.name]
                if image.is_dir():  # a DICOM series folder
                    shutil.copytree(image, tmp / image.name)
                else:
                    shutil.copy2(image, tmp / image.name)
                for saved in saved_files(entry["folder"], case.name):
                    if saved.is_file():
                        shutil.copy2(saved, tmp / saved.name)
            plans_file = entry["folder"] / PLANS_FILE
            if plans_file.is_file() and not (tmp / PLANS_FILE).is_file():
                shutil.copy2(plans_file, tmp / PLANS_FILE)


def _task(dataset, fold: int) -> str | None:
    from dgcf_auto.dataset.discovery import task_of
    from dgcf_auto.planning.splits import split_cases

    return task_of(split_cases(dataset, "val", fold)[1])


def _score(folder: Path, cases: list, profile: str, num_processes: int, extra: dict) -> dict:
    """dgcf_evaluate on `folder` against the cases' reference CTs and masks: folder/summary.json."""
    from dgcf_auto.evaluation.evaluate import evaluate_folders

    return evaluate_folders(None, folder, folder / SUMMARY, profile=profile, cases=_fresh(cases), extra=extra,
                            num_processes=num_processes)


def _fresh(cases: list) -> list:
    """Copies of the reference EvalCases (matching fills in their prediction file)."""
    from dataclasses import replace

    return [replace(c, sct=None) for c in cases]


def _choose(results: dict, dataset, results_dataset: Path, models: list[Model], folds: list[int],
            metric: str, profile, allow_ensembling: bool, test: str) -> dict:
    import numpy as np

    from dgcf_auto.evaluation.compare import paired_p_value

    higher = profile.metrics[metric].higher_is_better
    scores = {}
    for identifier, entry in results.items():
        value = entry["summary"]["mean"].get(metric)
        if value is None or not math.isfinite(value):
            raise DGCFError(f"{entry['folder'] / SUMMARY}: no finite mean {metric}; cannot rank {identifier}")
        scores[identifier] = float(value)
    order = sorted(scores, key=lambda k: -scores[k] if higher else scores[k])  # stable: ties keep the first
    best = order[0]
    information = {
        "dataset_name_or_id": str(dataset),
        "dataset": results_dataset.name,
        "folds": folds,
        "metric": metric,
        "profile": profile.name,
        "higher_is_better": higher,
        "considered_models": [m.as_dict() for m in models],
        "ensembling_allowed": allow_ensembling,
        "all_results": {k: scores[k] for k in results},
        "summaries": {k: str(results[k]["folder"] / SUMMARY) for k in results},
        "best_model_or_ensemble": {
            "identifier": best,
            "result_on_crossval": scores[best],
            "summary_file": str(results[best]["folder"] / SUMMARY),
            "selected_model_or_models": [m.as_dict() for m in results[best]["models"]],
        },
        "runner_up": None,
    }
    if len(order) > 1:
        second = order[1]
        a, b = (_per_case(results[k]["summary"], metric) for k in (best, second))
        common = sorted(set(a) & set(b))
        p = paired_p_value(np.array([a[c] for c in common]), np.array([b[c] for c in common]), test)
        information["runner_up"] = {
            "identifier": second, "result_on_crossval": scores[second],
            "paired_test": {"test": test, "n": len(common), "p_value": None if math.isnan(p) else p,
                            "note": (f"fewer than 2 cases or identical per-case {metric}: no test" if math.isnan(p)
                                     else f"two-sided paired test of per-case {metric}, best vs runner-up")}}
    information["commands"] = inference_commands(information)
    return information


def _per_case(summary: dict, metric: str) -> dict[str, float]:
    return {row["case"]: float(row["metrics"][metric]) for row in summary["metric_per_case"]
            if row["metrics"].get(metric) is not None}


def inference_commands(information: dict, num_processes: int = 2) -> list[str]:
    """The exact commands: one dgcf_predict per selected model, then dgcf_ensemble for an ensemble."""
    selected = information["best_model_or_ensemble"]["selected_model_or_models"]
    folds = " ".join(str(f) for f in information["folds"])
    ensemble = len(selected) > 1
    commands, outputs = [], []
    for index, model in enumerate(selected, start=1):
        output = f"OUTPUT_FOLDER_MODEL_{index}" if ensemble else "OUTPUT_FOLDER"
        outputs.append(output)
        commands.append(f"dgcf_predict -d {information['dataset']} -i INPUT_FOLDER -o {output} -f {folds} "
                        f"-tr {model['trainer']} -c {model['configuration']} -p {model['plans_identifier']}"
                        + (" --save_probabilities" if ensemble else ""))
    if ensemble:
        commands.append(f"dgcf_ensemble -i {' '.join(outputs)} -o OUTPUT_FOLDER -np {num_processes}")
    return commands


def inference_instructions(information: dict) -> str:
    """inference_instructions.txt: what won, by how much, and the commands to run."""
    best = information["best_model_or_ensemble"]
    direction = "higher" if information["higher_is_better"] else "lower"
    lines = [f"Best on the cross-validation of folds {' '.join(map(str, information['folds']))} by "
             f"{information['metric']} ({information['profile']} profile, {direction} is better):",
             f"  {best['identifier']}: {best['result_on_crossval']:.6g}", "", "All results:"]
    lines += [f"  {k}: {v:.6g}" for k, v in information["all_results"].items()]
    runner = information.get("runner_up")
    if runner:
        test = runner["paired_test"]
        p = "no test (" + test["note"] + ")" if test["p_value"] is None else f"p = {test['p_value']:.4g}"
        lines += ["", f"Runner-up: {runner['identifier']}: {runner['result_on_crossval']:.6g}; paired "
                      f"{test['test']} over {test['n']} case(s): {p}"]
    lines += ["", "***Run inference like this:***", ""]
    commands = information["commands"]
    if len(best["selected_model_or_models"]) > 1:
        lines += ["An ensemble won. Predict with each member, keeping the float predictions:", ""]
        lines += commands[:-1] + ["", "Then average them:", "", commands[-1]]
    else:
        lines += commands
    lines += ["", "OUTPUT_FOLDER then holds <case>.nii.gz (int16 HU) for every case of INPUT_FOLDER."]
    return "\n".join(lines) + "\n"
