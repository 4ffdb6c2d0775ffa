"""`dgcf_ensemble -i DIR1 DIR2 ... -o OUT`: average folders of saved predictions case by case (nnU-Net's
nnUNetv2_ensemble).

Each input folder was written by `dgcf_predict --save_probabilities` (saved_predictions.py). Before anything is
written, every folder must hold the same cases with, per case, the same original grid and body mask; otherwise
one line names the case and folder. Every folder weighs the same, whatever its number of folds.

- Folders whose predictions lie on one grid in one CT window (models of one configuration, or 2d with 2.5d:
  `same_output_grid`): the normalised stacks are averaged (each case's slice grid must agree too) and go back
  to int16 HU through `sct_from_normalised`, the predictor's own way back.
- Otherwise (e.g. 2d with 3d_fullres, whose grid differs, or another CT window): each member goes back to
  float HU on the case's original grid with its own plans (`restore_ct`), and those are averaged, as nnU-Net
  averages configurations on the original image; rounding to int16 comes once, after the mean. Such an
  average lies on no model's grid, so `--save_probabilities` is refused for it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dgcf_auto.atomic import check_writable, read_json, write_json
from dgcf_auto.errors import DGCFError
from dgcf_auto.hashing import file_sha256
from dgcf_auto.imageio import IMAGE_SUFFIXES, write_image
from dgcf_auto.inference.provenance import read_provenance
from dgcf_auto.inference.saved_predictions import (
    read_background_mask,
    read_folder_plans,
    read_saved_prediction,
    saved_cases,
    saved_files,
    write_folder_plans,
    write_saved_prediction,
)

ENSEMBLE_RECORD = "ensemble_information.json"
GEOMETRY_KEYS = ("slice_grid", "original_geometry")


def ensemble_folders(folders: list, output, num_processes: int = 1, output_format: str = ".nii.gz",
                     save_probabilities: bool = False, progress: bool = True) -> list[Path]:
    """Average the saved predictions of `folders` into `output` (`<case><output_format>`, int16 HU);
    returns the files written. `save_probabilities`: the averaged `<case>.npz`/`.json` too."""
    from dgcf_auto.workers import map_cases

    folders, output = [Path(f) for f in folders], Path(output)
    if len(folders) < 2:
        raise DGCFError(f"dgcf_ensemble needs at least two folders to average, got {len(folders)}")
    if output_format not in IMAGE_SUFFIXES:
        raise DGCFError(f"output format {output_format!r} is not one of {', '.join(IMAGE_SUFFIXES)}")
    plans, same_grid = check_members(folders)
    cases = saved_cases(folders[0])
    if any(output.resolve() == f.resolve() for f in folders):
        raise DGCFError(f"output {output}: is one of the input folders; choose a separate output folder")
    if save_probabilities and not same_grid:
        raise DGCFError(f"--save_probabilities: {folders[0]} and the other folders predict on different grids "
                        f"(configurations) or CT windows; they are averaged in HU on the input's grid, which is "
                        f"no model's grid, so there are no averaged float predictions to keep")
    check_writable(output)
    if save_probabilities:
        write_folder_plans(output, plans[0])
    jobs = [(folders, case, output, output_format, save_probabilities, plans, same_grid) for case in cases]
    written = list(map_cases(_ensemble_case, jobs, num_processes=num_processes, desc="ensembling",
                             progress=progress))
    write_json({"members": [_member(f) for f in folders],
                "averaged": "normalised predictions on the models' shared grid" if same_grid else
                            "HU on each case's original grid (the models' grids or CT windows differ)",
                "cases": {case: {"output": path.name, "sha256": file_sha256(path)}
                          for case, path in zip(cases, written)}}, output / ENSEMBLE_RECORD)
    return written


def check_members(folders: list[Path]) -> tuple[list[dict], bool]:
    """Same cases, same original grid and body mask per case, for every folder (and the same slice grid per case
    where the members share one); every folder's plans, and whether all predict on one grid in one CT window."""
    from dgcf_auto.inference.predictor import same_output_grid

    plans = [read_folder_plans(folder) for folder in folders]
    same_grid = all(same_output_grid(p, plans[0]) for p in plans[1:])
    first_cases = saved_cases(folders[0])
    if not first_cases:
        raise DGCFError(f"folder {folders[0]}: no saved predictions (<case>.npz with <case>.json); "
                        f"predict it with dgcf_predict --save_probabilities")
    for folder in folders[1:]:
        cases = saved_cases(folder)
        if missing := [c for c in first_cases if c not in cases]:
            raise DGCFError(f"case {missing[0]}: no saved prediction in {folder} ({len(missing)} case(s) of "
                            f"{folders[0]} missing there)")
        if extra := [c for c in cases if c not in first_cases]:
            raise DGCFError(f"case {extra[0]}: no saved prediction in {folders[0]} ({len(extra)} case(s) of "
                            f"{folder} missing there)")
    keys = GEOMETRY_KEYS if same_grid else ("original_geometry",)  # HU: only the input grid is shared
    for case in first_cases:
        reference = _case_geometry(folders[0], case, keys)
        for folder in folders[1:]:
            if (geometry := _case_geometry(folder, case, keys)) != reference:
                what = next(k for k in keys if geometry.get(k) != reference.get(k))
                raise DGCFError(f"case {case}: {saved_files(folder, case)[1]}: its {what.replace('_', ' ')} "
                                f"differs from {folders[0]}'s (another mask or source?); cannot average")
        reference_mask = read_background_mask(folders[0], case)
        for folder in folders[1:]:
            _check_same_mask(read_background_mask(folder, case), reference_mask, folders[0], folder, case)
    return plans, same_grid


def _check_same_mask(mask, reference, first: Path, folder: Path, case: str) -> None:
    if (mask is None) != (reference is None) or (mask is not None and not np.array_equal(mask, reference)):
        raise DGCFError(f"case {case}: {saved_files(folder, case)[0]}: its body mask differs from {first}'s "
                        f"(other --mask_from / --keep_background?); cannot average")


def _case_geometry(folder: Path, case: str, keys=GEOMETRY_KEYS) -> dict:
    meta = saved_files(folder, case)[1]
    try:
        properties = read_json(meta)["properties"]
        return {k: properties[k] for k in keys}
    except (ValueError, KeyError, TypeError):
        raise DGCFError(f"case {case}: {meta} is not a saved dgcf_predict prediction") from None


def _ensemble_case(job) -> Path:
    """Average one case over the folders and write it (a worker process runs this)."""
    from dgcf_auto.imageio import to_array
    from dgcf_auto.inference.predictor import HU_MAX, HU_MIN, sct_from_hu, sct_from_normalised
    from dgcf_auto.preprocessing.pipeline import restore_ct

    folders, case, output, output_format, save_probabilities, plans, same_grid = job
    members = [read_saved_prediction(folder, case) for folder in folders]
    first = members[0]
    for folder, member in zip(folders[1:], members[1:]):
        if same_grid and member.normalised.shape != first.normalised.shape:
            raise DGCFError(f"case {case}: {saved_files(folder, case)[0]}: slice stack {member.normalised.shape} "
                            f"differs from {folders[0]}'s {first.normalised.shape}")
        _check_same_mask(member.background_mask, first.background_mask, folders[0], folder, case)
    target = output / f"{case}{output_format}"
    if not same_grid:  # each member's sCT as it alone gives it (float HU on the input grid, in the CT range
        # it is written in, so a spline overshoot below air counts as air), then the mean, rounded once
        restored = [restore_ct(m.normalised, m.properties, p) for m, p in zip(members, plans)]
        hu = np.stack([np.clip(to_array(r), HU_MIN, HU_MAX) for r in restored]).sum(axis=0,
                                                                                     dtype=np.float64) / len(members)
        write_image(sct_from_hu(hu, restored[0], first.background_mask), target)
        return target
    # Sum in float64: the mean of a folder with itself is that folder, bit for bit.
    mean = (np.stack([m.normalised for m in members]).sum(axis=0, dtype=np.float64) / len(members)).astype(np.float32)
    write_image(sct_from_normalised(mean, first.properties, plans[0], first.background_mask), target)
    if save_probabilities:
        write_saved_prediction(output, case, mean, first.properties, first.background_mask)
    return target


def _member(folder: Path) -> dict:
    """What a member folder was predicted with (its provenance record's model), for the record."""
    provenance = read_provenance(folder) or {}
    return {"folder": str(folder.resolve()), "model": provenance.get("model"),
            "model_id": provenance.get("model_id")}
