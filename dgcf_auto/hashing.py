"""The one file hash: streaming SHA-256 of a file, or of a folder (a DICOM series, a model folder).

A folder's hash is the SHA-256 of one line `<relative path>\t<SHA-256 of the file>\n` per file under it (any
depth, POSIX separators, sorted by that path); so a renamed, added, removed or altered file changes it, and a
flat folder's hash is that of its `<name>\t<hash>` lines. Files are read in blocks: memory stays flat whatever
their size.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

CHUNK = 1 << 22


def file_sha256(path: str | os.PathLike, chunk: int = CHUNK) -> str:
    """Hex SHA-256 of a file, or of a folder's files (see the module doc)."""
    path = Path(path)
    if path.is_dir():
        files = sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*") if p.is_file())
        listing = "".join(f"{name}\t{file_sha256(p, chunk)}\n" for name, p in files)
        return hashlib.sha256(listing.encode()).hexdigest()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
