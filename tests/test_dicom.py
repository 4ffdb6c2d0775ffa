"""DICOM in and out (dgcf_auto.dicomio): exact round trips, every series defect as one line, DICOM folders in
case discovery, conversion and evaluation, and the CT series writer's UIDs and attributes."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dgcf_auto import dicomio
from dgcf_auto.dataset.example import make_example_case
from model_fixtures import assert_same_image
from dgcf_auto.errors import DGCFError


def _case(index: int = 3):
    """A phantom whose grid has a non-identity (rotated) direction for index 3."""
    return make_example_case(np.random.default_rng(index), "mr2ct", index)


def _int16(image: sitk.Image) -> sitk.Image:
    return sitk.Cast(sitk.Round(image) if image.GetPixelID() == sitk.sitkFloat32 else image, sitk.sitkInt16)


def _write(image, folder, modality="MR", **kwargs) -> Path:
    return dicomio.write_ct_series(_int16(image), folder, modality=modality, **kwargs)


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm"))


def _rtstruct(folder: Path, study_uid: str = "1.2.3") -> Path:
    """A minimal RT Structure Set file (no contours): a non-image series."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "RTSTRUCT", generate_uid(), study_uid
    ds.SeriesDescription = "structures"
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / "RS.dcm", enforce_file_format=True)
    return folder / "RS.dcm"


def _edit(path: Path, **values) -> None:
    ds = pydicom.dcmread(path)
    for key, value in values.items():
        setattr(ds, key, value)
    ds.save_as(path)


def test_series_round_trip_keeps_voxels_and_geometry(tmp_path):
    mr = _int16(_case(3)["source"])
    _write(mr, tmp_path / "mr")
    back = dicomio.read_series(tmp_path / "mr")
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(mr))
    assert back.GetSize() == mr.GetSize()
    np.testing.assert_allclose(back.GetSpacing(), mr.GetSpacing(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(back.GetOrigin(), mr.GetOrigin(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(back.GetDirection(), mr.GetDirection(), rtol=0, atol=1e-9)
    header = dicomio.SeriesHeader(dicomio.open_series(tmp_path / "mr"))
    np.testing.assert_allclose(header.GetOrigin(), mr.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(header.GetSpacing(), mr.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(header.GetDirection(), mr.GetDirection(), atol=1e-9)


def test_slices_are_read_in_position_order_whatever_the_file_names(tmp_path):
    mr = _int16(_case(0)["source"])
    _write(mr, tmp_path / "mr")
    files = _files(tmp_path / "mr")
    for index, path in enumerate(files):  # reverse the names: file order no longer follows position
        path.rename(path.with_name(f"x{len(files) - index:04d}.dcm"))
    assert np.array_equal(sitk.GetArrayFromImage(dicomio.read_series(tmp_path / "mr")), sitk.GetArrayFromImage(mr))


@pytest.mark.parametrize("defect, message", [
    ("missing", "misses 1 slice(s)"),
    ("duplicate", "1 duplicate slice(s)"),
    ("nonuniform", "non-uniform slice spacing"),
    ("tilt", "gantry tilt of"),
    ("orientation", "mixes 2 slice orientations"),
    ("single", "has a single slice"),
])
def test_each_series_defect_is_one_line(tmp_path, defect, message):
    mr = _int16(_case(0)["source"])
    folder = tmp_path / "case" / "mr"
    _write(mr, folder)
    files = _files(folder)
    dz = mr.GetSpacing()[2]
    if defect == "missing":
        files[5].unlink()
    elif defect == "duplicate":
        shutil.copy(files[5], folder / "copy.dcm")
    elif defect == "nonuniform":
        for path in files[6:]:  # every slice above the 6th shifts by 40 % of a slice
            ds = pydicom.dcmread(path)
            ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1],
                                       float(ds.ImagePositionPatient[2]) + 0.4 * dz]
            ds.save_as(path)
    elif defect == "tilt":
        for k, path in enumerate(files):  # each slice shifted along y by tan(10 deg) * dz
            ds = pydicom.dcmread(path)
            ds.ImagePositionPatient = [ds.ImagePositionPatient[0],
                                       float(ds.ImagePositionPatient[1]) + k * dz * np.tan(np.radians(10)),
                                       ds.ImagePositionPatient[2]]
            ds.save_as(path)
    elif defect == "orientation":
        _edit(files[3], ImageOrientationPatient=[0, 1, 0, 1, 0, 0])
    elif defect == "single":
        for path in files[1:]:
            path.unlink()
    with pytest.raises(DGCFError) as info:
        dicomio.read_series(folder, "1PA001")
    text = str(info.value)
    assert message in text and "\n" not in text
    assert text.startswith("case 1PA001: folder mr/: series ")


def test_tilt_is_measured(tmp_path):
    mr = _int16(_case(0)["source"])
    _write(mr, tmp_path / "mr")
    dz = mr.GetSpacing()[2]
    for k, path in enumerate(_files(tmp_path / "mr")):
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0],
                                   float(ds.ImagePositionPatient[1]) + k * dz * np.tan(np.radians(12)),
                                   ds.ImagePositionPatient[2]]
        ds.save_as(path)
    with pytest.raises(DGCFError, match="gantry tilt of 12.00 degrees"):
        dicomio.read_series(tmp_path / "mr")


def test_several_series_are_listed_and_chosen_by_uid(tmp_path):
    case = _case(0)
    folder = tmp_path / "mr"
    _write(case["source"], tmp_path / "a", series_description="T2 axial")
    _write(case["source"] * 0.5, tmp_path / "b", series_description="T1 axial")
    folder.mkdir()
    for sub in ("a", "b"):
        for path in _files(tmp_path / sub):
            shutil.move(path, folder / f"{sub}_{path.name}")
    uids = {pydicom.dcmread(next(folder.glob(f"{s}_*"))).SeriesInstanceUID: s for s in ("a", "b")}
    with pytest.raises(DGCFError) as info:
        dicomio.read_series(folder, "c1")
    text = str(info.value)
    assert "2 image series; choose one with --series-uid" in text and "\n" not in text
    for uid in uids:
        assert f"{uid} " in text
    assert "'T2 axial' (MR, 22 slices)" in text and "'T1 axial' (MR, 22 slices)" in text
    uid_b = next(u for u, s in uids.items() if s == "b")
    chosen = dicomio.read_series(folder, "c1", series_uids=(uid_b,))
    expected = sitk.GetArrayFromImage(_int16(case["source"] * 0.5))
    assert np.array_equal(sitk.GetArrayFromImage(chosen), expected)


def test_rtstruct_alone_is_not_an_image_series_and_is_ignored_beside_one(tmp_path):
    _rtstruct(tmp_path / "rt")
    with pytest.raises(DGCFError, match=r"no image series, only .*\(RTSTRUCT, a RTSTRUCT object\)"):
        dicomio.read_series(tmp_path / "rt")
    _write(_case(0)["source"], tmp_path / "mr")
    rs = _rtstruct(tmp_path / "mr")
    assert dicomio.read_series(tmp_path / "mr").GetSize()[2] == 22  # the image series beside the RTSTRUCT
    with pytest.raises(DGCFError, match="is not an image series"):
        dicomio.read_series(tmp_path / "mr", series_uids=(pydicom.dcmread(rs).SeriesInstanceUID,))


def _dicom_case_folder(root: Path, name: str, index: int, ct_dicom: bool = False) -> Path:
    case = _case(index)
    folder = root / name
    _write(case["source"], folder / "mr")
    sitk.WriteImage(case["mask"], str(folder / "mask.nii.gz"))
    if ct_dicom:
        _write(case["ct"], folder / "ct", modality="CT")
    else:
        sitk.WriteImage(_int16(case["ct"]), str(folder / "ct.nii.gz"))
    return folder


def test_case_folders_with_dicom_are_discovered_validated_and_converted(tmp_path, monkeypatch):
    from dgcf_auto.dataset.convert import convert_synthrad2023
    from dgcf_auto.dataset.discovery import read_case_folder
    from dgcf_auto.dataset.validation import load_case, validate_case

    monkeypatch.setenv("DGCF_raw", str(tmp_path / "raw"))
    _dicom_case_folder(tmp_path / "in", "1PA001", 3, ct_dicom=True)
    _dicom_case_folder(tmp_path / "in", "1PA002", 1)
    case = read_case_folder(tmp_path / "in" / "1PA001")
    assert (case.modality, case.source.name, case.ct.name) == ("mr", "mr", "ct")
    assert validate_case(case) == []
    source, ct, mask = load_case(case)
    assert source.GetSize() == mask.GetSize() and ct.GetPixelID() == sitk.sitkInt16

    target = convert_synthrad2023(tmp_path / "in", 7, "Dicom", progress=False)
    converted = read_case_folder(target / "1PA001")
    assert converted.source.is_dir() and len(_files(converted.source)) == 25
    assert validate_case(converted) == []

    # Planning and preprocessing read the DICOM folders like NIfTI files.
    from dgcf_auto.preprocessing.run import plan_and_preprocess

    monkeypatch.setenv("DGCF_preprocessed", str(tmp_path / "pre"))
    summary = plan_and_preprocess(7, num_processes=1, progress=False, overrides={"patch_size": [32, 32]})
    slices = sorted((tmp_path / "pre").rglob("1PA001*.npy"))
    assert summary["plans"]["source_modality"] == "mr" and slices

    # A mask on another grid than the DICOM source is caught like for NIfTI.
    shifted = sitk.ReadImage(str(tmp_path / "in" / "1PA002" / "mask.nii.gz"))
    shifted.SetOrigin([v + 5 for v in shifted.GetOrigin()])
    sitk.WriteImage(shifted, str(tmp_path / "in" / "1PA002" / "mask.nii.gz"))
    problems = validate_case(read_case_folder(tmp_path / "in" / "1PA002"))
    assert len(problems) == 1 and problems[0].startswith("case 1PA002: file mask.nii.gz: grid does not match mr")


def test_a_broken_dicom_source_fails_conversion_with_one_line(tmp_path, monkeypatch, capsys):
    from dgcf_auto.cli.convert_synthrad2023 import main

    monkeypatch.setenv("DGCF_raw", str(tmp_path / "raw"))
    folder = _dicom_case_folder(tmp_path / "in", "1PA001", 0)
    _files(folder / "mr")[4].unlink()
    with pytest.raises(SystemExit) as info:
        main(["-i", str(tmp_path / "in"), "-d", "8"])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("dgcf_convert_synthrad2023: error: case 1PA001: folder mr/: series "
                       f"{pydicom.dcmread(_files(folder / 'mr')[0]).SeriesInstanceUID} misses 1 slice(s) "
                       f"(gap of {2 * 2.906635119600136:.3g} mm after position "
                       f"{float(pydicom.dcmread(_files(folder / 'mr')[3]).ImagePositionPatient[2]):.4g} mm, "
                       f"slice spacing {2.906635119600136:.3g} mm)")
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())


def test_evaluation_reads_a_dicom_reference_ct(tmp_path):
    from dgcf_auto.evaluation.evaluate import evaluate_folders

    case = _case(3)
    _dicom_case_folder(tmp_path / "ref", "1PA004", 3, ct_dicom=True)
    ct = _int16(case["ct"])
    sct = sitk.Cast(sitk.Cast(ct, sitk.sitkFloat32) + 10.0, sitk.sitkInt16)  # +10 HU everywhere
    (tmp_path / "pred").mkdir()
    sitk.WriteImage(sct, str(tmp_path / "pred" / "1PA004.nii.gz"))
    summary = evaluate_folders(tmp_path / "ref", tmp_path / "pred", tmp_path / "s.json")
    assert summary["metric_per_case"][0]["metrics"]["mae"] == pytest.approx(10.0, abs=1e-6)
    # The sCT as a DICOM series folder (dgcf_predict --output-format dicom) is evaluated the same way.
    dicomio.write_ct_series(sct, tmp_path / "pred_dicom" / "1PA004")
    summary = evaluate_folders(tmp_path / "ref", tmp_path / "pred_dicom", tmp_path / "s2.json")
    assert summary["metric_per_case"][0]["metrics"]["mae"] == pytest.approx(10.0, abs=1e-6)


def test_ct_series_writer_uids_attributes_and_exact_grid(tmp_path):
    case = _case(3)
    _write(case["source"], tmp_path / "mr", series_description="T2")
    for path in _files(tmp_path / "mr"):  # a source with real patient and study attributes
        _edit(path, PatientName="Doe^Jane", PatientID="P123", StudyDescription="Pelvis RT", PatientPosition="HFS")
    source = dicomio.open_series(tmp_path / "mr")
    source_image = dicomio.read_checked_series(source)
    hu = sitk.Cast(sitk.Cast(_int16(case["ct"]), sitk.sitkInt16), sitk.sitkInt16)
    hu.CopyInformation(source_image)
    prefix = "1.2.999.42."
    out = dicomio.write_ct_series(hu, tmp_path / "out" / "1PA001", source, uid_prefix=prefix,
                                  series_description="dgcf_auto sCT Dataset001 fold_0 checkpoint_final")
    files = _files(out)
    assert len(files) == hu.GetSize()[2] and not list((tmp_path / "out").glob(".*"))
    assert_same_image(dicomio.read_series(out), hu, atol=1e-9)
    written = [pydicom.dcmread(f) for f in files]
    first, src = written[0], source.headers[0]
    assert {d.SeriesInstanceUID for d in written} == {first.SeriesInstanceUID}
    assert first.SeriesInstanceUID != src.SeriesInstanceUID and first.SeriesInstanceUID.startswith(prefix)
    sops = {d.SOPInstanceUID for d in written}
    assert len(sops) == len(files) and all(s.startswith(prefix) for s in sops)
    assert sops.isdisjoint({h.SOPInstanceUID for h in source.headers})
    assert {d.StudyInstanceUID for d in written} == {src.StudyInstanceUID}
    assert {d.FrameOfReferenceUID for d in written} == {src.FrameOfReferenceUID}
    assert (first.PatientName, first.PatientID, first.StudyDescription, first.PatientPosition) == \
        ("Doe^Jane", "P123", "Pelvis RT", "HFS")
    assert first.Modality == "CT" and first.SOPClassUID == dicomio.CT_IMAGE_STORAGE
    assert list(first.ImageType[:2]) == ["DERIVED", "SECONDARY"]
    assert first.SeriesDescription == "dgcf_auto sCT Dataset001 fold_0 checkpoint_final"
    assert (float(first.RescaleSlope), float(first.RescaleIntercept)) == (1.0, 0.0)
    assert first.BitsAllocated == 16 and first.PixelRepresentation == 1
    for k, (d, h) in enumerate(zip(written, source.headers)):  # same slice positions as the source's files
        assert d.ImagePositionPatient == h.ImagePositionPatient
        assert d.SourceImageSequence[0].ReferencedSOPInstanceUID == h.SOPInstanceUID
        assert d.InstanceNumber == k + 1
    assert [float(v) for v in first.ImageOrientationPatient] == pytest.approx(
        [float(v) for v in src.ImageOrientationPatient], abs=1e-12)


def test_uid_prefix_is_checked():
    with pytest.raises(DGCFError, match="UID prefix"):
        dicomio.new_uid("1.2.abc.")
    assert dicomio.new_uid("1.2.3.").startswith("1.2.3.")


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools (dciodvfy) not installed")
def test_ct_series_validates_with_dciodvfy(tmp_path):
    case = _case(0)
    _write(case["source"], tmp_path / "mr")
    source = dicomio.open_series(tmp_path / "mr")
    hu = _int16(case["ct"])
    out = dicomio.write_ct_series(hu, tmp_path / "sct", source, series_description="dgcf_auto sCT test")
    for path in _files(out)[:3]:
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], "\n".join(errors)


def _rtstruct_with_roi(folder: Path, image: sitk.Image, name: str, frame_uid: str, contours) -> Path:
    """An RTSTRUCT whose ROI `name` has one CLOSED_PLANAR contour per (slice k, [(i, j), ...] index corners)."""
    path = _rtstruct(folder)
    ds = pydicom.dcmread(path)
    roi = pydicom.Dataset()
    roi.ROINumber, roi.ROIName = 7, name
    other = pydicom.Dataset()
    other.ROINumber, other.ROIName = 3, "PTV"
    ds.StructureSetROISequence = [other, roi]
    frame = pydicom.Dataset()
    frame.FrameOfReferenceUID = frame_uid
    ds.ReferencedFrameOfReferenceSequence = [frame]
    items = []
    for k, corners in contours:
        item = pydicom.Dataset()
        item.ContourGeometricType = "CLOSED_PLANAR"
        points = [image.TransformContinuousIndexToPhysicalPoint((float(i), float(j), float(k))) for i, j in corners]
        item.ContourData = [f"{v:.6f}" for p in points for v in p]
        item.NumberOfContourPoints = len(points)
        items.append(item)
    contour = pydicom.Dataset()
    contour.ReferencedROINumber = 7
    contour.ContourSequence = items
    ds.ROIContourSequence = [contour]
    ds.save_as(path)
    return path


def _box(x0, x1, y0, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def test_rtstruct_roi_is_rasterised_on_the_image_grid(tmp_path):
    mr = _int16(_case(3)["source"])  # rotated grid
    _write(mr, tmp_path / "mr")
    frame = pydicom.dcmread(_files(tmp_path / "mr")[0]).FrameOfReferenceUID
    # Corners on half-integer indices: voxel centres 10..29 x 8..25 are inside (20 x 18 = 360 voxels);
    # the nested box on slice 3 is a hole of 15..19 x 12..14 (5 x 3 = 15 voxels).
    outer = _box(9.5, 29.5, 7.5, 25.5)
    rs = _rtstruct_with_roi(tmp_path / "mr", mr, "Body", frame,
                            [(2, outer), (3, outer), (3, _box(14.5, 19.5, 11.5, 14.5)), (4, outer), (5, outer)])
    mask = dicomio.roi_mask([rs], "BODY", mr, "case X", frame)
    array = sitk.GetArrayFromImage(mask)
    assert int(array.sum()) == 4 * 360 - 15
    assert array[3, 12:15, 15:20].sum() == 0 and array[3, 8:26, 10:30].sum() == 345
    assert array[2, 8, 10] == 1 and array[2, 7, 10] == 0 and array[2, 8, 30] == 0 and array[1].sum() == 0
    assert mask.GetDirection() == mr.GetDirection() and mask.GetOrigin() == mr.GetOrigin()
    with pytest.raises(DGCFError, match=r"no RTSTRUCT ROI named 'Skin' \(ROIs found: Body, PTV\)"):
        dicomio.roi_mask([rs], "Skin", mr, "case X", frame)
    with pytest.raises(DGCFError, match="another frame of reference"):
        dicomio.roi_mask([rs], "Body", mr, "case X", "1.2.3.4")
