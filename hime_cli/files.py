"""Files written safely: atomic replacement through a temp file, stale-temp cleanup, sha256.

The one place that writes a file atomically (photos, the weight registry, compare sheets, backup
records) and hashes one (the ledger, the backups, the weight integrity check). It imports nothing
from the rest of hime but its errors, so every layer may use it.

:func:`atomic_write` writes to a temp file next to ``dest`` (``.<name>.hime-tmp-<pid>-…``),
fsyncs it, runs an optional check on it, then ``os.replace``-s it onto ``dest`` and fsyncs the
folder. A crash, SIGKILL or full disk leaves either the old file or the new one, never a torn
one; the temp files of killed runs are removed by the next write to the same destination.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, NoReturn

from hime_cli.errors import HimeError, ImageWriteError

__all__ = [
    "TEMP_MARKER",
    "atomic_write",
    "LockBusy",
    "acquire_lock",
    "atomic_write_bytes",
    "release_lock",
    "cleanup_stale_temps",
    "discard_temp_and_reraise",
    "fsync_dir",
    "sha256_file",
    "temp_path_for",
]

logger = logging.getLogger(__name__)

TEMP_MARKER = ".hime-tmp-"
STALE_TEMP_AGE_S = 24 * 3600  # a temp file this old is stale even if its pid was reused


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def temp_path_for(dest: Path) -> Path:
    """A unique temp path in ``dest``'s folder, recognisable as ours and carrying our pid."""
    return dest.parent / f".{dest.name}{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def cleanup_stale_temps(folder: Path, name: str | None = None) -> list[Path]:
    """Remove temp files left in ``folder`` by killed runs (dead pid, or older than a day).

    ``name`` restricts the sweep to the temps of one destination file. Returns what was removed.
    """
    removed: list[Path] = []
    prefix = f".{name}{TEMP_MARKER}" if name else "."
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if not entry.name.startswith(prefix) or TEMP_MARKER not in entry.name:
            continue
        tail = entry.name.rsplit(TEMP_MARKER, 1)[1]
        try:
            pid = int(tail.split("-", 1)[0])
        except ValueError:
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        if _pid_alive(pid) and age < STALE_TEMP_AGE_S:
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
            logger.info("removed stale temp file %s", entry.path)
    return removed


def discard_temp_and_reraise(
    tmp: Path, exc: BaseException, what: str, error: type[HimeError] = ImageWriteError
) -> NoReturn:
    """Remove a half-written temp file, then re-raise: OS errors as one ``error`` with a hint."""
    with contextlib.suppress(OSError):
        os.unlink(tmp)
    if isinstance(exc, OSError):
        hint = "free some disk space" if exc.errno == errno.ENOSPC else "check the folder's permissions"
        raise error(f"{what}: {exc.strerror or exc}", hint=hint) from exc
    raise exc


def fsync_dir(folder: Path) -> None:
    """fsync a folder so a rename inside it survives a power cut (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(
    dest: str | os.PathLike[str],
    write: Callable[[BinaryIO], None],
    *,
    check: Callable[[Path], None] | None = None,
    error: type[HimeError] = ImageWriteError,
) -> None:
    """Write ``dest`` atomically: ``write(fh)`` into a temp file beside it, fsync, ``check(temp)``,
    ``os.replace`` onto ``dest``, fsync the folder. On any failure ``dest`` is left as it was and
    the temp file is removed. An existing ``dest``'s permission bits are kept.
    """
    dest = Path(dest)
    folder = dest.parent
    if not folder.is_dir():
        raise error(f"cannot write {dest}: folder {folder} does not exist")
    cleanup_stale_temps(folder, dest.name)
    tmp = temp_path_for(dest)
    try:
        with open(tmp, "xb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, stat.S_IMODE(os.stat(dest).st_mode))
        if check is not None:
            check(tmp)
        os.replace(tmp, dest)
    except BaseException as exc:
        discard_temp_and_reraise(tmp, exc, f"cannot write {dest}", error)
    fsync_dir(folder)


def atomic_write_bytes(
    dest: str | os.PathLike[str], payload: bytes, *, error: type[HimeError] = ImageWriteError
) -> None:
    """:func:`atomic_write` of a small payload, creating ``dest``'s folder first."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dest, lambda fh: fh.write(payload), error=error)


class LockBusy(Exception):
    """Another process holds the lock; ``holder`` is its pid as it recorded it (may be empty)."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder

    @property
    def holder_text(self) -> str:
        """`` (pid N)`` for a message, or nothing when the holder is unknown."""
        return f" (pid {self.holder})" if self.holder.isdigit() else ""


def acquire_lock(path: str | os.PathLike[str], timeout: float = 0.0, poll: float = 0.05) -> int:
    """The one lock routine (index, backup store, in-place runs): an exclusive ``fcntl.flock`` on
    ``path``, retried every ``poll`` s for up to ``timeout`` s; our pid is recorded in the file for
    the message another process shows. Returns the fd (closing it releases the lock; the kernel
    drops it when a process dies, so a killed run leaves no stale lock). Raises :class:`LockBusy`.
    """
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + max(0.0, timeout)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                try:
                    holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                except OSError:
                    holder = ""
                os.close(fd)
                raise LockBusy(holder) from None
            time.sleep(poll)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def release_lock(fd: int) -> None:
    """Release a lock taken with :func:`acquire_lock`."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
