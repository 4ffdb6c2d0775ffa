"""All image reading and writing, with geometry, in one place (SimpleITK).

NIfTI (.nii, .nii.gz) and MetaImage (.mha) are supported; the format follows the file name. A folder of
DICOM files stands for its image series wherever a file does (`mr/` for `mr.nii.gz`); `dgcf_auto.dicomio`
reads it.

The spacing a header declares is checked first (`header_spacing_problem`): zero, negative or non-finite
spacing is refused, read from the file's own header field (NIfTI `pixdim`, MetaImage `ElementSpacing`),
because nibabel and ITK silently read a zero pixdim as 1 mm.
Voxels are verified before they are trusted (`voxel_problem`): the size a header declares is checked against
`--max_voxels`, the memory this process may use (the measured peak per voxel, `dgcf_auto.memory`) and what
the file's bytes can hold, before anything is decompressed or allocated; a
compressed MetaImage block is decompressed by Python's zlib, which raises on corrupt data (ITK only logs
"Uncompress failed" and returns an image).
"""
from __future__ import annotations

import contextlib
import gzip
import math
import os
import re
import sys
import tempfile
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from dgcf_auto.atomic import WriteFailed, atomic_path
from dgcf_auto.errors import DGCFError
from dgcf_auto.memory import available_memory, bytes_per_voxel, peak_bytes

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha")
# Geometry tolerance: SynthRAD2023 files were resampled and rounded by several tools.
SPACING_TOLERANCE = 1e-3  # relative
ORIGIN_TOLERANCE_MM = 1e-2
DIRECTION_TOLERANCE = 1e-4
DEFAULT_MAX_VOXELS = 2**31
MAX_VOXELS_ENV = "DGCF_MAX_VOXELS"  # how --max_voxels reaches worker processes
DEFLATE_MAX_RATIO = 1032  # zlib/gzip cannot expand one compressed byte into more than ~1032 bytes


def image_suffix(path: str | os.PathLike) -> str | None:
    name = Path(path).name.lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s)), None)


def strip_suffix(path: str | os.PathLike) -> str:
    """'1PA001.nii.gz' -> '1PA001' (a folder keeps its name)."""
    name = Path(path).name
    suffix = image_suffix(name)
    return name[: -len(suffix)] if suffix else name


def find_image(folder: str | os.PathLike, stem: str) -> list[Path]:
    """All files `<stem>.{nii.gz,nii,mha}` and a DICOM folder `<stem>/` in `folder` (several means
    ambiguity, left to the caller)."""
    from dgcf_auto.dicomio import is_dicom_folder

    folder = Path(folder)
    found = [folder / f"{stem}{s}" for s in IMAGE_SUFFIXES if (folder / f"{stem}{s}").is_file()]
    return found + ([folder / stem] if is_dicom_folder(folder / stem) else [])


def read_image(path: str | os.PathLike, case: str | None = None, series_uids=()) -> sitk.Image:
    """Read an image (a DICOM folder: its image series, chosen by `series_uids` when it holds several);
    any failure is a DGCFError naming the case and the file."""
    path = Path(path)
    where = f"case {case}: file {path.name}" if case else f"file {path}"
    if path.is_dir():
        from dgcf_auto.dicomio import read_series

        return read_series(path, case, series_uids)
    if not path.is_file():
        raise DGCFError(f"{where}: not found")
    if problem := header_spacing_problem(path):  # before ITK reads (and "fixes") the header
        raise DGCFError(f"{where}: {problem}")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        problem = header_spacing_problem(path, reader) or voxel_problem(path, reader)
        if problem is None:
            return reader.Execute()
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines()
        reason = next((r for r in lines if "ERROR" in r.upper() or "exception" in r.lower()), "unreadable")
        raise DGCFError(f"{where}: cannot be read as an image ({_short(reason)})") from None
    raise DGCFError(f"{where}: {problem}")


class ImageGrid(Protocol):
    """A voxel grid's getters: a SimpleITK image, a header-only `sitk.ImageFileReader`, a DICOM series'
    `dicomio.SeriesHeader`."""

    def GetSize(self) -> Sequence[int]: ...  # noqa: N802 (SimpleITK's names)

    def GetSpacing(self) -> Sequence[float]: ...  # noqa: N802

    def GetOrigin(self) -> Sequence[float]: ...  # noqa: N802

    def GetDirection(self) -> Sequence[float]: ...  # noqa: N802

    def GetDimension(self) -> int: ...  # noqa: N802


def read_header(path: str | os.PathLike, case: str | None = None, dimension: int | None = 3,
                series_uids=()) -> ImageGrid:
    """The file's header only (size, spacing, origin, direction), without its voxels; errors name the file.
    A DICOM folder gives a `dicomio.SeriesHeader` with the same getters."""
    path = Path(path)
    where = f"case {case}: file {path.name}" if case else f"file {path}"
    if path.is_dir():
        from dgcf_auto.dicomio import open_series, series_header

        return series_header(open_series(path, case, series_uids))
    if path.is_file() and (problem := header_spacing_problem(path)):
        raise DGCFError(f"{where}: {problem}")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise DGCFError(f"{where}: cannot be read as an image") from None
    if dimension is not None and reader.GetDimension() != dimension:
        raise DGCFError(f"{where}: expected a {dimension}D image, got {reader.GetDimension()}D")
    if problem := header_spacing_problem(path, reader):
        raise DGCFError(f"{where}: {problem}")
    return reader


def header_spacing_problem(path: str | os.PathLike, reader: sitk.ImageFileReader | None = None) -> str | None:
    """None when every spatial axis has a positive, finite spacing in the file's own header, else the problem
    naming the field. Read before any image reader runs: NIfTI is judged by its raw `pixdim` (nibabel and ITK
    replace 0 by 1 mm, with a warning at best), MetaImage by its `ElementSpacing` line (a missing one would
    silently be 1 mm); the spacing a `reader` reports is checked as well."""
    path = Path(path)
    field, first = "spacing", 0
    declared: list[float] | None = None
    try:
        if image_suffix(path) in (".nii", ".nii.gz"):
            field, first, declared = "pixdim", 1, _nifti_pixdim(path)
        elif image_suffix(path) == ".mha":
            fields, _ = _metaimage_header(path)
            key = next((k for k in ("ElementSpacing", "ElementSize") if k in fields), None)
            if key is None:
                return "header has no ElementSpacing; the voxel spacing is unknown (a reader would assume 1 mm)"
            field = key
            declared = [float(v) for v in fields[field].split()][: int(fields.get("NDims", 3))]
    except (OSError, EOFError, ValueError, zlib.error, nib.spatialimages.HeaderDataError):
        declared = None  # an unreadable raw header: the readers report it; the spacing they give is checked
    for values in (declared, list(reader.GetSpacing()) if reader is not None else None):
        checked = values or []
        bad = [i for i, v in enumerate(checked) if not (math.isfinite(v) and v > 0)]
        if bad:
            named = ", ".join(f"{field}[{i + first}] is {checked[i]:g}" for i in bad)
            return (f"header field {named} (spacing ({', '.join(f'{v:g}' for v in checked)})); voxel spacing must "
                    f"be positive and finite (readers silently take 0 as 1 mm); fix the file's header")
        field, first = "spacing", 0
    return None


def load_nifti(path: str | os.PathLike) -> nib.Nifti1Image:
    """nibabel's image of a .nii / .nii.gz file (NIfTI-2 images are a Nifti1Image subclass); nibabel's
    ImageFileError when it reads the file as another kind of image."""
    image = nib.load(str(path))
    if not isinstance(image, nib.Nifti1Image):
        raise nib.filebasedimages.ImageFileError(f"read as {type(image).__name__}, not as a NIfTI volume")
    return image


def _nifti_pixdim(path: Path) -> list[float]:
    """The raw pixdim[1..3] (fewer for a 1D or 2D image) of a NIfTI-1 or NIfTI-2 header, as stored
    (nibabel with `check=False`: no fix-ups)."""
    opener = gzip.open if image_suffix(path) == ".nii.gz" else open
    with opener(path, "rb") as handle:
        block = handle.read(540)
    sizes = {int.from_bytes(block[:4], order) for order in ("little", "big")}
    klass = nib.Nifti2Header if 540 in sizes else nib.Nifti1Header
    header = klass(block[: klass.template_dtype.itemsize], check=False)
    return [float(v) for v in header["pixdim"][1: 1 + max(1, min(int(header["dim"][0]), 3))]]


def max_voxels() -> int:
    """The largest image any stage reads (`--max_voxels`, default 2**31 voxels)."""
    return int(os.environ.get(MAX_VOXELS_ENV, DEFAULT_MAX_VOXELS))


@contextlib.contextmanager
def voxel_limit(value: int | None):
    """`--max_voxels` while the block runs (None: the default), kept in the environment so that worker
    processes inherit it; the previous limit comes back afterwards."""
    if value is not None and int(value) < 1:
        raise DGCFError(f"`max_voxels` must be at least 1, got {value}")
    previous = os.environ.pop(MAX_VOXELS_ENV, None)
    if value is not None:
        os.environ[MAX_VOXELS_ENV] = str(int(value))
    try:
        yield
    finally:
        os.environ.pop(MAX_VOXELS_ENV, None)
        if previous is not None:
            os.environ[MAX_VOXELS_ENV] = previous


def voxel_problem(path: str | os.PathLike, reader: sitk.ImageFileReader) -> str | None:
    """None when the file's declared voxels can be read and are intact, else the problem in words.

    Checked from the header before any allocation: the bytes against what the file can hold (its size, or
    for compressed data the deflate limit), the voxel count against `max_voxels()`, the peak the stages
    will reach on it (`memory.peak_bytes`, measured per voxel) against the memory this process may still use.
    A compressed MetaImage data block is then decompressed, streamed, by zlib."""
    path = Path(path)
    size = reader.GetSize()
    voxels = math.prod(size) * reader.GetNumberOfComponents()
    nbytes = voxels * _bytes_per_component(reader)
    dims = "x".join(str(s) for s in size)
    stored = _stored_data(path)
    if isinstance(stored, str):
        return stored  # the reason the data cannot be found
    data_path, available, compressed = stored
    if compressed and nbytes > DEFLATE_MAX_RATIO * available:
        return (f"header declares {dims} voxels ({nbytes} bytes), more than its {available} compressed bytes can "
                f"hold (at most {DEFLATE_MAX_RATIO * available}); the file is corrupt")
    if not compressed and nbytes > available:
        return (f"header declares {dims} voxels ({nbytes} bytes), more than the file's {available} data bytes; "
                f"it is truncated")
    if voxels > max_voxels():
        return (f"header declares {dims} voxels, more than --max_voxels {max_voxels()}; "
                f"raise --max_voxels if this is right")
    itemsize = _bytes_per_component(reader)
    need, room = peak_bytes(voxels, itemsize), available_memory()
    if room is not None and need > room[0]:  # the measured peak of the stages, not the stored size
        return (f"header declares {dims} voxels ({nbytes} bytes stored); working on it takes about {need} bytes "
                f"({bytes_per_voxel(itemsize):.0f} per voxel, measured), more than the {room[0]} bytes {room[1]}; "
                f"use a machine with more memory, or crop or resample the image")
    if compressed and image_suffix(path) == ".mha":
        return _inflate_problem(data_path, path.stat().st_size - available if data_path == path else 0, nbytes)
    return None


def _stored_data(path: Path) -> tuple[Path, int, bool] | str:
    """(file holding the voxels, its bytes available for them, compressed?); the reason when a MetaImage
    header names a data file that is missing."""
    if image_suffix(path) == ".nii":
        proxy = load_nifti(path).dataobj
        assert isinstance(proxy, nib.arrayproxy.ArrayProxy)  # an image loaded from a file reads through a proxy
        return path, path.stat().st_size - int(proxy.offset), False
    if image_suffix(path) != ".mha":
        return path, path.stat().st_size, image_suffix(path) == ".nii.gz"
    fields, offset = _metaimage_header(path)
    compressed = fields.get("CompressedData", "False").lower() == "true"
    data_file = fields.get("ElementDataFile", "LOCAL")
    if data_file != "LOCAL":
        path, offset = path.parent / data_file, 0
        if not path.is_file():
            return f"data file {data_file} named by the header is missing"
    return path, path.stat().st_size - offset, compressed


def _bytes_per_component(reader: sitk.ImageFileReader) -> int:
    probe = sitk.Image([1, 1], reader.GetPixelID(), reader.GetNumberOfComponents())
    return sitk.GetArrayViewFromImage(probe).itemsize


def _inflate_problem(path: Path, offset: int, nbytes: int) -> str | None:
    """Decompress (zlib, streamed, output bounded) the data block at `offset`; it must give `nbytes` exactly."""
    decoder, produced = zlib.decompressobj(), 0
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            while chunk := handle.read(1 << 20):
                while chunk and produced <= nbytes:  # bounded output: a lying stream cannot fill memory
                    produced += len(decoder.decompress(chunk, 1 << 24))
                    chunk = decoder.unconsumed_tail
                if decoder.eof or produced > nbytes:
                    break
            produced += len(decoder.flush())
    except zlib.error as exc:
        return f"compressed voxel data is corrupt ({exc})"
    if not decoder.eof and produced <= nbytes:
        return f"compressed voxel data is truncated ({produced} of {nbytes} bytes)"
    if produced != nbytes:
        return f"compressed voxel data decompresses to {produced} bytes; the header declares {nbytes}"
    return None


def _metaimage_header(path: Path) -> tuple[dict[str, str], int]:
    """The MetaImage header's `key = value` fields and the offset of the data that follows it."""
    fields, offset = {}, 0
    with open(path, "rb") as handle:
        for line in handle:
            offset += len(line)
            key, _, value = line.decode("latin-1").partition("=")
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                break
    return fields, offset


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> None:
    """Write atomically; the format follows the target's suffix."""
    path = Path(path)
    suffix = image_suffix(path)
    if suffix is None:
        raise DGCFError(f"file {path}: unsupported image format (use one of {', '.join(IMAGE_SUFFIXES)})")
    verify = lambda tmp: written_image_problem(tmp, image)  # noqa: E731
    with _c_stderr_held_back(), atomic_path(path, suffix=suffix, verify=verify) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), compress)
        except RuntimeError as exc:  # ITK reports failed writes as RuntimeError; keep its reason
            raise WriteFailed(_itk_reason(exc)) from None


_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def _c_stderr_held_back():
    """Hold back what ITK's C code prints on stderr while writing; on failure drop it (one line suffices).

    Redirecting file descriptor 2 is process-wide, hence the lock (image writes are serialised).
    """
    with _STDERR_LOCK, tempfile.TemporaryFile() as held:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if not failed:
                held.seek(0)
                text = held.read()
                if text:
                    sys.stderr.write(text.decode(errors="replace"))


def written_image_problem(path: Path, image: sitk.Image) -> str | None:
    """None when `path` holds exactly `image`'s voxels (read back in full), else what is wrong.

    ITK's NIfTI writer ignores failed writes (a full disk leaves a short file that SimpleITK still reads),
    so NIfTI files are read back with nibabel, which raises on a short voxel block or a cut gzip stream.
    """
    expected = sitk.GetArrayViewFromImage(image)
    try:
        if image_suffix(path) in (".nii", ".nii.gz"):
            back = np.asarray(load_nifti(path).dataobj).T  # nibabel's (x, y, z) -> SimpleITK's (z, y, x)
        else:
            back = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except Exception as exc:  # noqa: BLE001 - any failure to read back means the file is not complete
        return f"the written file cannot be read back ({' '.join(str(exc).split())[:120]})"
    if back.shape != expected.shape or not np.array_equal(back, expected, equal_nan=back.dtype.kind == "f"):
        return "the written file differs from the image"
    return None


def to_array(image: sitk.Image, dtype=np.float32) -> np.ndarray:
    """Voxel array in SimpleITK's (z, y, x) order."""
    return sitk.GetArrayFromImage(image).astype(dtype, copy=False)


def from_array(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """An image holding `array` (z, y, x) with the geometry of `reference`."""
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def geometry(image: sitk.Image) -> dict:
    """JSON-serialisable geometry: size (x, y, z), spacing, origin, direction (row-major 3x3)."""
    return {
        "size": list(image.GetSize()),
        "spacing": list(image.GetSpacing()),
        "origin": list(image.GetOrigin()),
        "direction": list(image.GetDirection()),
    }


def geometry_mismatch(a: ImageGrid, b: ImageGrid) -> str | None:
    """None when `a` and `b` share a voxel grid (within tolerance), else the field that differs and both
    values, at a precision that shows the difference."""
    if a.GetSize() != b.GetSize():
        return f"size {a.GetSize()} vs {b.GetSize()}"
    sa, sb = np.array(a.GetSpacing()), np.array(b.GetSpacing())
    if np.any(np.abs(sa - sb) > SPACING_TOLERANCE * np.maximum(np.abs(sa), np.abs(sb))):
        return _difference("spacing", sa, sb, "mm")
    oa, ob = np.array(a.GetOrigin()), np.array(b.GetOrigin())
    if np.any(np.abs(oa - ob) > max(ORIGIN_TOLERANCE_MM, 0.01 * float(np.abs(sa).min()))):
        return _difference("origin", oa, ob, "mm")
    da, db = np.array(a.GetDirection()), np.array(b.GetDirection())
    if np.any(np.abs(da - db) > DIRECTION_TOLERANCE):
        return _difference("direction", da, db, "")
    return None


def _difference(field: str, a: np.ndarray, b: np.ndarray, unit: str) -> str:
    """'spacing[2] differs: (1, 1, 2.5271) vs (1, 1, 2.5276) mm', with as many digits as it takes for the
    differing components to print differently."""
    axes = [i for i in range(len(a)) if a[i] != b[i]]
    digits = next((d for d in range(4, 18) if all(f"{a[i]:.{d}g}" != f"{b[i]:.{d}g}" for i in axes)), 17)
    shown = lambda v: "(" + ", ".join(f"{x:.{digits}g}" for x in v) + ")"  # noqa: E731
    names = ", ".join(f"{field}[{i}]" for i in axes)
    return f"{names} differ{'s' if len(axes) == 1 else ''}: {shown(a)} vs {shown(b)}{' ' + unit if unit else ''}"


def _itk_reason(exc: Exception) -> str:
    """'No space left on device' out of ITK's multi-line exception text."""
    text = str(exc)
    match = re.search(r"Reason: (.+)", text)
    return match.group(1).strip() if match else _short(text.strip().splitlines()[-1] if text.strip() else "unknown")


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
