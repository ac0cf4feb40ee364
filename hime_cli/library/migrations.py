"""Numbered, ordered schema migrations of the library index.

Each migration runs once, inside one transaction, and records itself in ``schema_version``.
Never edit a released migration: append a new one. ``LATEST_VERSION`` is what this code expects;
an index written by a newer hime (a higher version) is refused rather than guessed at.

Notes on the schema:

- ``photos.path_key`` is ``os.fsencode(absolute path)``: the exact bytes of the file name, so
  non-UTF-8 names round-trip losslessly. ``photos.path`` is display text only (undecodable bytes
  shown as ``\\xNN``); never open a file from it.
- ``identities.id`` is AUTOINCREMENT so an id, once handed out, is never reused (users refer to
  identities by id). ``faces.id`` likewise, because ``hime faces list`` prints face ids.
- ``faces.embedding`` is float32 bytes; its length depends on ``photos.embedder``
  (dlib: 128, facenet: 512).
- ``faces.quality`` is the scan's face-quality gate (``faces.quality``): ``good``, ``poor`` (a
  real but weak face: stricter clustering, never an exemplar) or ``reject`` (not a face: no
  embedding, no identity); NULL for faces indexed before the gate (judged from their stored
  columns by the next ``update_identities``). ``faces.rejected`` = 1 is the user's "not a face"
  (``hime faces reject``); ``identities.hidden`` = 1 is ``hime clusters hide``. Both survive
  re-scans: a re-detected face inherits them from the old face it overlaps.
- ``library_roots`` are the folders ``hime scan`` was given (real paths, as ``path_key`` bytes):
  the libraries. ``hime enhance``'s default output folder is never inside one (issue #10).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from hime_cli.library import sqlite_store
from hime_cli.library.sqlite_store import StoreMigration


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "photos, faces and identities",
        """
        CREATE TABLE photos (
            id INTEGER PRIMARY KEY,
            path_key BLOB NOT NULL UNIQUE,
            path TEXT NOT NULL,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            sha256 TEXT,
            width INTEGER,
            height INTEGER,
            format TEXT,
            orientation INTEGER,
            taken_at TEXT,
            camera_make TEXT,
            camera_model TEXT,
            gps_lat REAL,
            gps_lon REAL,
            status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
            error TEXT,
            scanned_at TEXT NOT NULL,
            embedder TEXT
        );
        CREATE INDEX photos_sha256 ON photos (sha256);

        CREATE TABLE identities (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT,
            created_at TEXT NOT NULL,
            merged_into INTEGER REFERENCES identities (id) ON DELETE SET NULL
        );

        CREATE TABLE faces (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            photo_id INTEGER NOT NULL REFERENCES photos (id) ON DELETE CASCADE,
            x0 REAL NOT NULL,
            y0 REAL NOT NULL,
            x1 REAL NOT NULL,
            y1 REAL NOT NULL,
            landmarks BLOB NOT NULL,
            score REAL NOT NULL,
            size REAL NOT NULL,
            sharpness REAL NOT NULL,
            embedding BLOB,
            identity_id INTEGER REFERENCES identities (id) ON DELETE SET NULL,
            assigned_by TEXT NOT NULL DEFAULT 'auto' CHECK (assigned_by IN ('auto', 'user'))
        );
        CREATE INDEX faces_photo ON faces (photo_id);
        CREATE INDEX faces_identity ON faces (identity_id);
        """,
    ),
    Migration(
        2,
        "face quality gate, user rejections, hidden identities",
        """
        ALTER TABLE faces ADD COLUMN quality TEXT CHECK (quality IN ('good', 'poor', 'reject'));
        ALTER TABLE faces ADD COLUMN quality_reason TEXT;
        ALTER TABLE faces ADD COLUMN rejected INTEGER NOT NULL DEFAULT 0 CHECK (rejected IN (0, 1));
        ALTER TABLE identities ADD COLUMN hidden INTEGER NOT NULL DEFAULT 0 CHECK (hidden IN (0, 1));
        """,
    ),
    Migration(
        3,
        "library roots: the folders hime scan was given",
        """
        CREATE TABLE library_roots (
            path_key BLOB PRIMARY KEY,
            path TEXT NOT NULL,
            added_at TEXT NOT NULL
        );
        """,
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version
current_version = sqlite_store.current_version  # the schema version of an open index (0: empty)


def apply_migrations(conn: sqlite3.Connection) -> list[int]:
    """Bring the schema up to ``LATEST_VERSION``; returns the versions applied.

    The connection must be in autocommit mode (``isolation_level=None``): each migration runs in
    its own ``BEGIN IMMEDIATE`` transaction, so a crash leaves the index at a whole version (the
    one runner the backup manifest and the enhance ledger use too: ``library.sqlite_store``).
    """
    steps = [StoreMigration(m.version, m.description, tuple(_split_statements(m.sql))) for m in MIGRATIONS]
    return sqlite_store.apply_migrations(conn, steps, "library index")


def _split_statements(sql: str) -> list[str]:
    """Split a migration into statements (``executescript`` would commit the open transaction)."""
    statements: list[str] = []
    buffer = ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements
