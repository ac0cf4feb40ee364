"""The enhance ledger: what earlier runs wrote, so a re-run skips finished work."""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from hime_cli.errors import HimeError, StoreDamagedError
from hime_cli.files import sha256_file
from hime_cli.library.index import path_key
from hime_cli.library.outputs import LEDGER_NAME, HimeOutputs, read_outputs
from hime_cli.library.outputs import ledger_path as _ledger_path
from hime_cli.library.sqlite_store import StoreMigration, apply_migrations, move_aside, translate

log = logging.getLogger(__name__)

__all__ = ["LEDGER_MIGRATIONS", "LEDGER_NAME", "EnhanceLedger"]
# Numbered migrations of the ledger (like the index's). Version 1 is the table every ledger had
# before versions were recorded. Version 2 keeps one record of what hime wrote: for a photo
# replaced in place that is the backup manifest's ``replaced_sha256``, so the ledger no longer
# keeps a second hash that could disagree with it (issue #11); ``dest_sha`` is for ``--out`` only.
LEDGER_MIGRATIONS = (
    StoreMigration(
        1,
        "one row per output path",
        (
            "CREATE TABLE IF NOT EXISTS outputs (dest BLOB PRIMARY KEY, settings TEXT NOT NULL,"
            " source_sha TEXT, dest_sha TEXT NOT NULL, dest_size INTEGER, dest_mtime_ns INTEGER,"
            " finished_at TEXT)",
        ),
    ),
    StoreMigration(
        2,
        "in-place outputs: what hime wrote is recorded by the backup manifest alone",
        (
            "CREATE TABLE outputs_v2 (dest BLOB PRIMARY KEY, settings TEXT NOT NULL, in_place INTEGER"
            " NOT NULL DEFAULT 0, source_sha TEXT, dest_sha TEXT, dest_size INTEGER, dest_mtime_ns INTEGER,"
            " finished_at TEXT, CHECK (in_place = 1 OR dest_sha IS NOT NULL))",
            "INSERT INTO outputs_v2 SELECT dest, settings, source_sha IS NULL, source_sha,"
            " CASE WHEN source_sha IS NULL THEN NULL ELSE dest_sha END, dest_size, dest_mtime_ns,"
            " finished_at FROM outputs",
            "DROP TABLE outputs",
            "ALTER TABLE outputs_v2 RENAME TO outputs",
        ),
    ),
    # Version 3 (issue #10): "already done" is keyed by the source photo and the settings, not by
    # where the output went (the source's real path and stamp; its hash was already recorded), and
    # the folders hime created for its output are listed (a scan never enters them).
    StoreMigration(
        3,
        "outputs keyed by their source; the folders hime created",
        (
            "ALTER TABLE outputs ADD COLUMN source_key BLOB",
            "ALTER TABLE outputs ADD COLUMN source_size INTEGER",
            "ALTER TABLE outputs ADD COLUMN source_mtime_ns INTEGER",
            "CREATE INDEX outputs_source ON outputs (source_key, settings)",
            "CREATE TABLE output_folders (path BLOB PRIMARY KEY, created_at TEXT NOT NULL)",
        ),
    ),
)


class EnhanceLedger:
    """What earlier runs produced: output path → (settings, source, source hash, output hash).

    A photo is skipped when an output of it exists, was written by a run with the same settings,
    still has the content that run wrote, and (for ``--out``) comes from an unchanged source. The
    output is looked up by its *source* (real path, with its stamp or hash) and the settings, so
    ``hime enhance Photos/small`` then ``hime enhance Photos`` does not redo the small ones even
    when their outputs went elsewhere (:meth:`find_done`); older records, without a source, by
    their output path. The
    output's hash is recorded *before* the file is moved into place, so a run killed between the
    rename and the bookkeeping still recognises its work (and never enhances a photo twice). For
    ``--in-place`` the hash is the backup manifest's (``library.backup``), recorded the same way.

    The ledger only saves work: a damaged one is moved aside (kept, with a warning) and a new one
    started, so the photos it listed are enhanced again (in place: from their originals).
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or _ledger_path()
        try:
            self._conn = self._open()
        except StoreDamagedError as exc:
            aside = move_aside(self.path)
            log.warning("%s Moved it to %s and started a new one.", exc.message, aside)
            self._conn = self._open()

    @classmethod
    def open_readonly(cls, path: Path | None = None) -> EnhanceLedger | None:
        """The ledger opened read-only (``--dry-run``: what the real run would skip), None when
        there is none or it cannot be read (the real run would then start a new one)."""
        self = cls.__new__(cls)
        self.path = path or _ledger_path()
        if not self.path.is_file():
            return None
        try:
            self._conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)
            self._conn.execute(
                "SELECT settings, source_sha, dest_sha, dest_size, dest_mtime_ns FROM outputs LIMIT 1"
            )
        except sqlite3.Error as exc:
            log.warning(
                "cannot read the enhance ledger %s (%s): the dry run lists every photo", self.path, exc
            )
            return None
        return self

    def _open(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            apply_migrations(conn, LEDGER_MIGRATIONS, "enhance ledger")
            conn.execute("SELECT count(*) FROM outputs").fetchone()  # reads every page's header
            return conn
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise self._error(exc) from exc
        except OSError as exc:
            raise HimeError(
                f"cannot open the enhance ledger {self.path}: {exc.strerror or exc}",
                hint="free some disk space"
                if exc.errno == errno.ENOSPC
                else f"check that {self.path.parent} is writable",
            ) from exc

    def _error(self, exc: sqlite3.Error) -> HimeError:
        return translate(
            exc, self.path, "enhance ledger", repair_hint=f"move {self.path} aside: hime starts a new one"
        )

    def close(self) -> None:
        self._conn.close()

    def outputs(self) -> HimeOutputs:
        """Every file a run wrote with ``--out`` (in place, the photo is the user's: not listed) and
        every folder hime created for its output (:mod:`hime_cli.library.outputs`)."""
        return read_outputs(self.path)

    def record_folder(self, folder: Path) -> None:
        """``folder`` was created by hime for its output: a scan never enters it."""
        try:
            self._conn.execute(
                "INSERT OR IGNORE INTO output_folders (path, created_at) VALUES (?, ?)",
                (path_key(folder), datetime.now(timezone.utc).isoformat(timespec="seconds")),
            )
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def is_done(self, source: Path, dest: Path, settings: str, in_place: bool) -> bool:
        return self.find_done(source, dest, settings, in_place) is not None

    def find_done(self, source: Path, dest: Path, settings: str, in_place: bool) -> Path | None:
        """Where an earlier run with ``settings`` put its intact output of ``source``; None when
        there is none (or the source changed since). ``dest``, where this run would write it, is
        tried first; in place it is the photo itself."""
        if in_place:
            row = self._row(dest)
            if row is None or row[0] != settings:
                return None
            return dest if self._intact(source, dest, row, in_place=True) else None
        rows: list[tuple[bytes, tuple]] = []
        own = self._row(dest)
        if own is not None and own[0] == settings:
            rows.append((path_key(dest), own))
        try:
            found = self._conn.execute(
                "SELECT dest, settings, source_sha, dest_sha, dest_size, dest_mtime_ns, source_size,"
                " source_mtime_ns FROM outputs WHERE source_key = ? AND settings = ? AND in_place = 0"
                " ORDER BY finished_at DESC",
                (path_key(os.path.realpath(source)), settings),
            ).fetchall()
        except sqlite3.OperationalError:  # a read-only ledger from before version 3: by output only
            found = []
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        rows += [(bytes(r[0]), tuple(r[1:])) for r in found if bytes(r[0]) != path_key(dest)]
        for key, row in rows:
            where = Path(os.fsdecode(key))
            if self._intact(source, where, row, in_place=False):
                return where
        return None

    def _row(self, dest: Path) -> tuple | None:
        """(settings, source_sha, dest_sha, dest_size, dest_mtime_ns[, source_size, source_mtime_ns])."""
        columns = "settings, source_sha, dest_sha, dest_size, dest_mtime_ns"
        try:
            try:
                return self._conn.execute(
                    f"SELECT {columns}, source_size, source_mtime_ns FROM outputs WHERE dest = ?",
                    (path_key(dest),),
                ).fetchone()
            except sqlite3.OperationalError:  # a read-only ledger from before version 3
                return self._conn.execute(
                    f"SELECT {columns} FROM outputs WHERE dest = ?", (path_key(dest),)
                ).fetchone()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _intact(self, source: Path, dest: Path, row: tuple, in_place: bool) -> bool:
        """Is ``dest`` still what the run of ``row`` wrote, from the same ``source``?"""
        try:
            st = dest.stat()
        except OSError:
            return False
        same_stamp = row[3] == st.st_size and row[4] == st.st_mtime_ns
        if in_place:  # the manifest says whether the file is what hime wrote
            from hime_cli.library.backup import find_backups, written_in_place

            try:
                if same_stamp:  # unchanged since this ledger saw it written: no need to hash it
                    return any(r.state == "replaced" and r.replaced_sha256 for r in find_backups(dest))
                return written_in_place(dest)
            except OSError:
                return False
        if not same_stamp and (row[2] is None or sha256_file(dest) != row[2]):
            return False
        if row[1] is None:
            return True
        try:
            if len(row) > 6 and row[5] is not None:  # the source's stamp then: unchanged, no hash needed
                src = source.stat()
                if (row[5], row[6]) == (src.st_size, src.st_mtime_ns):
                    return True
            return sha256_file(source) == row[1]
        except OSError:
            return False

    def expect(
        self,
        dest: Path,
        settings: str,
        source_sha: str | None,
        dest_sha: str | None,
        source: Path | None = None,
    ) -> None:
        """Record the output about to be moved into place (stamp filled in by :meth:`finish`).

        In place (``source_sha`` and ``dest_sha`` None) only the settings: the backup manifest
        records the replacement's hash. ``source``: the photo it was made from (its real path and
        stamp are recorded: later runs find the output by its source, :meth:`find_done`).
        """
        in_place = source_sha is None and dest_sha is None
        key = size = mtime = None
        if source is not None:
            st = os.stat(source)
            key, size, mtime = path_key(os.path.realpath(source)), st.st_size, st.st_mtime_ns
        try:
            self._conn.execute(
                "INSERT OR REPLACE INTO outputs (dest, settings, in_place, source_sha, dest_sha, dest_size,"
                " dest_mtime_ns, finished_at, source_key, source_size, source_mtime_ns)"
                " VALUES (?, ?, ?, ?, ?, NULL, NULL, NULL, ?, ?, ?)",
                (path_key(dest), settings, int(in_place), source_sha, dest_sha, key, size, mtime),
            )
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def finish(self, dest: Path) -> None:
        st = dest.stat()
        try:
            self._conn.execute(
                "UPDATE outputs SET dest_size = ?, dest_mtime_ns = ?, finished_at = ? WHERE dest = ?",
                (
                    st.st_size,
                    st.st_mtime_ns,
                    datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    path_key(dest),
                ),
            )
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
