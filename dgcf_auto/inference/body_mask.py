"""A body mask for prediction when none is given, so that the case is treated as in training.

Training normalises the MR inside the body mask, centres the slice grid on the mask and sets the outside to
air; without a mask all three would use the whole image. Methods (`dgcf_predict --mask_from`):
- "plans" (default): threshold the source at plans["body_mask"]["threshold"] (derived from the intensity
  statistics inside the training masks, see planning/planner.py `plan_body_mask`; for MR in units of the
  case's own 99th percentile), keep the largest connected component, fill holes slice by slice;
- "otsu": the same with an Otsu threshold (for plans written before "body_mask" existed);
- "none": no mask: the whole field of view is body, nothing is set to air.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from dgcf_auto.errors import DGCFError

MASK_METHODS = ("plans", "otsu", "none")


def effective_method(method: str, plans: dict) -> str:
    """The method actually used: 'plans' falls back to 'otsu' when the plans hold no body_mask section."""
    if method not in MASK_METHODS:
        raise DGCFError(f"`mask_from` must be one of {', '.join(MASK_METHODS)}, got {method!r}")
    return "otsu" if method == "plans" and "body_mask" not in plans else method


def derive_body_mask(source: sitk.Image, plans: dict, method: str = "plans", case: str = "case") -> sitk.Image | None:
    """uint8 mask on the source's grid (None for method 'none'); a DGCFError when no body is found."""
    method = effective_method(method, plans)
    if method == "none":
        return None
    array = sitk.GetArrayViewFromImage(source).astype(np.float32)
    if method == "otsu":
        otsu = sitk.OtsuThresholdImageFilter()
        otsu.Execute(sitk.Cast(source, sitk.sitkFloat32))
        threshold = float(otsu.GetThreshold())
    else:
        cfg = plans["body_mask"]
        threshold = float(cfg["threshold"])
        if cfg.get("units") == "relative_to_p99":
            threshold *= float(np.percentile(array, 99.0))
    body = array > threshold
    labels, count = ndimage.label(body)
    if count == 0:
        raise DGCFError(f"case {case}: no body found in the source above {threshold:.4g} ({method} threshold); "
                        f"give a mask or use --mask_from none")
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(np.argmax(sizes))
    for index in range(body.shape[0]):  # holes (gas, dark cortical bone in MR) slice by slice
        body[index] = ndimage.binary_fill_holes(body[index])
    mask = sitk.GetImageFromArray(body.astype(np.uint8))
    mask.CopyInformation(source)
    return mask

