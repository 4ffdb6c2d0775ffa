"""One logging setup for every command: messages on stderr through `logging`, progress bars only where a person
watches, each warning once.

Modules log with `log = get_logger(__name__)`; a command's results (tables, written paths) stay on stdout.
`command_session()` (entered by `cli.entry.cli_entry` around every console script) installs the stderr handler;
`-q`, `--verbose` and `--disable_progress_bar` (added to every parser by `cli.finish_parser`) adjust it while
the command runs. Without a session (the Python API) warnings still reach stderr through logging's last-resort
handler, and an application's own logging configuration applies.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import warnings
from typing import Any

from tqdm import tqdm

ROOT = "dgcf_auto"


class _OncePerRun(logging.Filter):
    """Within a command, lets a warning text through once: the same message from several places (the encoder,
    the trainer, the validation predictor) is one line. Python API calls outside a command warn every time."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()
        self.active = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.active or record.levelno < logging.WARNING:
            return True
        key = record.getMessage()
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


_ONCE = _OncePerRun()
_settings: dict[str, bool | None] = {"progress": None}  # None: progress bars when stderr is a terminal


def get_logger(name: str) -> logging.Logger:
    """`logging.getLogger(name)` whose warnings are shown once per command."""
    logger = logging.getLogger(name)
    if _ONCE not in logger.filters:
        logger.addFilter(_ONCE)
    return logger


class _TqdmHandler(logging.StreamHandler):
    """Writes through `tqdm.write`, so a message never tears a progress bar on a terminal; the stream is looked
    up at each message (pytest's capture and redirections replace sys.stderr)."""

    def __init__(self):
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging's own convention: never raise from a handler
            self.handleError(record)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.ERROR:
            return f"error: {message}"
        return f"WARNING: {message}" if record.levelno >= logging.WARNING else message


def quiet_known_warnings() -> None:
    """timm imports torch.jit.interface, which torch 2.9+ deprecates with a FutureWarning on every start."""
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.interface", category=FutureWarning)


LIBRARY = f"{ROOT}.library"     # the logger that speaks for the libraries we call
_LIBRARY_LOGGERS = ("nibabel.global", "nibabel")  # libraries that log to stderr through handlers of their own
_NUMPY_FLOATING_POINT = ("encountered in", "divide by zero", "invalid value", "overflow", "underflow")


def _library_name(filename: str, message: str) -> str:
    """Which library a warning comes from: the package under site-packages, ours, or numpy for its floating-point
    warnings (numpy attributes those to the line of ours that did the arithmetic)."""
    parts = filename.replace("\\", "/").split("/")
    for marker in ("site-packages", "dist-packages"):
        if marker in parts and parts.index(marker) + 1 < len(parts):
            return parts[parts.index(marker) + 1].removesuffix(".py")
    if any(text in message for text in _NUMPY_FLOATING_POINT):
        return "numpy"
    return ROOT if ROOT in parts else (parts[-1].removesuffix(".py") or "python")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """`warnings.showwarning` while a command runs: a warning is one line of ours ('WARNING: numpy: overflow
    encountered in cast'), never the library's two lines with a source line. Deprecation notices of libraries
    (nothing a user can act on) are shown only with --verbose."""
    origin = _library_name(str(filename), str(message))
    text = f"{origin}: {' '.join(str(message).split())}"
    deprecation = issubclass(category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning))
    get_logger(LIBRARY).log(logging.DEBUG if deprecation and origin != ROOT else logging.WARNING, text)


class _Forward(logging.Handler):
    """A library's own log message as one line of ours ('WARNING: nibabel: ...'); its notes (INFO and below, e.g.
    nibabel's "pixdim[0] (qfac) should be 1 ...; setting qfac to 1" when something set the root logger to INFO)
    only with --verbose."""

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.name.split('.')[0]}: {' '.join(record.getMessage().split())}"
        get_logger(LIBRARY).log(record.levelno if record.levelno >= logging.WARNING else logging.DEBUG, text)


@contextlib.contextmanager
def library_messages_as_ours():
    """Library warnings and library loggers speak through our logging (see `_show_warning`, `_Forward`) while the
    block runs; restored afterwards."""
    forward = _Forward()
    saved = []
    for name in _LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.handlers), logger.propagate))
        logger.handlers, logger.propagate = [forward], False
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        quiet_known_warnings()
        try:
            yield
        finally:
            for logger, handlers, propagate in saved:
                logger.handlers, logger.propagate = handlers, propagate


def worker_logging() -> None:
    """In a worker process (dgcf_auto.workers): warnings and library messages in our one-line form on stderr,
    for the worker's lifetime (a spawned worker starts without the command's logging)."""
    root = logging.getLogger(ROOT)
    if not any(isinstance(h, _TqdmHandler) for h in root.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(_Formatter())
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
        root.propagate = False
    _ONCE.active = True
    global _worker_messages
    if _worker_messages is None:
        _worker_messages = library_messages_as_ours()
        _worker_messages.__enter__()  # never left: the worker ends with the pool


_worker_messages: Any = None  # the worker's library-message filter, entered once


def progress_enabled() -> bool:
    """Whether progress bars are drawn: never with -q or --disable_progress_bar, else only on a terminal (a
    log file would fill with carriage returns and cursor movements)."""
    if _settings["progress"] is not None:
        return _settings["progress"]
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress_bar(iterable=None, *, disable: bool = False, **kwargs) -> tqdm:
    """tqdm on stderr, drawn only when `progress_enabled()` (and not `disable`)."""
    return tqdm(iterable, disable=disable or not progress_enabled(), file=sys.stderr, **kwargs)


@contextlib.contextmanager
def command_session():
    """Logging for one console-script run: INFO and up on stderr, bars on a terminal; restored afterwards."""
    root = logging.getLogger(ROOT)
    handler = _TqdmHandler()
    handler.setFormatter(_Formatter())
    before = (root.level, root.propagate, dict(_settings))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False
    _ONCE.seen.clear()
    _ONCE.active = True
    with library_messages_as_ours():
        try:
            yield
        finally:
            _ONCE.active = False
            root.removeHandler(handler)
            root.level, root.propagate = before[0], before[1]
            _settings.update(before[2])


def _configure(quiet: bool = False, verbose: bool = False, no_progress: bool = False) -> None:
    root = logging.getLogger(ROOT)
    if quiet:
        root.setLevel(logging.WARNING)
    if verbose:
        root.setLevel(logging.DEBUG)
    if quiet or no_progress:
        _settings["progress"] = False


class _LoggingFlag(argparse.Action):
    """A store_true flag that also takes effect in the running command's logging (and only there: building
    or parsing a parser elsewhere, e.g. in tests or commands.md, changes nothing)."""

    def __init__(self, option_strings, dest, setting: str, **kwargs):
        self.setting = setting
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, True)
        if any(isinstance(h, _TqdmHandler) for h in logging.getLogger(ROOT).handlers):
            _configure(**{self.setting: True})


def add_logging_options(parser: argparse.ArgumentParser) -> None:
    """-q / --verbose / --disable_progress_bar, each unless the command defines it itself."""
    have = parser._option_string_actions
    talk = parser.add_mutually_exclusive_group()
    if "-q" not in have and "--quiet" not in have:
        talk.add_argument("-q", "--quiet", action=_LoggingFlag, setting="quiet",
                          help="only warnings and errors; no progress bars")
    if "--verbose" not in have:
        talk.add_argument("--verbose", action=_LoggingFlag, setting="verbose", help="also debugging messages")
    if "--disable_progress_bar" not in have and "--disable-progress-bar" not in have:
        parser.add_argument("--disable_progress_bar", action=_LoggingFlag, setting="no_progress",
                            help="no progress bars (they are drawn only when stderr is a terminal anyway)")
