"""Automatic photon and proton plans with pyRadPlan: optimise on the CT, recompute the same plan on the sCT.

- Photon: `photon_beams` equispaced coplanar beams (gantry 0, 360/N, ...; couch 0), pyRadPlan's generic 6 MV
  machine and pencil-beam engine, fluence optimised to the PTV (squared deviation from Rx, priority 1000)
  with squared overdosing objectives on each OAR (above 0.5 Rx, priority 10) and the body (above 0.8 Rx,
  priority 10).
- Proton: two lateral opposed fields (gantry 90 and 270), pyRadPlan's generic proton machine and Hong
  pencil-beam engine, spot weights optimised with the same objectives. Energy layers are every energy of the
  machine whose Bragg peak lies in the target along a ray (pyRadPlan 0.5's IMPT geometry; it has no layer
  spacing setting, so none is offered here).
Both: one fraction of Rx (SynthRAD's by the region letter of the case id: B 2 Gy, P 3 Gy; or as given), dose on a
`dose_grid_mm` grid, HU to density / stopping power
through pyRadPlan's lookup table unless one is given. The steering geometry (beams, rays, spots) comes from
the CT; the sCT gets the same steering geometry and the same weights, only its influence matrix is its own.

Images enter pyRadPlan in an axis-aligned LPS frame (`planning_frame`): reoriented like sitk.DICOMOrient and,
for a rotated grid, resampled onto an identity-direction grid of the same spacing.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

PHOTON, PROTON = "photon", "proton"
MODALITIES = (PHOTON, PROTON)
PROTON_GANTRY = (90.0, 270.0)
OBJECTIVES = {"target": {"objective": "SquaredDeviation", "d_ref": "Rx", "priority": 1000.0},
              "oar": {"objective": "SquaredOverdosing", "d_max": "0.5 Rx", "priority": 10.0},
              "body": {"objective": "SquaredOverdosing", "d_max": "0.8 Rx", "priority": 10.0}}


@dataclass(frozen=True)
class DoseSettings:
    """Every choice of the automatic plans; `describe()` is what summary.json records and the cache key."""
    modalities: tuple[str, ...] = MODALITIES
    rx_gy: float | None = None         # prescription per fraction; None: SynthRAD's by region letter (rx_for_case)
    targets: tuple[str, ...] = ("prostate",)   # the first name a case holds is its target
    margin_mm: float = 5.0
    dose_grid_mm: float = 3.0
    photon_beams: int = 5
    photon_bixel_mm: float = 5.0
    proton_spot_mm: float = 5.0        # lateral spot spacing
    max_iter: int = 300
    hlut: tuple[tuple[float, float], ...] | None = None   # (HU, relative density) rows; None: pyRadPlan's
    gamma_cutoff_percent: float | None = None   # None: matRad's rule (SynthRAD); a number: % of each dose's max
    case_targets: dict | None = None   # {case: (name, ...)}: per-case target names, before `targets`

    def __post_init__(self):
        from dgcf_auto.errors import DGCFError

        if isinstance(self.targets, str):
            object.__setattr__(self, "targets", (self.targets,))
        if not self.targets or not all(str(t).strip() for t in self.targets):
            raise DGCFError(f"dose: give at least one target structure name, got {list(self.targets)}")
        if self.rx_gy is not None and not self.rx_gy > 0:
            raise DGCFError(f"dose: rx_gy must be positive, got {self.rx_gy}")
        if self.gamma_cutoff_percent is not None and not 0 <= self.gamma_cutoff_percent < 100:
            raise DGCFError(f"dose: the gamma cut-off must be in [0, 100) %, got {self.gamma_cutoff_percent}")
        for name in ("dose_grid_mm", "photon_bixel_mm", "proton_spot_mm"):
            if not getattr(self, name) > 0:
                raise DGCFError(f"dose: {name} must be positive, got {getattr(self, name)}")
        if self.margin_mm < 0 or self.photon_beams < 1:
            raise DGCFError(f"dose: the margin must be >= 0 mm and there must be at least one photon beam "
                            f"(got {self.margin_mm} mm, {self.photon_beams} beams)")
        if unknown := set(self.modalities) - set(MODALITIES):
            raise DGCFError(f"dose: unknown modality {', '.join(sorted(unknown))} "
                            f"(choose from {', '.join(MODALITIES)})")

    def table(self) -> np.ndarray:
        if self.hlut is not None:
            return np.asarray(self.hlut, dtype=np.float64)
        from pyRadPlan.ct import default_hlut

        return default_hlut()

    def describe(self) -> dict:
        """Every setting, for summary.json."""
        out = {k: v for k, v in asdict(self).items() if k not in ("modalities", "hlut", "targets", "case_targets")}
        out["case_targets"] = {k: list(v) for k, v in self.case_targets.items()} if self.case_targets else None
        out["modalities"] = list(self.modalities)
        out["targets"] = list(self.targets)
        out["rx_gy"] = self.rx_gy if self.rx_gy is not None else "by region letter of the case id: " + \
            ", ".join(f"{k} {v:g} Gy" for k, v in SYNTHRAD_RX_GY.items())
        out["gamma_cutoff"] = GAMMA_CUTOFF_RULE if self.gamma_cutoff_percent is None else \
            f"{self.gamma_cutoff_percent:g} % of each dose's own maximum, on either dose, inside the body"
        out.update(self._plan_settings())
        return out

    def plan_key(self, modality: str, rx_gy: float) -> dict:
        """What one modality's reference plan depends on besides the CT and the planning structures: the cache
        key holds this and nothing else (other modalities, gamma or figure choices never re-plan)."""
        out = {k: v for k, v in self._plan_settings().items() if k not in {PHOTON, PROTON} - {modality}}
        out.update(modality=modality, rx_gy=float(rx_gy), dose_grid_mm=self.dose_grid_mm, max_iter=self.max_iter)
        return out

    def _plan_settings(self) -> dict:
        import pyRadPlan

        out: dict[str, Any] = {}
        out["hlut"] = {"source": "given" if self.hlut is not None else "pyRadPlan default_hlut()",
                       "hu": self.table()[:, 0].tolist(), "density": self.table()[:, 1].tolist()}
        out["fractions"] = 1
        out["objectives"] = OBJECTIVES
        out["engine"] = f"pyRadPlan {pyRadPlan.__version__}"
        out["photon"] = {"machine": "photons Generic", "gantry_angles": photon_gantry(self.photon_beams),
                         "couch_angles": [0.0] * self.photon_beams, "bixel_width_mm": self.photon_bixel_mm}
        out["proton"] = {"machine": "protons Generic", "gantry_angles": list(PROTON_GANTRY),
                         "couch_angles": [0.0, 0.0], "spot_spacing_mm": self.proton_spot_mm,
                         "energy_layers": "every machine energy with its Bragg peak inside the PTV along the ray"}
        return out


SYNTHRAD_RX_GY = {"B": 2.0, "P": 3.0}   # SynthRAD2023 dose_metrics.py: prescribed_doses = {'B': 2.0, 'P': 3.0}
GAMMA_CUTOFF_RULE = "matRad: 2 % of each dose's own maximum, on either dose, inside the body"


def rx_for_case(case: str, rx_gy: float | None) -> tuple[float, str]:
    """(Rx in Gy per fraction, where it came from): the given Rx, else SynthRAD's by the region letter (the
    second character of a SynthRAD case id: 1PA001 pelvis 3 Gy, 1BA001 brain 2 Gy)."""
    from dgcf_auto.errors import DGCFError

    if rx_gy is not None:
        return float(rx_gy), "given"
    if len(case) >= 2 and case[0].isdigit() and case[1].upper() in SYNTHRAD_RX_GY:
        return SYNTHRAD_RX_GY[case[1].upper()], f"SynthRAD region letter {case[1].upper()}"
    raise DGCFError(f"case {case}: no SynthRAD region letter in the case id (1B... brain 2 Gy, 1P... pelvis 3 Gy) "
                    f"to set the prescription; give it with --rx")


def read_hlut(path) -> tuple[tuple[float, float], ...]:
    """A HU-to-relative-density table: CSV rows `HU,density` (a header line is allowed), HU increasing."""
    from dgcf_auto.errors import DGCFError

    try:
        rows = np.loadtxt(path, delimiter=",", ndmin=2, comments="#",
                          skiprows=0 if _first_is_number(path) else 1)
    except (OSError, ValueError) as exc:
        raise DGCFError(f"HU table {path}: cannot read two numeric columns HU,density ({exc})") from None
    if rows.shape[1] != 2 or rows.shape[0] < 2 or not np.all(np.diff(rows[:, 0]) > 0) or \
            not np.isfinite(rows).all() or (rows[:, 1] < 0).any():
        raise DGCFError(f"HU table {path}: expected at least two rows HU,density with HU increasing and "
                        "densities >= 0")
    return tuple((float(hu), float(rho)) for hu, rho in rows)


def _first_is_number(path) -> bool:
    with open(path) as handle:
        first = handle.readline().split(",")[0].strip()
    try:
        float(first)
        return True
    except ValueError:
        return False


def photon_gantry(n: int) -> list[float]:
    return [float(a) for a in np.linspace(0.0, 360.0, int(n), endpoint=False)]


@dataclass
class PlanningCase:
    """CT, sCT and structures of one case in the planning frame (arrays z, y, x)."""
    ct: sitk.Image
    ptv: np.ndarray
    oars: dict[str, np.ndarray]
    body: np.ndarray
    extra: dict = field(default_factory=dict)


def planning_frame(image: sitk.Image, reference: sitk.Image | None = None, label: bool = False) -> sitk.Image:
    """`image` (on the grid of `reference`, default its own) in the reference's axis-aligned LPS frame.

    Flipped or permuted axes are reoriented voxel for voxel (sitk.DICOMOrient, exact); a rotated grid is
    resampled (linear, or nearest for labels) onto `_axis_aligned_grid`."""
    reference = reference if reference is not None else image
    oriented = sitk.DICOMOrient(image, "LPS")
    if np.allclose(oriented.GetDirection(), np.eye(3).ravel(), atol=1e-6):
        return oriented
    interp = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    return sitk.Resample(image, _axis_aligned_grid(reference), sitk.Transform(), interp, 0.0 if label else -1000.0,
                         image.GetPixelID())


def _axis_aligned_grid(image: sitk.Image) -> sitk.Image:
    """An identity-direction grid of the same spacing covering every voxel centre of a rotated image."""
    size = np.array(image.GetSize())
    corners = np.array([image.TransformIndexToPhysicalPoint([int(c) for c in (i, j, k)])
                        for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)])
    spacing = np.array(image.GetSpacing())
    low, high = corners.min(axis=0), corners.max(axis=0)
    grid = sitk.Image([int(n) for n in np.floor((high - low) / spacing + 1e-6) + 1], sitk.sitkUInt8)
    grid.SetSpacing(tuple(spacing))
    grid.SetOrigin(tuple(low))
    return grid


def masks_to_image(masks: dict[str, np.ndarray], reference: sitk.Image) -> sitk.Image:
    """Bit-coded label image: bit i set where masks[i] holds (structures overlap, e.g. PTV and rectum)."""
    codes = np.zeros(next(iter(masks.values())).shape, np.uint32)
    for bit, mask in enumerate(masks.values()):
        codes[mask] |= np.uint32(1 << bit)
    image = sitk.GetImageFromArray(codes)
    image.CopyInformation(reference)
    return image


def image_to_masks(image: sitk.Image, names) -> dict[str, np.ndarray]:
    codes = sitk.GetArrayFromImage(image).astype(np.uint32)
    return {name: (codes & np.uint32(1 << bit)) > 0 for bit, name in enumerate(names)}


def _quiet_pyradplan():
    """pyRadPlan draws its own tqdm bars and warns about defaults we rely on (engine, generator); our bars are per
    case and stage."""
    from pyRadPlan.core._progress import ProgressReporter

    ProgressReporter.console_progress = False
    logging.getLogger("pyRadPlan").setLevel(logging.ERROR)


def _pyradplan_ct(image: sitk.Image):
    from pyRadPlan import CT

    return CT(cube_hu=sitk.Cast(image, sitk.sitkFloat32))


def _structure_set(ct, case: PlanningCase, rx: float, with_objectives: bool = True):
    from pyRadPlan.cst import StructureSet, create_voi
    from pyRadPlan.optimization.objectives import SquaredDeviation, SquaredOverdosing

    def voi(name, kind, mask, objectives):
        image = sitk.GetImageFromArray(mask.astype(np.uint8))
        image.CopyInformation(case.ct)
        return create_voi(name=name, voi_type=kind, mask=image, ct_image=ct,
                          objectives=objectives if with_objectives else [])

    vois = [voi("PTV", "TARGET", case.ptv, [SquaredDeviation(priority=OBJECTIVES["target"]["priority"], d_ref=rx)])]
    vois += [voi(name, "OAR", mask, [SquaredOverdosing(priority=OBJECTIVES["oar"]["priority"], d_max=0.5 * rx)])
             for name, mask in case.oars.items()]
    vois.append(voi("BODY", "EXTERNAL", case.body,
                    [SquaredOverdosing(priority=OBJECTIVES["body"]["priority"], d_max=0.8 * rx)]))
    return StructureSet(vois=vois, ct_image=ct)


def _plan(modality: str, settings: DoseSettings, rx_gy: float):
    from pyRadPlan import IonPlan, PhotonPlan

    if modality == PHOTON:
        pln = PhotonPlan(machine="Generic")
        pln.prop_stf = {"gantry_angles": photon_gantry(settings.photon_beams),
                        "couch_angles": [0.0] * settings.photon_beams, "bixel_width": settings.photon_bixel_mm}
    elif modality == PROTON:
        pln = IonPlan(radiation_mode="protons", machine="Generic")
        pln.prop_stf = {"gantry_angles": list(PROTON_GANTRY), "couch_angles": [0.0, 0.0],
                        "bixel_width": settings.proton_spot_mm}
    else:
        raise ValueError(f"unknown modality {modality!r}")
    pln.num_of_fractions = 1
    pln.prescribed_dose = rx_gy
    g = settings.dose_grid_mm
    pln.prop_dose_calc = {"dose_grid": {"resolution": {"x": g, "y": g, "z": g}}, "hlut": settings.table()}
    pln.prop_opt = {"solver": "scipy", "max_iter": settings.max_iter}
    return pln


class Planner:
    """One case and modality: steering geometry from the CT, optimisation, forward dose on any HU image."""

    def __init__(self, case: PlanningCase, modality: str, settings: DoseSettings, rx_gy: float):
        from pyRadPlan import generate_stf

        _quiet_pyradplan()
        self.case, self.modality, self.settings, self.rx_gy = case, modality, settings, rx_gy
        self.pln = _plan(modality, settings, rx_gy)
        self.ct = _pyradplan_ct(case.ct)
        self.cst = _structure_set(self.ct, case, rx_gy)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.stf = generate_stf(self.ct, self.cst, self.pln)

    @property
    def num_bixels(self) -> int:
        return int(self.stf.total_number_of_bixels)

    def optimise(self) -> tuple[np.ndarray, sitk.Image]:
        """(weights, dose on the CT) of the optimised plan."""
        from pyRadPlan import calc_dose_influence, fluence_optimization

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dij = calc_dose_influence(self.ct, self.cst, self.stf, self.pln)
            weights = np.asarray(fluence_optimization(self.ct, self.cst, self.stf, dij, self.pln), np.float64)
            dose = dij.compute_result_dose_grid(weights)["physical_dose"]
        return weights, sitk.Cast(dose, sitk.sitkFloat32)

    def dose(self, hu_image: sitk.Image, weights: np.ndarray) -> sitk.Image:
        """Dose of the same plan (steering geometry and weights) on another HU image of the same grid."""
        from pyRadPlan import calc_dose_influence

        ct = _pyradplan_ct(hu_image)
        cst = _structure_set(ct, self.case, self.rx_gy, with_objectives=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dij = calc_dose_influence(ct, cst, self.stf, self.pln)
            dose = dij.compute_result_dose_grid(weights)["physical_dose"]
        return sitk.Cast(dose, sitk.sitkFloat32)
