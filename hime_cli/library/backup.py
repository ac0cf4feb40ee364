"""Verified backups for in-place enhancement, and restoring the originals.

Backups live in ``get_paths().backups_dir``:

- ``objects/<sha[:2]>/<sha256>``: the original bytes, content-addressed (identical photos are
  stored once), written via temp file + fsync + rename and re-hashed from disk before use;
- ``manifest.sqlite3``: one row per (original path, original sha256) with the sha256 of the file
  hime put in its place, the original's mode and mtime, and a state
  (``backed_up`` → ``pending`` → ``replaced`` → ``restored``). SQLite transactions make every
  manifest write atomic.

:func:`replace_in_place` orders the steps so that a crash at any instant leaves each photo either
untouched or fully replaced with its verified backup recorded: back up + verify → write the new
file to a temp beside the photo → record its sha256 (``pending``) → ``os.replace`` → ``replaced``.
A re-run recognises photos already replaced (their sha256 is the recorded replacement).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hime_cli.errors import HimeError, ImageWriteError
from hime_cli.library.writer import (
    TEMP_MARKER,
    cleanup_stale_temps,
    discard_temp_and_reraise,
    fsync_dir,
    temp_path_for,
)
from hime_cli.paths import get_paths
from hime_cli.types import LoadedImage

__all__ = [
    "BackupError",
    "BackupRecord",
    "RestoreReport",
    "backup_original",
    "find_backups",
    "list_backups",
    "load_original",
    "original_bytes",
    "replaced_paths",
    "replace_in_place",
    "restore",
]

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS backups (
    id INTEGER PRIMARY KEY,
    original_path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    created_at REAL NOT NULL,
    replaced_sha256 TEXT,
    state TEXT NOT NULL,
    restored_at REAL,
    UNIQUE (original_path, sha256)
);
CREATE INDEX IF NOT EXISTS backups_by_path ON backups (original_path);
"""


class BackupError(ImageWriteError):
    """A backup could not be made or verified, so the original was not touched."""


@dataclass(frozen=True)
class BackupRecord:
    original_path: Path
    backup_path: Path
    sha256: str  # of the original
    size_bytes: int
    mode: int
    mtime_ns: int
    created_at: float
    state: str  # backed_up | pending | replaced | restored
    replaced_sha256: str | None = None
    restored_at: float | None = None
    already_replaced: bool = False  # replace_in_place found the photo already replaced by hime


@dataclass(frozen=True)
class RestoreReport:
    restored: tuple[Path, ...] = ()
    unchanged: tuple[Path, ...] = ()  # already the original
    refused: tuple[tuple[Path, str], ...] = ()  # modified since hime replaced it (needs force)
    missing: tuple[tuple[Path, str], ...] = ()  # no backup recorded, or the backup is damaged
    failed: tuple[tuple[Path, str], ...] = ()
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return not (self.refused or self.missing or self.failed)


@dataclass
class _Builder:
    restored: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)
    refused: list[tuple[Path, str]] = field(default_factory=list)
    missing: list[tuple[Path, str]] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


# ------------------------------------------------------------------------------- storage


def _backups_dir() -> Path:
    return get_paths().backups_dir


def _object_path(sha: str) -> Path:
    return _backups_dir() / "objects" / sha[:2] / sha


@contextlib.contextmanager
def _manifest() -> Iterator[sqlite3.Connection]:
    folder = _backups_dir()
    folder.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(folder / "manifest.sqlite3", timeout=30.0, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_SCHEMA)
        yield conn
    finally:
        conn.close()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _key(path: str | os.PathLike[str]) -> Path:
    """Manifest key: the absolute path with symlinks resolved (replacing a link would break it)."""
    return Path(os.path.realpath(Path(path).expanduser()))  # Path.resolve raises on a symlink loop


def _record(row: sqlite3.Row | tuple, *, already: bool = False) -> BackupRecord:
    _id, original, sha, size, mode, mtime_ns, created, replaced, state, restored = row
    return BackupRecord(
        original_path=Path(original),
        backup_path=_object_path(sha),
        sha256=sha,
        size_bytes=size,
        mode=mode,
        mtime_ns=mtime_ns,
        created_at=created,
        state=state,
        replaced_sha256=replaced,
        restored_at=restored,
        already_replaced=already,
    )


def _store_object(src: Path) -> tuple[str, int, os.stat_result]:
    """Copy ``src`` into the object store (hashing while copying); return (sha256, size, stat)."""
    objects = _backups_dir() / "objects"
    objects.mkdir(parents=True, exist_ok=True)
    cleanup_stale_temps(objects)
    tmp = temp_path_for(objects / "incoming")
    digest = hashlib.sha256()
    size = 0
    try:
        with open(src, "rb") as fin, open(tmp, "xb") as fout:
            st = os.fstat(fin.fileno())
            while chunk := fin.read(1 << 20):
                digest.update(chunk)
                fout.write(chunk)
                size += len(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        sha = digest.hexdigest()
        final = _object_path(sha)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.is_file() and final.stat().st_size == size and _sha256_file(final) == sha:
            os.unlink(tmp)  # already stored (same content backed up before)
        else:
            os.replace(tmp, final)
            fsync_dir(final.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        hint = "free some disk space" if exc.errno == 28 else f"check that {_backups_dir()} is writable"
        raise BackupError(f"cannot back up {src}: {exc.strerror or exc}", hint=hint) from exc
    return sha, size, st


def _verify_object(sha: str, size: int) -> Path:
    path = _object_path(sha)
    try:
        ok = path.stat().st_size == size and _sha256_file(path) == sha
    except OSError:
        ok = False
    if not ok:
        raise BackupError(
            f"the backup {path} does not match the original (sha256 {sha[:12]}…); original left untouched",
            hint="check the disk holding the backups (`hime paths`)",
        )
    return path


def _read_object(sha: str, size: int) -> bytes:
    """A backup's bytes, read once and checked against its size and sha256."""
    path = _object_path(sha)
    try:
        data = path.read_bytes()
    except OSError:
        data = b""
    if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
        raise BackupError(
            f"the backup {path} does not match the original (sha256 {sha[:12]}…); not used",
            hint="check the disk holding the backups (`hime paths`)",
        )
    return data


# ------------------------------------------------------------------------------- public API


def backup_original(path: str | os.PathLike[str]) -> BackupRecord:
    """Copy ``path`` into the backup store, verify the copy by re-hashing it, record it.

    Idempotent: backing up the same content of the same path again returns the existing record.
    Raises :class:`BackupError` (nothing touched) when the copy cannot be made or verified.
    """
    key = _key(path)
    if not key.is_file():
        raise BackupError(f"cannot back up {key}: not a file")
    sha, size, st = _store_object(key)
    _verify_object(sha, size)
    with _manifest() as db:
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT OR IGNORE INTO backups (original_path, sha256, size_bytes, mode, mtime_ns, created_at, state)"
            " VALUES (?, ?, ?, ?, ?, ?, 'backed_up')",
            (str(key), sha, size, stat.S_IMODE(st.st_mode), st.st_mtime_ns, time.time()),
        )
        row = db.execute(
            "SELECT * FROM backups WHERE original_path = ? AND sha256 = ?", (str(key), sha)
        ).fetchone()
        db.execute("COMMIT")
    return _record(row)


def find_backups(path: str | os.PathLike[str]) -> list[BackupRecord]:
    """Every backup recorded for ``path``, oldest first."""
    with _manifest() as db:
        rows = db.execute(
            "SELECT * FROM backups WHERE original_path = ? ORDER BY id", (str(_key(path)),)
        ).fetchall()
    return [_record(r) for r in rows]


def _has_manifest() -> bool:
    return (_backups_dir() / "manifest.sqlite3").is_file()


def replaced_paths() -> frozenset[Path]:
    """Paths whose file is (or may be, if a run was killed mid-way) a version hime wrote in place.

    Reads the manifest once; creates nothing when there is no backup store.
    """
    if not _has_manifest():
        return frozenset()
    with _manifest() as db:
        rows = db.execute(
            "SELECT DISTINCT original_path FROM backups WHERE state IN ('pending', 'replaced')"
        ).fetchall()
    return frozenset(Path(r[0]) for r in rows)


def original_bytes(
    path: str | os.PathLike[str], data: bytes, sha256: str | None = None
) -> tuple[bytes, str] | None:
    """When ``data`` (what ``path`` holds now) is a version hime wrote with ``--in-place``: the
    original's bytes, verified against their sha256, and that sha256. Otherwise None.

    The index, exemplar crops and enhancement all work from originals: an enhanced photo is derived
    data, and its super-resolved faces must never become references for other photos. Raises
    :class:`BackupError` when the original's backup is missing or damaged. One indexed manifest
    query per call (none without a backup store), and the data is hashed only for a replaced path.
    """
    if not _has_manifest():
        return None
    records = [r for r in find_backups(path) if r.state in ("pending", "replaced")]
    if not records:
        return None
    current = sha256 or hashlib.sha256(data).hexdigest()
    for rec in records:
        if rec.replaced_sha256 == current:
            return _read_object(rec.sha256, rec.size_bytes), rec.sha256
    return None


def load_original(path: str | os.PathLike[str]) -> LoadedImage:
    """:func:`~hime_cli.library.reader.load_image`, but a photo hime replaced in place loads as its original."""
    from hime_cli.library.reader import load_image, read_file

    data = read_file(path)
    found = original_bytes(path, data)
    return load_image(path, data=data if found is None else found[0])


def list_backups(under: str | os.PathLike[str] | None = None) -> list[BackupRecord]:
    """Every backup recorded (under a folder, if given), by path then age."""
    with _manifest() as db:
        rows = db.execute("SELECT * FROM backups ORDER BY original_path, id").fetchall()
    records = [_record(r) for r in rows]
    if under is not None:
        root = _key(under)
        records = [r for r in records if r.original_path == root or root in r.original_path.parents]
    return records


def replace_in_place(path: str | os.PathLike[str], write_fn: Callable[[Path], None]) -> BackupRecord:
    """Replace the photo at ``path`` with what ``write_fn(tmp)`` writes, keeping a verified backup.

    ``write_fn`` receives a temp path in the photo's folder and must write the complete new file
    there (e.g. ``lambda tmp: save_image(loaded, rgb, alpha, tmp)``). Steps: backup + verify →
    write → fsync → record the new sha256 → atomic ``os.replace`` → fsync folder → mark replaced.
    The photo's permission bits are kept. If the photo changed on disk while the new version was
    being made, nothing is replaced (:class:`ImageWriteError`). A photo that is already the
    recorded replacement is left alone (``already_replaced=True``).
    """
    key = _key(path)
    if not key.is_file():
        raise ImageWriteError(f"cannot replace {key}: not a file")
    before = key.stat()
    current = _sha256_file(key)
    for rec in find_backups(key):
        if rec.replaced_sha256 == current and rec.state in ("pending", "replaced"):
            if rec.state == "pending":  # killed between os.replace and the final manifest update
                _set_state(key, rec.sha256, "replaced")
            _verify_object(rec.sha256, rec.size_bytes)
            return _record_for(key, rec.sha256, already=True)

    record = backup_original(key)
    if record.sha256 != current:
        raise ImageWriteError(f"{key} changed while it was being backed up; nothing replaced", hint="retry")
    cleanup_stale_temps(key.parent, key.name)
    tmp = temp_path_for(key)
    try:
        write_fn(tmp)
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise ImageWriteError(f"the new version of {key.name} was not written; original kept")
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, record.mode)
        new_sha = _sha256_file(tmp)
        with _manifest() as db:
            db.execute(
                "UPDATE backups SET replaced_sha256 = ?, state = 'pending' WHERE original_path = ? AND sha256 = ?",
                (new_sha, str(key), record.sha256),
            )
        st = key.stat()
        if (st.st_size, st.st_mtime_ns, st.st_ino) != (before.st_size, before.st_mtime_ns, before.st_ino):
            raise ImageWriteError(f"{key} was modified while being enhanced; original kept", hint="retry")
        os.replace(tmp, key)
    except BaseException as exc:
        discard_temp_and_reraise(tmp, exc, f"cannot replace {key}")
    fsync_dir(key.parent)
    _set_state(key, record.sha256, "replaced")
    return _record_for(key, record.sha256)


def _set_state(key: Path, sha: str, state: str) -> None:
    with _manifest() as db:
        db.execute(
            "UPDATE backups SET state = ?, restored_at = CASE WHEN ? = 'restored' THEN ? ELSE restored_at END"
            " WHERE original_path = ? AND sha256 = ?",
            (state, state, time.time(), str(key), sha),
        )


def _record_for(key: Path, sha: str, *, already: bool = False) -> BackupRecord:
    with _manifest() as db:
        row = db.execute(
            "SELECT * FROM backups WHERE original_path = ? AND sha256 = ?", (str(key), sha)
        ).fetchone()
    return _record(row, already=already)


def restore(
    paths: Iterable[str | os.PathLike[str]], *, force: bool = False, dry_run: bool = False
) -> RestoreReport:
    """Put the originals back (atomically, mode and mtime included) for files or whole folders.

    A photo goes back to the original hime replaced to make it (the latest one, not the oldest:
    a photo edited and enhanced again comes back as the edit). A photo that no longer is what hime wrote
    (edited since) is refused unless ``force``. A deleted photo is brought back.
    """
    out = _Builder()
    targets: list[Path] = []
    for given in paths:
        key = _key(given)
        if key.is_dir():
            under = sorted({r.original_path for r in list_backups(key)})
            if not under:
                out.missing.append((key, "no backups recorded under this folder"))
            targets.extend(under)
        else:
            targets.append(key)
    for key in dict.fromkeys(targets):
        try:
            _restore_one(key, out, force=force, dry_run=dry_run)
        except HimeError as exc:
            out.failed.append((key, exc.message))
        except OSError as exc:
            out.failed.append((key, str(exc.strerror or exc)))
    return RestoreReport(
        restored=tuple(out.restored),
        unchanged=tuple(out.unchanged),
        refused=tuple(out.refused),
        missing=tuple(out.missing),
        failed=tuple(out.failed),
        dry_run=dry_run,
    )


def _latest(records: Iterable[BackupRecord]) -> BackupRecord:
    """The most recent of ``records``: a live replacement first, then by when it was last used."""

    def when(rec: BackupRecord) -> tuple[bool, float]:
        return rec.state in ("pending", "replaced"), max(rec.created_at, rec.restored_at or 0.0)

    return max(records, key=when)


def original_for(records: list[BackupRecord], current: str | None, *, force: bool) -> BackupRecord | None:
    """Which recorded original a file with sha256 ``current`` (None: deleted) goes back to.

    The original hime replaced to make what is there now; for a deleted file (or, with ``force``,
    one edited since) the most recent original. Not the oldest: a photo edited after a restore and
    enhanced again must come back as the edit (issue #11, D1). None when nothing should be restored.
    """
    made = [r for r in records if current is not None and r.replaced_sha256 == current]
    if made:
        return _latest(made)
    if current is None or force:
        return _latest(records)
    return None


def _restore_one(key: Path, out: _Builder, *, force: bool, dry_run: bool) -> None:
    records = find_backups(key)
    if not records:
        out.missing.append((key, "no backup recorded"))
        return
    current = _sha256_file(key) if key.is_file() else None
    if current is not None and any(r.sha256 == current for r in records):
        out.unchanged.append(key)
        return
    original = original_for(records, current, force=force)
    if original is None:
        out.refused.append((key, "modified since hime replaced it (use --force to overwrite it)"))
        return
    try:
        _verify_object(original.sha256, original.size_bytes)
    except BackupError as exc:
        out.missing.append((key, exc.message))
        return
    if dry_run:
        out.restored.append(key)
        return
    key.parent.mkdir(parents=True, exist_ok=True)
    cleanup_stale_temps(key.parent, key.name)
    tmp = temp_path_for(key)
    try:
        with open(original.backup_path, "rb") as fin, open(tmp, "xb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        if _sha256_file(tmp) != original.sha256:
            raise BackupError(f"the restored copy of {key.name} does not verify; current file kept")
        os.chmod(tmp, original.mode)
        os.utime(tmp, ns=(original.mtime_ns, original.mtime_ns))
        os.replace(tmp, key)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(key.parent)
    with _manifest() as db:  # nothing hime wrote is there any more; only ``original`` was put back
        db.execute(
            "UPDATE backups SET state = 'restored' WHERE original_path = ? AND state IN ('pending', 'replaced')",
            (str(key),),
        )
    _set_state(key, original.sha256, "restored")
    out.restored.append(key)


def stale_temp_files(folder: Path) -> list[Path]:
    """Temp files of ours in ``folder`` (for tests and diagnostics)."""
    return [p for p in folder.iterdir() if TEMP_MARKER in p.name]
