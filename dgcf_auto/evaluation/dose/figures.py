"""Dose PNGs a physicist reads at a glance; DVHs of both doses per structure.

Dose figure: CT dose, sCT dose and sCT - CT (columns) in axial, coronal and sagittal views (rows) through the
PTV centre, over the CT in grey, every panel on the CT's own grid (the doses interpolated onto it). PTV (red)
and OAR outlines; 95, 50 and 20 % of Rx isodose lines of the CT plan (solid) and of the sCT plan (dashed) on
both dose panels; orientation letters (axial: R left, L right, A top, P bottom; coronal R/L, S/I; sagittal
A/P, S/I); a 5 cm scale bar; colour bars in Gy. The difference is scaled at the 99.5th percentile of |dD| over
the voxels the CT plan doses above 10 % of its maximum (one hot voxel never sets the scale), said in its title.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dgcf_auto.atomic import save_figure
from dgcf_auto.figures import CT_WINDOW_HU, VIEWS, _canonical, cut, view_aspect, view_centre

CUTOFF = 0.1                 # dose below 10 % of the CT maximum is not coloured
ISODOSE_PERCENT = (95, 50, 20)
ISODOSE_COLOURS = {95: "#ff00ff", 50: "#00ffff", 20: "#ffff00"}
PTV_COLOUR = "#ff0000"
DIFF_PERCENTILE = 99.5
SCALE_BAR_MM = 50.0
# (left, right, top, bottom) letters of each view as `figures.cut` displays it
VIEW_LETTERS = {"axial": ("R", "L", "A", "P"), "coronal": ("R", "L", "S", "I"), "sagittal": ("A", "P", "S", "I")}


def difference_limit(diff: np.ndarray, d_ct: np.ndarray) -> float:
    """The difference map's colour limit: the 99.5th percentile of |dD| where the CT dose is >= 10 % of its maximum."""
    top = float(d_ct.max())
    region = np.abs(diff[d_ct >= CUTOFF * top]) if top > 0 else np.abs(diff).ravel()
    limit = float(np.percentile(region, DIFF_PERCENTILE)) if region.size else 0.0
    return limit if limit > 0 else max(0.01 * top, 1e-6)


def _column_spacing(spacing, view: str) -> float:
    return spacing[1] if view == "sagittal" else spacing[0]


def _decorate(ax, shape, spacing, view: str) -> None:
    """Orientation letters at the edges and a 5 cm scale bar bottom left."""
    rows, cols = shape
    left, right, top, bottom = VIEW_LETTERS[view]
    style = dict(color="white", fontsize=8, fontweight="bold", ha="center", va="center")
    ax.text(0.04, 0.5, left, transform=ax.transAxes, **style)
    ax.text(0.96, 0.5, right, transform=ax.transAxes, **style)
    ax.text(0.5, 0.95, top, transform=ax.transAxes, **style)
    ax.text(0.5, 0.05, bottom, transform=ax.transAxes, **style)
    length = SCALE_BAR_MM / _column_spacing(spacing, view)  # in columns
    x0, y0 = 0.05 * cols, rows - 1 - 0.15 * rows  # above the bottom letter
    ax.plot([x0, x0 + length], [y0, y0], color="white", linewidth=2.5, solid_capstyle="butt")
    ax.text(x0 + length / 2, y0 - 0.03 * rows, "5 cm", color="white", fontsize=6, ha="center", va="bottom")
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)


def dose_figure(ct: sitk.Image, dose_ct: sitk.Image, dose_sct: sitk.Image, structures: dict[str, sitk.Image],
                rx: float, title: str) -> Figure:
    """The dose figure; every image on the CT's grid. `structures`: {"PTV": mask, OAR name: mask, ...}."""
    ct_a, spacing = _canonical(ct)
    d_ct, d_sct = _canonical(dose_ct)[0], _canonical(dose_sct)[0]
    masks = {name: _canonical(mask)[0] > 0 for name, mask in structures.items()}
    centre = view_centre(masks.get("PTV"), d_ct.shape)
    top = float(d_ct.max()) or 1.0
    diff = d_sct - d_ct
    limit = difference_limit(diff, d_ct)
    panels = [("CT dose", d_ct, (0.0, top), "jet", True), ("sCT dose", d_sct, (0.0, top), "jet", True),
              (f"sCT - CT (+-{limit:.3g} Gy: {DIFF_PERCENTILE:g}th percentile of |dD|)", diff, (-limit, limit),
               "coolwarm", False)]
    fig = Figure(figsize=(3.4 * len(panels) + 1.2, 3.0 * len(VIEWS) + 0.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(VIEWS), len(panels), squeeze=False)
    levels = [p / 100.0 * rx for p in sorted(ISODOSE_PERCENT)]
    colours = [ISODOSE_COLOURS[p] for p in sorted(ISODOSE_PERCENT)]
    for row, view in enumerate(VIEWS):
        aspect = view_aspect(spacing, view)
        reference = cut(d_ct, centre, view)
        for col, (name, volume, (vmin, vmax), cmap, masked) in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(cut(ct_a, centre, view), cmap="gray", vmin=CT_WINDOW_HU[0], vmax=CT_WINDOW_HU[1],
                      aspect=aspect, interpolation="nearest")
            shown = cut(volume, centre, view)
            shown = np.ma.masked_where(reference < CUTOFF * top, shown) if masked else shown
            image = ax.imshow(shown, cmap=cmap, vmin=vmin, vmax=vmax, aspect=aspect, alpha=0.6,
                              interpolation="nearest")
            for index, (structure, mask) in enumerate(masks.items()):
                section = cut(mask, centre, view)
                if section.any() and section.min() != section.max():
                    ax.contour(section.astype(np.float32), levels=[0.5], linewidths=1.2 if structure == "PTV" else 0.8,
                               colors=PTV_COLOUR if structure == "PTV" else f"C{index % 10}")
            if masked:  # isodose lines of both plans on both dose panels
                for dose, style in ((d_ct, "solid"), (d_sct, "dashed")):
                    section = cut(dose, centre, view)
                    present = [(lv, c) for lv, c in zip(levels, colours) if section.min() < lv < section.max()]
                    if present:
                        ax.contour(section, levels=[lv for lv, _ in present], colors=[c for _, c in present],
                                   linestyles=style, linewidths=1.0)
            _decorate(ax, shown.shape, spacing, view)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=8)
            if col == 0:
                ax.set_ylabel(view, fontsize=9)
            if row == len(VIEWS) - 1:
                bar = fig.colorbar(image, ax=[axes[r][col] for r in range(len(VIEWS))], shrink=0.6,
                                   location="bottom")
                bar.set_label("dose difference (Gy)" if not masked else "dose (Gy)", fontsize=8)
    outlines = ", ".join(["PTV red"] + [f"{n} C{i % 10}" for i, n in enumerate(masks) if n != "PTV"])
    isodoses = ", ".join(f"{p} %" for p in ISODOSE_PERCENT)
    fig.suptitle(f"{title}\nisodoses {isodoses} of Rx {rx:g} Gy (magenta, cyan, yellow): CT plan solid, sCT "
                 f"plan dashed; outlines: {outlines}", fontsize=9)
    return fig


def save_dose_figure(ct: sitk.Image, dose_ct: sitk.Image, dose_sct: sitk.Image, structures: dict[str, sitk.Image],
                     rx: float, path: Path, title: str) -> Path:
    return save_figure(dose_figure(ct, dose_ct, dose_sct, structures, rx, title), path)


def cumulative_dvh(dose: np.ndarray, mask: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """% of the structure receiving at least each bin's dose."""
    values = dose[mask]
    return 100.0 * (values[None, :] >= bins[:, None]).mean(axis=1) if values.size else np.zeros_like(bins)


def dvh_figure(d_ct: np.ndarray, d_sct: np.ndarray, masks: dict[str, np.ndarray], title: str) -> Figure:
    bins = np.linspace(0.0, 1.05 * max(float(d_ct.max()), float(d_sct.max()), 1e-6), 200)
    fig = Figure(figsize=(8.5, 4.5), dpi=100, layout="constrained")
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
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)  # outside the curves
    ax.set_title(title, fontsize=10)
    return fig


def save_dvh_figure(d_ct: np.ndarray, d_sct: np.ndarray, masks: dict[str, np.ndarray], path: Path,
                    title: str) -> Path:
    return save_figure(dvh_figure(d_ct, d_sct, masks, title), path)
