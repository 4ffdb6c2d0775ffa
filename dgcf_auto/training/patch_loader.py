"""Random 3D training patches from the preprocessed (Z, Y, X) volumes of a 3d_fullres configuration.

nnU-Net's sampling: each patch comes from a case drawn uniformly; with probability `foreground_fraction`
(nnU-Net's oversample_foreground_percent, 0.33 in the 3d plans) it contains a voxel drawn from the case's
body mask, otherwise it lies anywhere in the volume. A volume smaller than the patch on an axis is padded
(source and CT with -1, air in both normalisations; mask with 0), so any case trains with any patch.

Batches are deterministic in (seed, rank, batch number) and delivered in order by any number of workers:
the slice loader's scheme (`dataloading.SliceDataLoader`), whose worker plumbing this class inherits.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
from batchgenerators.dataloading.data_loader import SlimDataLoaderBase

from dgcf_auto.errors import DGCFError
from dgcf_auto.training.dataloading import CaseArrays, SliceDataLoader

MAX_FOREGROUND_SAMPLES = 10000  # body voxels kept per case to draw patch centres from (nnU-Net keeps 10000)
PAD_VALUES = {"source": -1.0, "ct": -1.0, "mask": 0}


class PatchDataLoader(SliceDataLoader):
    """Endless batches {"source", "ct": (B, 1, D, H, W) float32, "mask": (B, 1, D, H, W) uint8}."""

    def __init__(self, cases: list[CaseArrays], patch_size, batch_size: int, seed: int, rank: int = 0,
                 foreground_fraction: float | None = None, start_batch: int = 0, num_workers: int = 1):
        SlimDataLoaderBase.__init__(self, None, batch_size, max(num_workers, 1))
        if not cases:
            raise DGCFError("no training cases in this fold")
        self.cases, self.seed, self.rank = cases, int(seed), int(rank)
        self.patch = tuple(int(p) for p in patch_size)
        self.transform = None
        self.foreground_fraction = float(foreground_fraction or 0.0)
        self.next_batch = int(start_batch)
        # a fixed sample of each case's body voxels (the same on every rank and worker)
        self.foreground = [_sample_voxels(np.asarray(c.mask), np.random.default_rng([self.seed, i]))
                           for i, c in enumerate(cases)]
        self.parent_pid = os.getpid()

    def patch_start(self, shape, rng: np.random.Generator, foreground: np.ndarray | None) -> list[int]:
        """Lower corner of the patch in the (padded) volume: containing a body voxel, or uniform."""
        padded = [max(n, p) for n, p in zip(shape, self.patch)]
        offset = [(m - n) // 2 for m, n in zip(padded, shape)]
        highest = [m - p for m, p in zip(padded, self.patch)]
        if foreground is not None and len(foreground):
            voxel = foreground[rng.integers(len(foreground))] + np.array(offset)
            return [int(min(max(v - p // 2, 0), h)) for v, p, h in zip(voxel, self.patch, highest)]
        return [int(rng.integers(h + 1)) for h in highest]

    def make_batch(self, batch_number: int) -> dict:
        rng = self.batch_generator(batch_number)
        arrays: dict[str, list[np.ndarray]] = {key: [] for key in PAD_VALUES}
        for _ in range(self.batch_size):
            index = int(rng.integers(len(self.cases)))
            case = self.cases[index]
            use_foreground = rng.random() < self.foreground_fraction
            start = self.patch_start(case.source.shape, rng, self.foreground[index] if use_foreground else None)
            for key in PAD_VALUES:
                arrays[key].append(self._crop(getattr(case, key), start, PAD_VALUES[key]))
        batch: dict[str, Any] = {key: np.stack(values)[:, None] for key, values in arrays.items()}
        batch["source"] = batch["source"].astype(np.float32, copy=False)
        batch["ct"] = batch["ct"].astype(np.float32, copy=False)
        batch["batch_number"] = batch_number
        return batch

    def _crop(self, volume: np.ndarray, start, pad_value: float) -> np.ndarray:
        """The patch at `start` of the volume padded (centred) to at least the patch size."""
        shape = volume.shape
        padded = [max(n, p) for n, p in zip(shape, self.patch)]
        offset = [(m - n) // 2 for m, n in zip(padded, shape)]
        out = np.full(self.patch, pad_value, dtype=volume.dtype)
        src, dst = [], []
        for s, p, o, n in zip(start, self.patch, offset, shape):
            lo, hi = max(s - o, 0), min(s - o + p, n)  # the part of the real volume inside the patch
            src.append(slice(lo, hi))
            dst.append(slice(lo - (s - o), hi - (s - o)))
        out[tuple(dst)] = volume[tuple(src)]
        return out


def _sample_voxels(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    voxels = np.argwhere(mask > 0)
    if len(voxels) > MAX_FOREGROUND_SAMPLES:
        voxels = voxels[rng.choice(len(voxels), MAX_FOREGROUND_SAMPLES, replace=False)]
    return voxels
