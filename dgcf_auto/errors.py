"""One exception type for every user-facing problem, and the CLI wrapper that turns it into one line.

Raise `DGCFError("case 1PA001: file mr.nii.gz: ...")` anywhere; the command prints exactly that line to
stderr and exits with status 1, without a traceback. Programming errors still raise normally.
"""
from __future__ import annotations

import functools
import sys
from typing import Callable, Iterable


class DGCFError(Exception):
    """A problem the user can fix (bad input, missing files, wrong id). The message is the whole story."""


class DGCFInputErrors(DGCFError):
    """Several independent input problems found at once (e.g. dataset validation); one line each."""

    def __init__(self, problems: Iterable[str], header: str | None = None):
        self.problems = list(problems)
        lines = ([header] if header else []) + self.problems
        super().__init__("\n".join(lines))


def cli_entry(func: Callable[[], int | None]) -> Callable[[], None]:
    """Decorate a console-script `main`: DGCFError -> message on stderr and exit 1, Ctrl-C -> exit 130."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        prog = func.__module__.rsplit(".", 1)[-1]
        try:
            code = func(*args, **kwargs)
        except DGCFError as exc:
            for line in str(exc).splitlines():
                print(f"dgcf_{prog}: error: {line}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            print(f"dgcf_{prog}: interrupted", file=sys.stderr)
            sys.exit(130)
        sys.exit(code or 0)

    return wrapper
