"""figures.py: what the PNGs draw, read back from their pixels."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk


def _panel_grey(png, rows: slice, value: int):
    """Bounding box (top, bottom, left, right) of the pixels of grey `value` (+-1) in a band of the PNG."""
    from matplotlib.image import imread

    rgb = np.round(imread(png)[..., :3] * 255).astype(int)[rows]
    grey = (np.abs(rgb - value) <= 1).all(-1)
    ys, xs = np.flatnonzero(grey.sum(1) > 50), np.flatnonzero(grey.sum(0) > 50)  # not anti-aliased text
    return rgb, grey, (ys.min(), ys.max(), xs.min(), xs.max())


# Figure tests that looked only at the file: the slice, the window and the orientation drawn, from pixels.
def test_case_figure_draws_the_mask_centre_slice_in_the_ct_window_radiologically(tmp_path):
    from dgcf_auto import figures

    # LPS volume (identity direction); slice z holds -1000 + 250 z HU, so each axial slice has its own grey.
    shape = (10, 40, 40)
    volume = (-1000.0 + 250.0 * np.arange(shape[0]))[:, None, None] * np.ones(shape)
    volume[4, :8, :8] = 1500.0  # a marker on the centre slice: anterior (low y) and patient right (low x)
    sct = sitk.GetImageFromArray(volume.astype(np.float32))
    sct.SetSpacing((0.8, 1.6, 3.0))  # rows (y) twice as far apart as columns (x)
    mask_array = np.zeros(shape, np.uint8)
    mask_array[2:7, 5:35, 5:35] = 1  # bounding box centre z = 4, not the image centre 5
    mask = sitk.GetImageFromArray(mask_array)
    mask.CopyInformation(sct)
    path = figures.save_case_figure(None, sct, None, mask, tmp_path / "f.png")
    low, high = figures.CT_WINDOW_HU
    assert (low, high) == (-1000.0, 1500.0)
    expected = int(255 * (0.0 - low) / (high - low))  # slice 4 is 0 HU -> grey 102 in the CT window
    from matplotlib.image import imread

    third = imread(path).shape[0] // 3  # the axial row (coronal and sagittal rows show every slice)
    rgb, grey, (top, bottom, left, right) = _panel_grey(path, slice(0, third), expected)
    assert (bottom - top) > 100 and (right - left) > 50 and grey.sum() > 0.8 * (bottom - top) * (right - left)
    assert (bottom - top) / (right - left) == pytest.approx(2.0, rel=0.1)  # physical aspect (pixel snapping)
    quarter_y, quarter_x = (bottom - top) // 8, (right - left) // 8  # the marker spans 1/5 of the panel
    marker = rgb[top + 2:top + quarter_y, left + 2:left + quarter_x]
    assert (marker >= 254).all()  # the marker is drawn white, top left: anterior up, patient right on the left
    assert not (rgb[top + 2:top + quarter_y, right - quarter_x:right - 1] >= 254).all()
