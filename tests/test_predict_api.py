"""dgcf_auto.predict: its real signature and docstring (import dgcf_auto stays light), keywords onto
PredictionOptions / OutputOptions, and mask= for every one-volume input (image, image file, case folder)."""
from __future__ import annotations

import inspect
import pydoc
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dgcf_auto.errors import DGCFError
from dgcf_auto.inference.options import OutputOptions, PredictionOptions, split_keywords
# the `trained` fixture is in conftest.py

ROOT = Path(__file__).resolve().parents[1]


def test_signature_and_help_show_the_parameters_and_import_stays_light():
    code = ("import sys, inspect, dgcf_auto\n"
            "names = list(inspect.signature(dgcf_auto.predict).parameters)\n"
            "print(' '.join(names))\n"
            "print('torch' in sys.modules, 'timm' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout.splitlines()
    names = out[0].split()
    assert names[:3] == ["input", "output", "model"]
    expected = {"mask", "options", "output_options", "predictor", "folds", "device", "tta", "precision",
                "batch_size", "mask_from", "output_format", "save_uncertainty", "save_probabilities",
                "dicom_uid_prefix", "new_frame_of_reference", "continue_prediction", "force", "max_voxels"}
    assert expected <= set(names)
    assert out[1] == "False False"  # looking at the signature loads no torch/timm

    import dgcf_auto

    parameters = inspect.signature(dgcf_auto.predict).parameters
    assert not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters.values())
    assert parameters["tta"].default is True and parameters["output_format"].default == ".nii.gz"
    text = pydoc.render_doc(dgcf_auto.predict, renderer=pydoc.plaintext)
    assert "mask" in text and "PredictionOptions keywords:" in text
    assert "precision (default 'auto')" in text and "save_uncertainty (default False)" in text


def test_keywords_map_onto_the_option_objects():
    base = PredictionOptions(tta=False, batch_size=3)
    prediction, output = split_keywords("predict", base, None, {"precision": "fp32", "output_format": "dicom"})
    assert prediction == PredictionOptions(tta=False, batch_size=3, precision="fp32")
    assert output == OutputOptions(output_format="dicom")
    with pytest.raises(TypeError, match="unexpected keyword argument 'tta_'"):
        split_keywords("predict", None, None, {"tta_": False})


def _half_mask(case: Path) -> sitk.Image:
    """The case's body mask with its upper half of rows removed: an sCT made with it is -1000 HU there."""
    mask = sitk.ReadImage(str(case / "mask.nii.gz"))
    array = sitk.GetArrayFromImage(mask)
    array[:, : array.shape[1] // 2] = 0
    half = sitk.GetImageFromArray(array)
    half.CopyInformation(mask)
    return half


def test_mask_is_taken_for_a_file_path_and_a_case_folder(trained, tmp_path):
    import dgcf_auto

    example = sorted(p for p in trained["raw"].iterdir() if p.is_dir())[0]
    case = tmp_path / "1PA001"  # a case folder holding only mr and mask (the example's also has structures)
    case.mkdir()
    for name in ("mr.nii.gz", "mask.nii.gz"):
        (case / name).symlink_to(example / name)
    half = _half_mask(case)
    sitk.WriteImage(half, str(tmp_path / "half.nii.gz"))
    common = dict(model=trained["model_folder"], folds=[0], device="cpu", tta=False, precision="fp32",
                  progress=False)
    from_image = dgcf_auto.predict(sitk.ReadImage(str(case / "mr.nii.gz")), mask=half, **common)
    outside = sitk.GetArrayViewFromImage(half) == 0
    inside = ~outside & (sitk.GetArrayViewFromImage(sitk.ReadImage(str(case / "mask.nii.gz"))) > 0)
    expected = sitk.GetArrayFromImage(from_image)
    assert (expected[outside] == -1000).all() and (expected[inside] != -1000).any()
    for source, mask in ((case / "mr.nii.gz", tmp_path / "half.nii.gz"), (str(case / "mr.nii.gz"), half),
                         (case, str(tmp_path / "half.nii.gz"))):
        sct = dgcf_auto.predict(source, mask=mask, **common)
        assert np.array_equal(sitk.GetArrayFromImage(sct), expected), (source, mask)
    written = dgcf_auto.predict(case / "mr.nii.gz", tmp_path / "out", mask=half, **common)
    assert [p.name for p in written] == ["mr.nii.gz"]
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(written[0]))), expected)


def test_mask_for_several_cases_or_with_mask_roi_is_one_error(trained, tmp_path):
    import dgcf_auto

    case = sorted(p for p in trained["raw"].iterdir() if p.is_dir())[0]
    with pytest.raises(DGCFError, match=r"holds 4 cases; mask= is for one volume"):
        dgcf_auto.predict(trained["raw"], model=trained["model_folder"], mask=case / "mask.nii.gz")
    with pytest.raises(DGCFError, match="either mask= or mask_roi="):
        dgcf_auto.predict(case / "mr.nii.gz", model=trained["model_folder"], mask=case / "mask.nii.gz",
                          mask_roi="BODY")
    with pytest.raises(DGCFError, match=r"mask .*nothere.nii.gz: no such file"):
        dgcf_auto.predict(case / "mr.nii.gz", model=trained["model_folder"], mask=tmp_path / "nothere.nii.gz")
