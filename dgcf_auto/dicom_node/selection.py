"""Which arriving series the node takes, and which it refuses (with one reason) before predicting.

Taken: a series whose Modality is the model's (MR for an mr2ct model; for cbct2ct a CT whose Image Type
holds CBCT, or any CT with `modality="CT"`), that matches every `--series_filter`, and that is not an sCT
(a CT that dgcf_auto wrote). Refused, each with one reason recorded on the series: more voxels than `max_voxels` (known
from Orthanc's tags before anything is downloaded), an instance of a non-image SOP class, an instance
without a Frame of Reference UID, or instances in more than one frame of reference.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dgcf_auto.dicomio import SOURCE_IMAGE_STORAGE, scan_folder
from dgcf_auto.errors import DGCFError

MODALITY_OF_MODEL = {"mr": "MR", "cbct": "CBCT"}  # plans' source_modality -> what the node takes
WRITER = "dgcf_auto"  # Manufacturer of every series dgcf_auto writes (dicomio.write_ct_series)


class Refused(DGCFError):
    """A series the node will not predict; the message is the one reason."""


@dataclass(frozen=True)
class SeriesFilter:
    """`Keyword~regex` (a regular expression searched in the value, case-insensitive) or `Keyword=value`."""
    keyword: str
    pattern: str
    exact: bool

    @classmethod
    def parse(cls, text: str) -> SeriesFilter:
        match = re.fullmatch(r"([A-Za-z][A-Za-z0-9]*)([~=])(.*)", text)
        if match is None:
            raise DGCFError(f"--series_filter {text!r}: expected Keyword~regex or Keyword=value, e.g. "
                            f"'SeriesDescription~T2'")
        keyword, operator, pattern = match.groups()
        if operator == "~":
            try:
                re.compile(pattern)
            except re.error as exc:
                raise DGCFError(f"--series_filter {text!r}: not a regular expression ({exc})") from None
        return cls(keyword, pattern, operator == "=")

    def matches(self, tags: dict) -> bool:
        value = tags.get(self.keyword, "")
        value = "\\".join(map(str, value)) if isinstance(value, list) else str(value)
        return value == self.pattern if self.exact else re.search(self.pattern, value, re.IGNORECASE) is not None


def takes(modality: str, filters: list[SeriesFilter], tags: dict) -> bool:
    """Whether the node predicts a series with these tags (series main tags, then the first instance's)."""
    found = str(tags.get("Modality", "")).upper()
    if found == "CT" and str(tags.get("Manufacturer", "")) == WRITER:
        return False  # an sCT: never a source
    if modality == "CBCT":
        image_type = tags.get("ImageType", "")
        image_type = image_type if isinstance(image_type, str) else "\\".join(map(str, image_type))
        if found != "CT" or "CBCT" not in image_type.upper().split("\\"):
            return False
    elif found != modality:
        return False
    return all(f.matches(tags) for f in filters)


def check_size(instances: int, first_tags: dict, max_voxels: int | None) -> None:
    """Refuse a series larger than `max_voxels` (instances x rows x columns x frames), before downloading it."""
    if max_voxels is None:
        return
    frames = int(first_tags.get("NumberOfFrames", 1) or 1)
    voxels = instances * int(first_tags.get("Rows", 0) or 0) * int(first_tags.get("Columns", 0) or 0) * frames
    if voxels > max_voxels:
        raise Refused(f"oversized: {voxels} voxels > --max_voxels {max_voxels}")


def check_instances(folder: Path) -> None:
    """Refuse downloaded instances of a non-image SOP class, or without one common Frame of Reference UID."""
    from pydicom.uid import UID

    headers = [h for series in scan_folder(folder).values() for h in series.headers]
    if not headers:
        raise Refused("no DICOM instances")
    classes = sorted({str(getattr(h, "SOPClassUID", "") or "") for h in headers} - set(SOURCE_IMAGE_STORAGE))
    if classes:
        names = ", ".join(UID(c).name if c else "none" for c in classes)
        raise Refused(f"non-image SOP class ({names})")
    frames = [str(getattr(h, "FrameOfReferenceUID", "") or "") for h in headers]
    if "" in frames:
        raise Refused(f"no Frame of Reference UID ({frames.count('')} of {len(frames)} instances)")
    if len(set(frames)) > 1:
        raise Refused(f"mixed frames of reference ({len(set(frames))} Frame of Reference UIDs)")
