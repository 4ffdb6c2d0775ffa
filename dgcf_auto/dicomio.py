"""DICOM series in and out: every DICOM read and write of the package goes through here.

Reading: a folder of DICOM files (any names, no DICOMDIR needed, with or without the 128-byte preamble) is
grouped by Series Instance UID with pydicom (headers only), one image series is chosen (`series_uids`, else
the only one), its slices are checked (missing or duplicate slices, non-uniform spacing, gantry tilt, mixed
orientations, a non-image series such as RTSTRUCT/RTPLAN) and the voxels are read with SimpleITK/GDCM in
slice order, in LPS like every other image of the package. An Enhanced (multi-frame) object is placed by its
per-frame functional groups (plane position, orientation, pixel spacing), refused without them, and read
with pydicom. `imageio.read_image` calls this for folders, so every command that reads
cases reads DICOM too.

Writing: `write_ct_series` writes an int16 HU volume as a CT Image Storage series, one file per slice, into
a temporary folder renamed into place. With a source series, the new series keeps its Study Instance UID,
Frame of Reference UID, patient and study attributes and its slice positions, so a planning system
registers the sCT with the source and its structures. A copied value that is invalid for its VR is repaired
(PatientAge '0Y' -> '000Y') or dropped, and said once per series; a source without a Frame of Reference UID
is refused unless `new_frame_of_reference` asks for one derived from the source series.
"""
from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dgcf_auto.atomic import atomic_folder
from dgcf_auto.dicom_values import all_valid, copyable_values, decimal_string, valid_for_vr
from dgcf_auto.errors import DGCFError
from dgcf_auto.log import get_logger

# pydicom's own root (https://pydicom.github.io/pydicom/stable/guides/user/uid.html); override it with your
# organisation's root (--dicom_uid_prefix) for clinical use.
DEFAULT_UID_PREFIX = "1.2.826.0.1.3680043.8.498."
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
# The SOP classes a source series may have (CT, Enhanced CT, MR, Enhanced MR Image Storage).
SOURCE_IMAGE_STORAGE = (CT_IMAGE_STORAGE, "1.2.840.10008.5.1.4.1.1.2.1", MR_IMAGE_STORAGE,
                        "1.2.840.10008.5.1.4.1.1.4.1")
NON_IMAGE_MODALITIES = {"RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "RTIMAGE", "SR", "PR", "KO", "REG", "SEG",
                        "DOC", "PLAN", "FID"}
# Slice geometry tolerances: IPP/IOP are decimal strings that scanners round.
ORIENTATION_TOLERANCE = 1e-4
SPACING_TOLERANCE = 0.01      # relative deviation of one gap from a whole multiple of the smallest gap
TILT_TOLERANCE_DEG = 0.1
# Copied from the source so the sCT files under the source's patient and study.
PATIENT_STUDY_TAGS = ("SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
                      "PatientSex", "PatientAge", "PatientSize", "PatientWeight", "StudyInstanceUID", "StudyDate",
                      "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
                      "FrameOfReferenceUID", "PositionReferenceIndicator", "PatientPosition")
LOSSY_TAGS = ("LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod")
_HEADER_TAGS = ("SeriesInstanceUID", "SeriesDescription", "Modality", "SOPClassUID", "SOPInstanceUID",
                "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns",
                "NumberOfFrames", "GantryDetectorTilt", "InstanceNumber", "SliceThickness",
                "SliceLocation") + PATIENT_STUDY_TAGS + LOSSY_TAGS
# Enhanced (multi-frame) objects: where each frame's geometry lives in the functional groups.
FRAME_GEOMETRY = (("PlanePositionSequence", "ImagePositionPatient"),
                  ("PlaneOrientationSequence", "ImageOrientationPatient"),
                  ("PixelMeasuresSequence", "PixelSpacing"))


def is_dicom_file(path: str | os.PathLike) -> bool:
    """A DICOM file: the 'DICM' marker after the 128-byte preamble, or a file without preamble (some PACS
    exports, pydicom's rtstruct.dcm) that starts with a group 0002/0008 element and holds a valid SOP Class UID."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    if head[128:132] == b"DICM":
        return True
    return head[:2] in (b"\x02\x00", b"\x08\x00") and _has_sop_class(path)


def _has_sop_class(path) -> bool:
    import pydicom

    try:
        header = pydicom.dcmread(path, force=True, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        return valid_for_vr("UI", str(header.get("SOPClassUID", "") or "")) and "SOPClassUID" in header
    except Exception:  # pydicom's forced read of a non-DICOM file can fail in many ways
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
    # Set by check_series, in slice order: one row per slice (or frame of a multi-frame object).
    positions: np.ndarray | None = None
    orientation: np.ndarray | None = None        # the 6 direction cosines
    pixel_spacing: tuple[float, float] = (1.0, 1.0)  # (row, column) spacing as in PixelSpacing
    frame_order: list[int] = field(default_factory=list)  # multi-frame: stored frame index of each slice

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
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_HEADER_TAGS), force=True)
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
    images = [s for s in found.values() if s.is_image]
    if series_uids and not chosen and len(images) > 1:
        raise DGCFError(f"{where}: no series with --series_uid {' '.join(series_uids)}; series found: "
                        f"{'; '.join(s.summary() for s in found.values())}")
    if len(chosen) == 1:
        if not chosen[0].is_image:
            raise DGCFError(f"{where}: series {chosen[0].summary()} is not an image series; choose an image "
                            f"series with --series_uid")
        return chosen[0]
    if len(images) == 1:
        return images[0]
    if not images:
        listed = "; ".join(s.summary() for s in found.values())
        raise DGCFError(f"{where}: no image series, only {listed}; an RT object cannot be a source or CT")
    listed = "; ".join(s.summary() for s in images)
    raise DGCFError(f"{where}: {len(images)} image series; choose one with --series_uid: {listed}")


def check_series_uids(folders, series_uids, where: str) -> None:
    """Every UID of `series_uids` (--series_uid) names a series in one of the DICOM `folders`; otherwise one
    line naming the UIDs that match nothing and the series found."""
    if not series_uids:
        return
    found = {uid: s for folder in folders for uid, s in scan_folder(folder).items()}
    unmatched = [uid for uid in series_uids if uid not in found]
    if unmatched:
        listed = "; ".join(s.summary() for s in found.values()) or "none"
        raise DGCFError(f"{where}: no series with --series_uid {' '.join(unmatched)}; series found: {listed}")


def check_series(series: Series, where: str) -> None:
    """Sort the slices (or frames) along the slice normal and reject series that are not one regular 3D grid."""
    if series.multiframe:
        positions, orientations, spacings = _frame_geometry(series, where)
    else:
        headers = series.headers
        if len(headers) < 2:
            raise DGCFError(f"{where}: series {series.uid} has a single slice; expected a 3D volume")
        missing = [t for t in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
                   if t not in headers[0]]
        if missing:
            raise DGCFError(f"{where}: series {series.uid} lacks {', '.join(missing)}; not a 3D image series")
        positions = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
        orientations = np.array([[float(v) for v in h.ImageOrientationPatient] for h in headers])
        spacings = [(int(h.Rows), int(h.Columns), tuple(float(v) for v in h.PixelSpacing)) for h in headers]
    if np.abs(orientations - orientations[0]).max() > ORIENTATION_TOLERANCE:
        kinds = len({tuple(np.round(o, 3)) for o in orientations})
        raise DGCFError(f"{where}: series {series.uid} mixes {kinds} slice orientations "
                        f"(ImageOrientationPatient); one volume needs one orientation")
    if len(set(spacings)) > 1:
        raise DGCFError(f"{where}: series {series.uid} mixes slice sizes or pixel spacings "
                        f"({len(set(spacings))} kinds); one volume needs one")
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    order = np.argsort(positions @ normal, kind="stable")
    _check_slice_positions(positions[order], normal, series, where)
    series.positions, series.orientation, series.pixel_spacing = positions[order], orientations[0], spacings[0][2]
    if series.multiframe:
        series.frame_order = [int(i) for i in order]
    else:
        series.files[:] = [series.files[i] for i in order]
        series.headers[:] = [series.headers[i] for i in order]


def _check_slice_positions(positions: np.ndarray, normal: np.ndarray, series: Series, where: str) -> None:
    """Sorted slice positions form one regular, untilted grid: duplicates, tilt, missing slices (a gap that
    is a whole multiple of the smallest one) and non-uniform spacing are each one line."""
    along = positions @ normal
    gaps = np.diff(along)
    duplicates = int(np.count_nonzero(gaps < 1e-3))
    if duplicates:
        raise DGCFError(f"{where}: series {series.uid} has {duplicates} duplicate slice(s) (same "
                        f"ImagePositionPatient); remove the copies")
    offset = positions[-1] - positions[0] - (along[-1] - along[0]) * normal
    tilt = np.degrees(np.arctan2(np.linalg.norm(offset), along[-1] - along[0]))
    tag_tilt = float(getattr(series.headers[0], "GantryDetectorTilt", 0) or 0)
    if tilt > TILT_TOLERANCE_DEG or abs(tag_tilt) > TILT_TOLERANCE_DEG:
        raise DGCFError(f"{where}: series {series.uid} was acquired with a gantry tilt of "
                        f"{max(tilt, abs(tag_tilt)):.2f} degrees; resample it to an untilted grid first")
    step = float(gaps.min())
    multiples = np.maximum(np.rint(gaps / step), 1)
    tolerance = max(SPACING_TOLERANCE * step, 1e-3)
    if np.all(np.abs(gaps - multiples * step) <= tolerance * multiples) and np.any(multiples > 1):
        holes = np.flatnonzero(multiples > 1)
        lost, first = int(np.sum(multiples - 1)), holes[0]
        places = f" in {len(holes)} gaps, the first" if len(holes) > 1 else ""
        raise DGCFError(f"{where}: series {series.uid} has {lost} missing slice(s){places} between "
                        f"z={along[first]:.6g} and z={along[first + 1]:.6g} mm (slice spacing {step:.4g} mm)")
    if float(np.abs(gaps - step).max()) > tolerance:
        raise DGCFError(f"{where}: series {series.uid} has non-uniform slice spacing ({gaps.min():.4g} to "
                        f"{gaps.max():.4g} mm); resample it to a regular grid first")


def _frame_geometry(series: Series, where: str):
    """Positions, orientations and (rows, columns, pixel spacing) of each stored frame of an Enhanced
    (multi-frame) object, from its per-frame or shared functional groups; refused without them."""
    import pydicom

    header = pydicom.dcmread(series.files[0], stop_before_pixels=True, force=True)
    series.headers[0] = header  # the whole header: the functional groups are needed again to read the frames
    frames = list(header.get("PerFrameFunctionalGroupsSequence", []))
    count = int(header.NumberOfFrames)
    if frames and len(frames) != count:
        raise DGCFError(f"{where}: series {series.uid} is a multi-frame object with {len(frames)} per-frame "
                        f"functional groups for {count} frames; cannot place its frames")
    lacking = [sequence for sequence, tag in FRAME_GEOMETRY
               if not frames or any(_frame_value(header, f, sequence, tag) is None for f in frames)]
    if lacking:
        raise DGCFError(f"{where}: series {series.uid} is a multi-frame object without per-frame geometry "
                        f"(no {', '.join(lacking)}); cannot place its frames")
    positions = np.array([[float(v) for v in _frame_value(header, f, *FRAME_GEOMETRY[0])] for f in frames])
    orientations = np.array([[float(v) for v in _frame_value(header, f, *FRAME_GEOMETRY[1])] for f in frames])
    spacings = [(int(header.Rows), int(header.Columns),
                 tuple(float(v) for v in _frame_value(header, f, *FRAME_GEOMETRY[2]))) for f in frames]
    return positions, orientations, spacings


def _frame_value(header, frame, sequence: str, tag: str):
    """`tag` of a frame's functional group `sequence`, else of the shared functional groups, else None."""
    shared = header.get("SharedFunctionalGroupsSequence")
    for group in (frame, shared[0] if shared else None):
        items = group.get(sequence) if group is not None else None
        if items and tag in items[0] and items[0].get(tag) not in (None, ""):
            return items[0].get(tag)
    return None


class SeriesHeader:
    """The grid of a checked series, computed from its headers (no voxels read): GetSize/GetSpacing/
    GetOrigin/GetDirection/GetDimension, as a SimpleITK reader offers them."""

    def __init__(self, series: Series):
        positions, orientation = series.positions, series.orientation
        assert positions is not None and orientation is not None, "check_series sets a series' geometry"
        row, col = orientation[:3], orientation[3:]
        normal = np.cross(row, col)
        n = len(positions)
        dz = float((positions[-1] - positions[0]) @ normal) / (n - 1)
        first = series.headers[0]
        self._size = (int(first.Columns), int(first.Rows), n)
        self._spacing = (series.pixel_spacing[1], series.pixel_spacing[0], dz)
        self._origin = tuple(float(v) for v in positions[0])
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


def series_header(series: Series) -> SeriesHeader:
    """The grid of a checked series without reading voxels."""
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
    gdcm = not series.multiframe and all(_has_preamble(f) for f in series.files)  # GDCM needs the preamble
    try:
        if series.multiframe:
            image = _read_frames(series)
        elif not gdcm:
            image = _read_slices(series)
        else:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames([str(f) for f in series.files])
            image = reader.Execute()
    except (RuntimeError, ValueError, AttributeError, NotImplementedError) as exc:  # damaged or undecodable
        reason = " ".join(str(exc).split())
        # GDCM's messages end with the reason, after ITK's source locations; pydicom's start with it.
        reason = reason[-120:] if gdcm else reason if len(reason) <= 120 else reason[:117] + "..."
        raise DGCFError(f"{where}: series {series.uid} cannot be read ({reason})") from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DGCFError(f"{where}: series {series.uid} is not a 3D scalar volume")
    return image


def _has_preamble(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


def _read_slices(series: Series) -> sitk.Image:
    """A checked single-frame series read slice by slice with pydicom (files without preamble), rescaled by
    each slice's Rescale Slope/Intercept, on the grid of its slice positions."""
    import pydicom

    slices = [pydicom.dcmread(path, force=True) for path in series.files]
    voxels = np.stack([ds.pixel_array for ds in slices])
    slopes = [float(ds.get("RescaleSlope", 1) or 1) for ds in slices]
    intercepts = [float(ds.get("RescaleIntercept", 0) or 0) for ds in slices]
    return _on_grid(voxels, slopes, intercepts, series)


def _on_grid(voxels: np.ndarray, slopes, intercepts, series: Series) -> sitk.Image:
    """Stored values in slice order -> rescaled SimpleITK image on the checked series' grid."""
    if any(v != 1 for v in slopes) or any(v != 0 for v in intercepts):
        voxels = voxels.astype(np.float32) * np.float32(slopes)[:, None, None] + np.float32(intercepts)[:, None, None]
    header = SeriesHeader(series)
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing(header.GetSpacing())
    image.SetOrigin(header.GetOrigin())
    image.SetDirection(header.GetDirection())
    return image


def _read_frames(series: Series) -> sitk.Image:
    """A checked multi-frame object's voxels in slice order, rescaled by each frame's Pixel Value
    Transformation (or the top-level Rescale Slope/Intercept), on the grid of its frame positions."""
    import pydicom

    ds = pydicom.dcmread(series.files[0], force=True)
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))[series.frame_order]
    groups = [ds.PerFrameFunctionalGroupsSequence[i] for i in series.frame_order]

    def rescale(group, tag: str, default: float) -> float:
        value = _frame_value(ds, group, "PixelValueTransformationSequence", tag)
        return float(value if value is not None else ds.get(tag, default))

    slopes = [rescale(group, "RescaleSlope", 1.0) for group in groups]
    intercepts = [rescale(group, "RescaleIntercept", 0.0) for group in groups]
    return _on_grid(frames, slopes, intercepts, series)


def new_uid(prefix: str = DEFAULT_UID_PREFIX) -> str:
    from pydicom.uid import generate_uid

    if not prefix.endswith(".") or len(prefix) > 54 or not all(p.isdigit() for p in prefix[:-1].split(".")):
        raise DGCFError(f"DICOM UID prefix {prefix!r} must be dot-separated digits ending in '.', "
                        f"at most 54 characters (e.g. {DEFAULT_UID_PREFIX})")
    return generate_uid(prefix=prefix)


def derived_uid(prefix: str, *parts: str) -> str:
    """A UID made from `parts` (the same parts give the same UID on every run and machine), under `prefix`."""
    from pydicom.uid import generate_uid

    new_uid(prefix)  # checks the prefix
    return generate_uid(prefix=prefix, entropy_srcs=[str(p) for p in parts])


def write_ct_series(image: sitk.Image, target: str | os.PathLike, source: Series | None = None,
                    uid_prefix: str = DEFAULT_UID_PREFIX, series_description: str = "dgcf_auto sCT",
                    derivation: str = "", series_number: int = 901, modality: str = "CT",
                    new_frame_of_reference: bool = False, notify: Callable[[str], None] | None = None,
                    uid_seed: str | None = None) -> Path:
    """Write an HU volume as a CT series, one file per slice (<modality><nnnn>.dcm), atomically into `target`.

    `modality="MR"` writes an MR Image Storage series instead (tests use it to make DICOM sources).

    Pixels are int16 HU (Rescale Slope 1, Intercept 0); values outside int16 are clipped. With `source`
    (a checked Series on the same grid), Study and Frame of Reference UIDs, patient/study attributes, the
    slices' Image Position (Patient), Instance Numbers, Slice Locations, Slice Thickness and Lossy Image
    Compression are the source's; otherwise new UIDs are made and patient fields left empty. Source values
    invalid for their VR are repaired or dropped; `notify` (default: stderr) hears it once for the series,
    and hears about a Frame of Reference UID made for a source without one (`new_frame_of_reference`).
    `uid_seed` (e.g. the model's id) with a `source`: Series and SOP Instance UIDs derived from the source
    series UID and the seed, so writing the same sCT again gives the same UIDs (a PACS replaces, never
    duplicates); otherwise they are new on every call.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

    from dgcf_auto import __version__

    notify = notify or get_logger(__name__).warning
    sop_class = {"CT": CT_IMAGE_STORAGE, "MR": MR_IMAGE_STORAGE}[modality]
    if image.GetDimension() != 3:
        raise DGCFError(f"DICOM output {target}: expected a 3D image")
    target = Path(target)
    voxels = np.clip(np.rint(sitk.GetArrayFromImage(image)), -32768, 32767).astype(np.int16)
    nz, ny, nx = voxels.shape
    direction = np.array(image.GetDirection()).reshape(3, 3)
    orientation = [*direction[:, 0], *direction[:, 1]]
    slices = _slice_values(image, source)
    copied, repairs = ({}, []) if source is None else \
        copyable_values(source.headers[0], PATIENT_STUDY_TAGS + LOSSY_TAGS)
    if source is not None and repairs:
        notify(f"series {source.uid}: values invalid for their VR not copied into the sCT: {', '.join(repairs)}")
    frame_uid, note = (new_uid(uid_prefix), None) if source is None else \
        frame_of_reference(source, uid_prefix, new_frame_of_reference)
    if note:
        notify(note)
    normal = direction[:, 2]
    axial = abs(abs(normal[2]) - 1) < 1 - np.cos(np.radians(TILT_TOLERANCE_DEG))
    lossy = {tag: copied[tag] for tag in LOSSY_TAGS if copied.get(tag) not in (None, "")}
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
    def instance_uid(*what: str) -> str:
        if uid_seed is not None and source is not None:
            return derived_uid(uid_prefix, source.uid, uid_seed, *what)
        return new_uid(uid_prefix)

    series_uid = instance_uid("SeriesInstanceUID")
    study_uid = str(copied.get("StudyInstanceUID") or "") or new_uid(uid_prefix)

    with atomic_folder(target) as tmp:
        for k in range(nz):
            sop_uid = instance_uid("SOPInstanceUID", str(k))
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = UID(sop_class)
            meta.MediaStorageSOPInstanceUID = UID(sop_uid)
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds = pydicom.Dataset()
            ds.file_meta = meta
            ds.SpecificCharacterSet = "ISO_IR 100"
            ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "", "", "", ""
            ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = \
                date, time, "", "", ""
            ds.PositionReferenceIndicator, ds.PatientPosition, ds.Laterality = "", "", ""  # type 2/2C: may be empty
            for tag in PATIENT_STUDY_TAGS:
                if tag in copied:
                    setattr(ds, tag, copied[tag])
            ds.StudyInstanceUID, ds.FrameOfReferenceUID = study_uid, frame_uid
            ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
            ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
            ds.Modality = modality
            ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, series_number
            ds.SeriesDate, ds.SeriesTime, ds.ContentDate, ds.ContentTime = date, time, date, time
            ds.SeriesDescription = series_description[:64]
            ds.Manufacturer, ds.SoftwareVersions = "dgcf_auto", __version__
            ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL" if axial else "OTHER"]
            if derivation:
                ds.DerivationDescription = derivation[:1024]
            if slices.aligned and source is not None:  # aligned: one slice per source file
                item = pydicom.Dataset()
                item.ReferencedSOPClassUID = source.headers[k].SOPClassUID
                item.ReferencedSOPInstanceUID = source.headers[k].SOPInstanceUID
                ds.SourceImageSequence = [item]
            ds.InstanceNumber, ds.AcquisitionNumber = slices.instance_numbers[k], ""
            if modality == "CT":
                ds.KVP = ""
                ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
                ds.WindowCenter, ds.WindowWidth = "40", "400"
            else:
                ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "2D"
                ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "", "", ""
            ds.ImagePositionPatient = [decimal_string(v) for v in slices.positions[k]]
            ds.ImageOrientationPatient = [decimal_string(v) for v in orientation]
            ds.SliceThickness = slices.thickness
            ds.SliceLocation = slices.locations[k]
            ds.PixelSpacing = [decimal_string(image.GetSpacing()[1]), decimal_string(image.GetSpacing()[0])]
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.Rows, ds.Columns = ny, nx
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.LossyImageCompression = "00"  # the sCT itself is stored losslessly; a lossy source makes it "01"
            for tag, value in lossy.items():
                setattr(ds, tag, value)
            ds.PixelData = voxels[k].tobytes()
            ds.save_as(tmp / f"{modality}{k + 1:04d}.dcm", enforce_file_format=True)
    return target


@dataclass
class _SliceValues:
    positions: list          # per slice: the source's own Image Position strings, or the image grid's points
    instance_numbers: list[int]
    locations: list[str]     # Slice Location
    thickness: str           # Slice Thickness
    aligned: bool            # one slice per source file, at the same positions


def _slice_values(image: sitk.Image, source: Series | None) -> _SliceValues:
    """Per-slice attributes of a written series: the source's own where the sCT is on its grid (positions,
    Instance Numbers in the source's order, Slice Locations, Slice Thickness), else from the image: numbers
    1..N along the slice normal, the slice's LPS coordinate along the patient axis nearest the normal (z axial,
    x sagittal, y coronal) and the slice spacing to 6 significant digits (no float noise)."""
    nz = image.GetSize()[2]
    normal = np.array(image.GetDirection()).reshape(3, 3)[:, 2]
    positions = [np.array(image.TransformIndexToPhysicalPoint((0, 0, k))) for k in range(nz)]
    axis = int(np.argmax(np.abs(normal)))
    values = _SliceValues(positions, list(range(1, nz + 1)), [decimal_string(float(p[axis])) for p in positions],
                          _slice_thickness(source) or f"{image.GetSpacing()[2]:.6g}", False)
    if source is None or source.multiframe or len(source.headers) != nz:
        return values
    source_positions = [np.array([float(v) for v in h.ImagePositionPatient]) for h in source.headers]
    if max(np.abs(a - b).max() for a, b in zip(source_positions, positions)) >= 1e-2:
        return values
    # The same grid: keep the source's own decimal strings, so slices match bit for bit.
    values.positions, values.aligned = [list(h.ImagePositionPatient) for h in source.headers], True
    if all_valid(source.headers, "InstanceNumber", "IS") and \
            len({int(h.InstanceNumber) for h in source.headers}) == nz:
        values.instance_numbers = [int(h.InstanceNumber) for h in source.headers]
    if all_valid(source.headers, "SliceLocation", "DS"):
        values.locations = [decimal_string(h.SliceLocation) for h in source.headers]
    return values


def frame_of_reference(source: Series, uid_prefix: str, new: bool) -> tuple[str, str | None]:
    """The source's Frame of Reference UID for its sCT; without a valid one a DGCFError, unless `new`: then
    one UID derived from the source series (the same on every run) and a note saying so."""
    uid = str(copyable_values(source.headers[0], ("FrameOfReferenceUID",))[0].get("FrameOfReferenceUID") or "")
    if uid:
        return uid, None
    if not new:
        raise DGCFError(f"source series {source.uid} has no Frame of Reference UID: its sCT would not register "
                        f"with anything; give --new_frame_of_reference to write a new one derived from the "
                        f"source series")
    uid = derived_uid(uid_prefix, source.uid, "FrameOfReferenceUID")
    return uid, (f"series {source.uid} has no Frame of Reference UID: wrote the new Frame of Reference UID "
                 f"{uid} derived from it (--new_frame_of_reference)")


def _slice_thickness(source: Series | None) -> str | None:
    """The source's own SliceThickness string (a multi-frame object's from its pixel measures), if valid."""
    if source is None:
        return None
    header = source.headers[0]
    value = header.get("SliceThickness")
    if source.multiframe:  # checked: it has per-frame functional groups
        first = header.PerFrameFunctionalGroupsSequence[0]
        value = _frame_value(header, first, "PixelMeasuresSequence", "SliceThickness") or value
    text = decimal_string(value) if value not in (None, "") else ""
    return text if text and valid_for_vr("DS", text) and float(text) > 0 else None


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
                    header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"],
                                            force=True)
                except Exception:
                    continue
                if str(getattr(header, "Modality", "")).upper() == "RTSTRUCT":
                    found.append(path)
    return found


def roi_mask(files: list[Path], roi_name: str, reference: sitk.Image, where: str,
             frame_of_reference: str | None = None, series: Series | None = None) -> sitk.Image:
    """The ROI `roi_name` (case-insensitive) of the RTSTRUCT among `files`, rasterised on `reference`'s grid
    (uint8; a voxel is inside when its centre is; nested contours of one slice are holes, even-odd).
    Contours on images that are not in `series` (the source's DICOM series), or off the grid, are an error."""
    import pydicom
    from matplotlib.path import Path as Polygon

    names, chosen = [], None
    for path in files:
        ds = pydicom.dcmread(path, force=True)  # files without preamble too
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
    if series is not None and contours is not None:
        _check_contour_images(contours, series, f"{where}: file {path.name}: ", roi_name)
    nx, ny, nz = reference.GetSize()
    mask = np.zeros((nz, ny, nx), np.uint8)
    origin = np.array(reference.GetOrigin())
    # physical point -> continuous index: inverse of (direction * spacing)
    to_index = np.linalg.inv(np.array(reference.GetDirection()).reshape(3, 3) @ np.diag(reference.GetSpacing()))
    yy, xx = np.mgrid[0:ny, 0:nx]
    centres = np.column_stack([xx.ravel(), yy.ravel()])
    off_grid = []
    for contour in getattr(contours, "ContourSequence", []) if contours is not None else []:
        if str(getattr(contour, "ContourGeometricType", "CLOSED_PLANAR")).upper() != "CLOSED_PLANAR":
            continue
        points = np.array([float(v) for v in contour.ContourData]).reshape(-1, 3)
        index = (points - origin) @ to_index.T
        k = int(np.rint(index[:, 2].mean()))
        if np.abs(index[:, 2] - k).max() > 0.25:
            raise DGCFError(f"{where}: file {path.name}: a contour of ROI '{roi_name}' does not lie on a slice "
                            f"of the image (index {index[:, 2].mean():.2f}); is the RTSTRUCT for this series?")
        if not 0 <= k < nz:
            off_grid.append(k)
            continue
        if len(points) < 3:
            continue
        inside = Polygon(index[:, :2]).contains_points(centres).reshape(ny, nx)
        mask[k] ^= inside.astype(np.uint8)  # even-odd: a contour inside another is a hole
    if off_grid:
        raise DGCFError(f"{where}: file {path.name}: {len(off_grid)} contour(s) of ROI '{roi_name}' lie outside "
                        f"the image's {nz} slices (slice index {off_grid[0]}); export the whole series")
    if not mask.any():
        raise DGCFError(f"{where}: RTSTRUCT ROI '{roi_name}' covers no voxel of the image")
    image = sitk.GetImageFromArray(mask)
    image.CopyInformation(reference)
    return image


def _check_contour_images(contours, series: Series, where: str, roi_name: str) -> None:
    """The images a ROI's contours were drawn on (Contour Image Sequence) are all in the series."""
    known = {str(h.SOPInstanceUID) for h in series.headers if "SOPInstanceUID" in h}
    missing = []  # per contour, the first image it refers to that the series lacks
    for contour in getattr(contours, "ContourSequence", []):
        absent = [str(image.get("ReferencedSOPInstanceUID", "")) for image in contour.get("ContourImageSequence", [])
                  if str(image.get("ReferencedSOPInstanceUID", "")) not in known]
        missing += absent[:1]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DGCFError(f"{where}{len(missing)} contour(s) of ROI '{roi_name}' lie on images that are not in the "
                        f"series (SOP Instance UID {missing[0]}{more}); export the whole series")
