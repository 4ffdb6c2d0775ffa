"""Helpers for the tests that kill processes (not a test module itself): a process's descendants, waiting
for a condition, and checking that pids are gone (psutil)."""
from __future__ import annotations

import subprocess
import time
from typing import Callable

import psutil


def descendants(pid: int, exclude_helpers: bool = True) -> list[int]:
    """Living descendants of `pid`; without multiprocessing's resource tracker (a helper, not a worker)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            if exclude_helpers and "resource_tracker" in " ".join(child.cmdline()):
                continue
        except psutil.NoSuchProcess:
            continue
        found.append(child.pid)
    return found


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], signum: int, timeout: float = 180,
              settle: float = 0.0) -> list[int]:
    """Wait until `ready()`, note the process's descendants (all of them), send `signum`, reap the process;
    returns the descendants' pids. Fails if the process ends first."""
    deadline = time.time() + timeout
    while not ready():
        assert process.poll() is None, f"process ended (exit {process.returncode}) before it was ready"
        assert time.time() < deadline, "process never got ready"
        time.sleep(0.05)
    time.sleep(settle)
    pids = descendants(process.pid, exclude_helpers=False)
    process.send_signal(signum)
    process.wait(timeout=30)
    return pids


def gone_within(pids: list[int], seconds: float) -> bool:
    """True when every pid has exited (a zombie counts as exited: nothing of it runs) within `seconds`."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if not any(_alive(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
