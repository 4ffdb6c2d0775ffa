"""One exception type for every user-facing problem, and the CLI wrapper that turns it into one line.

Raise `DGCFError("case 1PA001: file mr.nii.gz: ...")` anywhere; the command prints exactly that line to
stderr and exits with status 1, without a traceback. Programming errors still raise normally.
"""
from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading
from typing import Callable, Iterable


class DGCFError(Exception):
    """A problem the user can fix (bad input, missing files, wrong id). The message is the whole story."""


class DGCFInputErrors(DGCFError):
    """Several independent input problems found at once (e.g. dataset validation); one line each."""

    def __init__(self, problems: Iterable[str], header: str | None = None):
        self.problems = list(problems)
        lines = ([header] if header else []) + self.problems
        super().__init__("\n".join(lines))


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that it unwinds like Ctrl-C: workers are stopped and joined."""


def cli_entry(func: Callable[[], int | None]) -> Callable[[], None]:
    """Decorate a console-script `main`: its logging (log.command_session), DGCFError -> message on stderr and
    exit 1, Ctrl-C -> exit 130, SIGTERM -> exit 143 (both after the workers were stopped; the last line says if
    any had to be killed)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from dgcf_auto.log import command_session
        from dgcf_auto.workers import stopped_note

        prog = func.__module__.rsplit(".", 1)[-1]
        try:
            with _sigterm_unwinds(), command_session():
                code = func(*args, **kwargs)
        except DGCFError as exc:
            for line in str(exc).splitlines():
                print(f"dgcf_{prog}: error: {line}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt as exc:
            terminated = isinstance(exc, Terminated)
            print(f"dgcf_{prog}: {'terminated (SIGTERM)' if terminated else 'interrupted'}{stopped_note()}",
                  file=sys.stderr)
            sys.exit(143 if terminated else 130)
        sys.exit(code or 0)

    return wrapper


@contextlib.contextmanager
def _sigterm_unwinds():
    """While a command runs, SIGTERM raises `Terminated` in the main thread (restored afterwards)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
