"""The exception types of every user-facing problem (a leaf module: it imports nothing of dgcf_auto).

Raise `DGCFError("case 1PA001: file mr.nii.gz: ...")` anywhere; a command prints exactly that line to stderr
and exits with status 1, without a traceback (dgcf_auto/cli/entry.py). A message names a Python parameter in
backticks ("`max_voxels` must be at least 1"); the command line shows the flag that sets it instead
("--max_voxels must be at least 1"). Programming errors still raise normally.
"""
from __future__ import annotations

from collections.abc import Iterable


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
