"""A raw look at NIfTI voxel bytes, for the two faults SimpleITK cannot see.

ITK 5.x's NIfTI reader silently replaces every NaN/inf voxel with 0 (fixed only in ITK 6,
InsightSoftwareConsortium/ITK#6683), and it accepts a truncated .nii.gz without complaint. Validation
therefore decompresses NIfTI files itself, checks the voxel block is complete and, for float data,
counts non-finite voxels in the bytes on disk. MetaImage (.mha) needs none of this: ITK keeps NaN there.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

# NIfTI datatype code -> numpy dtype (scalar types only; others are left to SimpleITK's checks).
_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8", 1280: "u8"}


def nifti_voxel_problem(path: str | os.PathLike) -> str | None:
    """None when the NIfTI voxel block is complete and finite, else the problem in words."""
    path = Path(path)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError, zlib.error) as exc:
        return f"is truncated or corrupt ({' '.join(str(exc).split())[:100]})"
    header = _parse_header(data)
    if header is None:
        return None  # not a NIfTI header we understand; SimpleITK has already judged it
    dtype, shape, offset = header
    expected = math.prod(shape) * dtype.itemsize
    available = len(data) - offset
    if available < expected:
        return f"voxel data is truncated ({max(available, 0)} of {expected} bytes)"
    if dtype.kind == "f":
        voxels = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=offset)
        bad = int(voxels.size - np.count_nonzero(np.isfinite(voxels)))
        if bad:
            return f"{bad} NaN/inf voxels; every voxel must be finite"
    return None


def _parse_header(data: bytes) -> tuple[np.dtype, tuple[int, ...], int] | None:
    if len(data) < 348:
        return None
    for endian in "<>":
        sizeof_hdr = struct.unpack(endian + "i", data[:4])[0]
        if sizeof_hdr == 348:
            ndim_and_dims = struct.unpack(endian + "8h", data[40:56])
            datatype = struct.unpack(endian + "h", data[70:72])[0]
            offset = int(struct.unpack(endian + "f", data[108:112])[0])
            break
        if sizeof_hdr == 540 and len(data) >= 540:
            datatype = struct.unpack(endian + "h", data[12:14])[0]
            ndim_and_dims = struct.unpack(endian + "8q", data[16:80])
            offset = struct.unpack(endian + "q", data[168:176])[0]
            break
    else:
        return None
    if datatype not in _DTYPES or not 1 <= ndim_and_dims[0] <= 7:
        return None
    shape = tuple(max(int(d), 1) for d in ndim_and_dims[1:1 + ndim_and_dims[0]])
    return np.dtype(endian + _DTYPES[datatype]), shape, max(int(offset), 348)
