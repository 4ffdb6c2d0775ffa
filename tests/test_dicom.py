"""DICOM in and out (dgcf_auto.dicomio): exact round trips, every series defect as one line, DICOM folders in
case discovery, conversion and evaluation, and the CT series writer's UIDs and attributes."""
from __future__ import annotations

import functools
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dgcf_auto import dicomio
from dgcf_auto.dataset.example import make_example_case
from model_fixtures import assert_same_image, assert_valid_dicom
from dgcf_auto.errors import DGCFError


@functools.lru_cache(maxsize=None)
def _case(index: int = 3):
    """A phantom whose grid has a non-identity (rotated) direction for index 3 (made once; never modified:
    tests copy the images before changing their geometry)."""
    return make_example_case(np.random.default_rng(index), "mr2ct", index)


def _int16(image: sitk.Image) -> sitk.Image:
    return sitk.Cast(sitk.Round(image) if image.GetPixelID() == sitk.sitkFloat32 else image, sitk.sitkInt16)


def _write(image, folder, modality="MR", **kwargs) -> Path:
    """Write a series with dicomio and check the output with dciodvfy (every DICOM test does)."""
    out = dicomio.write_ct_series(_int16(image), folder, modality=modality, **kwargs)
    assert_valid_dicom(out)
    return out


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
    ("missing", "1 missing slice(s) between z="),
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
    assert "2 image series; choose one with --series_uid" in text and "\n" not in text
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
                       f"{pydicom.dcmread(_files(folder / 'mr')[0]).SeriesInstanceUID} has 1 missing slice(s) "
                       f"between z={float(pydicom.dcmread(_files(folder / 'mr')[3]).ImagePositionPatient[2]):.6g} "
                       f"and z={float(pydicom.dcmread(_files(folder / 'mr')[4]).ImagePositionPatient[2]):.6g} mm "
                       f"(slice spacing {2.906635119600136:.4g} mm)")
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
    assert_valid_dicom(tmp_path / "pred_dicom" / "1PA004")
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
    assert_valid_dicom(out)
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


# ------------------------------------------------------------------------ DICOM as a planning system needs it
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"


def _enhanced_mr(path: Path, image: sitk.Image, geometry: bool = True, slope: float = 1.0,
                 intercept: float = 0.0) -> Path:
    """`image` (int16) as one Enhanced MR multi-frame file, frames stored top slice first (reverse order), with
    a SliceThickness (5 mm) that is not the frame spacing. `geometry=False`: no plane position, orientation or
    pixel spacing anywhere (what a broken export writes)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    voxels = sitk.GetArrayFromImage(image).astype(np.int16)[::-1]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ENHANCED_MR_STORAGE, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = ENHANCED_MR_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "MR", generate_uid(), generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.NumberOfFrames, (ds.Rows, ds.Columns) = voxels.shape[0], voxels.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SliceThickness = "5"
    ds.PixelData = voxels.tobytes()
    if geometry:
        direction = np.array(image.GetDirection()).reshape(3, 3)
        shared, measures, orientation, transform = pydicom.Dataset(), pydicom.Dataset(), pydicom.Dataset(), \
            pydicom.Dataset()
        measures.PixelSpacing = [f"{image.GetSpacing()[1]:.10g}", f"{image.GetSpacing()[0]:.10g}"]
        measures.SliceThickness = "5"
        orientation.ImageOrientationPatient = [f"{v:.10g}" for v in [*direction[:, 0], *direction[:, 1]]]
        transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = f"{slope}", f"{intercept}", "US"
        shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [measures], [orientation]
        shared.PixelValueTransformationSequence = [transform]
        ds.SharedFunctionalGroupsSequence = [shared]
        frames = []
        for k in reversed(range(image.GetSize()[2])):
            frame, position = pydicom.Dataset(), pydicom.Dataset()
            position.ImagePositionPatient = [f"{v:.10g}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))]
            frame.PlanePositionSequence = [position]
            frames.append(frame)
        ds.PerFrameFunctionalGroupsSequence = frames
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_enhanced_multiframe_without_per_frame_geometry_is_refused(tmp_path):
    _enhanced_mr(tmp_path / "mf" / "MR.dcm", _int16(_case(0)["source"]), geometry=False)
    with pytest.raises(DGCFError) as info:
        dicomio.read_series(tmp_path / "mf", "1PA001")
    text = str(info.value)
    assert "\n" not in text and text.startswith("case 1PA001: folder mf/: series ")
    assert text.endswith("is a multi-frame object without per-frame geometry (no PlanePositionSequence, "
                         "PlaneOrientationSequence, PixelMeasuresSequence); cannot place its frames")


def test_enhanced_multiframe_spacing_comes_from_frame_positions(tmp_path):
    mr = _int16(_case(3)["source"])  # rotated grid, 2.547 mm between frames, SliceThickness 5 mm
    _enhanced_mr(tmp_path / "mf" / "MR.dcm", mr, slope=2.0, intercept=-100.0)
    series = dicomio.open_series(tmp_path / "mf")
    back = dicomio.read_checked_series(series)
    expected = sitk.GetArrayFromImage(mr).astype(np.float64) * 2.0 - 100.0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), expected)
    for getter in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(back, getter)(), getattr(mr, getter)(), rtol=0, atol=1e-6)
    header = dicomio.series_header(series)
    assert header.GetSize() == mr.GetSize()
    np.testing.assert_allclose(header.GetSpacing(), mr.GetSpacing(), rtol=0, atol=1e-6)
    # A frame left out is a missing slice, as in a single-frame series.
    ds = pydicom.dcmread(tmp_path / "mf" / "MR.dcm")
    del ds.PerFrameFunctionalGroupsSequence[7]
    ds.NumberOfFrames = len(ds.PerFrameFunctionalGroupsSequence)
    ds.PixelData = np.delete(ds.pixel_array, 7, axis=0).tobytes()
    ds.save_as(tmp_path / "mf" / "MR.dcm")
    with pytest.raises(DGCFError, match=r"has 1 missing slice\(s\) between z="):
        dicomio.read_series(tmp_path / "mf")
    # The sCT written from a multi-frame source is a valid CT series on the source's grid.
    hu = sitk.Cast(back, sitk.sitkInt16)
    out = dicomio.write_ct_series(hu, tmp_path / "sct", series)
    assert_valid_dicom(out)
    assert_same_image(dicomio.read_series(out), hu, atol=1e-6)
    assert pydicom.dcmread(_files(out)[0]).FrameOfReferenceUID == series.headers[0].FrameOfReferenceUID


def _source_series(tmp_path: Path, index: int = 0, **values) -> dicomio.Series:
    """A written MR series whose files then get `values` (e.g. an invalid PatientAge), opened."""
    _write(_case(index)["source"], tmp_path / "mr")
    for path in _files(tmp_path / "mr"):
        _edit(path, **values)
    return dicomio.open_series(tmp_path / "mr")


def _sct_for(series: dicomio.Series, index: int = 0) -> sitk.Image:
    hu = sitk.Cast(_case(index)["ct"], sitk.sitkInt16)
    hu.CopyInformation(dicomio.read_checked_series(series))
    return hu


def test_values_invalid_for_their_vr_are_repaired_or_dropped_and_said_once(tmp_path, capsys):
    series = _source_series(tmp_path, PatientAge="0Y", PatientBirthDate="19801345", StudyTime="256000",
                            PatientSex="female", StudyID="Pelvis planning study 2")
    notes = []
    out = dicomio.write_ct_series(_sct_for(series), tmp_path / "sct", series, notify=notes.append)
    assert_valid_dicom(out)
    first = pydicom.dcmread(_files(out)[0])
    assert first.PatientAge == "000Y"  # repaired: three digits
    assert (first.PatientBirthDate, first.PatientSex, first.StudyID) == ("", "", "")  # type 2: emptied
    assert "StudyTime" not in first or first.StudyTime != "256000"
    assert len(notes) == 1  # once per series, not once per slice
    assert notes[0] == (f"series {series.uid}: values invalid for their VR not copied into the sCT: "
                        "PatientBirthDate '19801345' dropped, PatientSex 'female' dropped, "
                        "PatientAge '0Y' repaired to '000Y', StudyTime '256000' dropped, "
                        "StudyID 'Pelvis planning study 2' dropped")


def test_source_without_frame_of_reference_is_refused_unless_asked_for_a_new_one(tmp_path):
    series = _source_series(tmp_path)
    for path in _files(tmp_path / "mr"):
        ds = pydicom.dcmread(path)
        del ds.FrameOfReferenceUID
        ds.save_as(path)
    series = dicomio.open_series(tmp_path / "mr")
    with pytest.raises(DGCFError) as info:
        dicomio.write_ct_series(_sct_for(series), tmp_path / "sct", series)
    assert str(info.value) == (f"source series {series.uid} has no Frame of Reference UID: its sCT would not "
                               f"register with anything; give --new_frame_of_reference to write a new one "
                               f"derived from the source series")
    assert not (tmp_path / "sct").exists()
    notes, uids = [], []
    for run in ("a", "b"):  # two runs: the same UID
        out = dicomio.write_ct_series(_sct_for(series), tmp_path / run, series, new_frame_of_reference=True,
                                      uid_prefix="1.2.999.", notify=notes.append)
        assert_valid_dicom(out)
        uids.append({pydicom.dcmread(f).FrameOfReferenceUID for f in _files(out)})
    assert uids[0] == uids[1] and len(uids[0]) == 1
    uid = uids[0].pop()
    assert uid.startswith("1.2.999.") and uid != series.uid
    assert notes == [f"series {series.uid} has no Frame of Reference UID: wrote the new Frame of Reference UID "
                     f"{uid} derived from it (--new_frame_of_reference)"] * 2
    other = _source_series(tmp_path / "other", 1)  # a source with its own UID keeps it despite the flag
    out = dicomio.write_ct_series(_sct_for(other, 1), tmp_path / "c", other, new_frame_of_reference=True,
                                  notify=notes.append)
    assert pydicom.dcmread(_files(out)[0]).FrameOfReferenceUID == other.headers[0].FrameOfReferenceUID
    for path in _files(tmp_path / "other" / "mr"):  # without it, another series gets another derived UID
        _edit(path, FrameOfReferenceUID="")
    other = dicomio.open_series(tmp_path / "other" / "mr")
    out = dicomio.write_ct_series(_sct_for(other, 1), tmp_path / "d", other, new_frame_of_reference=True,
                                  uid_prefix="1.2.999.", notify=notes.append)
    assert pydicom.dcmread(_files(out)[0]).FrameOfReferenceUID not in (uid, "")


def test_rtstruct_contours_on_images_missing_from_the_series_are_one_line(tmp_path):
    mr = _int16(_case(0)["source"])
    _write(mr, tmp_path / "mr")
    files = _files(tmp_path / "mr")
    frame = pydicom.dcmread(files[0]).FrameOfReferenceUID
    nz = mr.GetSize()[2]
    box = _box(9.5, 29.5, 7.5, 25.5)
    rs = _rtstruct_with_roi(tmp_path / "rs", mr, "Body", frame, [(k, box) for k in (2, 3, nz - 2, nz - 1)])
    ds = pydicom.dcmread(rs)  # each contour refers to the image it was drawn on
    for item, k in zip(ds.ROIContourSequence[0].ContourSequence, (2, 3, nz - 2, nz - 1)):
        image = pydicom.Dataset()
        image.ReferencedSOPClassUID = dicomio.MR_IMAGE_STORAGE
        image.ReferencedSOPInstanceUID = pydicom.dcmread(files[k]).SOPInstanceUID
        item.ContourImageSequence = [image]
    ds.save_as(rs)
    series = dicomio.open_series(tmp_path / "mr")
    mask = dicomio.roi_mask([rs], "Body", mr, "case X", frame, series)
    assert int(sitk.GetArrayFromImage(mask).sum()) == 4 * 360
    missing = pydicom.dcmread(files[-1]).SOPInstanceUID
    files[-1].unlink()  # the top slice is not exported: still a regular series, one slice shorter
    series = dicomio.open_series(tmp_path / "mr")
    shorter = dicomio.read_checked_series(series)
    with pytest.raises(DGCFError) as info:
        dicomio.roi_mask([rs], "Body", shorter, "case X", frame, series)
    assert str(info.value) == (f"case X: file RS.dcm: 1 contour(s) of ROI 'Body' lie on images that are not in "
                               f"the series (SOP Instance UID {missing}); export the whole series")
    # Without the series (a NIfTI source), the contour beyond the last slice is still one line, not dropped.
    with pytest.raises(DGCFError) as info:
        dicomio.roi_mask([rs], "Body", shorter, "case X", frame)
    assert str(info.value) == (f"case X: file RS.dcm: 1 contour(s) of ROI 'Body' lie outside the image's {nz - 1} "
                               f"slices (slice index {nz - 1}); export the whole series")


def _strip_preamble(path: Path) -> None:
    """Rewrite a DICOM file without its 128-byte preamble and 'DICM' marker (what some PACS exports hold)."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM"
    path.write_bytes(data[132:])


def test_files_without_preamble_are_read_and_other_files_still_ignored(tmp_path):
    from pydicom.data import get_testdata_file

    mr = _int16(_case(0)["source"])
    _write(mr, tmp_path / "mr")
    for path in _files(tmp_path / "mr"):
        _strip_preamble(path)
    (tmp_path / "mr" / "notes.txt").write_text("exported by PACS\n")
    sitk.WriteImage(mr, str(tmp_path / "mr" / "copy.nii.gz"))
    assert dicomio.is_dicom_folder(tmp_path / "mr")
    assert not dicomio.is_dicom_file(tmp_path / "mr" / "notes.txt")
    assert not dicomio.is_dicom_file(tmp_path / "mr" / "copy.nii.gz")
    assert_same_image(dicomio.read_series(tmp_path / "mr"), mr, atol=1e-9)
    # pydicom's rtstruct.dcm: no preamble and no file meta; an RTSTRUCT beside the series is found.
    shutil.copy(get_testdata_file("rtstruct.dcm"), tmp_path / "mr" / "rtstruct.dcm")
    assert dicomio.rtstruct_files([tmp_path / "mr"]) == [tmp_path / "mr" / "rtstruct.dcm"]
    assert dicomio.read_series(tmp_path / "mr").GetSize() == mr.GetSize()


def test_a_series_uid_that_matches_nothing_is_named_with_the_series_found(tmp_path):
    case = _case(0)
    _write(case["source"], tmp_path / "a", series_description="T2 axial")
    _write(case["source"], tmp_path / "b", series_description="T1 axial")
    folder = tmp_path / "mr"
    folder.mkdir()
    for sub in ("a", "b"):
        for path in _files(tmp_path / sub):
            shutil.move(path, folder / f"{sub}_{path.name}")
    uids = sorted({pydicom.dcmread(f).SeriesInstanceUID for f in folder.iterdir()})
    with pytest.raises(DGCFError) as info:
        dicomio.read_series(folder, "c1", series_uids=("1.2.3.999",))
    text = str(info.value)
    assert text.startswith("case c1: folder mr/: no series with --series_uid 1.2.3.999; series found: ")
    assert all(uid in text for uid in uids) and "\n" not in text
    # A bare DICOM folder with one image series given to dgcf_predict: a UID that is not its own is an error.
    from dgcf_auto.inference.sources import collect_inputs

    only = _write(case["source"], tmp_path / "only", series_description="T2 axial")
    with pytest.raises(DGCFError, match=r"^input .*only: no series with --series_uid 1\.2\.3\.999; series found: "
                                        r".*'T2 axial'"):
        collect_inputs(only, ("1.2.3.999",))
    # dgcf_convert_synthrad2023 --series-uid: the same line for its case folders.
    from dgcf_auto.dataset.convert import synthrad_cases

    _dicom_case_folder(tmp_path / "in", "1PA001", 0)
    with pytest.raises(DGCFError, match=r"^input folder .*in: no series with --series_uid 1\.2\.3\.999; "
                                        r"series found: .*\(MR, 22 slices\)"):
        synthrad_cases(tmp_path / "in", ("1.2.3.999",))


def test_a_short_series_with_a_removed_slice_is_a_missing_slice(tmp_path):
    mr = _int16(_case(0)["source"])[:, :, :4]  # 4 slices; the second is removed: gaps dz and 2 dz
    _write(mr, tmp_path / "mr")
    files = _files(tmp_path / "mr")
    z = [float(pydicom.dcmread(f).ImagePositionPatient[2]) for f in files]
    files[1].unlink()
    with pytest.raises(DGCFError) as info:
        dicomio.read_series(tmp_path / "mr")
    assert str(info.value).endswith(f"has 1 missing slice(s) between z={z[0]:.6g} and z={z[2]:.6g} mm "
                                    f"(slice spacing {mr.GetSpacing()[2]:.4g} mm)")


def _sagittal(image: sitk.Image) -> sitk.Image:
    """The same voxels on a sagittal grid: rows along +y (P), columns along -z (feet), slices along -x."""
    sagittal = sitk.Image(image)
    sagittal.SetDirection((0, 0, -1, 1, 0, 0, 0, -1, 0))
    sagittal.SetOrigin((30.0, -20.0, 55.0))
    return sagittal


def test_cosmetic_attributes_follow_the_source(tmp_path):
    mr = _int16(_case(0)["source"])
    _write(mr, tmp_path / "mr")
    files = _files(tmp_path / "mr")
    n = len(files)
    for k, path in enumerate(files):  # scanner habits: thickness != spacing, instance 1 at the top, lossy
        _edit(path, SliceThickness="3", InstanceNumber=n - k, LossyImageCompression="01",
              LossyImageCompressionRatio="8.5", LossyImageCompressionMethod="ISO_10918_1")
    series = dicomio.open_series(tmp_path / "mr")
    out = dicomio.write_ct_series(_sct_for(series), tmp_path / "sct", series)
    assert_valid_dicom(out)
    written = {pydicom.dcmread(f).SourceImageSequence[0].ReferencedSOPInstanceUID: pydicom.dcmread(f)
               for f in _files(out)}
    for header in series.headers:
        d = written[header.SOPInstanceUID]
        assert d.InstanceNumber == header.InstanceNumber
        assert d.SliceThickness == "3"
        assert (d.LossyImageCompression, d.LossyImageCompressionRatio, d.LossyImageCompressionMethod) == \
            ("01", 8.5, "ISO_10918_1")
    assert {d.ImageType[2] for d in written.values()} == {"AXIAL"}


def test_sagittal_series_slice_location_image_type_and_thickness_without_source(tmp_path):
    hu = _sagittal(_int16(_case(0)["ct"]))
    hu.SetSpacing((hu.GetSpacing()[0], hu.GetSpacing()[1], 4.49999980609519))  # float noise of a resampling
    out = dicomio.write_ct_series(hu, tmp_path / "sct")
    assert_valid_dicom(out)
    written = [pydicom.dcmread(f) for f in _files(out)]
    for d in written:
        assert float(d.SliceLocation) == pytest.approx(float(d.ImagePositionPatient[0]), abs=1e-9)  # x, in LPS
        assert list(d.ImageType) == ["DERIVED", "SECONDARY", "OTHER"]
    assert written[0].SliceThickness == "4.5"
    assert_same_image(dicomio.read_series(out), hu, atol=1e-6)


# Hand mutation this catches: DICOM PixelSpacing written (or read) as [x, y]: every other test pixel is square.
def test_dicom_round_trip_keeps_non_square_pixels(tmp_path):
    from dgcf_auto import dicomio

    array = (np.arange(5 * 30 * 40).reshape(5, 30, 40) % 2000 - 1000).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 1.2, 3.0))  # x (columns), y (rows), z
    image.SetOrigin((-10.0, 20.0, 5.0))
    dicomio.write_ct_series(image, tmp_path / "ct")
    files = sorted((tmp_path / "ct").glob("*.dcm"))
    first = pydicom.dcmread(files[0])
    # DICOM PixelSpacing is (row spacing, column spacing) = (y, x).
    assert [float(v) for v in first.PixelSpacing] == [1.2, 0.8]
    assert (first.Rows, first.Columns) == (30, 40)
    reader = sitk.ImageSeriesReader()  # GDCM's reading, independent of ours
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "ct")))
    gdcm = reader.Execute()
    np.testing.assert_allclose(gdcm.GetSpacing(), (0.8, 1.2, 3.0), atol=1e-6)
    ours = dicomio.read_series(tmp_path / "ct")
    np.testing.assert_allclose(ours.GetSpacing(), (0.8, 1.2, 3.0), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), array)
    np.testing.assert_allclose(dicomio.SeriesHeader(dicomio.open_series(tmp_path / "ct")).GetSpacing(),
                               (0.8, 1.2, 3.0), atol=1e-6)
