"""Worker processes: the per-case process pool (`-np`) and the rule that no worker outlives its command.

`map_cases` runs a per-case function over many cases in `-np` worker processes with a progress bar. Each
worker handles one case at a time and returns a small result, so peak memory depends on the largest case and
the number of workers, never on the number of cases. Workers are spawned (not forked): safe when the parent
already holds torch/CUDA state, e.g. in the demo. SimpleITK's own threads are divided among the workers
(torch's too, through OMP_NUM_THREADS) so that `-np` workers do not oversubscribe the cores.

Every worker the project starts (these pools, the trainer's data-loader workers, torchrun ranks) calls
`die_with_parent` first: Linux kills it when its parent dies, whatever killed the parent (SIGKILL, the
out-of-memory killer, a scheduler), and a watchdog thread checking the parent's pid does the same elsewhere.
A worker that dies (killed, out of memory) is an error naming its case, never a hang: the pool is a
`concurrent.futures.ProcessPoolExecutor`, which notices dead workers.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import SpawnContext, SpawnProcess
from typing import Any, TypeVar

from dgcf_auto.errors import DGCFError
from dgcf_auto.log import progress_bar, worker_logging

T = TypeVar("T")
R = TypeVar("R")
MAX_TASKS_PER_CHILD = 16  # recycle workers now and then: returns fragmented heap memory to the system
PR_SET_PDEATHSIG = 1      # <linux/prctl.h>
PARENT_CHECK_SECONDS = 1.0
_stopped_workers: list[str] = []  # what a clean stop had to kill, for the command's last line


def die_with_parent(parent_pid: int) -> None:
    """Call first thing in a worker process: it exits as soon as `parent_pid` (its parent) dies.

    prctl(PR_SET_PDEATHSIG, SIGKILL) makes the Linux kernel kill it with its parent; a daemon thread that
    checks os.getppid() every second is the portable fallback. Safe to call twice.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no usable libc: the watchdog below still works
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)
    if not any(t.name == "dgcf-parent-watch" for t in threading.enumerate()):
        threading.Thread(target=_watch_parent, args=(parent_pid,), name="dgcf-parent-watch", daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(1)


def ignore_interrupts() -> None:
    """Workers leave Ctrl-C (sent to the whole process group) to their parent, which stops them in order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def note_stopped(what: str) -> None:
    """Record that a clean stop had to kill `what` (e.g. "2 worker processes"); see `stopped_note`."""
    _stopped_workers.append(what)


def stopped_note() -> str:
    """'' when every worker ended on its own, else '; stopped ...' for the command's last line."""
    return "; stopped " + ", ".join(_stopped_workers) if _stopped_workers else ""


_in_progress: Any = None  # shared array in the pool's workers: case index -> pid of the worker on it (0: not running)


def _init_worker(threads: int, parent_pid: int, in_progress) -> None:
    global _in_progress
    die_with_parent(parent_pid)
    ignore_interrupts()
    _in_progress = in_progress
    os.environ["OMP_NUM_THREADS"] = str(threads)  # read by torch when a worker imports it (evaluation metrics)
    worker_logging()  # warnings of the libraries a worker calls: one line of ours, as in the parent
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _run_case(func: Callable[[T], R], index: int, item: T) -> R:
    _in_progress[index] = os.getpid()
    result = func(item)
    _in_progress[index] = 0
    return result


def map_cases(func: Callable[[T], R], items: Iterable[T], num_processes: int = 1, desc: str = "cases",
              progress: bool = True, names: list[str] | None = None) -> Iterator[R]:
    """Yield func(item) in the order of `items`; in-process when num_processes <= 1. `names` label the items
    in the error raised when a worker dies (default: the item's `.name`, `.case.name` or first element's)."""
    items = list(items)
    if not items:
        return
    bar = progress_bar(total=len(items), desc=desc, unit="case", disable=not progress)
    try:
        if num_processes <= 1 or len(items) <= 1:
            for item in items:
                yield func(item)
                bar.update()
            return
        yield from _map_in_pool(func, items, min(int(num_processes), len(items)), bar,
                                names or [_item_name(item) for item in items])
    finally:
        bar.close()


_started: dict[int, SpawnProcess] = {}  # pid -> every pool worker this process started and has not forgotten


class _RecordedProcess(SpawnProcess):
    def start(self) -> None:
        super().start()
        if self.pid is not None:
            _started[self.pid] = self


class _RecordingSpawnContext(SpawnContext):
    """The spawn context, keeping the worker processes a pool starts: who died, and how, is then known without
    reading the pool's private state."""
    Process = _RecordedProcess

    def __init__(self) -> None:
        super().__init__()
        self._known = set(_started)

    @property
    def processes(self) -> dict[int, SpawnProcess]:
        return {pid: p for pid, p in _started.items() if pid not in self._known}

    def forget(self) -> None:
        for pid in self.processes:
            _started.pop(pid, None)


def _map_in_pool(func, items: list, workers: int, bar, names: list[str]) -> Iterator:
    ctx = _RecordingSpawnContext()
    in_progress = ctx.Array("i", len(items), lock=False)
    threads = max(1, (os.cpu_count() or 1) // workers)
    extra = {"max_tasks_per_child": MAX_TASKS_PER_CHILD} if sys.version_info >= (3, 11) else {}
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(threads, os.getpid(), in_progress), **extra)
    try:
        futures = [pool.submit(_run_case, func, i, item) for i, item in enumerate(items)]
        for future in futures:
            try:
                result = future.result()
            except BrokenProcessPool:
                pool.shutdown(wait=True)
                done = sum(1 for f in futures if f.done() and not f.cancelled() and f.exception() is None)
                raise _dead_worker_error(ctx.processes, in_progress, names, done, len(items)) from None
            yield result
            bar.update()
    except BaseException:  # Ctrl-C, SIGTERM, an error in a case, or the consumer stopped early
        _stop_pool(pool, list(ctx.processes.values()))
        ctx.forget()
        raise
    pool.shutdown(wait=True)
    ctx.forget()


def _stop_pool(pool: ProcessPoolExecutor, processes: list[SpawnProcess], grace: float = 1.0) -> None:
    """Cancel what has not started, let idle workers exit (`grace` s), stop those still on a case, join all."""
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + grace
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
    busy = [p for p in processes if p.is_alive()]
    for process in busy:
        process.terminate()
    for process in busy:
        process.join(timeout=5)
    if busy:
        note_stopped(f"{len(busy)} worker process{'es' if len(busy) > 1 else ''} in the middle of a case")


def _dead_worker_error(processes: dict, in_progress, names: list[str], finished: int, total: int) -> DGCFError:
    """One line: which worker died, how, on which case; what is kept."""
    exits = {pid: p.exitcode for pid, p in dict(processes).items()}
    # once one worker died the pool terminates the others (SIGTERM): the dead one ended otherwise
    dead = {pid: code for pid, code in exits.items() if code not in (None, 0, -signal.SIGTERM)}
    cases = [names[i] for i, pid in enumerate(in_progress) if pid and pid in dead]
    how = ""
    codes = [code for code in dead.values() if code < 0]
    if codes:
        how = f" of {signal.Signals(-codes[0]).name}"
        if codes[0] == -signal.SIGKILL:
            how += " (as the out-of-memory killer does)"
    where = f"while on case {', '.join(cases)}" if cases else "between cases"
    return DGCFError(f"a worker process died{how} {where}; the run stopped ({finished} of {total} cases had "
                     f"finished and are kept; rerun to do the rest, or use fewer -np workers if memory is short)")


def _item_name(item) -> str:
    for candidate in (item, getattr(item, "case", None), item[0] if isinstance(item, tuple) and item else None):
        name = getattr(candidate, "name", None)
        if isinstance(name, str):
            return name
    return str(item)[:80]
