"""DICOM series in and out: every DICOM read and write of the package goes through here.

Reading: a folder of DICOM files (any names, no DICOMDIR needed) is grouped by Series Instance UID with
pydicom (headers only), one image series is chosen (`series_uids`, else the only one), its slices are
checked (missing or duplicate slices, non-uniform spacing, gantry tilt, mixed orientations, a non-image
series such as RTSTRUCT/RTPLAN) and the voxels are read with SimpleITK/GDCM in slice order, in LPS like
every other image of the package. `imageio.read_image` calls this for folders, so every command that reads
cases reads DICOM too.

Writing: `write_ct_series` writes an int16 HU volume as a CT Image Storage series, one file per slice, into
a temporary folder renamed into place. With a source series, the new series keeps its Study Instance UID,
Frame of Reference UID, patient and study attributes and its slice positions, so a planning system
registers the sCT with the source and its structures.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dgcf_auto.atomic import atomic_folder
from dgcf_auto.errors import DGCFError

# pydicom's own root (https://pydicom.github.io/pydicom/stable/guides/user/uid.html); override it with your
# organisation's root (--dicom-uid-prefix) for clinical use.
DEFAULT_UID_PREFIX = "1.2.826.0.1.3680043.8.498."
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
NON_IMAGE_MODALITIES = {"RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "RTIMAGE", "SR", "PR", "KO", "REG", "SEG",
                        "DOC", "PLAN", "FID"}
# Slice geometry tolerances: IPP/IOP are decimal strings that scanners round.
ORIENTATION_TOLERANCE = 1e-4
SPACING_TOLERANCE = 0.01      # relative deviation of one gap from the median gap
TILT_TOLERANCE_DEG = 0.1
# Copied from the source so the sCT files under the source's patient and study.
PATIENT_STUDY_TAGS = ("SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
                      "PatientSex", "PatientAge", "PatientSize", "PatientWeight", "StudyInstanceUID", "StudyDate",
                      "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
                      "FrameOfReferenceUID", "PositionReferenceIndicator", "PatientPosition")
_HEADER_TAGS = ("SeriesInstanceUID", "SeriesDescription", "Modality", "SOPClassUID", "SOPInstanceUID",
                "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns",
                "NumberOfFrames", "GantryDetectorTilt", "InstanceNumber") + PATIENT_STUDY_TAGS


def is_dicom_file(path: str | os.PathLike) -> bool:
    """A DICOM Part 10 file (the 'DICM' marker after the 128-byte preamble)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_folder(path: str | os.PathLike) -> bool:
    """A folder holding DICOM files directly (the first few non-hidden files are looked at)."""
    path = Path(path)
    if not path.is_dir():
        return False
    try:
        files = [f for f in sorted(path.iterdir())[:64] if f.is_file() and not f.name.startswith(".")]
    except OSError:
        return False
    return any(is_dicom_file(f) for f in files[:8])


@dataclass
class Series:
    """One series of a folder: its files (in slice order once checked) and their headers (no pixels)."""
    uid: str
    folder: Path
    files: list[Path] = field(default_factory=list)
    headers: list = field(default_factory=list)  # pydicom Datasets

    @property
    def modality(self) -> str:
        return str(getattr(self.headers[0], "Modality", "") or "").upper()

    @property
    def description(self) -> str:
        return str(getattr(self.headers[0], "SeriesDescription", "") or "")

    @property
    def is_image(self) -> bool:
        return self.modality not in NON_IMAGE_MODALITIES and "Rows" in self.headers[0]

    @property
    def multiframe(self) -> bool:
        return len(self.files) == 1 and int(getattr(self.headers[0], "NumberOfFrames", 1) or 1) > 1

    def summary(self) -> str:
        kind = f"{len(self.files)} slices" if self.is_image else f"a {self.modality or 'non-image'} object"
        desc = f" '{self.description}'" if self.description else ""
        return f"{self.uid}{desc} ({self.modality or '?'}, {kind})"


def scan_folder(folder: str | os.PathLike) -> dict[str, Series]:
    """Series of the DICOM files directly in `folder`, by Series Instance UID (headers only)."""
    import pydicom

    folder = Path(folder)
    series: dict[str, Series] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or not is_dicom_file(path):
            continue
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_HEADER_TAGS))
        except Exception:  # a damaged file: GDCM would fail on it later anyway
            raise DGCFError(f"file {path}: cannot be read as DICOM") from None
        uid = str(getattr(header, "SeriesInstanceUID", "") or "")
        if not uid:  # DICOMDIR and other non-instance files
            continue
        entry = series.setdefault(uid, Series(uid, folder))
        entry.files.append(path)
        entry.headers.append(header)
    return series


def select_series(folder: str | os.PathLike, where: str, series_uids=()) -> Series:
    """The folder's image series: the one whose UID is in `series_uids`, else the only image series."""
    folder = Path(folder)
    found = scan_folder(folder)
    if not found:
        raise DGCFError(f"{where}: the folder holds no DICOM files")
    chosen = [s for uid, s in found.items() if uid in set(series_uids or ())]
    if len(chosen) == 1:
        if not chosen[0].is_image:
            raise DGCFError(f"{where}: series {chosen[0].summary()} is not an image series; choose an image "
                            f"series with --series-uid")
        return chosen[0]
    images = [s for s in found.values() if s.is_image]
    if len(images) == 1:
        return images[0]
    if not images:
        listed = "; ".join(s.summary() for s in found.values())
        raise DGCFError(f"{where}: no image series, only {listed}; an RT object cannot be a source or CT")
    listed = "; ".join(s.summary() for s in images)
    raise DGCFError(f"{where}: {len(images)} image series; choose one with --series-uid: {listed}")


def check_series(series: Series, where: str) -> None:
    """Sort the slices along the slice normal and reject series that are not one regular 3D grid."""
    if series.multiframe:
        return  # an enhanced (multi-frame) object: GDCM reads its per-frame geometry itself
    headers = series.headers
    if len(headers) < 2:
        raise DGCFError(f"{where}: series {series.uid} has a single slice; expected a 3D volume")
    missing = [t for t in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing") if t not in headers[0]]
    if missing:
        raise DGCFError(f"{where}: series {series.uid} lacks {', '.join(missing)}; not a 3D image series")
    orientations = np.array([[float(v) for v in h.ImageOrientationPatient] for h in headers])
    if np.abs(orientations - orientations[0]).max() > ORIENTATION_TOLERANCE:
        kinds = len({tuple(np.round(o, 3)) for o in orientations})
        raise DGCFError(f"{where}: series {series.uid} mixes {kinds} slice orientations "
                        f"(ImageOrientationPatient); one volume needs one orientation")
    shapes = {(int(h.Rows), int(h.Columns), tuple(float(v) for v in h.PixelSpacing)) for h in headers}
    if len(shapes) > 1:
        raise DGCFError(f"{where}: series {series.uid} mixes slice sizes or pixel spacings "
                        f"({len(shapes)} kinds); one volume needs one")
    row, col = orientations[0][:3], orientations[0][3:]
    normal = np.cross(row, col)
    positions = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    series.files[:] = [series.files[i] for i in order]
    series.headers[:] = [headers[i] for i in order]
    positions, along = positions[order], along[order]

    gaps = np.diff(along)
    duplicates = int(np.count_nonzero(gaps < 1e-3))
    if duplicates:
        raise DGCFError(f"{where}: series {series.uid} has {duplicates} duplicate slice(s) (same "
                        f"ImagePositionPatient); remove the copies")
    step = float(np.median(gaps))
    offset = positions[-1] - positions[0] - (along[-1] - along[0]) * normal
    tilt = np.degrees(np.arctan2(np.linalg.norm(offset), along[-1] - along[0]))
    tag_tilt = float(getattr(headers[0], "GantryDetectorTilt", 0) or 0)
    if tilt > TILT_TOLERANCE_DEG or abs(tag_tilt) > TILT_TOLERANCE_DEG:
        raise DGCFError(f"{where}: series {series.uid} was acquired with a gantry tilt of "
                        f"{max(tilt, abs(tag_tilt)):.2f} degrees; resample it to an untilted grid first")
    big = gaps > step * 1.5
    if np.any(big):
        lost = int(np.sum(np.rint(gaps[big] / step) - 1))
        at = float(along[:-1][big][0])
        raise DGCFError(f"{where}: series {series.uid} misses {lost} slice(s) (gap of {gaps[big][0]:.3g} mm "
                        f"after position {at:.4g} mm, slice spacing {step:.3g} mm)")
    deviation = float(np.abs(gaps - step).max())
    if deviation > max(SPACING_TOLERANCE * step, 1e-3):
        raise DGCFError(f"{where}: series {series.uid} has non-uniform slice spacing ({gaps.min():.4g} to "
                        f"{gaps.max():.4g} mm); resample it to a regular grid first")


class SeriesHeader:
    """The grid of a checked series, computed from its headers (no voxels read): GetSize/GetSpacing/
    GetOrigin/GetDirection/GetDimension, as a SimpleITK reader offers them."""

    def __init__(self, series: Series):
        first, last = series.headers[0], series.headers[-1]
        iop = [float(v) for v in first.ImageOrientationPatient]
        row, col = np.array(iop[:3]), np.array(iop[3:])
        normal = np.cross(row, col)
        n = len(series.headers)
        p0 = np.array([float(v) for v in first.ImagePositionPatient])
        p1 = np.array([float(v) for v in last.ImagePositionPatient])
        dz = float((p1 - p0) @ normal) / (n - 1)
        self._size = (int(first.Columns), int(first.Rows), n)
        self._spacing = (float(first.PixelSpacing[1]), float(first.PixelSpacing[0]), dz)
        self._origin = tuple(p0)
        self._direction = tuple(np.stack([row, col, normal], axis=1).ravel())

    def GetSize(self):  # noqa: N802 (SimpleITK's names)
        return self._size

    def GetSpacing(self):  # noqa: N802
        return self._spacing

    def GetOrigin(self):  # noqa: N802
        return self._origin

    def GetDirection(self):  # noqa: N802
        return self._direction

    def GetDimension(self):  # noqa: N802
        return 3

    def GetNumberOfComponents(self):  # noqa: N802
        return 1


def series_header(series: Series, image: sitk.Image | None = None):
    """The grid of a checked series without reading voxels (a multi-frame object is read whole)."""
    if series.multiframe:
        return image if image is not None else read_checked_series(series)
    return SeriesHeader(series)


def open_series(folder: str | os.PathLike, case: str | None = None, series_uids=(), where: str | None = None) -> Series:
    """The folder's chosen image series, checked and in slice order (a DGCFError otherwise, starting with
    `where`, by default 'case <case>: folder <name>/')."""
    folder = Path(folder)
    where = where or (f"case {case}: folder {folder.name}/" if case else f"folder {folder}")
    series = select_series(folder, where, series_uids)
    check_series(series, where)
    return series


def read_series(folder: str | os.PathLike, case: str | None = None, series_uids=()) -> sitk.Image:
    """The chosen series of a DICOM folder as a 3D SimpleITK image (LPS, rescale slope/intercept applied)."""
    series = open_series(folder, case, series_uids)
    return read_checked_series(series, case)


def read_checked_series(series: Series, case: str | None = None, where: str | None = None) -> sitk.Image:
    where = where or (f"case {case}: folder {series.folder.name}/" if case else f"folder {series.folder}")
    warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # spacing was checked above, with a clearer message
    try:
        if series.multiframe:
            image = sitk.ReadImage(str(series.files[0]))
        else:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames([str(f) for f in series.files])
            image = reader.Execute()
    except RuntimeError as exc:
        reason = " ".join(str(exc).split())[-120:]
        raise DGCFError(f"{where}: series {series.uid} cannot be read ({reason})") from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DGCFError(f"{where}: series {series.uid} is not a 3D scalar volume")
    return image


def new_uid(prefix: str = DEFAULT_UID_PREFIX) -> str:
    from pydicom.uid import generate_uid

    if not prefix.endswith(".") or len(prefix) > 54 or not all(p.isdigit() for p in prefix[:-1].split(".")):
        raise DGCFError(f"DICOM UID prefix {prefix!r} must be dot-separated digits ending in '.', "
                        f"at most 54 characters (e.g. {DEFAULT_UID_PREFIX})")
    return generate_uid(prefix=prefix)


def write_ct_series(image: sitk.Image, target: str | os.PathLike, source: Series | None = None,
                    uid_prefix: str = DEFAULT_UID_PREFIX, series_description: str = "dgcf_auto sCT",
                    derivation: str = "", series_number: int = 901, modality: str = "CT") -> Path:
    """Write an HU volume as a CT series, one file per slice (<modality><nnnn>.dcm), atomically into `target`.

    `modality="MR"` writes an MR Image Storage series instead (tests use it to make DICOM sources).

    Pixels are int16 HU (Rescale Slope 1, Intercept 0); values outside int16 are clipped. With `source`
    (a checked Series on the same grid), Study and Frame of Reference UIDs, patient/study attributes and the
    slices' Image Position (Patient) are the source's; otherwise new UIDs are made and patient fields left
    empty.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    from dgcf_auto import __version__

    sop_class = {"CT": CT_IMAGE_STORAGE, "MR": MR_IMAGE_STORAGE}[modality]
    if image.GetDimension() != 3:
        raise DGCFError(f"DICOM output {target}: expected a 3D image")
    target = Path(target)
    voxels = np.clip(np.rint(sitk.GetArrayFromImage(image)), -32768, 32767).astype(np.int16)
    nz, ny, nx = voxels.shape
    direction = np.array(image.GetDirection()).reshape(3, 3)
    orientation = [*direction[:, 0], *direction[:, 1]]
    positions = [np.array(image.TransformIndexToPhysicalPoint((0, 0, k))) for k in range(nz)]
    reference = source.headers[0] if source is not None else None
    if source is not None and not source.multiframe and len(source.headers) == nz:
        source_positions = [np.array([float(v) for v in h.ImagePositionPatient]) for h in source.headers]
        # Keep the source's own decimal strings where they are the same grid, so slices match bit for bit.
        if max(np.abs(a - b).max() for a, b in zip(source_positions, positions)) < 1e-2:
            positions = [list(h.ImagePositionPatient) for h in source.headers]
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
    series_uid = new_uid(uid_prefix)
    study_uid = str(reference.StudyInstanceUID) if reference is not None and "StudyInstanceUID" in reference \
        else new_uid(uid_prefix)
    frame_uid = str(reference.FrameOfReferenceUID) if reference is not None and "FrameOfReferenceUID" in reference \
        else new_uid(uid_prefix)

    with atomic_folder(target) as tmp:
        for k in range(nz):
            sop_uid = new_uid(uid_prefix)
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = sop_class
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds = pydicom.Dataset()
            ds.file_meta = meta
            ds.SpecificCharacterSet = "ISO_IR 100"
            ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "", "", "", ""
            ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = \
                date, time, "", "", ""
            ds.PositionReferenceIndicator, ds.PatientPosition, ds.Laterality = "", "", ""  # type 2/2C: may be empty
            if reference is not None:
                for tag in PATIENT_STUDY_TAGS:
                    if tag in reference:
                        setattr(ds, tag, reference.data_element(tag).value)
            ds.StudyInstanceUID, ds.FrameOfReferenceUID = study_uid, frame_uid
            ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
            ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
            ds.Modality = modality
            ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, series_number
            ds.SeriesDate, ds.SeriesTime, ds.ContentDate, ds.ContentTime = date, time, date, time
            ds.SeriesDescription = series_description[:64]
            ds.Manufacturer, ds.SoftwareVersions = "dgcf_auto", __version__
            ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
            if derivation:
                ds.DerivationDescription = derivation[:1024]
            if source is not None and not source.multiframe and len(source.headers) == nz:
                item = pydicom.Dataset()
                item.ReferencedSOPClassUID = source.headers[k].SOPClassUID
                item.ReferencedSOPInstanceUID = source.headers[k].SOPInstanceUID
                ds.SourceImageSequence = [item]
            ds.InstanceNumber, ds.AcquisitionNumber = k + 1, ""
            if modality == "CT":
                ds.KVP = ""
                ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
                ds.WindowCenter, ds.WindowWidth = "40", "400"
            else:
                ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "2D"
                ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength, ds.ImageType = "", "", "", ["DERIVED", "SECONDARY"]
            ds.ImagePositionPatient = [_ds(v) for v in positions[k]]
            ds.ImageOrientationPatient = [_ds(v) for v in orientation]
            ds.SliceThickness = _ds(image.GetSpacing()[2])
            ds.SliceLocation = _ds(float(np.asarray(positions[k], dtype=float) @ direction[:, 2]))
            ds.PixelSpacing = [_ds(image.GetSpacing()[1]), _ds(image.GetSpacing()[0])]
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.Rows, ds.Columns = ny, nx
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.LossyImageCompression = "00"
            ds.PixelData = voxels[k].tobytes()
            ds.save_as(tmp / f"{modality}{k + 1:04d}.dcm", enforce_file_format=True)
    return target


def _ds(value) -> str:
    """A Decimal String value (at most 16 characters) for a float."""
    from pydicom.valuerep import format_number_as_ds

    original = getattr(value, "original_string", None)  # a source's own DS string, kept as written
    if original:
        return str(original)
    if isinstance(value, str) or not isinstance(value, (float, int, np.floating, np.integer)):
        return str(value)
    return format_number_as_ds(float(value))


# ------------------------------------------------------------------------------------------ RTSTRUCT masks
def rtstruct_files(folders) -> list[Path]:
    """RT Structure Set files directly in any of `folders` (DICOM folders and case folders)."""
    import pydicom

    found = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.is_file() and not path.name.startswith(".") and is_dicom_file(path):
                try:
                    header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
                except Exception:
                    continue
                if str(getattr(header, "Modality", "")).upper() == "RTSTRUCT":
                    found.append(path)
    return found


def roi_mask(files: list[Path], roi_name: str, reference: sitk.Image, where: str,
             frame_of_reference: str | None = None) -> sitk.Image:
    """The ROI `roi_name` (case-insensitive) of the RTSTRUCT among `files`, rasterised on `reference`'s grid
    (uint8; a voxel is inside when its centre is; nested contours of one slice are holes, even-odd)."""
    import pydicom
    from matplotlib.path import Path as Polygon

    names, chosen = [], None
    for path in files:
        ds = pydicom.dcmread(path)
        rois = {int(r.ROINumber): str(r.ROIName) for r in getattr(ds, "StructureSetROISequence", [])}
        names += list(rois.values())
        number = next((n for n, name in rois.items() if name.strip().lower() == roi_name.strip().lower()), None)
        if number is not None:
            chosen = (path, ds, number)
            break
    if chosen is None:
        listed = ", ".join(sorted(set(names))) or "none"
        raise DGCFError(f"{where}: no RTSTRUCT ROI named '{roi_name}' (ROIs found: {listed})")
    path, ds, number = chosen
    references = [str(r.FrameOfReferenceUID) for r in getattr(ds, "ReferencedFrameOfReferenceSequence", [])
                  if "FrameOfReferenceUID" in r]
    if frame_of_reference and references and frame_of_reference not in references:
        raise DGCFError(f"{where}: file {path.name}: the RTSTRUCT refers to another frame of reference than the "
                        f"image series; it belongs to another scan")
    contours = next((c for c in getattr(ds, "ROIContourSequence", []) if int(c.ReferencedROINumber) == number), None)
    nx, ny, nz = reference.GetSize()
    mask = np.zeros((nz, ny, nx), np.uint8)
    origin = np.array(reference.GetOrigin())
    # physical point -> continuous index: inverse of (direction * spacing)
    to_index = np.linalg.inv(np.array(reference.GetDirection()).reshape(3, 3) @ np.diag(reference.GetSpacing()))
    yy, xx = np.mgrid[0:ny, 0:nx]
    centres = np.column_stack([xx.ravel(), yy.ravel()])
    for contour in getattr(contours, "ContourSequence", []) if contours is not None else []:
        if str(getattr(contour, "ContourGeometricType", "CLOSED_PLANAR")).upper() != "CLOSED_PLANAR":
            continue
        points = np.array([float(v) for v in contour.ContourData]).reshape(-1, 3)
        index = (points - origin) @ to_index.T
        k = int(np.rint(index[:, 2].mean()))
        if np.abs(index[:, 2] - k).max() > 0.25:
            raise DGCFError(f"{where}: file {path.name}: a contour of ROI '{roi_name}' does not lie on a slice "
                            f"of the image (index {index[:, 2].mean():.2f}); is the RTSTRUCT for this series?")
        if not 0 <= k < nz or len(points) < 3:
            continue
        inside = Polygon(index[:, :2]).contains_points(centres).reshape(ny, nx)
        mask[k] ^= inside.astype(np.uint8)  # even-odd: a contour inside another is a hole
    if not mask.any():
        raise DGCFError(f"{where}: RTSTRUCT ROI '{roi_name}' covers no voxel of the image")
    image = sitk.GetImageFromArray(mask)
    image.CopyInformation(reference)
    return image
