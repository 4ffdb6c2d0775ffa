"""The console-script wrapper: one line per user error, clean exits on Ctrl-C and SIGTERM.

Library code raises `DGCFError` naming Python parameters in backticks ("`max_voxels` must be at least 1"); a
command prints each such name as the flag that sets it ("--max_voxels must be at least 1"), looked up in the
parser that parsed this command's arguments (`CommandParser` records its flags here).
"""
from __future__ import annotations

import contextlib
import functools
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator

from dgcf_auto.errors import DGCFError, Terminated

_PARAMETER = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")
_flags: dict[str, str] = {}   # parameter (argparse dest) -> the flag that sets it, for the running command


def record_flags(flags: dict[str, str]) -> None:
    """Called by CommandParser when it parses: which flag sets each parameter of the running command."""
    _flags.clear()
    _flags.update(flags)


def render(message: str) -> str:
    """A library message as the command line says it: `parameter` -> its flag (or the bare name)."""
    return _PARAMETER.sub(lambda m: _flags.get(m.group(1), m.group(1)), message)


def cli_entry(func: Callable[..., int | None]) -> Callable[..., None]:
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
            for line in render(str(exc)).splitlines():
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
def _sigterm_unwinds() -> Iterator[None]:
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
