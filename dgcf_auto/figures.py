"""One PNG per case: source, sCT, CT and |sCT - CT| (columns) in axial, coronal and sagittal views (rows).

Views cut through the centre of the mask's bounding box (the image centre without a mask). Every image is
first reoriented to LPS with sitk.DICOMOrient, so the views look the same whatever the file's direction:
axial with anterior up and the patient's right on the left (radiological), coronal and sagittal with
superior up. Pixels are drawn with their physical aspect ratio. CT and sCT share a fixed HU window, the
difference has its own fixed window, the source gets a percentile window of its own.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dgcf_auto.atomic import atomic_path, png_complete
from dgcf_auto.imageio import geometry_mismatch

CT_WINDOW_HU = (-1000.0, 1500.0)
DIFF_WINDOW_HU = (0.0, 500.0)
SOURCE_PERCENTILES = (0.5, 99.5)
CANONICAL_ORIENTATION = "LPS"
VIEWS = ("axial", "coronal", "sagittal")


def _on_grid(image: sitk.Image, reference: sitk.Image, label: bool = False) -> sitk.Image:
    """`image` on the reference grid (resampled only if the grids differ; a figure tolerates that)."""
    if geometry_mismatch(image, reference) is None:
        return image
    interp = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    return sitk.Resample(image, reference, sitk.Transform(), interp, 0.0, image.GetPixelID())


def _canonical(image: sitk.Image) -> tuple[np.ndarray, tuple[float, float, float]]:
    """(array (z=S, y=P, x=L) as float32, spacing (x, y, z)) after reorienting to LPS."""
    oriented = sitk.DICOMOrient(image, CANONICAL_ORIENTATION)
    return sitk.GetArrayFromImage(oriented).astype(np.float32), oriented.GetSpacing()


def view_centre(mask: np.ndarray | None, shape) -> tuple[int, int, int]:
    """Centre (z, y, x) of the mask's bounding box; the array centre for no or an empty mask."""
    if mask is None or not mask.any():
        return int(shape[0] // 2), int(shape[1] // 2), int(shape[2] // 2)
    lows, highs = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        lows.append(present[0])
        highs.append(present[-1])
    z, y, x = (int((lo + hi) // 2) for lo, hi in zip(lows, highs))
    return z, y, x


def cut(volume: np.ndarray, centre, view: str) -> np.ndarray:
    """2D slice of an LPS-ordered (z, y, x) volume, rows top to bottom as displayed."""
    z, y, x = centre
    if view == "axial":
        return volume[z]                 # rows anterior -> posterior, columns patient right -> left
    if view == "coronal":
        return volume[:, y, :][::-1]     # superior at the top
    if view == "sagittal":
        return volume[:, :, x][::-1]     # superior at the top, anterior on the left
    raise ValueError(f"unknown view {view!r}")


def view_aspect(spacing, view: str) -> float:
    """Row spacing / column spacing for imshow (spacing in SimpleITK's (x, y, z) order)."""
    sx, sy, sz = spacing
    return {"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}[view]


def _source_window(source: np.ndarray, mask: np.ndarray | None) -> tuple[float, float]:
    values = source[mask > 0] if mask is not None and mask.any() else source.ravel()
    low, high = np.percentile(values, SOURCE_PERCENTILES)
    return float(low), float(high if high > low else low + 1.0)


def save_case_figure(source: sitk.Image | None, sct: sitk.Image, ct: sitk.Image | None,
                     mask: sitk.Image | None, path: str | os.PathLike, title: str | None = None) -> Path:
    """Write the case figure to `path` (PNG, atomically). Missing source/CT just drop their columns."""
    panels: list[tuple[str, np.ndarray, tuple[float, float], str]] = []
    sct_arr, spacing = _canonical(sct)
    mask_arr = _canonical(_on_grid(mask, sct, label=True))[0] > 0 if mask is not None else None
    if source is not None:
        src_arr = _canonical(_on_grid(source, sct))[0]
        panels.append(("source", src_arr, _source_window(src_arr, mask_arr), "gray"))
    panels.append(("sCT", sct_arr, CT_WINDOW_HU, "gray"))
    if ct is not None:
        ct_arr = _canonical(_on_grid(ct, sct))[0]
        panels.append(("CT", ct_arr, CT_WINDOW_HU, "gray"))
        panels.append(("|sCT - CT|", np.abs(sct_arr - ct_arr), DIFF_WINDOW_HU, "magma"))
    centre = view_centre(mask_arr, sct_arr.shape)

    fig = Figure(figsize=(2.8 * len(panels) + 0.6, 2.8 * len(VIEWS) + 0.5), dpi=110, facecolor="black",
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(VIEWS), len(panels), squeeze=False)
    for row, view in enumerate(VIEWS):
        for col, (name, volume, (vmin, vmax), cmap) in enumerate(panels):
            ax = axes[row][col]
            shown = ax.imshow(cut(volume, centre, view), cmap=cmap, vmin=vmin, vmax=vmax,
                              aspect=view_aspect(spacing, view), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_facecolor("black")
            if row == 0:
                unit = "" if name == "source" else " HU"
                ax.set_title(f"{name}\n[{vmin:.4g}, {vmax:.4g}]{unit}", color="white", fontsize=9)
            if col == 0:
                ax.set_ylabel(view, color="white", fontsize=9)
            if row == len(VIEWS) - 1 and name == "|sCT - CT|":
                bar = fig.colorbar(shown, ax=[axes[r][col] for r in range(len(VIEWS))], shrink=0.6)
                bar.ax.tick_params(colors="white", labelsize=7)
    if title:
        fig.suptitle(title, color="white", fontsize=11)
    path = Path(path)
    with atomic_path(path, suffix=".png", verify=png_complete) as tmp:
        fig.savefig(tmp, format="png", facecolor=fig.get_facecolor())
    return path
