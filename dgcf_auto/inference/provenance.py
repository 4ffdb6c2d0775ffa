"""Provenance of a prediction run: which model, which checkpoints (SHA-256), which options, which versions.

`dgcf_predict` writes it into its output folder as `prediction_provenance.json` (the counterpart of
nnU-Net's `predict_from_raw_data_args.json`), with one entry per case written (the output file's size and
SHA-256). `--continue_prediction` trusts an existing output only when that record and the current model
agree (`model_id`), and only after the whole file matched PROVENANCE_SCHEMA. Light (no torch, lazy version
look-ups) so that other writers (a run report, a model export) can reuse `build_provenance` (hashes:
dgcf_auto.hashing.file_sha256).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import sys
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path

from dgcf_auto.hashing import file_sha256
from dgcf_auto.schema import SHA256, STRING_OR_NULL, read_checked

PROVENANCE_FILE = "prediction_provenance.json"
PROVENANCE_VERSION = 1
PACKAGES = ("dgcf_auto", "torch", "timm", "SimpleITK", "nibabel", "numpy", "scipy")
# What a rerun reads back (see read_provenance); later versions may add fields.
PROVENANCE_SCHEMA = {
    "type": "object",
    "required": ["model_id", "cases"],
    "properties": {
        "provenance_version": {"type": "integer"},
        "model_id": SHA256,
        "model": {"type": "object", "properties": {
            **{key: STRING_OR_NULL for key in ("folder", "dataset", "trainer", "plans", "configuration")},
            "folds": {"type": "array", "items": {"type": "object", "required": ["fold", "checkpoint"], "properties": {
                "fold": {"type": "string"}, "checkpoint": {"type": "string"}, "file": {"type": "string"},
                "sha256": SHA256}}}}},
        "cases": {"type": "object", "additionalProperties": {
            "type": "object",
            "required": ["source", "output", "bytes", "sha256"],
            "properties": {"source": {"type": "string"}, "output": {"type": "string"},
                           "bytes": {"type": "integer", "minimum": 0}, "sha256": SHA256,
                           "source_sha256": SHA256, "uncertainty_sha256": SHA256, "written": {"type": "string"}}}},
    },
}


def output_bytes(path: str | os.PathLike) -> int:
    """Size of a file, or of the files in a folder."""
    path = Path(path)
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file()) if path.is_dir() else path.stat().st_size


def package_versions(packages: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def build_provenance(model_folder: str | os.PathLike, checkpoints: Sequence[str | os.PathLike],
                     options: dict, trainer: str | None = None, plans: str | None = None,
                     configuration: str | None = None, dataset: str | None = None) -> dict:
    """The record of one prediction run (cases are added as they are written, see `case_record`).

    `options` are the settings that change the output's voxels (TTA, precision, masking, ...); together with
    the checkpoints' hashes they make `model_id`: two runs with the same id produce the same sCT.
    `trainer`/`plans`/`configuration` default to the parts of the folder name `<trainer>__<plans>__<cfg>`,
    `dataset` (give the plans' one: `model_loading.model_dataset`) to the name of the folder above it.
    """
    model_folder = Path(model_folder)
    parts = model_folder.name.split("__")
    trainer = trainer or (parts[0] if len(parts) == 3 else None)
    plans = plans or (parts[1] if len(parts) == 3 else None)
    configuration = configuration or (parts[2] if len(parts) == 3 else None)
    folds = [{"fold": Path(c).parent.name, "checkpoint": Path(c).name, "file": str(Path(c).resolve()),
              "sha256": file_sha256(c)} for c in checkpoints]
    identity = {"checkpoints": [f["sha256"] for f in folds], "options": options}
    return {
        "provenance_version": PROVENANCE_VERSION,
        "model_id": hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest(),
        "model": {"folder": str(model_folder.resolve()), "dataset": dataset or model_folder.parent.name,
                  "trainer": trainer, "plans": plans, "configuration": configuration, "folds": folds},
        "options": options,
        "versions": package_versions(),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "created": _now(),
        "cases": {},
    }


def case_record(source: str | os.PathLike, output: str | os.PathLike) -> dict:
    """What `--continue_prediction` checks about one written output."""
    output = Path(output)
    return {"source": str(Path(source).resolve()), "output": output.name, "bytes": output_bytes(output),
            "sha256": file_sha256(output), "written": _now()}


def read_provenance(folder: str | os.PathLike) -> dict | None:
    """The folder's provenance record, checked against PROVENANCE_SCHEMA; None when there is none. A record
    that is not one is a DGCFError naming the file and the field (nothing in it can be trusted)."""
    path = Path(folder) / PROVENANCE_FILE
    return read_checked(path, PROVENANCE_SCHEMA, f"provenance {path}") if path.is_file() else None


def model_of(record: dict) -> dict:
    """Which model wrote a folder's predictions, for an evaluation summary (dgcf_compare's labels)."""
    model = record.get("model", {})
    folds = model.get("folds", [])
    return {"trainer": model.get("trainer"), "plans": model.get("plans"), "configuration": model.get("configuration"),
            "folds": [f["fold"] for f in folds], "checkpoint": folds[0]["checkpoint"] if folds else None,
            "model_id": record["model_id"]}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
