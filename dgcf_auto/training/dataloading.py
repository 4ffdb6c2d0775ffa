"""Random training slices from the preprocessed, memory-mapped (S, H, W) arrays, with batchgenerators.

Determinism: batch number i is drawn from its own generator seeded with (seed, rank, i). Which background
worker made it does not matter, so a run with 0 or 8 workers sees the same batches, and resuming only needs
the index of the next batch (stored in the checkpoint) to continue the exact same stream.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from batchgenerators.dataloading.data_loader import SlimDataLoaderBase
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter

from dgcf_auto.errors import DGCFError
from dgcf_auto.plans import check_slab_size
from dgcf_auto.slabs import gather_slabs
from dgcf_auto.workers import die_with_parent, ignore_interrupts, note_stopped


@dataclass
class CaseArrays:
    name: str
    source: np.ndarray  # (S, H, W) float32, memory-mapped
    ct: np.ndarray      # (S, H, W) float32 in [-1, 1], memory-mapped
    mask: np.ndarray    # (S, H, W) uint8, memory-mapped


def open_case(folder: Path, name: str) -> CaseArrays:
    """Memory-map one preprocessed case; a missing or unreadable array is a clear error."""
    arrays: dict[str, np.ndarray] = {}
    for kind in ("source", "ct", "mask"):
        path = Path(folder) / f"{name}_{kind}.npy"
        if not path.is_file():
            raise DGCFError(f"case {name}: file {path} is missing; run dgcf_plan_and_preprocess again")
        try:
            arrays[kind] = np.load(path, mmap_mode="r")
        except Exception as exc:
            raise DGCFError(f"case {name}: file {path} cannot be read ({type(exc).__name__}: {exc})") from None
    shapes = {k: a.shape for k, a in arrays.items()}
    if len(set(shapes.values())) != 1 or len(arrays["source"].shape) != 3:
        raise DGCFError(f"case {name}: arrays in {folder} disagree in shape or are not (S, H, W): {shapes}")
    return CaseArrays(name, arrays["source"], arrays["ct"], arrays["mask"])


class SliceDataLoader(SlimDataLoaderBase):
    """Endless batches {"source": (B,k,H,W), "ct": (B,1,H,W)} float32, sampled uniformly over all slices of
    the training cases; with `foreground_fraction` f, each slice comes with probability f from the slices
    whose body mask is non-empty (so at least ~f of a batch shows anatomy). `slab_size` k: 1 for 2d; k > 1
    (2.5d) gives each sampled slice's source with its neighbours as channels (`dgcf_auto.slabs`), the
    target staying the centre slice's CT."""

    batch_size: int  # set by SlimDataLoaderBase

    def __init__(self, cases: list[CaseArrays], batch_size: int, seed: int, rank: int = 0,
                 foreground_fraction: float | None = None, transform=None, start_batch: int = 0,
                 num_workers: int = 1, slab_size: int = 1):
        super().__init__(None, batch_size, max(num_workers, 1))
        if not cases:
            raise DGCFError("no training cases in this fold")
        self.cases, self.seed, self.rank = cases, int(seed), int(rank)
        self.slab_size = check_slab_size(slab_size)
        self.transform = transform
        self.foreground_fraction = float(foreground_fraction or 0.0)
        self.next_batch = int(start_batch)  # advanced by number_of_threads per call (see generate_train_batch)
        # global slice index -> (case, slice); foreground subset from the masks (read once)
        self.slice_case = np.concatenate([np.full(len(c.source), i) for i, c in enumerate(cases)])
        self.slice_index = np.concatenate([np.arange(len(c.source)) for c in cases])
        body = np.concatenate([np.asarray(c.mask).reshape(len(c.mask), -1).any(axis=1) for c in cases])
        self.foreground_slices = np.flatnonzero(body)
        self.parent_pid = os.getpid()  # the trainer; a background worker dies with it

    def set_thread_id(self, thread_id: int) -> None:
        # batchgenerators calls this first thing in each MultiThreadedAugmenter worker (its `producer`): the
        # hook that makes the worker die with the trainer, even when the trainer is SIGKILLed.
        super().set_thread_id(thread_id)
        if os.getpid() != self.parent_pid:
            die_with_parent(self.parent_pid)
            ignore_interrupts()  # Ctrl-C reaches the trainer, which stops its workers in order

    @property
    def num_slices(self) -> int:
        return len(self.slice_case)

    def batch_generator(self, batch_number: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.rank, batch_number])

    def sample_slices(self, rng: np.random.Generator) -> np.ndarray:
        picks = rng.integers(0, self.num_slices, self.batch_size)
        if self.foreground_fraction > 0 and len(self.foreground_slices):
            use_fg = rng.random(self.batch_size) < self.foreground_fraction
            fg = self.foreground_slices[rng.integers(0, len(self.foreground_slices), self.batch_size)]
            picks = np.where(use_fg, fg, picks)
        return picks

    def make_batch(self, batch_number: int) -> dict:
        rng = self.batch_generator(batch_number)
        picks = self.sample_slices(rng)
        if self.slab_size == 1:
            source = np.stack([self.cases[self.slice_case[p]].source[self.slice_index[p]] for p in picks])[:, None]
        else:
            source = np.concatenate([gather_slabs(self.cases[self.slice_case[p]].source, [self.slice_index[p]],
                                                  self.slab_size) for p in picks])
        ct = np.stack([self.cases[self.slice_case[p]].ct[self.slice_index[p]] for p in picks])
        batch = {"source": source.astype(np.float32), "ct": ct[:, None].astype(np.float32)}
        if self.transform is not None:
            # batchgenerators transforms draw from np.random: seed it from this batch's own generator
            np.random.seed(int(rng.integers(0, 2**31 - 1)))
            both = self.transform(data=np.concatenate([batch["source"], batch["ct"]], axis=1))["data"]
            k = self.slab_size  # one spatial transform for every source channel and the target
            batch = {"source": np.ascontiguousarray(both[:, :k]), "ct": np.ascontiguousarray(both[:, k:])}
        return {**batch, "batch_number": batch_number}

    def generate_train_batch(self) -> dict:
        # MultiThreadedAugmenter gives each worker a copy with thread_id t and reads the workers round-robin,
        # so worker t making batches start+t, start+t+n, ... delivers them in order start, start+1, ...
        number = self.next_batch + self.thread_id
        self.next_batch += self.number_of_threads_in_multithreaded
        return self.make_batch(number)


def augmentation_transform(patch_size: tuple[int, int]):
    """Small in-plane rotations and left-right / up-down mirroring; used only if plans say augmentation."""
    from batchgenerators.transforms.abstract_transforms import Compose
    from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform

    return Compose([
        SpatialTransform(patch_size, do_elastic_deform=False, do_rotation=True,
                         angle_x=(-np.pi / 12, np.pi / 12), do_scale=False, random_crop=False,
                         border_mode_data="nearest", order_data=1, p_rot_per_sample=0.3),
        MirrorTransform(axes=(0, 1)),
    ])


def make_batch_stream(loader: SliceDataLoader, num_workers: int):
    """Background workers via MultiThreadedAugmenter (processes); 0 workers -> in the main process."""
    if num_workers <= 0:
        loader.number_of_threads_in_multithreaded = 1
        return SingleThreadedAugmenter(loader, None)
    loader.number_of_threads_in_multithreaded = num_workers
    return MultiThreadedAugmenter(loader, None, num_workers, num_cached_per_queue=4,
                                  seeds=[loader.seed + w for w in range(num_workers)], pin_memory=False)


def next_batch(stream) -> dict:
    """The next batch; a background worker that died (killed, out of memory) is one error line, not a trace."""
    try:
        return next(stream)
    except RuntimeError as exc:
        if "no longer alive" not in str(exc):
            raise
        raise DGCFError("a data-loader worker process died (killed, e.g. by the out-of-memory killer); continue "
                        "from the last epoch's checkpoint with --c, with fewer --num_workers if memory is "
                        "short") from None


def close_batch_stream(stream, timeout: float = 10) -> None:
    """Stop and join the background workers (a clean stop leaves none); note any that had to be killed."""
    if isinstance(stream, MultiThreadedAugmenter):
        processes = list(stream._processes)
        stream._finish(timeout=timeout)  # asks them to stop, waits `timeout` s, terminates stragglers
        killed = sum(1 for p in processes if p.exitcode is not None and p.exitcode < 0)
        if killed:
            note_stopped(f"{killed} data-loader worker{'s' if killed > 1 else ''} that did not stop in {timeout:g} s")
