"""One logging setup (dgcf_auto/log.py): -q / --verbose, warnings once per command, progress bars only on a
terminal, timm's FutureWarning filtered."""
from __future__ import annotations

import logging
import sys
import warnings

import pytest

from dgcf_auto.cli.visualize import build_parser
from dgcf_auto.log import command_session, get_logger, progress_bar, quiet_known_warnings

log = get_logger("dgcf_auto.test_logging")
ARGV = ["-i", "a", "-sct", "b", "-o", "c"]


def _talk() -> None:
    log.debug("debug line")
    log.info("info line")
    log.warning("warning line")


@pytest.mark.parametrize("flags, shown, hidden", [
    ([], ["info line", "WARNING: warning line"], ["debug line"]),
    (["-q"], ["WARNING: warning line"], ["info line", "debug line"]),
    (["--quiet"], ["WARNING: warning line"], ["info line", "debug line"]),
    (["--verbose"], ["debug line", "info line", "WARNING: warning line"], []),
])
def test_quiet_and_verbose_choose_what_reaches_stderr(flags, shown, hidden, capsys):
    with command_session():
        build_parser().parse_args(ARGV + flags)
        _talk()
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert all(line in lines for line in shown) and not any(line in lines for line in hidden)
    assert captured.out == ""  # messages never mix into a command's results


def test_flags_change_nothing_outside_a_command_and_a_command_restores_the_setup():
    root = logging.getLogger("dgcf_auto")
    before = (root.level, root.propagate, list(root.handlers))
    build_parser().parse_args(ARGV + ["-q"])  # parsing alone (tests, commands.md) configures nothing
    assert (root.level, root.propagate, list(root.handlers)) == before
    with command_session():
        build_parser().parse_args(ARGV + ["--verbose"])
        assert root.level == logging.DEBUG
    assert (root.level, root.propagate, list(root.handlers)) == before


def test_a_warning_is_printed_once_per_command(capsys):
    other = get_logger("dgcf_auto.test_logging.other")
    for _ in range(2):  # a second command says it again
        with command_session():
            for logger in (log, other, log):
                logger.warning("the same warning")
            log.warning("another warning")
            log.info("info repeats")
            log.info("info repeats")
    assert capsys.readouterr().err.splitlines() == [
        "WARNING: the same warning", "WARNING: another warning", "info repeats", "info repeats"] * 2


def test_outside_a_command_warnings_are_not_deduplicated(caplog):
    for _ in range(2):
        log.warning("API warning")
    assert caplog.messages.count("API warning") == 2


def _draw_bars() -> None:
    for _ in progress_bar(range(3), desc="outer", unit="case"):
        for _ in progress_bar(range(2), desc="inner", leave=False):
            pass


@pytest.mark.parametrize("tty, flags, drawn", [
    (False, [], False),                        # a log file: no carriage returns, no cursor-up (ESC[A)
    (True, [], True),
    (True, ["--disable_progress_bar"], False),
    (True, ["--disable-progress-bar"], False),
    (True, ["-q"], False),
])
def test_progress_bars_only_on_a_terminal_and_never_when_switched_off(tty, flags, drawn, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty, raising=False)
    with command_session():
        build_parser().parse_args(ARGV + flags)
        _draw_bars()
    err = capsys.readouterr().err
    assert ("outer: 100%" in err) is drawn
    if not drawn:
        assert err == "" and "\x1b[A" not in err


def test_timm_future_warning_is_filtered_and_others_are_not():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_warnings()
        warnings.warn("`torch.jit.interface` is deprecated. Please use `torch.compile` instead.", FutureWarning)
        warnings.warn("something else is deprecated", FutureWarning)
    assert [str(w.message) for w in caught] == ["something else is deprecated"]
