"""How much memory an image will take through the pipeline, known from its header before anything is
decompressed, and how much this process may still use.

The model: peak bytes = voxels x (PEAK_BYTES_PER_VOXEL + PEAK_BYTES_PER_STORED_BYTE x the stored dtype's
item size), the largest over the stages that hold a whole image (validation, the source checks, prediction's
preprocessing and way back). The factors are measured by benchmarks/peak_memory.py (peak RSS above the
stage's start, the slope over two volume sizes; the figures are in documentation/benchmarks.md) and rounded
up. Available memory is the smallest of what the kernel says is available (MemAvailable), what the cgroup
still allows (memory.max - memory.current) and what the address-space limit leaves (RLIMIT_AS - VmSize).
"""
from __future__ import annotations

import math
import os
import resource
from pathlib import Path

# benchmarks/peak_memory.py, documentation/benchmarks.md: peak bytes per voxel per stage as (base,
# per stored byte), fitted on int16 and float32 sources and rounded up. Measured slopes: validate 4.0 / 8.1,
# source_checks 3.2 / 5.1, predict 29.7 / 29.5 (int16 / float32); predict works on float32 copies whatever the
# stored type, its per-byte term is the stored image held beside them.
STAGE_PEAK_BYTES = {
    "validate": (0.0, 2.1),
    "source_checks": (1.5, 1.0),
    "predict": (28.0, 1.0),
}


def peak_bytes(voxels: int, itemsize: int) -> int:
    """The largest peak (bytes) any stage reaches on an image of `voxels` voxels stored `itemsize` bytes each."""
    return int(math.ceil(voxels * bytes_per_voxel(itemsize)))


def bytes_per_voxel(itemsize: int) -> float:
    return max(base + per_byte * itemsize for base, per_byte in STAGE_PEAK_BYTES.values())


def available_memory() -> tuple[int, str] | None:
    """(bytes this process may still allocate, what limits it), or None where nothing can be read."""
    limits = []
    meminfo = _read_fields("/proc/meminfo")
    if "MemAvailable" in meminfo:
        limits.append((meminfo["MemAvailable"] * 1024, "available on this machine"))
    else:
        try:
            limits.append((os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "of this machine's memory"))
        except (AttributeError, ValueError, OSError):
            pass
    if (cgroup := _cgroup_room()) is not None:
        limits.append((cgroup, "left under this process's cgroup memory limit"))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    status = _read_fields("/proc/self/status")
    if soft != resource.RLIM_INFINITY and "VmSize" in status:
        limits.append((max(0, soft - status["VmSize"] * 1024), "left under this process's address-space limit "
                                                                "(ulimit -v)"))
    return min(limits) if limits else None


def _read_fields(path: str) -> dict[str, int]:
    """'Key:   123 kB' lines -> {Key: 123}."""
    fields = {}
    try:
        for line in Path(path).read_text().splitlines():
            key, _, value = line.partition(":")
            if value.split() and value.split()[0].isdigit():
                fields[key.strip()] = int(value.split()[0])
    except OSError:
        pass
    return fields


def _cgroup_room() -> int | None:
    """cgroup v2 memory.max - memory.current (v1: limit_in_bytes - usage_in_bytes), None without a limit."""
    v1 = "/sys/fs/cgroup/memory/memory."
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         (v1 + "limit_in_bytes", v1 + "usage_in_bytes")):
        try:
            cap, used = Path(limit).read_text().strip(), int(Path(usage).read_text().strip())
        except (OSError, ValueError):
            continue
        if cap.isdigit() and int(cap) < 2**60:
            return max(0, int(cap) - used)
    return None


__all__ = ["STAGE_PEAK_BYTES", "peak_bytes", "bytes_per_voxel", "available_memory"]
