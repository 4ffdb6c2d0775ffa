"""Run a per-case function over many cases in `-np` worker processes with a progress bar.

Each worker handles one case at a time and returns a small result, so peak memory depends on the largest
case and the number of workers, never on the number of cases. Workers are spawned (not forked): safe when
the parent already holds torch/CUDA state, e.g. in the demo. SimpleITK's own threads are divided among
the workers (torch's too, through OMP_NUM_THREADS) so that `-np` workers do not oversubscribe the cores.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from typing import Callable, Iterable, Iterator, TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")
MAX_TASKS_PER_CHILD = 16  # recycle workers now and then: returns fragmented heap memory to the system


def _init_worker(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)  # read by torch when a worker imports it (evaluation metrics)
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def map_cases(func: Callable[[T], R], items: Iterable[T], num_processes: int = 1, desc: str = "cases",
              progress: bool = True) -> Iterator[R]:
    """Yield func(item) in the order of `items`; in-process when num_processes <= 1."""
    items = list(items)
    if not items:
        return
    bar = tqdm(total=len(items), desc=desc, unit="case", disable=not progress)
    try:
        if num_processes <= 1 or len(items) <= 1:
            for item in items:
                yield func(item)
                bar.update()
            return
        workers = min(int(num_processes), len(items))
        threads = max(1, (os.cpu_count() or 1) // workers)
        ctx = mp.get_context("spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(threads,),
                      maxtasksperchild=MAX_TASKS_PER_CHILD) as pool:
            for result in pool.imap(func, items, chunksize=1):
                yield result
                bar.update()
    finally:
        bar.close()
