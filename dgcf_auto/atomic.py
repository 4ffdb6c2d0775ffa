"""Verified atomic writes: every file the project writes is complete or absent.

Each write goes to a hidden temporary file in the target folder, is flushed and fsynced, checked (its size,
or the file read back), and only then renamed onto the target. Any OSError on the way (ENOSPC, EROFS,
EACCES, EDQUOT, ...) and any failed check becomes one `DGCFError("cannot write <target>: <reason>")`, and
the temporary file is removed. A run killed mid-write (SIGKILL) leaves its temporary file behind; the next
write into that folder removes it: temporary names carry host and process id, and only those of processes
that no longer exist on this host are removed, so parallel runs never delete each other's files.

A folder that replaces another (an installed model, a DICOM series) swaps with two renames under a journal
(`.<name>.dgcf-swap.<host>.<pid>.json`, written before the first rename): a run killed between them leaves the
old folder and the new one under hidden names, and the next run touching that parent folder finishes the swap
from the journal (or undoes it) before it removes any stale temporary files; the journal protects them until then.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import secrets
import shutil
import socket
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dgcf_auto.errors import DGCFError

TEMP_MARKER = ".dgcf-tmp."
_TEMP_PATTERN = re.compile(re.escape(TEMP_MARKER) + r"(?P<host>[^.]+)\.(?P<pid>\d+)\.[0-9a-f]+")
SWAP_MARKER = ".dgcf-swap."
_SWAP_PATTERN = re.compile(re.escape(SWAP_MARKER) + r"(?P<host>[^.]+)\.(?P<pid>\d+)\.json$")
_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
_cleaned_folders: set[tuple[int, str]] = set()
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


class WriteFailed(Exception):
    """Raised by a writer or a check inside `atomic_path`: the reason, in words (becomes a DGCFError)."""


def write_error(target: str | os.PathLike, exc: BaseException | str) -> DGCFError:
    """`cannot write <target>: <reason>`: the one line every failed write ends in."""
    if isinstance(exc, OSError):
        reason = exc.strerror or os.strerror(exc.errno) if exc.errno else str(exc)
    else:
        reason = " ".join(str(exc).split())
    return DGCFError(f"cannot write {target}: {reason}")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None,
                verify: Callable[[Path], str | None] | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `target`; when the block succeeds, fsync, verify and rename it.

    `suffix` keeps extension-sensitive writers (SimpleITK, numpy) happy; defaults to the target's own.
    `verify(tmp)` returns None when the written file is complete, else the problem in words.
    """
    target = Path(target)
    if suffix is None:
        suffix = "".join(target.suffixes) or ".tmp"
    tmp = target.parent / f".{target.name}{TEMP_MARKER}{_HOST}.{os.getpid()}.{secrets.token_hex(4)}{suffix}"
    try:
        prepare_folder(target.parent)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # umask applies, like any output
        yield tmp
        _fsync(tmp)
        problem = verify(tmp) if verify is not None else None
        if problem:
            raise WriteFailed(problem)
        os.replace(tmp, target)
        _fsync(target.parent)
    except OSError as exc:
        if exc.errno is None and _disk_full(target.parent):  # numpy: "N requested and M written"
            exc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        raise write_error(target, exc) from None
    except WriteFailed as exc:
        # Writers that swallow errno (ITK's NIfTI writer) leave a short file; say why when the disk is full.
        raise write_error(target, os.strerror(errno.ENOSPC) if _disk_full(target.parent) else str(exc)) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; on success it replaces `target` (an old one is
    removed), so readers see the old folder or the complete new one, never a partial one. The temporary
    folder carries the same host/pid marker as temporary files, so a killed run's folder is removed later."""
    target = Path(target)
    tmp = target.parent / f".{target.name}{TEMP_MARKER}{_HOST}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        prepare_folder(target.parent)
        tmp.mkdir(mode=0o777)  # umask applies, like any output
        yield tmp
        for path in tmp.rglob("*"):
            if path.is_file():
                _fsync(path)
        if target.exists() or target.is_symlink():
            _swap(tmp, target)
        else:
            os.replace(tmp, target)
        _fsync(target.parent)
    except OSError as exc:
        raise write_error(target, exc) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _swap(new: Path, target: Path) -> None:
    """Replace the folder `target` by the complete folder `new`: journal, target -> hidden old, new -> target,
    remove old and journal. Killed anywhere, `recover_swaps` later finds the old folder or the new one."""
    old = target.parent / f".{target.name}{TEMP_MARKER}{_HOST}.{os.getpid()}.{secrets.token_hex(4)}.old"
    journal = target.parent / f".{target.name}{SWAP_MARKER}{_HOST}.{os.getpid()}.json"
    write_json({"target": target.name, "new": new.name, "old": old.name}, journal)
    try:
        os.replace(target, old)
        os.replace(new, target)
        _fsync(target.parent)
    finally:  # done: remove the old folder; failed (an OSError): put it back
        _finish_swap(journal)


def _finish_swap(journal: Path) -> Path | None:
    """Complete (or undo) the swap a journal records, whatever step it stopped at; returns its target.

    Target in place: the swap finished (or never began), the hidden copies go. Target missing: the new folder
    (complete: the journal is written after it) is renamed into place, else the old one is put back.
    """
    try:
        record = json.loads(journal.read_text())
        target, new, old = (journal.parent / _plain_name(record[k]) for k in ("target", "new", "old"))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a journal is written atomically: unreadable means not ours; leave it and what it names
    if not (target.exists() or target.is_symlink()):
        for candidate in (new, old):
            if candidate.is_dir():
                try:
                    os.replace(candidate, target)
                    break
                except OSError:  # e.g. another process recovering the same journal got there first
                    continue
    if target.exists():
        for leftover in (new, old):
            shutil.rmtree(leftover, ignore_errors=True)
        _fsync(journal.parent)
        with contextlib.suppress(FileNotFoundError):
            journal.unlink()
    return target


def _plain_name(name: Any) -> str:
    if not isinstance(name, str) or not name or os.sep in name or name in (".", ".."):
        raise ValueError(f"not a file name: {name!r}")
    return name


def _swap_journals(folder: str | os.PathLike) -> list[tuple[Path, re.Match]]:
    with contextlib.suppress(OSError):
        return [(Path(entry.path), match) for entry in os.scandir(Path(folder))
                if TEMP_MARKER not in entry.name and (match := _SWAP_PATTERN.search(entry.name))]
    return []


def recover_swaps(folder: str | os.PathLike) -> list[Path]:
    """Finish the folder replacements that killed runs of this host left half done in `folder` (see `_swap`);
    returns the folders recovered. Swaps of running processes are left to them."""
    recovered = []
    for journal, match in _swap_journals(folder):
        if match["host"] == _HOST and not _process_alive(int(match["pid"])):
            with contextlib.suppress(OSError):
                if (target := _finish_swap(journal)) is not None:
                    recovered.append(target)
    return recovered


def _journalled_names(folder: str | os.PathLike) -> set[str]:
    """Hidden folders that an unfinished swap still needs: never stale."""
    names = set()
    for journal, _ in _swap_journals(folder):
        try:
            record = json.loads(journal.read_text())
            names |= {record.get("new"), record.get("old")}
        except (OSError, ValueError, AttributeError):
            continue
    return names


def prepare_folder(folder: str | os.PathLike) -> Path:
    """Create `folder` (parents too) and remove stale temporary files there, once per process."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = (os.getpid(), str(folder.resolve()))
    if key not in _cleaned_folders:
        remove_stale_temps(folder)
        _cleaned_folders.add(key)
    return folder


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary files left in `folder` by killed processes of this host; returns what was removed.
    Interrupted folder swaps are recovered first, and the copies a swap in progress needs are kept."""
    removed = []
    recover_swaps(folder)
    needed = _journalled_names(folder)
    with contextlib.suppress(OSError):
        for entry in os.scandir(Path(folder)):
            match = _TEMP_PATTERN.search(entry.name) if entry.name.startswith(".") else None
            if match and match["host"] == _HOST and not _process_alive(int(match["pid"])) \
                    and entry.name not in needed:
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):  # an atomic_folder's temporary folder
                        shutil.rmtree(entry.path)
                    else:
                        os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def check_writable(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Fail in one line, before any expensive work, when files cannot be created in `folder`.

    Nothing is created: the probe goes into the nearest folder that exists (a missing folder is made later,
    by the first write). Stale temporary files in `folder` are removed on the way.
    """
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise DGCFError(f"{what} {folder}: {existing} is a file, not a folder")
    probe = existing / f".write-check{TEMP_MARKER}{_HOST}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as exc:
        raise DGCFError(f"{what} {folder}: not writable: {exc.strerror or exc}") from None
    if existing == folder:
        remove_stale_temps(folder)
    return folder


def check_output_file(path: str | os.PathLike, what: str = "output") -> Path:
    """Fail in one line, before any expensive work, when the file `path` cannot be written: it is a folder, or
    its folder cannot take files (see `check_writable`)."""
    path = Path(path)
    if path.is_dir():
        raise DGCFError(f"{what} {path}: is a folder, not a file")
    check_writable(path.parent, f"{what} folder")
    return path


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, name: str | None = ".dgcf.lock", waiting: str | None = None,
                busy: str | None = None) -> Iterator[None]:
    """Hold an exclusive advisory lock on `folder` for the duration of the block: the one lock of dgcf_auto.

    The lock is a POSIX flock, taken on the lock file `<folder>/<name>` (which records the holder's process id)
    or, with `name=None`, on the folder itself (nothing is written into it: an output folder the user owns).
    A second holder waits, after logging `waiting` once (a warning); or, given `busy`, does not wait but
    raises DGCFError(busy), where `{pid}` in `busy` becomes the holder's process id ("(unknown)" without a lock
    file). The lock goes with the process: a killed run never leaves a stale lock behind, the next run simply
    takes it over. Where flock does not exist (Windows) the block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks
        yield
        return

    from dgcf_auto.log import get_logger

    folder = prepare_folder(folder)
    try:
        fd = os.open(folder / name, os.O_RDWR | os.O_CREAT, 0o644) if name else os.open(folder, os.O_RDONLY)
    except OSError as exc:
        raise write_error(folder / (name or ""), exc) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if busy is not None:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() if name else ""
                raise DGCFError(busy.format(pid=holder if holder.isdigit() else "(unknown)")) from None
            if waiting:
                get_logger(__name__).warning(waiting)
            fcntl.flock(fd, fcntl.LOCK_EX)
        if name:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def write_bytes(data: bytes, target: str | os.PathLike, suffix: str | None = None) -> None:
    """Write `data` atomically; the check is that the file on disk holds exactly len(data) bytes."""
    with atomic_path(target, suffix=suffix,
                     verify=lambda tmp: None if tmp.stat().st_size == len(data) else
                     f"only {tmp.stat().st_size} of {len(data)} bytes written") as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)


def write_json(obj: Any, target: str | os.PathLike, indent: int = 2) -> None:
    text = json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n"
    write_bytes(text.encode(), target, suffix=".json")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_npy(array: np.ndarray, target: str | os.PathLike) -> None:
    array = np.ascontiguousarray(array)

    def verify(tmp: Path) -> str | None:
        try:
            back = np.load(tmp, mmap_mode="r")
        except (OSError, ValueError) as exc:
            return f"written array cannot be read back ({exc})"
        return None if back.shape == array.shape and back.dtype == array.dtype else "written array differs"

    with atomic_path(target, suffix=".npy", verify=verify) as tmp:
        np.save(tmp, array)


def torch_save(obj: Any, target: str | os.PathLike) -> None:
    import torch

    with atomic_path(target, suffix=".pth", verify=zip_complete) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:  # torch's zip writer reports a failed write as a RuntimeError
            raise WriteFailed(str(exc).splitlines()[0] if str(exc) else "torch.save failed") from None


def zip_complete(path: Path) -> str | None:
    """torch checkpoints are zip archives: every member's CRC must check out."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        return f"written checkpoint is incomplete ({exc})"
    return f"written checkpoint is corrupt (member {bad})" if bad else None


def png_complete(path: Path) -> str | None:
    """A PNG is complete when it ends with its IEND chunk."""
    with open(path, "rb") as handle:
        handle.seek(max(path.stat().st_size - len(PNG_END), 0))
        return None if handle.read() == PNG_END else "written PNG is incomplete"


def save_figure(fig, target: str | os.PathLike, **savefig_kwargs) -> Path:
    """matplotlib figure -> PNG, atomically and verified."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", **savefig_kwargs)
    write_bytes(buffer.getvalue(), target, suffix=".png")
    return Path(target)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):  # folders on some filesystems
            raise
    finally:
        os.close(fd)


def _disk_full(folder: Path) -> bool:
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < 1 << 20


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
