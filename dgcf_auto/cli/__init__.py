"""Thin argparse entry points, one module per console script (see setup.py); no logic beyond parsing.

Every command builds a `CommandParser` and ends `build_parser()` with `finish_parser(parser)`, which adds the
options every command shares (--version, -q, --verbose, --disable_progress_bar) and the flag-style aliases
(documentation/commands.md, "Flag style").
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import os
import re
import sys

# In pipeline order; the console script is "dgcf_" + the module name.
COMMANDS = ("make_example_dataset", "convert_synthrad2023", "plan_and_preprocess", "train", "predict",
            "evaluate", "compare", "ensemble", "find_best_configuration", "export_model_to_zip",
            "install_model_from_zip", "import_reference_checkpoint",
            "visualize", "demo", "dicom_node")


_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")  # argparse's test for a negative number (a value, not a flag)


class CommandParser(argparse.ArgumentParser):
    """argparse with exact flags only: no abbreviations (`--continue` is not `--continue_prediction`), also
    none of single-dash long flags, which argparse still expands (`-num` for `-num_parts`), and no letters glued
    to a short flag (`-pretrained_weight x.pth` is not `-p retrained_weight`); digits may be (`-f0`, `-d1`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        for arg in args:
            if arg == "--":
                break
            if len(arg) < 2 or arg[0] not in self.prefix_chars or _NUMBER.match(arg) or " " in arg:
                continue
            flag = arg.split("=", 1)[0]
            if flag in self._option_string_actions or (arg[1] not in self.prefix_chars and arg[:2] in
                                                        self._option_string_actions and arg[2:].isdigit()):
                continue
            shown = [option for action in self._actions for option in action.option_strings]
            close = difflib.get_close_matches(flag, shown, n=1)
            self.error(f"unrecognized argument: {arg}" + (f" (did you mean {close[0]}?)" if close else ""))
        from dgcf_auto.cli.entry import record_flags

        record_flags({action.dest: action.option_strings[0] for action in self._actions if action.option_strings})
        return super().parse_known_args(args, namespace)


class _ShowDefaults(argparse.HelpFormatter):
    """Appends "(default: X)" to every option whose help does not already name its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (not action.option_strings or text is argparse.SUPPRESS or "default" in text
                or default in (None, False, argparse.SUPPRESS) or default == () or default == []):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def twin_spelling(flag: str) -> str | None:
    """The other spelling of a long flag: `--save_uncertainty` <-> `--save-uncertainty`, `-num_parts` <->
    `-num-parts`; None for flags without a word break (`-d`, `--c`, `--png`)."""
    prefix = flag[:2] if flag.startswith("--") else flag[:1]
    body = flag[len(prefix):]
    if "_" in body:
        return prefix + body.replace("_", "-")
    if "-" in body:
        return prefix + body.replace("-", "_")
    return None


def finish_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The end of every `build_parser()`: the shared options, defaults in --help, and for each long flag its
    other spelling (hyphens for underscores or back) as a hidden alias of the same option, so nnU-Net habits
    and older scripts both parse while --help shows one style."""
    from dgcf_auto import __version__
    from dgcf_auto.log import add_logging_options

    parser.allow_abbrev = False
    formatter = parser.formatter_class
    assert isinstance(formatter, type), "argparse's formatter_class is a HelpFormatter class"
    if not issubclass(formatter, _ShowDefaults):
        showing = type("HelpFormatter", (_ShowDefaults, formatter), {})
        assert issubclass(showing, _ShowDefaults)  # for the type checker: type() built it from _ShowDefaults
        parser.formatter_class = showing
    if "--version" not in parser._option_string_actions:
        parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_logging_options(parser)
    for action in list(parser._actions):
        for flag in action.option_strings:
            twin = twin_spelling(flag)
            if twin is not None and twin not in parser._option_string_actions:
                # the same action under a second name: parsed alike, left out of --help (which lists
                # action.option_strings), and in the same mutually exclusive group
                parser._option_string_actions[twin] = action
    return parser


def add_max_voxels(parser):
    """`--max_voxels` on every command that reads images: the largest image it reads."""
    parser.add_argument("--max_voxels", type=int, default=None, metavar="N",
                        help="refuse images whose header declares more than N voxels, before reading them "
                             "(default: 2**31; the machine's memory is checked too)")
    return parser


def commands_markdown(width: int = 100) -> str:
    """documentation/commands.md: every command's --help, generated so the page never drifts from the code."""
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        parts = ["# Commands\n",
                 "Every command and flag, as `--help` prints them (generated by "
                 "`python -c \"from dgcf_auto.cli import commands_markdown as m; print(m(), end='')\" "
                 "> documentation/commands.md`; a test keeps this page in step with the code).\n",
                 "**Flag style.** Flags are spelled as nnU-Net v2 spells them wherever nnU-Net has the flag "
                 "(`--disable_tta`, `--continue_prediction`, `--c`, `--val_best`, `-npp`, `-nps`, `-np`, `-chk`, "
                 "`-device`, `-num_parts`, `--no_pp`, `--verbose`), with underscores elsewhere; the same flag with "
                 "hyphens (`--save-uncertainty`) is accepted too but not listed. Flags match exactly: no "
                 "abbreviations (`--continue`), and no letters glued to a short flag (`-pretrained_weight` is not "
                 "`-p retrained_weight`; digits may be, `-f0`). `-np` is always a number of worker processes.\n",
                 "**Messages.** Results (tables, written paths) go to stdout; everything else goes to stderr "
                 "through Python's `logging`: `-q` keeps warnings and errors only, `--verbose` adds debugging "
                 "messages, and a warning is printed once per command. Progress bars are drawn only when stderr is "
                 "a terminal, never with `-q` or `--disable_progress_bar`. From Python (`dgcf_auto.predict`, "
                 "`run_training`) the same messages go to the `dgcf_auto` logger: warnings show without any setup, "
                 "`logging.basicConfig(level=logging.INFO)` shows the rest.\n"]
        for name in COMMANDS:
            parser = importlib.import_module(f"dgcf_auto.cli.{name}").build_parser()
            parts.append(f"## dgcf_{name}\n\n```text\n{parser.format_help().rstrip()}\n```\n")
        return "\n".join(parts)
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous
