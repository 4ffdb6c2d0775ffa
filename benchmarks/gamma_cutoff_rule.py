"""The gamma pass rate under the former and the current low-dose cut-off rule, on one planned example case.

One pymedphys gamma map (2 %/2 mm global, every voxel) of the CT and sCT doses `dgcf_evaluate --dose` writes,
scored on two voxel sets inside the body:
  former: d_ct > 2 % of max(d_ct) or d_sct > 2 % of max(d_ct)
  current: d_ct > 2 % of max(d_ct) or d_sct > 2 % of max(d_sct)   (matRad_gammaIndex's doseIx)
Example case 1PA001 (mr2ct, seed 0); sCT = the CT smoothed (sigma 1.5 voxels) + 300 HU inside the body.

    python benchmarks/gamma_cutoff_rule.py photon
    python benchmarks/gamma_cutoff_rule.py proton
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pymedphys
import SimpleITK as sitk

from dgcf_auto.dataset.example import make_example_dataset
from dgcf_auto.evaluation.dose import metrics as dm


def main(modality: str) -> None:
    root = Path(tempfile.mkdtemp(prefix="gamma_cutoff_"))
    raw = root / "Dataset001_Cut"
    make_example_dataset(raw, "mr2ct", n=1, seed=0, size_scale=1.0)
    case = sorted(p for p in raw.iterdir() if p.is_dir() and (p / "ct.nii.gz").exists())[0]
    ct = sitk.ReadImage(str(case / "ct.nii.gz"), sitk.sitkFloat32)
    body = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "mask.nii.gz"))) > 0
    sct = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(ct, 1.5 * min(ct.GetSpacing())))
    sct[body] += 300.0
    sct_image = sitk.GetImageFromArray(np.clip(sct, -1024, 3071).astype(np.int16))
    sct_image.CopyInformation(ct)
    (root / "pred").mkdir()
    sitk.WriteImage(sct_image, str(root / "pred" / f"{case.name}.nii.gz"))
    subprocess.run(["dgcf_evaluate", "-ref", str(raw), "-pred", str(root / "pred"), "-o", str(root / "eval.json"),
                    "--dose", modality, "-q"], check=True, cwd=root)
    doses = root / "dose" / case.name
    dose_image = sitk.ReadImage(str(doses / f"dose_ct_{modality}.nii.gz"))
    d_ct = sitk.GetArrayFromImage(dose_image).astype(np.float64)
    d_sct = sitk.GetArrayFromImage(sitk.ReadImage(str(doses / f"dose_sct_{modality}.nii.gz"))).astype(np.float64)
    body = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(str(case / "mask.nii.gz")), dose_image,
                                                sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0
    axes = tuple(np.arange(n) * s for n, s in zip(d_ct.shape, reversed(dose_image.GetSpacing())))
    gamma = pymedphys.gamma(axes, d_ct, axes, d_sct, **{**dm.GAMMA, "lower_percent_dose_cutoff": -np.inf})
    cut = dm.MATRAD_CUTOFF_PERCENT / 100
    former = body & ((d_ct > cut * d_ct.max()) | (d_sct > cut * d_ct.max()))
    print(f"| rule | {modality} voxels scored | pass rate (%) |\n|---|---|---|")
    for name, chosen in (("former (sCT dose against the CT maximum)", former),
                         ("current (each dose against its own maximum)", dm.gamma_voxels(d_ct, d_sct, body))):
        print(f"| {name} | {int(chosen.sum())} | {100 * np.mean(gamma[chosen] < 1):.2f} |")
    print(f"\nCT dose max {d_ct.max():.3f} Gy, sCT dose max {d_sct.max():.3f} Gy, voxels that differ: "
          f"{int((former ^ dm.gamma_voxels(d_ct, d_sct, body)).sum())}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "photon")
