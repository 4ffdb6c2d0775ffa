"""Synthetic pelvis-like phantoms in SynthRAD2023 format, for tests and the demo.

Each case is drawn from its own random stream: a body outline (subcutaneous fat around muscle), bladder,
prostate, rectum with wall, content and gas, pelvic bones and sacrum (cortical rim around marrow) and two
femoral heads, at realistic HU. From the same tissue map we simulate:

- an MR-like (T2-weighted) source whose contrast is *not* a monotone function of HU: air, gas and cortical
  bone are all dark, fat, fatty marrow and urine bright, muscle intermediate; a smooth multiplicative bias
  field and Rician noise; non-negative arbitrary units.
- a CBCT-like source: the CT with a global HU scale/offset, cupping (radial low-frequency shading), a few
  streaks from the femoral heads, and stronger, slightly correlated noise.

Anatomy is laid out in physical (LPS) space: anterior is -y, superior is +z. Cases differ in anatomy
(sizes, positions, bladder filling, gas) and in geometry (size, spacing, origin, and in some cases a
non-identity direction: an LPS->RAS axis flip that keeps the anatomy in place, or a small rotation).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from dgcf_auto.atomic import write_json
from dgcf_auto.errors import DGCFError
from dgcf_auto.imageio import write_image
from dgcf_auto.log import progress_bar

TASKS = {"mr2ct": ("1", "mr"), "cbct2ct": ("2", "cbct")}
BASE_SIZE = (96, 80, 24)  # (x, y, z) voxels at size_scale=1: small, so tests are fast

# Tissue labels of the phantom and their (CT HU, T2-MR intensity) centres; per-case jitter is added.
AIR, FAT, MUSCLE, BLADDER, PROSTATE, RECTAL_WALL, RECTAL_CONTENT, GAS, CORTEX, MARROW = range(10)
TISSUES = {
    AIR: ("air", -1000.0, 0.0),
    FAT: ("fat", -100.0, 800.0),
    MUSCLE: ("muscle", 50.0, 250.0),
    BLADDER: ("bladder", 10.0, 1000.0),
    PROSTATE: ("prostate", 40.0, 520.0),
    RECTAL_WALL: ("rectal wall", 45.0, 300.0),
    RECTAL_CONTENT: ("rectal content", 0.0, 420.0),
    GAS: ("gas", -900.0, 15.0),
    CORTEX: ("cortical bone", 1700.0, 30.0),
    MARROW: ("marrow", 300.0, 600.0),
}
# Structures for dose planning (`structures.nii.gz` + `structures.json`), drawn from the same tissue map.
# Femoral heads: the head spheres (LPS: +x is the patient's left).
STRUCTURES = {"prostate": 1, "bladder": 2, "rectum": 3, "femoral_head_right": 4, "femoral_head_left": 5}


def case_name(task: str, case_index: int) -> str:
    """SynthRAD2023 naming: task digit, P(elvis), centre A, 3-digit number: '1PA001', '2PA001'."""
    return f"{_task(task)[0]}PA{case_index + 1:03d}"


def make_example_case(rng: np.random.Generator, task: str, case_index: int = 0,
                      size_scale: float = 1.0) -> dict[str, sitk.Image]:
    """One phantom: {'source', 'ct', 'mask', 'labels', 'structures'} on one shared grid.

    'labels' is the tissue map (keys of TISSUES) the images were simulated from, for tests and checks;
    'structures' the planning structures (values of STRUCTURES); `case_index` picks the direction variant.
    """
    _, modality = _task(task)
    size = tuple(max(8, int(round(b * size_scale * rng.uniform(0.9, 1.1)))) for b in BASE_SIZE)
    in_plane = rng.uniform(0.9, 1.3)
    spacing = (in_plane, in_plane, rng.uniform(2.5, 3.0))
    labels, coords = _tissue_map(rng, size, spacing)

    ct = _simulate_ct(rng, labels)
    body = labels != AIR
    if modality == "mr":
        source = _simulate_mr(rng, labels, coords)
    else:
        source = _simulate_cbct(rng, ct, labels, coords)
    # SynthRAD masks are the body outline, dilated by a few voxels.
    mask = ndimage.binary_dilation(body, structure=np.ones((1, 5, 5), bool)).astype(np.uint8)

    origin = tuple(-0.5 * n * s + rng.uniform(-25, 25) for n, s in zip(size, spacing))
    images = {}
    for key, array in (("source", source), ("ct", ct), ("mask", mask), ("labels", labels),
                       ("structures", coords["structures"])):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        images[key] = _vary_direction(image, case_index, rng_angle=_angle(case_index))
    return images


def make_example_dataset(out_dir: str | os.PathLike, task: str = "mr2ct", n: int = 8, seed: int = 0,
                         size_scale: float = 1.0, progress: bool = False, structures: bool = True) -> list[str]:
    """Write `n` cases `<out_dir>/<case>/{mr|cbct,ct,mask}.nii.gz`; returns the case names.

    `structures`: also `<case>/structures.nii.gz` and its legend `structures.json` (STRUCTURES), which
    `dgcf_evaluate --dose` plans on.
    Case i depends only on (seed, i), so a larger n extends a smaller dataset without changing its cases.
    """
    _, modality = _task(task)
    out_dir = Path(out_dir)
    names = []
    for i in progress_bar(range(int(n)), desc="example cases", unit="case", disable=not progress):
        rng = np.random.default_rng([int(seed), i])
        images = make_example_case(rng, task, i, size_scale=size_scale)
        name = case_name(task, i)
        for key, file_stem in (("source", modality), ("ct", "ct"), ("mask", "mask")):
            write_image(images[key], out_dir / name / f"{file_stem}.nii.gz")
        if structures:
            write_image(images["structures"], out_dir / name / "structures.nii.gz")
            write_json(STRUCTURES, out_dir / name / "structures.json")
        names.append(name)
    return names


def write_example_dataset(dataset_id: int, task: str, n: int = 8, seed: int = 0, name: str | None = None,
                          size_scale: float = 1.0, overwrite: bool = False, structures: bool = True) -> Path:
    """`$DGCF_raw/Dataset<id>_<name>/` built atomically; refuses an existing folder unless `overwrite`."""
    if task not in TASKS:
        raise DGCFError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if n < 1:
        raise DGCFError(f"number of cases must be at least 1, got {n}")
    if not 0.1 <= size_scale <= 16:
        raise DGCFError(f"size scale must be between 0.1 and 16, got {size_scale}")
    from dgcf_auto.dataset.writing import atomic_dataset_folder, check_target_free

    name = name or ("ExampleMR" if task == "mr2ct" else "ExampleCBCT")
    target = check_target_free(dataset_id, name, overwrite)
    with atomic_dataset_folder(target) as tmp:
        make_example_dataset(tmp, task, n, seed, size_scale, progress=True, structures=structures)
        write_json({"name": target.name, "task": task, "source_modality": _task(task)[1], "num_cases": n,
                    "example": {"seed": seed, "size_scale": size_scale}}, tmp / "dataset.json")
    return target


def _task(task: str) -> tuple[str, str]:
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    return TASKS[task]


def _angle(case_index: int) -> float:
    # Deterministic per index so that any dataset with >= 4 cases holds both non-identity variants.
    return (4.0 + 2.0 * (case_index % 3)) * (1 if case_index % 2 else -1)


def _vary_direction(image: sitk.Image, case_index: int, rng_angle: float) -> sitk.Image:
    """Index 1 mod 4: stored RAS (axes flipped, anatomy unchanged); 3 mod 4: small in-plane rotation."""
    variant = case_index % 4
    if variant == 1:
        return sitk.DICOMOrient(image, "RAS")
    if variant == 3:
        a = np.deg2rad(rng_angle)
        c, s = np.cos(a), np.sin(a)
        image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    return image


def _tissue_map(rng: np.random.Generator, size, spacing) -> tuple[np.ndarray, dict]:
    """Label volume (z, y, x) and the normalised coordinates used to draw it."""
    nx, ny, nz = size
    # Physical coordinates (mm) about the volume centre, broadcastable (z, y, x).
    x = (np.arange(nx) - (nx - 1) / 2) * spacing[0]
    y = (np.arange(ny) - (ny - 1) / 2) * spacing[1]
    z = (np.arange(nz) - (nz - 1) / 2) * spacing[2]
    half_x, half_y = 0.5 * nx * spacing[0], 0.5 * ny * spacing[1]
    scale = min(half_x, half_y / 0.8) * rng.uniform(0.8, 0.9)   # body half-width in mm
    aspect = rng.uniform(0.68, 0.8)                             # body AP / LR
    cx, cy = rng.uniform(-0.04, 0.04, 2) * scale
    # float32 keeps the full-volume arithmetic below fast at large size_scale.
    u = ((x - cx) / scale).astype(np.float32)[None, None, :]
    v = ((y - cy) / scale).astype(np.float32)[None, :, None]
    t = (z / scale).astype(np.float32)[:, None, None]
    coords = {"u": u, "v": v, "t": t, "aspect": aspect}

    def ellipsoid(c, axes):
        q = ((u - c[0]) / axes[0]) ** 2 + ((v - c[1]) / axes[1]) ** 2
        return q + ((t - c[2]) / axes[2]) ** 2 if len(axes) == 3 else q + 0 * t

    # The pelvis is widest at the hips (t ~ -0.2) and narrows above and below.
    taper = 1 - 0.1 * (t + 0.2) ** 2
    body_r = ellipsoid((0, 0), (taper, aspect * taper))
    labels = np.full(body_r.shape, AIR, np.uint8)
    labels[body_r < 1] = FAT
    inner = 1 - rng.uniform(0.09, 0.18)                          # subcutaneous fat thickness
    labels[ellipsoid((0, 0), (inner * taper, (aspect * inner - 0.03) * taper)) < 1] = MUSCLE

    fill = rng.uniform(0.7, 1.2)                                  # bladder filling: a slightly squashed sphere
    labels[ellipsoid((rng.uniform(-0.05, 0.05), -0.33, 0.25), (0.28 * fill, 0.22 * fill, 0.25 * fill)) < 1] = BLADDER
    prostate = ellipsoid((0, -0.12 + rng.uniform(-0.03, 0.03), -0.3), (0.15, 0.11, 0.22) * rng.uniform(0.8, 1.2, 3))
    labels[prostate < 1] = PROSTATE

    # The rectum bends: backwards along the sacral curve going up, and a little from side to side.
    rect_c = (rng.uniform(-0.04, 0.04) + 0.05 * np.sin(3 * t + rng.uniform(0, 6)),
              rng.uniform(0.22, 0.3) + 0.12 * t * t)
    rect_r = rng.uniform(0.1, 0.14)
    labels[ellipsoid(rect_c, (rect_r, rect_r * 0.85)) < 1] = RECTAL_WALL
    lumen = ellipsoid(rect_c, (rect_r * 0.6, rect_r * 0.5)) < 1
    labels[lumen] = RECTAL_CONTENT
    # Gas floats anteriorly (patient supine) over a random stretch of the rectum.
    gas_t = np.sort(rng.uniform(-0.5, 0.6, 2))
    gas = lumen & (v < rect_c[1] + rng.uniform(-0.02, 0.03)) & (t > gas_t[0]) & (t < gas_t[1])
    labels[gas] = GAS

    cortex = rng.uniform(2.5, 3.5) / scale                       # cortical thickness, normalised units

    def bone(inside_outer, inside_inner):
        labels[inside_outer] = CORTEX
        labels[inside_inner] = MARROW

    def ellipsoid_bone(c, axes, where=True):
        bone((ellipsoid(c, axes) < 1) & where, (ellipsoid(c, tuple(a - cortex for a in axes)) < 1) & where)

    def capsule_bone(p1, p2, radius):
        """A round bone from p1 to p2 (u, v, t): femoral neck and shaft."""
        d = np.subtract(p2, p1, dtype=np.float32)
        q = (u - p1[0], v - p1[1], t - p1[2])
        s = np.clip((q[0] * d[0] + q[1] * d[1] + q[2] * d[2]) / float(d @ d), 0, 1)
        dist2 = (q[0] - s * d[0]) ** 2 + (q[1] - s * d[1]) ** 2 + (q[2] - s * d[2]) ** 2
        bone(dist2 < radius ** 2, dist2 < (radius - cortex) ** 2)

    heads = {}
    for side in (-1, 1):
        # Iliac wing: above the hip joint only, flaring outwards and backwards going up.
        ellipsoid_bone((side * (rng.uniform(0.5, 0.56) + 0.15 * (t + 0.3)), rng.uniform(0.0, 0.12) + 0.06 * t),
                       (0.09 + 0.05 * (t + 0.3), 0.3 * rng.uniform(0.85, 1.15)), where=t > -0.3)
        # Femoral head (a sphere), neck down and outwards to the shaft.
        r_head = rng.uniform(0.16, 0.2)
        head = (side * rng.uniform(0.5, 0.56), rng.uniform(-0.08, 0.02), rng.uniform(-0.35, -0.1))
        trochanter = (side * 0.72, head[1] + 0.04, head[2] - 0.3)
        capsule_bone(head, trochanter, 0.08)
        capsule_bone(trochanter, (side * 0.7, head[1] + 0.04, -2.0), 0.1)
        ellipsoid_bone(head, (r_head,) * 3)
        heads["femoral_head_right" if side < 0 else "femoral_head_left"] = ellipsoid(head, (r_head,) * 3) < 1
    # Sacrum: superior-posterior, following the sacral curve and narrowing downwards.
    sacrum_width = 0.24 * (0.5 + 0.5 * np.clip((t + 0.1) / 0.9, 0, 1))
    ellipsoid_bone((0, rng.uniform(0.55, 0.6) - 0.1 * (t - 0.45), 0.45), (sacrum_width, 0.09, 0.5))
    labels[body_r >= 1] = AIR                                     # nothing sticks out of the skin
    coords["structures"] = _structures(labels, heads)
    return labels, coords


def _structures(labels: np.ndarray, heads: dict[str, np.ndarray]) -> np.ndarray:
    """Planning structures (STRUCTURES values) from the tissue map: organs by tissue, heads by their spheres."""
    out = np.zeros(labels.shape, np.uint8)
    out[np.isin(labels, (RECTAL_WALL, RECTAL_CONTENT, GAS))] = STRUCTURES["rectum"]
    out[labels == BLADDER] = STRUCTURES["bladder"]
    out[labels == PROSTATE] = STRUCTURES["prostate"]
    for name, head in heads.items():
        out[head & (labels != AIR)] = STRUCTURES[name]
    return out


def _tissue_values(rng: np.random.Generator, column: int, jitter: float) -> np.ndarray:
    values = np.array([TISSUES[k][column] for k in range(len(TISSUES))])
    return values * (1 + rng.uniform(-jitter, jitter, values.shape))


def _simulate_ct(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    hu = _tissue_values(rng, 1, 0.08)
    hu[AIR] = -1000.0
    ct = hu[labels].astype(np.float32)
    ct = ndimage.gaussian_filter(ct, sigma=(0.3, 0.6, 0.6))      # partial volume at edges
    ct += 8.0 * rng.standard_normal(ct.shape, dtype=np.float32)
    return np.clip(np.rint(ct), -1024, 3071).astype(np.int16)


def _simulate_mr(rng: np.random.Generator, labels: np.ndarray, coords: dict) -> np.ndarray:
    signal = _tissue_values(rng, 2, 0.1)
    signal[AIR] = 0.0
    mr = ndimage.gaussian_filter(signal[labels].astype(np.float32), sigma=(0.4, 0.8, 0.8))
    u, v, t = coords["u"], coords["v"], coords["t"]
    a = rng.normal(0, 0.15, 6)
    bias = np.exp(a[0] * u + a[1] * v + a[2] * t + a[3] * u * u + a[4] * v * v + a[5] * u * v)
    mr = mr * bias.astype(np.float32)  # broadcasts to the volume
    sigma = 0.02 * float(signal.max())
    # Rician noise: magnitude of a complex signal with Gaussian noise on both channels.
    real = mr + sigma * rng.standard_normal(mr.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(mr.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag, dtype=np.float32)


def _simulate_cbct(rng: np.random.Generator, ct: np.ndarray, labels: np.ndarray, coords: dict) -> np.ndarray:
    u, v, t = coords["u"], coords["v"], coords["t"]
    cbct = ct.astype(np.float32) * rng.uniform(0.9, 1.05) + rng.uniform(-60, 40)
    body = labels != AIR
    radial = u * u + (v / coords["aspect"]) ** 2
    cbct -= (rng.uniform(40, 100) * np.clip(1 - radial, 0, 1) * body).astype(np.float32)  # cupping
    streaks = np.zeros(np.broadcast_shapes(u.shape, v.shape), np.float32)
    for _ in range(int(rng.integers(2, 5))):
        theta = rng.uniform(0, np.pi)
        side = rng.choice([-1, 1])
        # Lines through a femoral head region: distance of each (u, v) to the line.
        distance = np.abs((u - side * 0.53) * np.sin(theta) - (v + 0.03) * np.cos(theta))
        streaks += rng.choice([-1, 1]) * rng.uniform(40, 120) * np.exp(-(distance / 0.03) ** 2)
    weight = np.exp(-((t + 0.22) / 0.25) ** 2)                  # strongest at the femoral heads
    cbct += (streaks * weight).astype(np.float32)
    noise = ndimage.gaussian_filter(rng.standard_normal(cbct.shape, dtype=np.float32), sigma=(0, 0.7, 0.7))
    cbct += (noise / noise.std() * rng.uniform(15, 35)).astype(np.float32)
    return np.clip(np.rint(cbct), -1024, 3071).astype(np.int16)
