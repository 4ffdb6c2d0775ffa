"""Stretch each stored slice to a fixed size, and back: the authors' slice geometry (release plans).

Their pipeline (HiLab-git/DGCF) cuts a volume into the 2D slices of its stored third voxel axis
(`code_util/dataset/slicing_3ds.py` `split_3d_to_2d`: SimpleITK index z, direction cosines ignored), resizes
each slice to 256 x 256 with torchvision `Resize(size, BILINEAR, antialias=None)` on a tensor
(`code_util/data/prepost_process.py` `resize`/`get_resize_method`; `file_config/base.json`
`preprocess.resize`), and at test time resizes the generator's output back to the slice's own size with the
same call (`Postprocess`) before stacking the slices onto the input volume's geometry
(`code_util/dataset/reconstruct.py`). For tensors, antialias=None is no antialiasing, so both directions are
`torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=False)`.

Arrays are (K, Y, X): SimpleITK's numpy order, slices first, so the stored slice axis is axis 0.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _resize(slices: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))[:, None]
    with torch.no_grad():
        out = F.interpolate(tensor, size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False,
                            antialias=False)
    return out[:, 0].numpy()


def stretch_slices(volume: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(K, Y, X) -> (K, H, W): every stored slice stretched to `size` (their 256 x 256), aspect not kept."""
    return _resize(volume, size)


def unstretch_slices(slices: np.ndarray, slice_shape: tuple[int, int]) -> np.ndarray:
    """(K, H, W) -> (K, Y, X): the inverse resize onto each stored slice's own size."""
    return _resize(slices, slice_shape)
