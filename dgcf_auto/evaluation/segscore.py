"""SegScore as SynthRAD2025 scores it: TotalSegmentator on the sCT and on the CT, Dice and HD95 per pelvic structure.

Only structures present in the reference CT's segmentation count; `segscore` is their mean Dice (DGCF paper,
3.1), `segscore_hd95` their mean HD95 in mm. SynthRAD2025 (evaluation/segmentation_metrics.py) runs
TotalSegmentator 'total' with fast=True (3 mm) and MONAI's DiceMetric / HausdorffDistanceMetric(percentile=95)
with the CT's spacing; we compute the same two quantities per structure with numpy/scipy (no MONAI). The
reference CT's segmentation is cached per case, model and TotalSegmentator version (`SegScorer`), so every
method compared on the same cases reuses it. The segmenter is injectable, so tests never run
TotalSegmentator; the default one uses only locally installed weights, never downloads, and switches
TotalSegmentator's usage statistics off.
"""
from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dgcf_auto.atomic import atomic_path
from dgcf_auto.errors import DGCFError
from dgcf_auto.hashing import file_sha256

# Pelvic structures scored (paper: "pelvic-relevant organs ... referring to the organ definitions in [15]").
# Names absent from the installed TotalSegmentator class map (rectum in v2 'total': colon stands for it) are
# skipped; of the rest, only those present in the reference CT's segmentation count.
PELVIC_STRUCTURES = (
    "urinary_bladder", "prostate", "rectum", "colon", "sacrum",
    "hip_left", "hip_right", "femur_left", "femur_right",
    "gluteus_maximus_left", "gluteus_maximus_right", "gluteus_medius_left", "gluteus_medius_right",
    "gluteus_minimus_left", "gluteus_minimus_right", "iliopsoas_left", "iliopsoas_right",
)
TOTALSEG_TASK = "total"
INSTALL_HINT = ("install them with `totalseg_download_weights -t total` (`-t total_fast` for --segscore_fast), "
                "or point TOTALSEG_HOME_DIR at a folder that holds them")

SEGSCORE_DEFINITION = ("TotalSegmentator labels of CT and sCT; per pelvic structure present in the CT's labels: "
                       "dice_<s> = 2|A and B| / (|A| + |B|), hd95_<s> = max of the two directed 95th-percentile "
                       "surface distances in mm (null when the sCT lacks the structure); segscore = mean Dice, "
                       "segscore_hd95 = mean finite HD95")

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


def _surface(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels: the mask minus its erosion (face connectivity), as MONAI's get_mask_edges."""
    from scipy.ndimage import binary_erosion

    return mask & ~binary_erosion(mask, border_value=0)


def hd95(reference: np.ndarray, prediction: np.ndarray, spacing_zyx) -> float:
    """95th-percentile symmetric Hausdorff distance between the two surfaces in mm (MONAI's definition:
    the larger of the two directed 95th percentiles); NaN when either mask is empty."""
    from scipy.ndimage import distance_transform_edt

    if not reference.any() or not prediction.any():
        return math.nan
    both = reference | prediction  # every surface voxel lies in this box: distances inside it are exact
    box = tuple(slice(max(int(np.flatnonzero(both.any(axis=tuple(a for a in range(3) if a != axis)))[0]) - 1, 0),
                      int(np.flatnonzero(both.any(axis=tuple(a for a in range(3) if a != axis)))[-1]) + 2)
                for axis in range(3))
    ref_edge, pred_edge = _surface(np.pad(reference[box], 1)), _surface(np.pad(prediction[box], 1))
    to_ref = distance_transform_edt(~ref_edge, sampling=spacing_zyx)[pred_edge]
    to_pred = distance_transform_edt(~pred_edge, sampling=spacing_zyx)[ref_edge]
    return float(max(np.percentile(to_ref, 95), np.percentile(to_pred, 95)))


def score_labels(ref_labels: np.ndarray, pred_labels: np.ndarray, spacing_zyx,
                 class_map: dict[int, str]) -> dict[str, float]:
    """{"segscore", "segscore_hd95", "dice_<structure>", "hd95_<structure>"} over structures present in the CT."""
    dices, distances = {}, {}
    for name, label in scored_structures(class_map).items():
        in_ref = ref_labels == label
        if in_ref.any():
            in_pred = pred_labels == label
            dices[f"dice_{name}"] = dice(in_ref, in_pred)
            distances[f"hd95_{name}"] = hd95(in_ref, in_pred, spacing_zyx)
    finite = [v for v in distances.values() if math.isfinite(v)]
    return {"segscore": float(np.mean(list(dices.values()))) if dices else math.nan,
            "segscore_hd95": float(np.mean(finite)) if finite else math.nan, **dices, **distances}


def segscore(ct: sitk.Image, sct: sitk.Image, segmenter: Segmenter | None = None,
             class_map: dict[int, str] | None = None, ref_labels: np.ndarray | None = None) -> dict[str, float]:
    """SegScore of one case: `score_labels` of the segmenter's labels of CT (or `ref_labels`) and sCT.

    `segmenter(image) -> label map` (array in (z, y, x) or sitk image on the image's grid); default:
    TotalSegmentator 'total' (see `TotalSegmentatorSegmenter`). NaN segscore if no structure is present.
    """
    if segmenter is None:
        segmenter = TotalSegmentatorSegmenter()
    if class_map is None:
        class_map = totalseg_class_map()
    if ref_labels is None:
        ref_labels = _labels(segmenter, ct)
    return score_labels(ref_labels, _labels(segmenter, sct), tuple(reversed(ct.GetSpacing())), class_map)


class SegScorer:
    """SegScore of many cases with one segmenter, caching each reference CT's labels on disk.

    Cache: `<cache_dir>/<model>_totalsegmentator-<version>/<case>_<SHA-256 of the CT file, 16 digits>.nii.gz`, so a
    changed CT, another model or another TotalSegmentator version never reuses a stale segmentation.
    """

    def __init__(self, segmenter: Segmenter, cache_dir=None, class_map: dict[int, str] | None = None):
        self.segmenter = segmenter
        self.class_map = class_map if class_map is not None else totalseg_class_map()
        self.settings = dict(getattr(segmenter, "settings", {"model": "injected segmenter"}))
        self.settings["structures"] = list(scored_structures(self.class_map))
        self.cache_dir = None
        if cache_dir is not None:
            tag = f"{self.settings.get('model', 'injected')}_totalsegmentator-{self.settings.get('version', 'none')}"
            self.cache_dir = Path(cache_dir) / tag.replace(" ", "_")
            self.settings["reference_cache"] = str(self.cache_dir)

    def _cache_file(self, case: str, ct_file: Path) -> Path:
        assert self.cache_dir is not None, "only called with a cache folder"
        digest = file_sha256(ct_file)[:16]
        return self.cache_dir / f"{case}_{digest}.nii.gz"

    def reference_labels(self, case: str, ct_file: Path, ct: sitk.Image) -> np.ndarray:
        cached = self._cache_file(case, ct_file) if self.cache_dir is not None else None
        if cached is not None and cached.is_file():
            return sitk.GetArrayFromImage(sitk.ReadImage(str(cached)))
        labels = _labels(self.segmenter, ct)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            image = sitk.GetImageFromArray(labels.astype(np.uint8))
            image.CopyInformation(ct)
            with atomic_path(cached, suffix=".nii.gz") as tmp:
                sitk.WriteImage(image, str(tmp))
        return labels

    def __call__(self, case: str, ct_file: Path, ct: sitk.Image, sct: sitk.Image) -> dict[str, float]:
        return segscore(ct, sct, self.segmenter, self.class_map, self.reference_labels(case, ct_file, ct))


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


def totalsegmentator_settings(fast: bool) -> dict:
    """Model, resolution and version, as summary.json states them."""
    from importlib.metadata import version

    from totalsegmentator.python_api import get_task_config

    resample = get_task_config(TOTALSEG_TASK, fast=fast, quiet=True).get("resample")
    return {"model": f"{TOTALSEG_TASK}_fast" if fast else TOTALSEG_TASK, "task": TOTALSEG_TASK, "fast": fast,
            "resolution_mm": float(resample if not isinstance(resample, (list, tuple)) else resample[0]),
            "version": version("TotalSegmentator"), "ml": True}


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
        self.settings = totalsegmentator_settings(fast)

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
