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
import dataclasses
import errno
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hime_cli.errors import HimeError, ImageWriteError, StoreDamagedError
from hime_cli.files import (
    TEMP_MARKER,
    LockBusy,
    acquire_lock,
    atomic_write,
    cleanup_stale_temps,
    discard_temp_and_reraise,
    fsync_dir,
    sha256_file,
    temp_path_for,
)
from hime_cli.library.sqlite_store import StoreMigration, apply_migrations, translate
from hime_cli.paths import get_paths
from hime_cli.types import LoadedImage

__all__ = [
    "BackupError",
    "BackupLockedError",
    "Finding",
    "check_store",
    "in_place_run_lock",
    "load_original_with_bytes",
    "manifest_path",
    "sidecar_records",
    "store_lock",
    "written_in_place",
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

MANIFEST_NAME = "manifest.sqlite3"
LOCK_TIMEOUT_S = 60.0  # how long a write waits for another hime process's backup-store lock

# Numbered migrations of the manifest (like the index's). Version 1 is the table every manifest
# had before versions were recorded (IF NOT EXISTS adopts such a manifest as version 1).
MANIFEST_MIGRATIONS: tuple[StoreMigration, ...] = (
    StoreMigration(
        1,
        "one row per (original path, original sha256)",
        (
            """CREATE TABLE IF NOT EXISTS backups (
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
            )""",
            "CREATE INDEX IF NOT EXISTS backups_by_path ON backups (original_path)",
        ),
    ),
)
_REPAIR_HINT = (
    "the backups stay restorable from the records kept next to them; "
    "`hime doctor --repair` rebuilds the manifest (the damaged file is kept aside)"
)
_COLUMNS = (
    "id, original_path, sha256, size_bytes, mode, mtime_ns, created_at, replaced_sha256, state, restored_at"
)


class BackupError(ImageWriteError):
    """A backup could not be made or verified, so the original was not touched."""


class BackupLockedError(BackupError):
    """Another hime process holds the backup store's lock."""


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


def manifest_path() -> Path:
    return _backups_dir() / MANIFEST_NAME


_held = threading.local()


@contextlib.contextmanager
def store_lock(timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Exclusive lock on the backup store (``fcntl.flock``; re-entrant within a thread).

    Every change of a photo in place and every restore holds it, so two hime processes never
    interleave the check → backup → record → replace steps of one photo (issue #11, D4). The
    kernel drops it when a process dies, so a killed run leaves no stale lock.
    """
    if getattr(_held, "depth", 0):
        _held.depth += 1
        try:
            yield
        finally:
            _held.depth -= 1
        return
    folder = _backups_dir()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fd = acquire_lock(folder / "store.lock", timeout)
    except LockBusy:
        raise BackupLockedError(
            f"the backup store {folder} is in use by another hime process.",
            hint="wait for the other `hime enhance --in-place` or `hime restore` to finish.",
        ) from None
    try:
        _held.depth = 1
        _sweep_stale_temps(folder)
        try:
            yield
        finally:
            _held.depth = 0
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def in_place_run_lock() -> Iterator[None]:
    """Held for a whole ``hime enhance --in-place`` run: a second one at once is refused up front.

    (Each photo's replacement is also serialised by :func:`store_lock`; this one spares the
    second run its wasted work and its spurious "already enhanced" failures.)
    """
    folder = _backups_dir()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fd = acquire_lock(folder / "in-place-run.lock")
    except LockBusy as busy:
        raise BackupLockedError(
            f"another `hime enhance --in-place` run is replacing photos{busy.holder_text}.",
            hint="wait for it to finish, then run this one again.",
        ) from None
    try:
        yield
    finally:
        os.close(fd)


_swept: set[Path] = set()


def _sweep_stale_temps(folder: Path) -> None:
    """Once per process and store: remove the temp files killed runs left among the objects
    (a record's sidecar may never be written again, so its own writes would not clean it)."""
    if folder in _swept:
        return
    _swept.add(folder)
    objects = folder / "objects"
    with contextlib.suppress(OSError):
        for sub in [objects, *(p for p in objects.iterdir() if p.is_dir())] if objects.is_dir() else []:
            cleanup_stale_temps(sub)


def _manifest_is_blank_but_records_exist(path: Path) -> bool:
    """A manifest truncated to 0 bytes opens as an empty database: damaged, if records exist."""
    try:
        if path.stat().st_size != 0:
            return False
    except OSError:
        return False
    return next(_sidecar_files(), None) is not None


@contextlib.contextmanager
def _manifest(*, create: bool = True) -> Iterator[sqlite3.Connection]:
    """The manifest, migrated; sqlite3 errors come out as one HimeError (damage: StoreDamagedError)."""
    folder = _backups_dir()
    path = folder / MANIFEST_NAME
    if _manifest_is_blank_but_records_exist(path):
        raise StoreDamagedError(
            f"the backup manifest {path} is empty (truncated) although backups exist.",
            hint=_REPAIR_HINT,
            path=path,
        )
    conn: sqlite3.Connection | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        if create:
            apply_migrations(conn, MANIFEST_MIGRATIONS, "backup manifest")
        yield conn
    except sqlite3.Error as exc:
        raise translate(exc, path, "backup manifest", repair_hint=_REPAIR_HINT) from exc
    except OSError as exc:
        hint = "free some disk space" if exc.errno == errno.ENOSPC else f"check that {folder} is writable"
        raise BackupError(
            f"cannot open the backup manifest {path}: {exc.strerror or exc}", hint=hint
        ) from exc
    finally:
        if conn is not None:
            conn.close()


# ------------------------------------------------------------------------------- sidecar records
# Each manifest row is also written as a small JSON file next to its object, so the backups stay
# restorable when the manifest is damaged or lost (and `hime doctor --repair` can rebuild it).


def _sidecar_path(key: Path, sha: str) -> Path:
    tag = hashlib.sha256(os.fsencode(key)).hexdigest()[:16]
    return _object_path(sha).with_name(f"{sha}.{tag}.json")


def _sidecar_files(pattern: str = "*.json") -> Iterator[Path]:
    objects = _backups_dir() / "objects"
    if objects.is_dir():
        yield from objects.glob(f"*/{pattern}")


def _write_sidecar(rec: BackupRecord) -> None:
    payload = {
        "original_path": os.fspath(rec.original_path),
        "sha256": rec.sha256,
        "size_bytes": rec.size_bytes,
        "mode": rec.mode,
        "mtime_ns": rec.mtime_ns,
        "created_at": rec.created_at,
        "replaced_sha256": rec.replaced_sha256,
        "state": rec.state,
        "restored_at": rec.restored_at,
    }
    dest = _sidecar_path(rec.original_path, rec.sha256)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        # ensure_ascii: undecodable names round-trip; a run killed while writing leaves a temp
        # that the next write of this record removes
        data = json.dumps(payload).encode("ascii")
        atomic_write(dest, lambda fh: fh.write(data), error=BackupError)
    except (OSError, BackupError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else exc.message
        hint = (
            "free some disk space"
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC
            else f"check that {dest.parent} is writable"
        )
        raise BackupError(f"cannot record the backup of {rec.original_path}: {reason}", hint=hint) from exc


def _read_sidecar(path: Path) -> BackupRecord | None:
    try:
        data = json.loads(path.read_text(encoding="ascii"))
        return BackupRecord(
            original_path=Path(data["original_path"]),
            backup_path=_object_path(data["sha256"]),
            sha256=str(data["sha256"]),
            size_bytes=int(data["size_bytes"]),
            mode=int(data["mode"]),
            mtime_ns=int(data["mtime_ns"]),
            created_at=float(data["created_at"]),
            state=str(data["state"]),
            replaced_sha256=data.get("replaced_sha256"),
            restored_at=data.get("restored_at"),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("unreadable backup record %s: %s", path, exc)
        return None


def sidecar_records(path: str | os.PathLike[str] | None = None) -> list[BackupRecord]:
    """The records kept next to the objects (for one path, or all), oldest first."""
    if path is None:
        files = list(_sidecar_files())
    else:
        key = _key(path)
        files = list(_sidecar_files(f"*.{hashlib.sha256(os.fsencode(key)).hexdigest()[:16]}.json"))
    records = [r for r in map(_read_sidecar, files) if r is not None]
    if path is not None:
        records = [r for r in records if r.original_path == _key(path)]
    return sorted(records, key=lambda r: (r.created_at, os.fspath(r.original_path)))


def _save(key: Path, sha: str, *, already: bool = False) -> BackupRecord:
    """Read a row back from the manifest and mirror it into its sidecar record."""
    with _manifest() as db:
        row = db.execute(
            f"SELECT {_COLUMNS} FROM backups WHERE original_path = ? AND sha256 = ?", (str(key), sha)
        ).fetchone()
    rec = _record(row, already=already)
    _write_sidecar(rec)
    return rec


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
        if final.is_file() and final.stat().st_size == size and sha256_file(final) == sha:
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
        ok = path.stat().st_size == size and sha256_file(path) == sha
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
    Raises :class:`BackupError` (nothing touched) when the copy cannot be made or verified, and
    :class:`StoreDamagedError` when the manifest is damaged (nothing is replaced then).
    """
    key = _key(path)
    if not key.is_file():
        raise BackupError(f"cannot back up {path}: not a file")
    with store_lock():
        sha, size, st = _store_object(key)
        _verify_object(sha, size)
        with _manifest() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT OR IGNORE INTO backups (original_path, sha256, size_bytes, mode, mtime_ns, created_at, state)"
                " VALUES (?, ?, ?, ?, ?, ?, 'backed_up')",
                (str(key), sha, size, stat.S_IMODE(st.st_mode), st.st_mtime_ns, time.time()),
            )
            db.execute("COMMIT")
        return _save(key, sha)


_warned_damaged: set[Path] = set()


def _fall_back(exc: StoreDamagedError) -> None:
    path = manifest_path()
    if path not in _warned_damaged:
        _warned_damaged.add(path)
        logger.warning("%s Using the records kept next to the backups.", exc.message)


def find_backups(path: str | os.PathLike[str]) -> list[BackupRecord]:
    """Every backup recorded for ``path``, oldest first (from the sidecar records if the manifest is damaged)."""
    try:
        with _manifest() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM backups WHERE original_path = ? ORDER BY id", (str(_key(path)),)
            ).fetchall()
    except StoreDamagedError as exc:
        _fall_back(exc)
        return sidecar_records(path)
    return [_record(r) for r in rows]


def _has_manifest() -> bool:
    return manifest_path().is_file() or next(_sidecar_files(), None) is not None


def replaced_paths() -> frozenset[Path]:
    """Paths whose file is (or may be, if a run was killed mid-way) a version hime wrote in place.

    Reads the manifest once; creates nothing when there is no backup store.
    """
    if not _has_manifest():
        return frozenset()
    try:
        with _manifest() as db:
            rows = db.execute(
                "SELECT DISTINCT original_path FROM backups WHERE state IN ('pending', 'replaced')"
            ).fetchall()
    except StoreDamagedError as exc:
        _fall_back(exc)
        return frozenset(r.original_path for r in sidecar_records() if r.state in ("pending", "replaced"))
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
    found = _original_record(path, data, sha256)
    if found is None:
        return None
    return _read_object(found.sha256, found.size_bytes), found.sha256


def _original_record(
    path: str | os.PathLike[str], data: bytes, sha256: str | None = None
) -> BackupRecord | None:
    if not _has_manifest():
        return None
    records = [r for r in find_backups(path) if r.state in ("pending", "replaced")]
    if not records:
        return None
    current = sha256 or hashlib.sha256(data).hexdigest()
    made = [r for r in records if r.replaced_sha256 == current]
    return _latest(made) if made else None


def written_in_place(path: str | os.PathLike[str]) -> bool:
    """Is the file at ``path`` now exactly a version hime wrote over it with ``--in-place``?

    The manifest's ``replaced_sha256`` is the one record of what hime wrote in place (the enhance
    ledger keeps no second hash that could disagree). Hashes the file only when it has a record.
    """
    if not _has_manifest():
        return False
    made = {r.replaced_sha256 for r in find_backups(path) if r.state in ("pending", "replaced")}
    made.discard(None)
    if not made:
        return False
    key = _key(path)
    return key.is_file() and sha256_file(key) in made


def load_original(path: str | os.PathLike[str]) -> LoadedImage:
    """:func:`~hime_cli.library.reader.load_image`, but a photo hime replaced in place loads as its original."""
    return load_original_with_bytes(path)[0]


def load_original_with_bytes(path: str | os.PathLike[str]) -> tuple[LoadedImage, bytes]:
    """:func:`load_original` and the bytes it decoded (the original's, for a photo hime replaced).

    The writer reads the encoder settings (JPEG tables, DPI, comments) from these bytes, not from
    the file on disk: that may be the enhanced version, whose DPI was already scaled (issue #11, D11).
    """
    from hime_cli.library.reader import load_image, read_file

    data = read_file(path)
    found = original_bytes(path, data)
    source = data if found is None else found[0]
    return load_image(path, data=source), source


def list_backups(under: str | os.PathLike[str] | None = None) -> list[BackupRecord]:
    """Every backup recorded (under a folder, if given), by path then age."""
    try:
        with _manifest() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM backups ORDER BY original_path, id").fetchall()
        records = [_record(r) for r in rows]
    except StoreDamagedError as exc:
        _fall_back(exc)
        records = sorted(sidecar_records(), key=lambda r: os.fspath(r.original_path))
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
    recorded replacement is left alone (``already_replaced=True``). The whole sequence holds the
    backup store's lock: a second process waits, then sees what the first one did.
    """
    key = _key(path)
    if not key.is_file():
        raise ImageWriteError(f"cannot replace {path}: not a file")
    with store_lock():
        before = key.stat()
        current = sha256_file(key)
        made = [
            r
            for r in find_backups(key)
            if r.replaced_sha256 == current and r.state in ("pending", "replaced")
        ]
        if made:
            rec = _latest(made)
            _verify_object(rec.sha256, rec.size_bytes)
            if rec.state == "pending":  # killed between os.replace and the final manifest update
                return dataclasses.replace(_update(key, rec.sha256, state="replaced"), already_replaced=True)
            return dataclasses.replace(rec, already_replaced=True)

        record = backup_original(key)
        if record.sha256 != current:
            raise ImageWriteError(
                f"{path} changed while it was being backed up; nothing replaced", hint="retry"
            )
        cleanup_stale_temps(key.parent, key.name)
        tmp = temp_path_for(key)
        try:
            write_fn(tmp)
            if not tmp.is_file() or tmp.stat().st_size == 0:
                raise ImageWriteError(f"the new version of {key.name} was not written; original kept")
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, record.mode)
            new_sha = sha256_file(tmp)
            _update(key, record.sha256, state="pending", replaced_sha256=new_sha)
            st = key.stat()
            if (st.st_size, st.st_mtime_ns, st.st_ino) != (before.st_size, before.st_mtime_ns, before.st_ino):
                raise ImageWriteError(
                    f"{path} was modified while being enhanced; original kept", hint="retry"
                )
            os.replace(tmp, key)
        except BaseException as exc:
            discard_temp_and_reraise(tmp, exc, f"cannot replace {path}")
        fsync_dir(key.parent)
        return _update(key, record.sha256, state="replaced")


_UNSET = object()


def _update(
    key: Path, sha: str, *, state: str, replaced_sha256: object = _UNSET, restored: bool = False,
    allow_damaged: bool = False,
) -> BackupRecord:  # fmt: skip
    """Change one record (manifest, then its sidecar). ``allow_damaged``: with a damaged manifest,
    change the sidecar alone (restore keeps working; nothing new is replaced then)."""
    now = time.time()
    try:
        with _manifest() as db:
            sets, args = ["state = ?"], [state]
            if replaced_sha256 is not _UNSET:
                sets.append("replaced_sha256 = ?")
                args.append(replaced_sha256)
            if restored:
                sets.append("restored_at = ?")
                args.append(now)
            db.execute(
                f"UPDATE backups SET {', '.join(sets)} WHERE original_path = ? AND sha256 = ?",
                (*args, str(key), sha),
            )
        return _save(key, sha)
    except StoreDamagedError as exc:
        if not allow_damaged:
            raise
        _fall_back(exc)
    old = next((r for r in sidecar_records(key) if r.sha256 == sha), None)
    if old is None:
        raise BackupError(f"no record of the backup {sha[:12]}… of {key}")
    changes: dict[str, object] = {"state": state}
    if replaced_sha256 is not _UNSET:
        changes["replaced_sha256"] = replaced_sha256
    if restored:
        changes["restored_at"] = now
    rec = dataclasses.replace(old, **changes)  # type: ignore[arg-type]
    _write_sidecar(rec)
    return rec


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
            with store_lock():
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
    current = sha256_file(key) if key.is_file() else None
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
        if sha256_file(tmp) != original.sha256:
            raise BackupError(f"the restored copy of {key.name} does not verify; current file kept")
        os.chmod(tmp, original.mode)
        os.utime(tmp, ns=(original.mtime_ns, original.mtime_ns))
        os.replace(tmp, key)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(key.parent)
    for rec in records:  # nothing hime wrote is there any more; only ``original`` was put back
        if rec.sha256 == original.sha256:
            _update(key, rec.sha256, state="restored", restored=True, allow_damaged=True)
        elif rec.state in ("pending", "replaced"):
            _update(key, rec.sha256, state="restored", allow_damaged=True)
    out.restored.append(key)


# ------------------------------------------------------------------------------- hime doctor


@dataclass(frozen=True)
class Finding:
    """One thing ``hime doctor`` checked: ``status`` ok | problem | repaired."""

    what: str
    status: str
    detail: str
    repair: str | None = None  # what --repair does (problem) or did (repaired)


def _object_files() -> list[Path]:
    objects = _backups_dir() / "objects"
    if not objects.is_dir():
        return []
    return [
        p
        for p in objects.glob("*/*")
        if p.is_file() and not p.name.endswith(".json") and TEMP_MARKER not in p.name
    ]


def _insert_record(db: sqlite3.Connection, rec: BackupRecord) -> None:
    db.execute(
        "INSERT OR REPLACE INTO backups (original_path, sha256, size_bytes, mode, mtime_ns, created_at,"
        " replaced_sha256, state, restored_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            str(rec.original_path), rec.sha256, rec.size_bytes, rec.mode, rec.mtime_ns, rec.created_at,
            rec.replaced_sha256, rec.state, rec.restored_at,
        ),
    )  # fmt: skip


def check_store(*, repair: bool = False) -> list[Finding]:
    """Check the backup store: the manifest, its sidecar records, every object's sha256, stale temps.

    Says what ``repair`` does, and with ``repair`` does it: rebuild a damaged manifest from the
    sidecar records (the damaged file is kept aside), write missing sidecars (backups made before
    hime kept them) or manifest rows, re-store a damaged object from the photo when that still is
    the original, remove temp files of killed runs. Never deletes a backup.
    """
    from hime_cli.library.sqlite_store import check_database, move_aside

    folder = _backups_dir()
    if not folder.is_dir():
        return [Finding("backups", "ok", "no backups yet")]
    findings: list[Finding] = []
    lock = store_lock() if repair else contextlib.nullcontext()
    with lock:
        manifest = manifest_path()
        sidecars = {(r.original_path, r.sha256): r for r in sidecar_records()}
        problem = check_database(manifest) if manifest.exists() else None
        if problem is not None and problem.startswith("empty") and not sidecars:
            problem = None
        rows: dict[tuple[Path, str], BackupRecord] = {}
        if problem is None and manifest.exists():
            try:
                with _manifest() as db:
                    rows = {
                        (r.original_path, r.sha256): r
                        for r in map(_record, db.execute(f"SELECT {_COLUMNS} FROM backups").fetchall())
                    }
            except HimeError as exc:
                problem = exc.message
        if problem is not None:
            action = f"move it aside and rebuild it from {len(sidecars)} sidecar records"
            if repair:
                aside = move_aside(manifest)
                with _manifest() as db:
                    db.execute("BEGIN IMMEDIATE")
                    for rec in sidecars.values():
                        _insert_record(db, rec)
                    db.execute("COMMIT")
                rows = dict(sidecars)
                findings.append(
                    Finding(
                        "backup manifest",
                        "repaired",
                        f"was damaged ({problem})",
                        f"{action}; kept {aside.name}",
                    )
                )
            else:
                findings.append(Finding("backup manifest", "problem", f"damaged ({problem})", action))
        else:
            findings.append(Finding("backup manifest", "ok", f"{len(rows)} backups recorded"))

        unmirrored = [
            r for k, r in rows.items() if sidecars.get(k) != dataclasses.replace(r, already_replaced=False)
        ]
        unlisted = [r for k, r in sidecars.items() if k not in rows]
        if unmirrored or unlisted:
            detail = f"{len(unmirrored)} backups without an up-to-date sidecar record, {len(unlisted)} records not in the manifest"
            action = "write the sidecar records from the manifest, and add the missing rows"
            if repair:
                for rec in unmirrored:
                    _write_sidecar(rec)
                if unlisted:
                    with _manifest() as db:
                        db.execute("BEGIN IMMEDIATE")
                        for rec in unlisted:
                            _insert_record(db, rec)
                        db.execute("COMMIT")
                findings.append(Finding("backup records", "repaired", detail, action))
            else:
                findings.append(Finding("backup records", "problem", detail, action))
        else:
            findings.append(Finding("backup records", "ok", "every backup has its sidecar record"))

        records = {**sidecars, **rows}
        damaged: list[BackupRecord] = []
        for sha, recs in _by_object(records.values()).items():
            try:
                _verify_object(sha, recs[0].size_bytes)
            except BackupError:
                damaged.extend(recs)
        if damaged:
            fixed, lost = [], []
            for rec in damaged:
                source = rec.original_path
                can = source.is_file() and sha256_file(source) == rec.sha256
                if can and repair:
                    _store_object(source)
                    fixed.append(rec)
                elif not can:
                    lost.append(rec)
            names = ", ".join(str(r.original_path) for r in (lost or damaged)[:3])
            detail = f"{len(damaged)} backups damaged or missing ({names}{', …' if len(damaged) > 3 else ''})"
            if lost:
                findings.append(
                    Finding(
                        "backup objects", "problem", detail, f"none for {len(lost)}: their originals are gone"
                    )
                )
            elif repair:
                findings.append(Finding("backup objects", "repaired", detail, "copied again from the photos"))
            else:
                findings.append(
                    Finding("backup objects", "problem", detail, "copy them again from the photos")
                )
        else:
            known = {r.sha256 for r in records.values()}
            orphans = [p for p in _object_files() if p.name not in known]
            extra = f"; {len(orphans)} objects with no record (kept)" if orphans else ""
            findings.append(Finding("backup objects", "ok", f"{len(known)} objects verify (sha256){extra}"))

        temps = [p for p in (folder / "objects").rglob(f"*{TEMP_MARKER}*") if p.is_file()]
        if temps:
            if repair:
                removed = sum(len(cleanup_stale_temps(sub)) for sub in {p.parent for p in temps})
                busy = f"; {len(temps) - removed} belong to a running hime" if removed < len(temps) else ""
                findings.append(
                    Finding(
                        "backup temp files", "repaired", f"{len(temps)} found", f"removed {removed}{busy}"
                    )
                )
            else:
                findings.append(
                    Finding(
                        "backup temp files", "problem", f"{len(temps)} left by killed runs", "remove them"
                    )
                )
    return findings


def _by_object(records: Iterable[BackupRecord]) -> dict[str, list[BackupRecord]]:
    out: dict[str, list[BackupRecord]] = {}
    for rec in records:
        out.setdefault(rec.sha256, []).append(rec)
    return out


def stale_temp_files(folder: Path) -> list[Path]:
    """Temp files of ours in ``folder`` (for tests and diagnostics)."""
    return [p for p in folder.iterdir() if TEMP_MARKER in p.name]
