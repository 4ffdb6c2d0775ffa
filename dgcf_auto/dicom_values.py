"""DICOM value rules: whether a value is valid for its VR (pydicom's rules plus real dates and enumerated
values), and the source values an sCT may copy: valid ones as they are, invalid ones repaired where the intent
is clear (PatientAge '0Y' -> '000Y') or dropped, so no invalid source value reaches a written series."""
from __future__ import annotations

import datetime
import re

import numpy as np

# Written empty when the source's value is dropped (type 2 in the CT image IOD); other dropped tags are left out.
TYPE2_TAGS = {"PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
              "AccessionNumber", "ReferringPhysicianName", "PositionReferenceIndicator", "PatientPosition"}
ENUMERATED_VALUES = {"PatientSex": {"M", "F", "O"}}


def copyable_values(reference, tags) -> tuple[dict, list[str]]:
    """The values of `tags` in a source header, each valid for its VR: invalid ones are repaired where the
    intent is clear (PatientAge '0Y' -> '000Y') or dropped (type 2 tags become empty). Returns (values by
    keyword, what was repaired or dropped, in words)."""
    values, repairs = {}, []
    for tag in tags:
        if tag not in reference:
            continue
        element = reference.data_element(tag)
        value = element.value
        if value in (None, "") or element_valid(element.VR, value, tag):
            values[tag] = value
            continue
        shown = "\\".join(str(v) for v in value) if _multiple(value) else str(value)
        repaired = repair(element.VR, str(value))
        if repaired is not None:
            values[tag] = repaired
            repairs.append(f"{tag} '{shown}' repaired to '{repaired}'")
        else:
            if tag in TYPE2_TAGS:
                values[tag] = ""
            repairs.append(f"{tag} '{shown}' dropped")
    return values, repairs


def all_valid(headers, tag: str, vr: str) -> bool:
    """Every header has a non-empty `tag` valid for `vr`."""
    return all(h.get(tag) not in (None, "") and element_valid(vr, h.get(tag)) for h in headers)


def element_valid(vr: str, value, tag: str = "") -> bool:
    """Every value of a (possibly multi-valued) element is valid for `vr` and, for `tag`s with enumerated
    values, one of them."""
    items = value if _multiple(value) else [value]
    texts = [decimal_string(v) if vr == "DS" else str(v) for v in items]
    if tag in ENUMERATED_VALUES and not all(t in ENUMERATED_VALUES[tag] for t in texts):
        return False
    return all(valid_for_vr(vr, t) for t in texts)


def valid_for_vr(vr: str, text: str) -> bool:
    """`text` is a valid value of VR `vr` (pydicom's VR rules: lengths, characters, formats; dates also real)."""
    from pydicom import config
    from pydicom.valuerep import validate_value

    try:
        validate_value(vr, text, config.RAISE)
        if vr == "DA" and text:
            datetime.datetime.strptime(text, "%Y%m%d")
    except (ValueError, TypeError):
        return False
    return True


def repair(vr: str, text: str) -> str | None:
    """A repaired value where the intent is unambiguous, else None: an Age String without its leading zeros
    ('0Y', '45 Y') is zero-padded; UIDs and decimal/integer strings lose stray spaces and NULs."""
    if vr == "AS":
        match = re.fullmatch(r"\s*(\d{1,3})\s*([DWMY])\s*", text, flags=re.IGNORECASE)
        return f"{int(match.group(1)):03d}{match.group(2).upper()}" if match else None
    if vr in ("UI", "DS", "IS"):
        stripped = text.strip(" \0")
        return stripped if stripped != text and stripped and valid_for_vr(vr, stripped) else None
    return None


def decimal_string(value) -> str:
    """A Decimal String value (at most 16 characters) for a float."""
    from pydicom.valuerep import format_number_as_ds

    original = getattr(value, "original_string", None)  # a source's own DS string, kept as written
    if original:
        return str(original)
    if isinstance(value, str) or not isinstance(value, (float, int, np.floating, np.integer)):
        return str(value)
    return format_number_as_ds(float(value))


def _multiple(value) -> bool:
    from pydicom.multival import MultiValue

    return isinstance(value, (list, tuple, MultiValue))
