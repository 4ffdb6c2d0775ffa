"""Every console script exists, and documentation/commands.md is exactly what the parsers print."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

from dgcf_auto.cli import COMMANDS, commands_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_every_console_script_points_at_a_cli_main():
    scripts = dict(re.findall(r'"(dgcf_\w+)": "dgcf_auto\.cli\.(\w+):main"', (ROOT / "setup.py").read_text()))
    assert sorted(scripts) == sorted(f"dgcf_{c}" for c in COMMANDS)
    for script, module in scripts.items():
        assert script == f"dgcf_{module}"
        assert callable(importlib.import_module(f"dgcf_auto.cli.{module}").main)


def test_commands_page_matches_the_parsers():
    assert (ROOT / "documentation" / "commands.md").read_text() == commands_markdown(), (
        "documentation/commands.md is stale; regenerate it with the command written at its top")
