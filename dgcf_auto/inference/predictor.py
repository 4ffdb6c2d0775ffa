"""sCT prediction: source volume -> slice grid -> ensemble of folds (+ mirror TTA) -> HU on the input's grid.

Every geometric and intensity step is the preprocessing's own (`preprocess_case` / `restore_ct`); this module
only batches slices through the networks and averages them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from dgcf_auto.errors import DGCFError
from dgcf_auto.imageio import to_array
from dgcf_auto.inference.body_mask import derive_body_mask, effective_method
from dgcf_auto.inference.model_loading import VIT_PREFIX, build_trained_network, load_checkpoint
from dgcf_auto.inference.precision import CHOICES, choose_precision, fold_check
from dgcf_auto.inference.sliding_window import predict_sliding_window
from dgcf_auto.log import get_logger
from dgcf_auto.network.dinov3 import RANDOM_DINOV3_WARNING
from dgcf_auto.network.execution import BatchSizer, ViTEncoder, predict_slice_stack
from dgcf_auto.planning.plan_3d import volume_patch_size
from dgcf_auto.plans import KIND_SLABS, KIND_SLICES, KIND_VOLUME, configuration_plans
from dgcf_auto.preprocessing.normalization import CT_AIR_HU, ct_window
from dgcf_auto.preprocessing.pipeline import preprocess_case, restore_ct, restore_slices
from dgcf_auto.preprocessing.slicing import from_slice_grid, slices_to_image

HU_MIN, HU_MAX = -1024, 3071  # int16 CT range a treatment-planning system expects
BACKGROUND_HU = -1000
# Mirror along the slice's left-right axis (the last array axis of the slice grid). Anatomy stays plausible,
# unlike an anterior-posterior flip the networks never saw in training (augmentation is off by default).
TTA_FLIP_DIMS = ((), (-1,))
log = get_logger(__name__)


class SCTPredictor:
    """The folds of one model on one device. Folds whose frozen ViT weights are identical (folds trained
    from one DINOv3 file always are) share ONE ViT instance, run once per slice for the whole ensemble."""

    def __init__(self, checkpoint_files: list[Path], device: str | torch.device = "cpu",
                 use_tta: bool = True, batch_size: int | None = None, mask_background: bool = True,
                 precision: str = "auto", mask_from: str = "plans", share_vit: bool = True,
                 progress: bool = True, configuration: str | None = None):
        self.device = torch.device(device)
        self.checkpoint_files = [Path(f) for f in checkpoint_files]
        if precision not in CHOICES:
            raise DGCFError(f"precision must be one of {', '.join(CHOICES)}, got {precision!r}")
        # Only auto on a GPU reads the recorded check (one weights hash per fold); everything else is decided here.
        reads_check = precision == "auto" and self.device.type == "cuda"
        fold_checks = []
        self.networks, sources, network_plans_seen = [], set(), []
        shared_vit = None
        reference_vit: dict[str, torch.Tensor] = {}  # fold 0's ViT weights
        sharing = share_vit
        for index, file in enumerate(self.checkpoint_files):  # one checkpoint in memory at a time
            checkpoint = load_checkpoint(file)
            if index == 0:
                self.plans = checkpoint["plans"]
                _check_configuration(self.plans, configuration, file)
            elif not same_grid_and_normalisation(checkpoint["plans"], self.plans):
                raise DGCFError(f"checkpoint {file}: its plans differ from {self.checkpoint_files[0]} "
                                f"(slice grid or normalisation); folds of one model must share plans")
            if reads_check:
                fold_checks.append(fold_check(file.parent.parent, file.parent.name, checkpoint["network_weights"]))
            vit_weights = {k: v for k, v in checkpoint["network_weights"].items() if k.startswith(VIT_PREFIX)}
            if index == 0:
                reference_vit = vit_weights
            elif sharing and not _same_tensors(vit_weights, reference_vit):
                sharing = False  # folds trained from different ViT weights: each keeps its own
                log.info(f"note: {file}: frozen DINOv3 weights differ from {self.checkpoint_files[0].parent.name}'s; "
                         f"every fold runs its own ViT")
            network = build_trained_network(checkpoint, self.device, shared_vit if sharing else None)
            if index == 0:
                shared_vit = getattr(network, "dinov3", None)
                # 3d_fullres: the sliding window over the volume, with the patch the network was trained on
                self.volume_patch = (volume_patch_size(self.plans)
                                     if configuration_plans(self.plans).kind == KIND_VOLUME else None)
            # channels_last suits both cuDNN and oneDNN convolutions (measured 18 % faster on CPU too).
            self.networks.append(network if self.volume_patch else network.to(memory_format=torch.channels_last))
            sources.add(str(checkpoint.get("dinov3_source", "unknown")))
            network_plans_seen.append(json.dumps(checkpoint["plans"]["network"], sort_keys=True))
            del checkpoint, vit_weights
        # Folds before a differing one hold the shared instance (equal weights); only when all do, and every
        # fold computes its ViT input the same way (`encode_dino`, same network plans), is it run once.
        can_share = (share_vit and shared_vit is not None and len(set(network_plans_seen)) == 1 and
                     all(getattr(n, "dinov3", None) is shared_vit and callable(getattr(n, "encode_dino", None))
                         for n in self.networks))
        self.shared_encoder: ViTEncoder | None = getattr(self.networks[0], "encode_dino") if can_share else None
        self.weights_sources = sorted(sources)
        if "random" in self.weights_sources:
            log.warning(RANDOM_DINOV3_WARNING)
        self.precision = choose_precision(self.device.type, precision, fold_checks)
        self.autocast_dtype = self.precision.dtype
        if self.precision.precision != "fp32":
            log.info(f"precision {self.precision.precision} ({self.precision.reason})")
        self.flips = TTA_FLIP_DIMS if use_tta else ((),)
        self.batch_sizer = BatchSizer(self.device, batch_size)
        self.progress = progress
        self.mask_background = mask_background
        self.mask_from = effective_method(mask_from, self.plans)
        # Everything that changes the output voxels besides the weights (for the provenance record).
        self.options = {"tta": use_tta, "precision": self.precision.precision,
                        "mask_background": mask_background, "mask_from": self.mask_from}
        if self.precision.check is not None:  # a reduced precision auto chose: the difference it was allowed on
            self.options["precision_recorded_difference_hu"] = self.precision.check

    @property
    def batch_size(self) -> int | None:
        return self.batch_sizer.size

    @property
    def derives_masks(self) -> bool:
        return self.mask_from != "none"

    @property
    def passes_per_slice(self) -> int:
        return len(self.networks) * len(self.flips)

    def predict_volume(self, source: sitk.Image, mask: sitk.Image | None, case: str = "",
                       with_uncertainty: bool = False) -> tuple[sitk.Image, sitk.Image | None]:
        """sCT (int16 HU, the source's exact grid) and optionally the std over folds/TTA in HU."""
        prediction = self.predict_case(source, mask, case, with_uncertainty)
        return prediction.sct, prediction.uncertainty

    def predict_case(self, source: sitk.Image, mask: sitk.Image | None, case: str = "",
                     with_uncertainty: bool = False) -> CasePrediction:
        """The sCT with what led to it: the normalised slice stack before the way back to HU, the case's
        properties and the background mask (what `--save_probabilities` keeps for `dgcf_ensemble`)."""
        # Files were validated on the way in (dataset validation); preprocess_case checks dimension and grids.
        if mask is None:  # as in training: normalise, centre and mask with the body, not the whole image
            mask = derive_body_mask(source, self.plans, self.mask_from, case)
        prepared = preprocess_case(source, None, mask, self.plans, case)
        mean, std = self._predict_slices(prepared.source, case, with_uncertainty)
        if mask is not None:
            _warn_if_body_outside_grid(mask, prepared.properties, case)
        background = (sitk.GetArrayFromImage(mask) != 0).astype(np.uint8) if (
            mask is not None and self.mask_background) else None
        sct = sct_from_normalised(mean, prepared.properties, self.plans, background)
        uncertainty = None
        if with_uncertainty:
            # The CT normalisation is linear, so a spread in normalised units is scale * spread in HU.
            low, high = ct_window(self.plans)
            std_hu = std * np.float32((high - low) / 2.0)
            uncertainty = restore_slices(std_hu, prepared.properties, self.plans, 0.0, sitk.sitkLinear)
            uncertainty.CopyInformation(source)
        return CasePrediction(sct, uncertainty, mean, prepared.properties, background)

    def _predict_slices(self, slices: np.ndarray, case: str, with_uncertainty: bool):
        if self.volume_patch:
            # the volume's axes are (slice, row, col): mirroring the last is the 2D TTA's left-right flip
            return predict_sliding_window(self.networks, slices, self.volume_patch, self.device,
                                          mirror_axes=(2,) if len(self.flips) > 1 else (), dtype=self.autocast_dtype,
                                          with_std=with_uncertainty,
                                          desc=f"predict {case}".strip() if self.progress else None)
        return predict_slice_stack(self.networks, slices, self.device, self.batch_sizer, self.autocast_dtype,
                                   self.flips, with_uncertainty,
                                   desc=f"predict {case}".strip() if self.progress else None,
                                   shared_encoder=self.shared_encoder,
                                   slab_size=configuration_plans(self.plans).slab_size)


@dataclass
class CasePrediction:
    sct: sitk.Image                      # int16 HU on the source's grid
    uncertainty: sitk.Image | None       # std over folds and TTA, HU
    normalised: np.ndarray               # (S, H, W) float32: the fold/TTA mean on the slice grid, CT-normalised
    properties: dict                     # preprocess_case's properties: the slice grid and the original grid
    background_mask: np.ndarray | None   # uint8 (z, y, x) on the original grid: 0 -> BACKGROUND_HU; None: kept


def sct_from_normalised(normalised: np.ndarray, properties: dict, plans: dict,
                        background_mask: np.ndarray | None) -> sitk.Image:
    """The one way back from a normalised slice stack to the int16 HU sCT on the case's original grid
    (`restore_ct`, background to -1000 HU, rounded and clipped): prediction and dgcf_ensemble both call it."""
    restored = restore_ct(normalised, properties, plans)
    return sct_from_hu(to_array(restored), restored, background_mask)


def sct_from_hu(hu: np.ndarray, reference: sitk.Image, background_mask: np.ndarray | None) -> sitk.Image:
    """Float HU on the case's original grid (`reference`'s) -> the int16 sCT: background -1000 HU, rounded,
    clipped to the int16 CT range."""
    if background_mask is not None:
        hu[background_mask == 0] = BACKGROUND_HU
    return _as_int16_image(hu, reference)


def same_grid_and_normalisation(a: dict, b: dict) -> bool:
    """Two plans put a case on the same slice grid and normalise it the same way (fold and ensemble checks)."""
    return _grid_and_normalisation(a) == _grid_and_normalisation(b)


def same_output_grid(a: dict, b: dict) -> bool:
    """Two models' normalised predictions lie on the same grid in the same CT window, so they can be averaged
    before the way back to HU: 2d and 2.5d of one plans file do (a slab is an input of the same slices),
    3d_fullres (another grid) does not."""
    return _output_grid(a) == _output_grid(b)


def _output_grid(plans: dict) -> tuple:
    fields = configuration_plans(plans).grid_fields()
    fields.pop("slab_size")  # what the network sees, not where its output lies
    fields["kind"] = KIND_SLICES if fields["kind"] == KIND_SLABS else fields["kind"]
    return repr(fields), repr(plans.get("ct_normalization"))


def _check_configuration(plans: dict, configuration: str | None, file: Path) -> None:
    """A model asked for as one configuration (`-c`) must have been trained on it."""
    trained_on = plans.get("configuration")
    if configuration is not None and trained_on != configuration:
        raise DGCFError(f"model {file.parent.parent} was trained on configuration {trained_on!r}, not "
                        f"{configuration!r} (-c {trained_on})")


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _grid_and_normalisation(plans: dict) -> tuple:
    return (repr(configuration_plans(plans).grid_fields()), repr(plans.get("ct_normalization")),
            repr(plans.get("source_normalization")))


def _warn_if_body_outside_grid(mask: sitk.Image, properties: dict, case: str, tolerance: float = 1e-3) -> None:
    """A body wider than the planned field of view gets no prediction there (air): never silently."""
    grid = properties.get("slice_grid")
    if grid is None:  # stretched slices (release plans) cover the whole field of view
        return
    ones = np.ones([int(v) for v in reversed(grid["size"])], np.uint8)
    covered = from_slice_grid(slices_to_image(ones, grid), properties["original_geometry"],
                              sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    body = sitk.GetArrayFromImage(mask) != 0  # any non-zero label, as for the background
    outside = (float(np.count_nonzero(body & (sitk.GetArrayFromImage(covered) == 0)))
               / max(int(np.count_nonzero(body)), 1))
    if outside > tolerance:
        log.warning(f"case {case}: {outside:.1%} of the body mask lies outside the planned slice grid "
                    f"and gets no prediction ({CT_AIR_HU:.0f} HU); re-plan with a larger field of view "
                    f"(--patch_size / --spacing) and retrain, or check the mask")


def _as_int16_image(hu: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16))
    image.CopyInformation(reference)
    return image
