"""Dose PNGs: CT dose, sCT dose and sCT - CT in three views (over the CT in grey); DVHs of both per structure."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dgcf_auto.atomic import save_figure
from dgcf_auto.figures import CT_WINDOW_HU, VIEWS, _canonical, cut, view_aspect, view_centre

CUTOFF = 0.1  # dose below 10 % of the CT maximum is not coloured


def save_dose_figure(ct_on_dose_grid: sitk.Image, dose_ct: sitk.Image, dose_sct: sitk.Image, ptv: sitk.Image,
                     path: Path, title: str) -> Path:
    ct, spacing = _canonical(ct_on_dose_grid)
    d_ct, d_sct = _canonical(dose_ct)[0], _canonical(dose_sct)[0]
    centre = view_centre(_canonical(ptv)[0] > 0, d_ct.shape)
    top = float(d_ct.max()) or 1.0
    diff = d_sct - d_ct
    limit = float(np.abs(diff).max()) or 0.01 * top
    panels = [("CT dose (Gy)", d_ct, (0.0, top), "jet", True), ("sCT dose (Gy)", d_sct, (0.0, top), "jet", True),
              ("sCT - CT (Gy)", diff, (-limit, limit), "coolwarm", False)]
    fig = Figure(figsize=(3.0 * len(panels) + 1.0, 2.8 * len(VIEWS) + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(VIEWS), len(panels), squeeze=False)
    for row, view in enumerate(VIEWS):
        aspect = view_aspect(spacing, view)
        for col, (name, volume, (vmin, vmax), cmap, masked) in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(cut(ct, centre, view), cmap="gray", vmin=CT_WINDOW_HU[0], vmax=CT_WINDOW_HU[1],
                      aspect=aspect, interpolation="nearest")
            shown = cut(volume, centre, view)
            reference = cut(d_ct, centre, view)
            shown = np.ma.masked_where(reference < CUTOFF * top, shown) if masked else shown
            image = ax.imshow(shown, cmap=cmap, vmin=vmin, vmax=vmax, aspect=aspect, alpha=0.75,
                              interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=9)
            if col == 0:
                ax.set_ylabel(view, fontsize=9)
            if row == len(VIEWS) - 1:
                fig.colorbar(image, ax=[axes[r][col] for r in range(len(VIEWS))], shrink=0.6)
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def cumulative_dvh(dose: np.ndarray, mask: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """% of the structure receiving at least each bin's dose."""
    values = dose[mask]
    return 100.0 * (values[None, :] >= bins[:, None]).mean(axis=1) if values.size else np.zeros_like(bins)


def save_dvh_figure(d_ct: np.ndarray, d_sct: np.ndarray, masks: dict[str, np.ndarray], path: Path,
                    title: str) -> Path:
    bins = np.linspace(0.0, 1.05 * max(float(d_ct.max()), float(d_sct.max()), 1e-6), 200)
    fig = Figure(figsize=(7, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, (name, mask) in enumerate(masks.items()):
        colour = f"C{i % 10}"
        ax.plot(bins, cumulative_dvh(d_ct, mask, bins), color=colour, label=f"{name} CT")
        ax.plot(bins, cumulative_dvh(d_sct, mask, bins), color=colour, linestyle="--", label=f"{name} sCT")
    ax.set_xlabel("dose (Gy)")
    ax.set_ylabel("volume (%)")
    ax.set_ylim(0, 101)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)
