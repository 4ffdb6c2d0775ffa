"""SegScore: TotalSegmentator on the sCT and on the CT, Dice per pelvic structure, and their mean (DGCF paper, 3.1).

Only structures present in the reference CT's segmentation count. The segmenter is injectable
(`segscore(ct, sct, segmenter=...)`), so tests never run TotalSegmentator; the default one uses only
locally installed weights, never downloads, and switches TotalSegmentator's usage statistics off.
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from dgcf_auto.errors import DGCFError

# Pelvic structures scored (paper: "pelvic-relevant organs ... referring to the organ definitions in [15]").
# Names absent from the installed TotalSegmentator class map (e.g. rectum in v2 'total') are skipped.
PELVIC_STRUCTURES = (
    "urinary_bladder", "prostate", "rectum", "colon", "sacrum",
    "hip_left", "hip_right", "femur_left", "femur_right",
    "gluteus_maximus_left", "gluteus_maximus_right", "gluteus_medius_left", "gluteus_medius_right",
    "gluteus_minimus_left", "gluteus_minimus_right",
)
TOTALSEG_TASK = "total"
INSTALL_HINT = ("install them with `totalseg_download_weights -t total` (`-t total_fast` for --segscore_fast), "
                "or point TOTALSEG_HOME_DIR at a folder that holds them")

Segmenter = Callable[[sitk.Image], "np.ndarray | sitk.Image"]


def totalseg_class_map(task: str = TOTALSEG_TASK) -> dict[int, str]:
    from totalsegmentator.map_to_binary import class_map

    return dict(class_map[task])


def scored_structures(class_map: dict[int, str]) -> dict[str, int]:
    """{name: label id} of the pelvic structures the class map knows, in PELVIC_STRUCTURES order."""
    ids = {name: label for label, name in class_map.items()}
    return {name: ids[name] for name in PELVIC_STRUCTURES if name in ids}


def dice(reference: np.ndarray, prediction: np.ndarray) -> float:
    """2|A and B| / (|A| + |B|); NaN when both are empty."""
    total = int(reference.sum()) + int(prediction.sum())
    return 2.0 * int(np.logical_and(reference, prediction).sum()) / total if total else math.nan


def _labels(segmenter: Segmenter, image: sitk.Image) -> np.ndarray:
    out = segmenter(image)
    labels = sitk.GetArrayFromImage(out) if isinstance(out, sitk.Image) else np.asarray(out)
    expected = sitk.GetArrayViewFromImage(image).shape
    if labels.shape != expected:
        raise ValueError(f"segmenter returned shape {labels.shape}, expected {expected}")
    return labels


def segscore(ct: sitk.Image, sct: sitk.Image, segmenter: Segmenter | None = None,
             class_map: dict[int, str] | None = None) -> dict[str, float]:
    """{"segscore": mean Dice, "dice_<structure>": Dice, ...} over pelvic structures present in the CT.

    `segmenter(image) -> label map` (array in (z, y, x) or sitk image on the image's grid); default:
    TotalSegmentator 'total' (see `TotalSegmentatorSegmenter`). NaN segscore if no structure is present.
    """
    if segmenter is None:
        segmenter = TotalSegmentatorSegmenter()
    if class_map is None:
        class_map = totalseg_class_map()
    ref_labels = _labels(segmenter, ct)
    pred_labels = _labels(segmenter, sct)
    result: dict[str, float] = {}
    for name, label in scored_structures(class_map).items():
        in_ref = ref_labels == label
        if in_ref.any():
            result[f"dice_{name}"] = dice(in_ref, pred_labels == label)
    scores = list(result.values())
    return {"segscore": float(np.mean(scores)) if scores else math.nan, **result}


def required_weight_folders(fast: bool = False, task: str = TOTALSEG_TASK) -> list[Path]:
    """The weight folders TotalSegmentator would download for `task`, resolved as its own downloader does."""
    from totalsegmentator.config import get_weights_dir
    from totalsegmentator.map_tasks_config import TASK_ID_WEIGHTS_CONFIGS
    from totalsegmentator.python_api import get_task_config

    task_ids = get_task_config(task, fast=fast, quiet=True)["task_id"]
    task_ids = task_ids if isinstance(task_ids, list) else [task_ids]
    folders = []
    for task_id in task_ids:
        info = TASK_ID_WEIGHTS_CONFIGS[task_id]
        folder = Path(info["foldername"])
        if info.get("rel_path"):
            folder = Path(info["rel_path"]) / folder
        folders.append(get_weights_dir() / folder)
    return folders


def check_weights(fast: bool = False) -> None:
    """DGCFError naming the missing folders unless every weight folder for the task exists locally."""
    missing = [p for p in required_weight_folders(fast) if not p.is_dir()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DGCFError(f"SegScore: TotalSegmentator weights not found in {missing[0].parent} "
                        f"(missing {missing[0].name}{more}); " + INSTALL_HINT)


def disable_usage_statistics() -> None:
    """Write `send_usage_stats: false` into TotalSegmentator's config.json (its only switch for them)."""
    from totalsegmentator.config import get_totalseg_dir

    folder = get_totalseg_dir()
    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {
        "totalseg_id": "totalseg_dgcf_auto", "prediction_counter": 0}
    if config.get("send_usage_stats") is False and config.get("statistics_disclaimer_shown"):
        return
    config.update(send_usage_stats=False, statistics_disclaimer_shown=True)
    config_file.write_text(json.dumps(config, indent=4))


def totalsegmentator_device(word: str | None) -> str:
    """The shared device words (cpu, cuda, cuda:N, mps; None = cuda when available) in TotalSegmentator's
    spelling (cpu, gpu, gpu:N, mps)."""
    from dgcf_auto.devices import resolve_device

    device = resolve_device(None if word in (None, "gpu") else word.replace("gpu", "cuda"))
    if device.type == "cuda":
        return f"gpu:{device.index}"
    return device.type


class TotalSegmentatorSegmenter:
    """Callable: sitk CT image -> TotalSegmentator 'total' label map (sitk image on the same grid)."""

    def __init__(self, fast: bool = False, device: str | None = None, quiet: bool = True):
        check_weights(fast)  # before anything else: TotalSegmentator would otherwise download
        disable_usage_statistics()
        self.fast, self.device, self.quiet = fast, device, quiet

    def __call__(self, image: sitk.Image) -> sitk.Image:
        import nibabel as nib
        from totalsegmentator.python_api import totalsegmentator

        check_weights(self.fast)
        device = totalsegmentator_device(self.device)
        # A NIfTI round trip through disk keeps SimpleITK's and nibabel's axis conventions out of our hands.
        with tempfile.TemporaryDirectory(prefix="dgcf_segscore_") as tmp:
            src = Path(tmp) / "image.nii.gz"
            sitk.WriteImage(sitk.Cast(image, sitk.sitkInt16), str(src))
            seg = totalsegmentator(src, None, task=TOTALSEG_TASK, fast=self.fast, ml=True,
                                   quiet=self.quiet, device=device)
            out = Path(tmp) / "labels.nii.gz"
            nib.save(nib.Nifti1Image(np.asarray(seg.dataobj).astype(np.uint8), seg.affine, seg.header), str(out))
            labels = sitk.ReadImage(str(out))
        labels.CopyInformation(image)  # same grid by construction; float rounding of the affine removed
        return labels
