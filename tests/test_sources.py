"""inference/sources.py and the input checks: inputs that look valid but are not what they seem.

Case folders as -i, sources that must look like sources (label volumes, CT for MR, metres), voxels verified
on read (corrupt compressed .mha, headers declaring more than the file or the machine holds), and NaN/inf in
the reference at dgcf_evaluate.
"""
from __future__ import annotations

import gzip
import json
import shutil
import zlib

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from dgcf_auto.dataset.validation import check_image_file
from dgcf_auto.errors import DGCFError
from dgcf_auto.imageio import read_image
from test_prediction import _predict


def _first_case(trained):
    return trained["raw"] / sorted(d.name for d in trained["raw"].iterdir() if d.is_dir())[0]


def _err(capsys) -> str:
    return capsys.readouterr().err


def _one_case(tmp_path, trained, name="1PA001", source=None, spacing_scale=None, source_name="mr.nii.gz"):
    """tmp/<name>/{mr,ct,mask}.nii.gz copied from the first example case; `source` replaces mr.nii.gz's image."""
    original = _first_case(trained)
    folder = tmp_path / name
    folder.mkdir(parents=True)
    images = {role: sitk.ReadImage(str(original / f"{role}.nii.gz")) for role in ("mr", "ct", "mask")}
    if source is not None:
        images["mr"] = images[source] if isinstance(source, str) else source
    for role, image in images.items():
        if spacing_scale is not None:
            image = sitk.Image(image)
            image.SetSpacing([s * spacing_scale for s in image.GetSpacing()])
            image.SetOrigin([o * spacing_scale for o in image.GetOrigin()])
        sitk.WriteImage(image, str(folder / (source_name if role == "mr" else f"{role}.nii.gz")))
    return folder


# ---------------------------------------------------------------- observation 1: a case folder as -i

def test_a_case_folder_is_one_case_named_after_it_with_its_own_mask(trained, tmp_path):
    folder = _one_case(tmp_path, trained)
    mask = sitk.ReadImage(str(folder / "mask.nii.gz"))
    half = sitk.GetArrayFromImage(mask)
    half[: half.shape[0] // 2] = 0  # a mask unlike any derived one: the lower half of the body only
    assert half.any() and (sitk.GetArrayFromImage(mask)[: half.shape[0] // 2] > 0).any()
    edited = sitk.GetImageFromArray(half)
    edited.CopyInformation(mask)
    sitk.WriteImage(edited, str(folder / "mask.nii.gz"))

    out = tmp_path / "out"
    assert _predict(["-i", str(folder), "-o", str(out), "-device", "cpu", "--disable_tta"]) == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["1PA001.nii.gz"]
    sct = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "1PA001.nii.gz")))
    assert np.all(sct[half == 0] == -1000)  # outside the case's own mask, body included
    assert np.any(sct[half > 0] != -1000)

    import dgcf_auto

    image = dgcf_auto.predict(folder, model=trained["model_folder"], device="cpu", tta=False, progress=False)
    assert isinstance(image, sitk.Image)
    assert np.array_equal(np.round(sitk.GetArrayFromImage(image)).astype(np.int16), sct)


def test_ct_and_mask_files_are_never_sources_and_ambiguous_folders_are_one_line(trained, tmp_path, capsys):
    out = tmp_path / "out"
    folder = _one_case(tmp_path, trained)
    (folder / "mr.nii.gz").unlink()  # ct.nii.gz and mask.nii.gz only
    assert _predict(["-i", str(folder), "-o", str(out), "-device", "cpu"]) == 1
    err = _err(capsys)
    assert "ct.nii.gz" in err and "mask.nii.gz" in err and "not sources" in err and "Traceback" not in err
    assert _predict(["-i", str(folder / "ct.nii.gz"), "-o", str(out), "-device", "cpu"]) == 1
    assert "file ct.nii.gz: a case's CT, not a source" in _err(capsys)

    both = _one_case(tmp_path / "both", trained)
    shutil.copy(both / "mr.nii.gz", both / "cbct.nii.gz")  # two sources: the only ambiguous case folder
    assert _predict(["-i", str(both), "-o", str(out), "-device", "cpu"]) == 1
    err = _err(capsys)
    assert err.count("case 1PA001: files mr.nii.gz and cbct.nii.gz: both an MR and a CBCT source") == 1
    assert "Traceback" not in err
    assert not out.exists()


def test_example_case_folder_with_structures_is_one_case(trained, tmp_path, capsys):
    """dgcf_make_example_dataset's own case folders hold structures.nii.gz + .json; as -i each is one case."""
    case = _first_case(trained)
    assert (case / "structures.nii.gz").is_file() and (case / "structures.json").is_file()
    out = tmp_path / "out"
    assert _predict(["-i", str(case), "-o", str(out), "-device", "cpu", "--disable_tta", "-f", "0"]) == 0, _err(capsys)
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{case.name}.nii.gz"]


def test_clinic_case_folder_with_rtstruct_dicom_and_notes_is_one_case(trained, tmp_path, capsys):
    """An RTSTRUCT file, a DICOM sub-folder, JSON, a README and a loose image beside mr/mask/ct: one case whose
    sCT equals the clean folder's; the ignored entries are named in one line at --verbose."""
    from test_dicom import _rtstruct, _write

    clean = _one_case(tmp_path / "clean", trained)
    clinic = _one_case(tmp_path / "clinic", trained)
    _rtstruct(clinic)                                                       # clinic/RS.dcm
    _write(sitk.ReadImage(str(clinic / "ct.nii.gz")), clinic / "CT_DICOM", modality="CT")
    (clinic / "plan.json").write_text("{}")
    (clinic / "README").write_text("planning CT of 12 May")
    shutil.copy(clinic / "mr.nii.gz", clinic / "mr_t2_old.nii.gz")
    common = ["-device", "cpu", "--disable_tta", "-f", "0", "--precision", "fp32"]
    assert _predict(["-i", str(clean), "-o", str(tmp_path / "a"), *common]) == 0
    capsys.readouterr()
    assert _predict(["-i", str(clinic), "-o", str(tmp_path / "b"), *common, "--verbose"]) == 0
    lines = [line for line in _err(capsys).splitlines() if "ignored" in line]
    assert len(lines) == 1 and "one case; ignored 5 other entries: CT_DICOM/, README, RS.dcm, mr_t2_old.nii.gz, " \
        "plan.json" in lines[0]
    assert [p.name for p in (tmp_path / "b").glob("*.nii.gz")] == ["1PA001.nii.gz"]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a" / "1PA001.nii.gz"))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "b" / "1PA001.nii.gz"))))


# ---------------------------------------------------------------- observation 2: corrupt compressed .mha

def _compressed_mha(image: sitk.Image, path) -> tuple[bytes, int]:
    sitk.WriteImage(image, str(path), True)
    data = path.read_bytes()
    start = data.index(b"ElementDataFile = LOCAL\n") + len(b"ElementDataFile = LOCAL\n")
    return data, start


def test_bit_flips_in_a_compressed_mha_are_refused_everywhere(trained, tmp_path, capsys):
    folder = _one_case(tmp_path, trained)
    # int16, as scanners store MR: garbage voxels are then no NaN that would give the corruption away
    source = sitk.Cast(sitk.ReadImage(str(folder / "mr.nii.gz")), sitk.sitkInt16)
    (folder / "mr.nii.gz").unlink()
    data, start = _compressed_mha(source, folder / "mr.mha")
    middle = start + (len(data) - start) // 2
    flipped = bytearray(data)
    for i in range(middle, middle + 4):
        flipped[i] ^= 0xFF
    (folder / "mr.mha").write_bytes(bytes(flipped))

    _, problem = check_image_file(folder / "mr.mha", "case 1PA001: file mr.mha")
    assert problem is not None and problem.startswith("case 1PA001: file mr.mha: compressed voxel data is corrupt")
    with pytest.raises(DGCFError, match="case 1PA001: file mr.mha: compressed voxel data is corrupt"):
        read_image(folder / "mr.mha", "1PA001")
    out = tmp_path / "out"
    assert _predict(["-i", str(folder), "-o", str(out), "-device", "cpu"]) == 1
    assert "case 1PA001: file mr.mha: compressed voxel data is corrupt" in _err(capsys)
    assert not out.exists()


def test_mha_decompressing_to_another_size_than_declared_is_refused(tmp_path):
    image = sitk.GetImageFromArray(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6))
    data, start = _compressed_mha(image, tmp_path / "a.mha")
    header = data[:start].replace(b"DimSize = 6 5 4", b"DimSize = 6 5 5")
    assert header != data[:start]
    (tmp_path / "a.mha").write_bytes(header + data[start:])
    _, problem = check_image_file(tmp_path / "a.mha", "file a.mha")
    assert problem == "file a.mha: compressed voxel data decompresses to 240 bytes; the header declares 300"


# ------------------------------------------------- observation 3: spacing in metres, or 1e-6 (constant sCT)

def test_source_in_metres_or_micro_spacing_is_refused_and_force_goes_on(trained, tmp_path, capsys):
    # The training range, from the raw files (all axes, all cases), and this case's own spacing.
    spacings = [sitk.ReadImage(str(d / "mr.nii.gz")).GetSpacing() for d in trained["raw"].iterdir() if d.is_dir()]
    low, high = min(min(s) for s in spacings), max(max(s) for s in spacings)
    own = sitk.ReadImage(str(_first_case(trained) / "mr.nii.gz")).GetSpacing()
    out = tmp_path / "out"
    metres = _one_case(tmp_path / "m", trained, spacing_scale=1e-3)
    assert _predict(["-i", str(metres), "-o", str(out), "-device", "cpu"]) == 1
    line = _err(capsys).strip().splitlines()[-1]
    assert "case 1PA001: file mr.nii.gz: spacing" in line
    assert f"{low / (min(own) * 1e-3):.0f}x finer than the training range {low:.4g}-{high:.4g} mm; in metres?" in line
    micro = _one_case(tmp_path / "u", trained, spacing_scale=1e-6)
    assert _predict(["-i", str(micro), "-o", str(out), "-device", "cpu"]) == 1
    line = _err(capsys).strip().splitlines()[-1]
    assert "case 1PA001: file mr.nii.gz: spacing" in line and f"{low / (min(own) * 1e-6):.0f}x finer" in line
    assert "in metres?" not in line and not out.exists()

    coarse = _one_case(tmp_path / "c", trained, spacing_scale=20.0)
    assert _predict(["-i", str(coarse), "-o", str(out), "-device", "cpu", "--force", "--disable_tta"]) == 0
    assert "--force: case 1PA001" in _err(capsys)
    report = json.loads((out / "prediction_report.json").read_text())
    assert [f["case"] for f in report["forced"]] == ["1PA001"]
    assert f"{max(own) * 20 / high:.0f}x coarser than the training range" in report["forced"][0]["reason"]
    assert json.loads((out / "prediction_provenance.json").read_text())["forced"] == report["forced"]


# ---------------------------------------------------------------- observation 4: NaN/inf in the reference

@pytest.mark.parametrize("role", ["ct", "mask"])
def test_nan_or_inf_in_the_reference_is_not_evaluated(tmp_path, capsys, role):
    from dgcf_auto.cli import evaluate as evaluate_cli

    values = np.zeros((8, 20, 20), np.float32) + 40.0
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    for name in ("case1", "case2"):
        (ref / name).mkdir(parents=True)
        pred.mkdir(exist_ok=True)
        ct, mask = values.copy(), np.ones_like(values)
        if name == "case2":
            (ct if role == "ct" else mask)[2, 3, 4] = np.nan if role == "ct" else np.inf
        sitk.WriteImage(sitk.GetImageFromArray(ct), str(ref / name / "ct.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(mask), str(ref / name / "mask.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(values + 10), str(pred / f"{name}.nii.gz"))
    out = tmp_path / "summary.json"
    with pytest.raises(SystemExit) as exit_info:
        evaluate_cli.main(["-ref", str(ref), "-pred", str(pred), "-o", str(out)])
    err = _err(capsys)
    assert exit_info.value.code == 1 and "Traceback" not in err
    summary = json.loads(out.read_text())
    assert [r["case"] for r in summary["metric_per_case"]] == ["case1"]
    assert summary["metric_per_case"][0]["metrics"]["mae"] == pytest.approx(10.0)
    file = "ct.nii.gz" if role == "ct" else "mask.nii.gz"
    assert summary["not_evaluated"] == [{"case": "case2", "reason": f"case case2: file {file}: 1 NaN/inf voxels; "
                                                                   f"every voxel must be finite"}]


# ---------------------------------------------------------------- observation 5: headers declaring huge volumes

def test_header_declaring_more_than_the_file_or_cap_holds_is_refused_before_allocation(trained, tmp_path, capsys):
    header = nib.Nifti1Header()
    header.set_data_shape((30000, 30000, 30000))
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\0" * 4 + b"\0" * 3600
    nifti = tmp_path / "huge.nii.gz"
    nifti.write_bytes(gzip.compress(raw))
    assert nifti.stat().st_size < 4096
    _, problem = check_image_file(nifti, "file huge.nii.gz")
    assert problem is not None and problem.startswith("file huge.nii.gz: header declares 30000x30000x30000 voxels")
    with pytest.raises(DGCFError, match="header declares 30000x30000x30000 voxels"):
        read_image(nifti)
    (tmp_path / "huge.nii").write_bytes(raw)
    _, problem = check_image_file(tmp_path / "huge.nii", "file huge.nii")
    assert problem == (f"file huge.nii: header declares 30000x30000x30000 voxels ({2 * 30000 ** 3} bytes), more "
                       f"than the file's {len(raw) - 352} data bytes; it is truncated")

    body = zlib.compress(b"\0" * 2000)
    mha = tmp_path / "huge.mha"
    mha.write_bytes(b"ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
                    b"CompressedData = True\nCompressedDataSize = " + str(len(body)).encode() +
                    b"\nDimSize = 4000 4000 200\nElementSpacing = 1 1 1\nElementType = MET_SHORT\n"
                    b"ElementDataFile = LOCAL\n" + body)
    assert mha.stat().st_size < 300
    _, problem = check_image_file(mha, "file huge.mha")
    assert problem == (f"file huge.mha: header declares 4000x4000x200 voxels (6400000000 bytes), more than its "
                       f"{len(body)} compressed bytes can hold (at most {1032 * len(body)}); the file is corrupt")

    folder = _one_case(tmp_path / "cap", trained)
    size = sitk.ReadImage(str(folder / "mr.nii.gz")).GetSize()
    voxels = size[0] * size[1] * size[2]
    out = tmp_path / "out"
    assert _predict(["-i", str(folder), "-o", str(out), "-device", "cpu", "--max_voxels", str(voxels - 1)]) == 1
    err = _err(capsys)
    assert f"case 1PA001: file mr.nii.gz: header declares {'x'.join(map(str, size))} voxels, more than " \
           f"--max_voxels {voxels - 1}" in err and "Traceback" not in err and not out.exists()


# ---------------------------------------------------------------- observation 6: modality and label volumes

def test_ct_or_mask_given_as_mr_source_is_refused(trained, tmp_path, capsys):
    out = tmp_path / "out"
    ct_as_mr = _one_case(tmp_path / "ct", trained, source="ct")
    assert _predict(["-i", str(ct_as_mr), "-o", str(out), "-device", "cpu"]) == 1
    line = _err(capsys).strip().splitlines()[-1]
    assert line.startswith("dgcf_predict: error: case 1PA001: file mr.nii.gz: looks like a CT (")
    assert "HU-like air" in line and "the model was trained on MR" in line

    mask_as_mr = _one_case(tmp_path / "mask", trained, source="mask")
    assert _predict(["-i", str(mask_as_mr), "-o", str(out), "-device", "cpu"]) == 1
    line = _err(capsys).strip().splitlines()[-1]
    assert "case 1PA001: file mr.nii.gz: looks like a label or mask volume (2 distinct integer values" in line
    assert not out.exists()


def test_dicom_ct_series_is_refused_by_its_modality_tag(trained, tmp_path, capsys):
    from dgcf_auto.dicomio import write_ct_series

    original = _first_case(trained)
    mr = sitk.ReadImage(str(original / "mr.nii.gz"))
    out = tmp_path / "out"
    # MR-like intensities in a series tagged CT: the tag decides, before any intensity.
    write_ct_series(mr, tmp_path / "bare" / "series", modality="CT")
    assert _predict(["-i", str(tmp_path / "bare" / "series"), "-o", str(out), "-device", "cpu"]) == 1
    assert "case series: folder series/: DICOM Modality is CT; the model was trained on MR" in _err(capsys)
    write_ct_series(mr, tmp_path / "cases" / "P1" / "mr", modality="CT")
    assert _predict(["-i", str(tmp_path / "cases"), "-o", str(out), "-device", "cpu"]) == 1
    assert "case P1: folder mr/: DICOM Modality is CT; the model was trained on MR" in _err(capsys)


def test_mr_given_to_a_cbct_model_is_refused_by_intensity(tmp_path):
    from dgcf_auto.dataset.discovery import Case, find_cases
    from dgcf_auto.dataset.example import make_example_dataset
    from dgcf_auto.dataset.source_checks import source_problems
    from dgcf_auto.planning.fingerprint import extract_fingerprint
    from dgcf_auto.planning.planner import plan_source_signature

    make_example_dataset(tmp_path / "cbct", "cbct2ct", n=2, seed=5)
    cbct = find_cases(tmp_path / "cbct")
    signature = plan_source_signature(extract_fingerprint(cbct, progress=False))
    make_example_dataset(tmp_path / "mr", "mr2ct", n=1, seed=5)
    mr_case = find_cases(tmp_path / "mr")[0]
    mr = sitk.ReadImage(str(mr_case.source))
    background = sitk.GetArrayFromImage(mr)
    background[sitk.GetArrayFromImage(sitk.ReadImage(str(mr_case.mask))) == 0] = 0  # air is exactly 0, as often
    zeroed = sitk.GetImageFromArray(background)
    zeroed.CopyInformation(mr)
    sitk.WriteImage(zeroed, str(tmp_path / "mr_zero.nii.gz"))
    for source in (mr_case.source, tmp_path / "mr_zero.nii.gz"):
        problems = source_problems(Case(mr_case.name, "cbct", source), signature)
        assert len(problems) == 1 and "looks like MR (no value below 0" in problems[0]
        assert "the model was trained on CBCT" in problems[0]
    assert source_problems(cbct[0], signature) == []


def test_preprocessing_refuses_a_mask_given_as_source(tmp_path, monkeypatch):
    from model_fixtures import data_folders

    with data_folders(tmp_path):
        from dgcf_auto.dataset.example import write_example_dataset
        from dgcf_auto.errors import DGCFInputErrors
        from dgcf_auto.preprocessing.run import plan_and_preprocess

        raw = write_example_dataset(997, "mr2ct", n=3, seed=1)
        case = sorted(d for d in raw.iterdir() if d.is_dir())[1]
        shutil.copy(case / "mask.nii.gz", case / "mr.nii.gz")
        with pytest.raises(DGCFInputErrors) as info:
            plan_and_preprocess(997, num_processes=1, preprocess=False, progress=False)
        assert any(f"case {case.name}: file mr.nii.gz: looks like a label or mask volume" in p
                   for p in info.value.problems)
        summary = plan_and_preprocess(997, num_processes=1, preprocess=False, progress=False, force=True)
        assert [f["case"] for f in summary["forced"]] == [case.name]


def test_a_mask_covering_a_sliver_of_the_body_is_refused(trained, tmp_path, capsys):
    folder = _one_case(tmp_path, trained)
    mask = sitk.ReadImage(str(folder / "mask.nii.gz"))
    sliver = np.zeros(sitk.GetArrayViewFromImage(mask).shape, np.uint8)
    sliver[5, 20:24, 20:24] = 1
    edited = sitk.GetImageFromArray(sliver)
    edited.CopyInformation(mask)
    sitk.WriteImage(edited, str(folder / "mask.nii.gz"))
    # The training masks' smallest share of the volume, from the raw files.
    shares = [float(np.mean(sitk.GetArrayFromImage(sitk.ReadImage(str(d / "mask.nii.gz"))) > 0))
              for d in trained["raw"].iterdir() if d.is_dir()]
    out = tmp_path / "out"
    from dgcf_auto.dataset.discovery import read_case_folder
    from dgcf_auto.dataset.source_checks import source_problems
    from dgcf_auto.plans import source_signature

    # A fifth of the smallest training share is still a body mask, a twentieth is not (the limit is a tenth).
    for part, refused in ((5, False), (20, True)):
        smaller = sitk.GetArrayFromImage(sitk.ReadImage(str(_first_case(trained) / "mask.nii.gz"))).astype(np.uint8)
        smaller.reshape(-1)[np.flatnonzero(smaller)[int(min(shares) / part * smaller.size):]] = 0
        image = sitk.GetImageFromArray(smaller)
        image.CopyInformation(mask)
        sitk.WriteImage(image, str(tmp_path / f"part{part}.nii.gz"))
        case = read_case_folder(folder)
        case.mask = tmp_path / f"part{part}.nii.gz"
        problems = source_problems(case, source_signature(trained["plans"]))
        assert len(problems) == refused and all("the body mask covers" in p for p in problems)

    assert _predict(["-i", str(folder), "-o", str(out), "-device", "cpu"]) == 1
    line = _err(capsys).strip().splitlines()[-1]
    assert line.endswith(f"case 1PA001: file mask.nii.gz: the body mask covers {100 * 16 / sliver.size:.2g}% of "
                         f"the volume; the training masks covered {100 * min(shares):.2g}-{100 * max(shares):.2g}%")


def test_plans_without_a_source_signature_check_against_their_modality_and_spacing(trained):
    from dgcf_auto.dataset.discovery import Case
    from dgcf_auto.dataset.source_checks import source_problems
    from dgcf_auto.plans import source_signature

    old = {k: v for k, v in trained["plans"].items() if k != "source_signature"}  # plans written before source signatures
    expected = source_signature(old)
    spacing = old["configurations"]["2d"]["inplane_spacing"]
    assert expected == {"modality": "mr", "spacing_mm": [min(spacing), max(spacing)]}
    case = _first_case(trained)
    problems = source_problems(Case(case.name, "mr", case / "ct.nii.gz"), expected)
    assert len(problems) == 1 and problems[0].startswith(f"case {case.name}: file ct.nii.gz: looks like a CT (")
    assert problems[0].endswith("the model was trained on MR")
    assert source_problems(Case(case.name, "mr", case / "mr.nii.gz"), expected) == []
