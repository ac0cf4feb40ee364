"""Small SQLite stores besides the index (backup manifest, enhance ledger): migrations and errors.

Each store has ordered, numbered migrations recorded in its own ``schema_version`` table, like the
index (``library.migrations``). A migration runs once, in one ``BEGIN IMMEDIATE`` transaction, so
a crash leaves the store at a whole version; a store written by a newer hime is refused.

:func:`translate` turns the ``sqlite3`` errors a damaged file, a full disk or a locked database
raise into one :class:`~hime_cli.errors.HimeError` with a hint (never a raw traceback).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from hime_cli.errors import HimeError, StoreDamagedError

__all__ = [
    "StoreMigration",
    "apply_migrations",
    "check_database",
    "current_version",
    "is_damage",
    "move_aside",
    "translate",
]

# sqlite3 primary result codes (https://www.sqlite.org/rescode.html)
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_NOTADB = 26
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_CANTOPEN = 14
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10


@dataclass(frozen=True)
class StoreMigration:
    version: int
    description: str
    statements: tuple[str, ...]


def current_version(conn: sqlite3.Connection) -> int:
    """The store's schema version (0: nothing recorded yet)."""
    row = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if row is None:
        return 0
    (version,) = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
    return int(version)


def apply_migrations(conn: sqlite3.Connection, migrations: Sequence[StoreMigration], what: str) -> list[int]:
    """Bring the store up to its latest version (autocommit connection); returns the versions applied."""
    latest = migrations[-1].version
    version = current_version(conn)
    if version > latest:
        raise HimeError(
            f"the {what} has schema version {version}, newer than this hime ({latest}).", hint="upgrade hime."
        )
    if version == latest:
        return []
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    applied: list[int] = []
    for migration in migrations:
        if migration.version <= version:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            if migration.version <= current_version(conn):  # another process migrated meanwhile
                conn.execute("ROLLBACK")
                continue
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.description, datetime.now(timezone.utc).isoformat()),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(migration.version)
    return applied


def _code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def is_damage(exc: BaseException) -> bool:
    """True when ``exc`` says the database file itself is corrupt, truncated or not a database."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = _code(exc)
    if code is not None:
        return code in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text


def translate(exc: sqlite3.Error, path: Path, what: str, *, repair_hint: str) -> HimeError:
    """One clear HimeError for an sqlite3 error on the store at ``path`` (``what``: its name)."""
    code = _code(exc)
    text = str(exc)
    lowered = text.lower()
    if is_damage(exc):
        return StoreDamagedError(f"the {what} {path} is damaged ({text}).", hint=repair_hint, path=path)
    if code == _SQLITE_FULL or "disk is full" in lowered:
        return HimeError(f"cannot write the {what} {path}: the disk is full.", hint="free some disk space.")
    if code in (_SQLITE_BUSY, _SQLITE_LOCKED) or "locked" in lowered:
        return HimeError(
            f"the {what} {path} is locked by another hime process.", hint="wait for it to finish, then retry."
        )
    if code in (_SQLITE_CANTOPEN, _SQLITE_READONLY) or "unable to open" in lowered or "readonly" in lowered:
        return HimeError(
            f"cannot open the {what} {path} for writing ({text}).",
            hint=f"check that {path.parent} exists and is writable.",
        )
    if code == _SQLITE_IOERR or "disk i/o" in lowered:
        return HimeError(f"input/output error on the {what} {path} ({text}).", hint="check the disk.")
    return HimeError(f"the {what} {path} cannot be used ({text}).", hint=repair_hint)


def move_aside(path: Path) -> Path:
    """Rename a damaged database (and its -wal/-shm) to ``<name>.damaged-<UTC time>``; returns the new path.

    Nothing is deleted: the file stays next to where it was, for a later look or a manual rescue.
    """
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            os.replace(src, Path(str(aside) + suffix))
    return aside


def check_database(path: Path) -> str | None:
    """None when the SQLite file at ``path`` passes ``PRAGMA quick_check``; else what is wrong.

    Opens it read-only (never creates, migrates or checkpoints anything).
    """
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    except sqlite3.Error as exc:
        return str(exc)
    try:
        rows = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.Error as exc:
        return str(exc)
    finally:
        conn.close()
    return None if rows == ["ok"] else "; ".join(str(r) for r in rows[:3])
