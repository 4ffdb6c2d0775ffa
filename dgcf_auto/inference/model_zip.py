"""Shareable trained models, nnU-Net's way: export a trained model to one zip, install a zip into DGCF_results.

Zip layout (every path relative, under one model folder):

    manifest.json                                       format, version and the SHA-256 of every other file
    <Dataset>/<Trainer>__<Plans>__2d/README.md          what the model is and what it was trained on
        DINOv3_LICENSE_NOTICE.txt                       whose ViT weights these are and under which licence
        plans.json, dataset_fingerprint.json, dataset.json, splits_final.json (when present; like every
                                                        file here, without paths: model_card.without_paths)
        dinov3_<sha256[:16]>.pth                        the frozen ViT, ONCE for all folds (checkpoints
                                                        name it and its SHA-256; loading verifies it)
        fold_<k>/<checkpoint>.pth                       weights without the ViT and without optimiser state
        fold_<k>/training_config.json                   the trainer settings of that fold
        precision_check.json                            fp32 vs bf16/fp16 per fold (when recorded)

A zip is untrusted input: the installer refuses absolute paths, `..`, links and files outside the one model
folder, checks the manifest against MANIFEST_SCHEMA and every file against the manifest (and the zip's CRC-32),
loads weights only with weights_only=True, and installs through a temporary folder renamed into place (nothing
is left behind on failure; an installed model is replaced only with overwrite=True, by a journalled swap that a
kill at any point cannot lose: `atomic.atomic_folder`).
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch

from dgcf_auto import __version__, paths
from dgcf_auto.atomic import atomic_folder, atomic_path, recover_swaps
from dgcf_auto.errors import DGCFError
from dgcf_auto.inference.model_card import readme, without_paths
from dgcf_auto.inference.model_loading import VIT_PREFIX, load_checkpoint
from dgcf_auto.inference.precision import CHECK_FILE
from dgcf_auto.schema import SHA256, check, parse

MANIFEST = "manifest.json"
FORMAT = "dgcf_auto-model"
FORMAT_VERSION = 1
LICENCE_FILE = "DINOv3_LICENSE_NOTICE.txt"
DATASET_FILES = ("dataset_fingerprint.json", "dataset.json", "splits_final.json")
_CHUNK = 1 << 20
_DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError)  # what zipfile raises for an entry whose bytes are wrong


# ------------------------------------------------------------------------------------------------ export
def export_model(model_folder: Path, checkpoint_files: list[Path], output: Path,
                 preprocessed_folder: Path | None = None) -> dict:
    """Write `output` (a .zip) from the folds' checkpoints, one fold in memory at a time; returns
    {'files': n, 'bytes': size of the zip, 'removed': ['<file>: <field>' of every path taken out]}.
    No file in the zip names a folder of this machine (see model_card.without_paths)."""
    output = Path(output)
    if output.suffix.lower() != ".zip":
        raise DGCFError(f"output {output}: the model file must end in .zip")
    root = PurePosixPath(model_folder.parent.name, model_folder.name)
    hashes: dict[str, str] = {}
    summaries: list[dict] = []
    removed: set[str] = set()
    vit = vit_from = None
    with atomic_path(output, suffix=".zip") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
            def add(name: str, data: bytes) -> None:
                hashes[str(root / name)] = hashlib.sha256(data).hexdigest()
                archive.writestr(str(root / name), data)

            for path in checkpoint_files:
                checkpoint = load_checkpoint(path)  # complete weights: a shared ViT is merged in, verified
                weights = checkpoint["network_weights"]
                own_vit = {k[len(VIT_PREFIX):]: v for k, v in weights.items() if k.startswith(VIT_PREFIX)}
                reference = {}
                if own_vit:
                    vit_bytes = _torch_bytes(own_vit)
                    digest = hashlib.sha256(vit_bytes).hexdigest()
                    reference = {"shared_vit": f"dinov3_{digest[:16]}.pth", "shared_vit_sha256": digest}
                    if vit is None:
                        vit, vit_from = reference, path
                        add(reference["shared_vit"], vit_bytes)
                    elif digest != vit["shared_vit_sha256"]:
                        raise DGCFError(f"checkpoint {path}: its frozen DINOv3 weights differ from {vit_from}'s; "
                                        f"the folds of one model must share them (export the folds separately)")
                    del vit_bytes
                name = f"{path.parent.name}/{path.name}"
                about = without_paths({"plans": checkpoint["plans"], "epoch": checkpoint.get("epoch", 0),
                                       "trainer_name": checkpoint.get("trainer_name", ""),
                                       "dinov3_source": checkpoint.get("dinov3_source", "unknown")}, name, removed)
                payload = {"network_weights": {k: v for k, v in weights.items() if not k.startswith(VIT_PREFIX)},
                           **about, **reference}
                add(name, _torch_bytes(payload))
                config = path.parent / "training_config.json"
                if config.is_file():
                    config_name = f"{path.parent.name}/training_config.json"
                    add(config_name, _json_bytes(without_paths(_read_json(config, config_name), config_name,
                                                               removed)))
                summaries.append(about)
                del checkpoint, weights, own_vit, payload
            add("plans.json", _json_bytes(summaries[0]["plans"]))
            dataset_files = {}
            for name in DATASET_FILES:
                if preprocessed_folder is not None and (preprocessed_folder / name).is_file():
                    dataset_files[name] = without_paths(_read_json(preprocessed_folder / name, name), name, removed)
                    add(name, _json_bytes(dataset_files[name]))
            if (model_folder / CHECK_FILE).is_file():  # the recorded precision check travels with the weights
                add(CHECK_FILE, (model_folder / CHECK_FILE).read_bytes())
            add("README.md", readme(model_folder, checkpoint_files, summaries, dataset_files.get("dataset.json"),
                                    dataset_files.get("dataset_fingerprint.json")).encode())
            add(LICENCE_FILE, _licence_notice(summaries[0].get("dinov3_source", "unknown"),
                                              vit["shared_vit"] if vit else None).encode())
            manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "dgcf_auto_version": __version__,
                        "model_folder": str(root), "checkpoint": checkpoint_files[0].name,
                        "folds": [p.parent.name for p in checkpoint_files], "sha256": hashes}
            archive.writestr(MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return {"files": len(hashes) + 1, "bytes": output.stat().st_size, "removed": sorted(removed)}


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def _read_json(path: Path, name: str):
    """A JSON file that goes into the zip: it must parse (a damaged copy is not shared)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DGCFError(f"{path}: cannot be read as JSON ({exc}); not exporting a damaged {name}") from None


def _licence_notice(source: str, vit_file: str | None) -> str:
    if not vit_file:
        return "This model uses no DINOv3 encoder (cnn_only); no Meta weights are included.\n"
    if source == "random":
        return (f"The frozen ViT in {vit_file} is RANDOMLY INITIALISED (a test/demo model): it holds no "
                "Meta DINOv3 weights, and its results do not reproduce the DGCF paper.\n")
    return (f"{vit_file} holds Meta's DINOv3 ViT-B/16 (LVD-1689M) weights, unchanged (frozen in training),\n"
            f"loaded from: {source}\n\n"
            "They are distributed under the DINOv3 License (https://ai.meta.com/resources/models-and-libraries/"
            "dinov3-license/,\nalso in https://github.com/facebookresearch/dinov3). Whoever shares or uses this "
            "model must comply with\nthat licence, including its acceptable use policy and its redistribution "
            "terms (include a copy of\nthe licence with any redistribution). dgcf_auto's own code and the "
            "trained CNN/fusion weights are separate.\n")


# ----------------------------------------------------------------------------------------------- install
def install_model(zip_path: Path, overwrite: bool = False, results_root: Path | None = None) -> Path:
    """Check the zip completely, then install its model folder under DGCF_results; returns the folder."""
    zip_path = Path(zip_path)
    where = f"model zip {zip_path}"
    if not zip_path.is_file():
        raise DGCFError(f"{where}: not found")
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DGCFError(f"{where}: not a valid zip file ({exc})") from None
    with archive:
        infos = archive.infolist()
        for info in infos:
            _check_entry(info, where)
        manifest = _read_manifest(archive, where)
        root = manifest.model_folder
        if len(root.parts) != 2 or not paths.DATASET_PATTERN.match(root.parts[0]) or ".." in root.parts \
                or root.is_absolute() or root.parts[1].count("__") != 2:
            raise DGCFError(f"{where}: manifest names an invalid model folder {str(root)!r}")
        hashes = manifest.sha256
        names = [i.filename for i in infos if not i.is_dir() and i.filename != MANIFEST]
        outside = [n for n in names if PurePosixPath(n).parts[:2] != root.parts]
        if outside:
            raise DGCFError(f"{where}: entry {outside[0]!r} lies outside the model folder {root}")
        unlisted = sorted(set(names) - set(hashes))
        if unlisted:
            raise DGCFError(f"{where}: entry {unlisted[0]!r} is not in the manifest")
        missing = sorted(set(hashes) - set(names))
        if missing:
            raise DGCFError(f"{where}: {missing[0]!r} is listed in the manifest but missing from the zip")
        results = paths.results_root() if results_root is None else Path(results_root)
        target = results / root
        recover_swaps(target.parent)  # an earlier install killed between its renames: its model first
        _check_target(results, root, target, overwrite)
        needed = sum(i.file_size for i in infos)
        results.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(results).free
        if needed > free:
            raise DGCFError(f"{where}: needs {needed / 1e6:.0f} MB, only {free / 1e6:.0f} MB free in {results}")
        dataset_dir = target.parent
        created_dataset_dir = not dataset_dir.exists()
        try:
            with atomic_folder(target) as tmp:
                for name in names:
                    relative = PurePosixPath(name).relative_to(root)
                    _extract_checked(archive, name, tmp / Path(*relative.parts), hashes[name], where)
                _check_weights(tmp, where)
        except BaseException:
            if created_dataset_dir and dataset_dir.is_dir() and not any(dataset_dir.iterdir()):
                dataset_dir.rmdir()
            raise
    return target


def _check_entry(info: zipfile.ZipInfo, where: str) -> None:
    name = info.filename
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or "\\" in name:
        raise DGCFError(f"{where}: entry {name!r} has an absolute or non-portable path; refusing to install")
    if ".." in parts:
        raise DGCFError(f"{where}: entry {name!r} climbs out of the install folder ('..'); refusing to install")
    kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip records no Unix file type
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        raise DGCFError(f"{where}: entry {name!r} is a link or special file; refusing to install")


@dataclass(frozen=True)
class Manifest:
    """manifest.json of a model zip, after MANIFEST_SCHEMA."""
    model_folder: PurePosixPath
    sha256: dict[str, str]      # every other entry -> its SHA-256
    folds: list[str]
    checkpoint: str | None
    format_version: int
    dgcf_auto_version: str | None


MANIFEST_SCHEMA = {
    "type": "object",
    "required": ["format", "format_version", "model_folder", "sha256"],
    "properties": {
        "format": {"const": FORMAT},
        "format_version": {"type": "integer", "minimum": 1},
        "dgcf_auto_version": {"type": "string"},
        "model_folder": {"type": "string", "minLength": 1},
        "checkpoint": {"type": "string"},
        "folds": {"type": "array", "items": {"type": "string"}},
        "sha256": {"type": "object", "minProperties": 1, "additionalProperties": SHA256},
    },
}


def _read_manifest(archive: zipfile.ZipFile, where: str) -> Manifest:
    try:
        data = parse(_read_entry(archive, MANIFEST, where), f"{where}: {MANIFEST}")
    except KeyError:
        raise DGCFError(f"{where}: no {MANIFEST}; not a dgcf_auto model zip (dgcf_export_model_to_zip)") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DGCFError(f"{where}: {MANIFEST} is not a dgcf_auto model manifest")
    version = data.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise DGCFError(f"{where}: format version {version} is newer than this dgcf_auto reads ({FORMAT_VERSION}); "
                        f"update dgcf_auto")
    check(data, MANIFEST_SCHEMA, f"{where}: {MANIFEST}")  # a newer format may differ: checked after the version
    return Manifest(PurePosixPath(data["model_folder"]), data["sha256"], data.get("folds", []),
                    data.get("checkpoint"), data["format_version"], data.get("dgcf_auto_version"))


def _read_entry(archive: zipfile.ZipFile, name: str, where: str) -> bytes:
    """An entry's bytes; a damaged one (bad CRC, cut deflate stream) is one line. KeyError when absent."""
    try:
        return archive.read(name)
    except _DAMAGED as exc:
        raise _damaged(where, name, exc) from None


def _damaged(where: str, name: str, exc: Exception) -> DGCFError:
    return DGCFError(f"{where}: entry {name!r} is corrupt ({exc}); nothing was installed")


def _check_target(results: Path, root: PurePosixPath, target: Path, overwrite: bool) -> None:
    did = paths.parse_dataset_id(root.parts[0])  # checked against DATASET_PATTERN on reading the manifest
    if results.is_dir():
        clashing = [p.name for p in results.iterdir()
                    if p.is_dir() and p.name != root.parts[0] and (m := paths.DATASET_PATTERN.match(p.name))
                    and int(m.group(1)) == did]
        if clashing:
            raise DGCFError(f"model {root}: dataset id {did} is already used by {clashing[0]} in "
                            f"DGCF_results={results}; rename or remove that folder first")
    if target.exists() and not overwrite:
        raise DGCFError(f"model {root}: already installed at {target}; pass `overwrite` to replace it")


def _extract_checked(archive: zipfile.ZipFile, name: str, target: Path, expected: str, where: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with archive.open(name) as src, open(target, "wb") as dst:
        try:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                dst.write(chunk)
        except _DAMAGED as exc:
            raise _damaged(where, name, exc) from None
    if digest.hexdigest() != expected:
        raise DGCFError(f"{where}: {name} does not match its SHA-256 in the manifest (corrupt or altered); "
                        f"nothing was installed")


def _check_weights(folder: Path, where: str) -> None:
    """Every .pth loads with weights_only=True (no code can run from a shared model)."""
    for path in sorted(folder.rglob("*.pth")):
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise DGCFError(f"{where}: {path.relative_to(folder)} does not load as weights only "
                            f"({type(exc).__name__}); nothing was installed") from None
