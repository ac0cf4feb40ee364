"""The library index: one SQLite file holding photos, faces and identities.

Open it with :meth:`LibraryIndex.open` (a context manager). Writers hold an exclusive
``fcntl.flock`` on ``<index>.lock`` for as long as the index is open, so two ``hime scan`` runs
cannot interleave; the kernel drops the lock when a process dies, even by SIGKILL, so a killed run
never leaves a stale lock behind. Readers (``readonly=True``) take no lock: WAL mode lets them read
a consistent snapshot while a writer works.

Every write goes through :meth:`LibraryIndex.transaction` (``BEGIN IMMEDIATE`` … ``COMMIT``;
nested calls become savepoints), so a crash leaves the index as of the last whole transaction.
Other modules (``hime_cli.identities``) write their own SQL through ``index.conn`` inside
``index.transaction()``.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hime_cli.errors import IndexError_, IndexLockedError
from hime_cli.library.migrations import LATEST_VERSION, apply_migrations, current_version
from hime_cli.paths import get_paths
from hime_cli.types import Box, DetectedFace, Face, Photo

if TYPE_CHECKING:
    from hime_cli.library.reader import PhotoMetadata

# A matching old face hands its identity to the re-detected face when their boxes overlap this much.
_KEEP_IDENTITY_IOU = 0.5


@dataclass(frozen=True)
class PhotoRecord(Photo):
    """A photo row: :class:`Photo` plus the metadata and scan status the index keeps."""

    orientation: int = 1
    taken_at: str | None = None  # ISO 8601, local time as the camera wrote it (+offset when known)
    camera_make: str | None = None
    camera_model: str | None = None
    gps_lat: float | None = None
    gps_lon: float | None = None
    status: str = "ok"  # 'ok' | 'failed'
    error: str | None = None
    scanned_at: str | None = None
    embedder: str | None = None


@dataclass(frozen=True)
class ScannedFace:
    """What the scanner stores for one detected face."""

    detected: DetectedFace
    sharpness: float
    embedding: np.ndarray | None  # (D,) float32
    quality: str = "good"  # the scan's gate (faces.quality): good, poor or reject
    quality_reason: str | None = None


@dataclass(frozen=True)
class KnownPhoto:
    """The few columns a re-scan needs to decide, without reading the file, that nothing changed."""

    id: int
    size: int
    mtime_ns: int
    status: str
    embedder: str | None


def path_key(path: str | os.PathLike[str]) -> bytes:
    """The exact bytes of an absolute path (lossless for non-UTF-8 names)."""
    return os.fsencode(os.path.abspath(os.fspath(path)))


def display_path(path: str | os.PathLike[str] | bytes) -> str:
    """Printable text for a path: undecodable bytes shown as ``\\xNN`` (for display only)."""
    raw = path if isinstance(path, bytes) else os.fsencode(os.fspath(path))
    return raw.decode("utf-8", errors="backslashreplace")


def library_roots(index_path: Path | None = None) -> list[Path]:
    """The library roots of the index at ``index_path`` (default: the user's), read-only, without
    its lock or a schema check: [] when there is no index or it cannot be read (hime enhance
    plans its outputs from them, and an index written by an older hime has none)."""
    index_path = index_path or get_paths().index_path
    if not index_path.is_file():
        return []
    try:
        conn = sqlite3.connect(f"{index_path.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0)
        try:
            rows = conn.execute("SELECT path_key FROM library_roots").fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return []
    return sorted(Path(os.fsdecode(bytes(r[0]))) for r in rows)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class LibraryIndex:
    """The SQLite library index. Use :meth:`open`; close it (or use ``with``) when done."""

    def __init__(self, path: Path, conn: sqlite3.Connection, lock_fd: int | None) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = conn
        self._lock_fd = lock_fd
        self._depth = 0  # transaction nesting depth

    # ------------------------------------------------------------------ opening and closing

    @classmethod
    def open(
        cls, path: str | os.PathLike[str] | None = None, *, readonly: bool = False, lock_timeout: float = 0.0
    ) -> LibraryIndex:
        """Open (creating and migrating when needed) the index; default location from ``get_paths()``.

        ``readonly=True`` takes no lock and never creates or migrates anything: it fails with
        :class:`IndexError_` when there is no index yet. Writers wait up to ``lock_timeout``
        seconds for another hime process to release the lock, then raise :class:`IndexLockedError`.
        """
        index_path = Path(path) if path is not None else get_paths().index_path
        if readonly:
            if not index_path.exists():
                raise IndexError_(f"no library index at {index_path}.", hint="run `hime scan PATH` first.")
            conn = cls._connect(index_path)
            version = current_version(conn)
            if version != LATEST_VERSION:
                conn.close()
                raise IndexError_(
                    f"the index at {index_path} has schema version {version}, this hime uses {LATEST_VERSION}.",
                    hint="run `hime scan` once to upgrade it."
                    if version < LATEST_VERSION
                    else "upgrade hime: the index was written by a newer version.",
                )
            return cls(index_path, conn, None)

        index_path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = _acquire_lock(Path(str(index_path) + ".lock"), lock_timeout)
        try:
            conn = cls._connect(index_path)
            conn.execute("PRAGMA journal_mode = WAL")
            version = current_version(conn)
            if version > LATEST_VERSION:
                conn.close()
                raise IndexError_(
                    f"the index at {index_path} has schema version {version}, newer than this hime ({LATEST_VERSION}).",
                    hint="upgrade hime.",
                )
            apply_migrations(conn)
        except BaseException:
            _release_lock(lock_fd)
            raise
        return cls(index_path, conn, lock_fd)

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(str(path), isolation_level=None, timeout=10.0)
        except sqlite3.Error as exc:
            raise IndexError_(f"cannot open the index at {path}: {exc}.") from exc
        conn.execute("PRAGMA foreign_keys = ON")
        # WAL + NORMAL: a crash (even SIGKILL) keeps every committed transaction; only a power
        # loss may drop the last few, and never corrupts the file.
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise IndexError_("the library index is closed.")
        return self._conn

    @property
    def readonly(self) -> bool:
        return self._lock_fd is None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._lock_fd is not None:
            _release_lock(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> LibraryIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return current_version(self.conn)

    # ------------------------------------------------------------------ transactions

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic unit of writes; nested calls are savepoints inside the outer transaction."""
        if self.readonly:
            raise IndexError_("this index was opened read-only.")
        conn = self.conn
        depth = self._depth
        conn.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT sp{depth}")
        self._depth += 1
        try:
            yield conn
        except BaseException:
            self._depth = depth
            if depth == 0:
                conn.execute("ROLLBACK")
            else:
                conn.execute(f"ROLLBACK TO sp{depth}")
                conn.execute(f"RELEASE sp{depth}")
            raise
        self._depth = depth
        conn.execute("COMMIT" if depth == 0 else f"RELEASE sp{depth}")

    # ------------------------------------------------------------------ photos

    def upsert_photo(
        self,
        path: str | os.PathLike[str],
        *,
        size: int,
        mtime_ns: int,
        sha256: str | None,
        width: int | None = None,
        height: int | None = None,
        format: str | None = None,
        orientation: int = 1,
        metadata: PhotoMetadata | None = None,
        embedder: str | None = None,
        status: str = "ok",
        error: str | None = None,
    ) -> int:
        """Insert or update the photo at ``path`` (keyed by its exact bytes); returns its id."""
        key = path_key(path)
        values: dict[str, Any] = {
            "path_key": key,
            "path": display_path(key),
            "size": int(size),
            "mtime_ns": int(mtime_ns),
            "sha256": sha256,
            "width": width,
            "height": height,
            "format": format,
            "orientation": int(orientation),
            "taken_at": metadata.taken_at if metadata else None,
            "camera_make": metadata.camera_make if metadata else None,
            "camera_model": metadata.camera_model if metadata else None,
            "gps_lat": metadata.gps_lat if metadata else None,
            "gps_lon": metadata.gps_lon if metadata else None,
            "status": status,
            "error": error,
            "scanned_at": _now(),
            "embedder": embedder,
        }
        columns = ", ".join(values)
        placeholders = ", ".join(f":{c}" for c in values)
        updates = ", ".join(f"{c} = excluded.{c}" for c in values if c != "path_key")
        with self.transaction() as conn:
            conn.execute(
                f"INSERT INTO photos ({columns}) VALUES ({placeholders}) ON CONFLICT (path_key) DO UPDATE SET {updates}",
                values,
            )
            (photo_id,) = conn.execute("SELECT id FROM photos WHERE path_key = ?", (key,)).fetchone()
        return int(photo_id)

    def mark_failed(
        self, path: str | os.PathLike[str], error: str, *, size: int = -1, mtime_ns: int = -1
    ) -> int:
        """Record that ``path`` could not be indexed.

        A photo indexed before keeps its row and its faces, like a deleted photo: a file that is
        briefly unreadable (truncated while being copied, an unmounted disk) must not cost the
        user's naming and splits. When it is readable again, the re-detected faces inherit their
        identities from these (``replace_faces``).
        """
        key = path_key(path)
        with self.transaction() as conn:
            row = conn.execute("SELECT id FROM photos WHERE path_key = ?", (key,)).fetchone()
            if row is None:
                return self.upsert_photo(
                    path, size=size, mtime_ns=mtime_ns, sha256=None, status="failed", error=error
                )
            conn.execute(
                "UPDATE photos SET status = 'failed', error = ?, size = ?, mtime_ns = ?, scanned_at = ?"
                " WHERE id = ?",
                (error, int(size), int(mtime_ns), _now(), row[0]),
            )
        return int(row[0])

    def move_photo(
        self, photo_id: int, new_path: str | os.PathLike[str], *, size: int, mtime_ns: int
    ) -> None:
        """A photo moved: point its row at the new path, keeping its faces and identities."""
        key = path_key(new_path)
        with self.transaction() as conn:
            # A stale row at the destination (e.g. an old failed entry) gives way to the moved one.
            conn.execute("DELETE FROM photos WHERE path_key = ? AND id != ?", (key, photo_id))
            conn.execute(
                "UPDATE photos SET path_key = ?, path = ?, size = ?, mtime_ns = ?, scanned_at = ? WHERE id = ?",
                (key, display_path(key), int(size), int(mtime_ns), _now(), photo_id),
            )

    def touch_photo(self, photo_id: int, *, size: int, mtime_ns: int) -> None:
        """Same content, new size/mtime stamp (e.g. ``touch``): remember the stamp, keep the faces."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE photos SET size = ?, mtime_ns = ?, scanned_at = ? WHERE id = ?",
                (int(size), int(mtime_ns), _now(), photo_id),
            )

    def remove_photo(self, photo_id: int) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM photos WHERE id = ?", (photo_id,))

    def known_photos(self) -> dict[bytes, KnownPhoto]:
        """Every photo's path key → (id, size, mtime, status, embedder), in one query."""
        rows = self.conn.execute("SELECT path_key, id, size, mtime_ns, status, embedder FROM photos")
        return {bytes(r[0]): KnownPhoto(r[1], r[2], r[3], r[4], r[5]) for r in rows}

    def get_photo_by_path(self, path: str | os.PathLike[str]) -> PhotoRecord | None:
        row = self.conn.execute(
            f"SELECT {_PHOTO_COLUMNS} FROM photos WHERE path_key = ?", (path_key(path),)
        ).fetchone()
        return _photo_from_row(row) if row else None

    def photo_by_id(self, photo_id: int) -> PhotoRecord | None:
        row = self.conn.execute(f"SELECT {_PHOTO_COLUMNS} FROM photos WHERE id = ?", (photo_id,)).fetchone()
        return _photo_from_row(row) if row else None

    def photos_by_sha256(self, sha256: str) -> list[PhotoRecord]:
        rows = self.conn.execute(
            f"SELECT {_PHOTO_COLUMNS} FROM photos WHERE sha256 = ? AND status = 'ok' ORDER BY id", (sha256,)
        )
        return [_photo_from_row(r) for r in rows]

    def iter_photos(self, status: str | None = None) -> Iterator[PhotoRecord]:
        sql = f"SELECT {_PHOTO_COLUMNS} FROM photos"
        params: tuple[Any, ...] = ()
        if status is not None:
            sql += " WHERE status = ?"
            params = (status,)
        for row in self.conn.execute(sql + " ORDER BY id", params):
            yield _photo_from_row(row)

    # ------------------------------------------------------------------ library roots

    def add_library_roots(self, folders: Sequence[str | os.PathLike[str]]) -> None:
        """Record folders ``hime scan`` was given (their real paths) as library roots."""
        with self.transaction() as conn:
            for folder in folders:
                real = os.path.realpath(folder)
                conn.execute(
                    "INSERT OR IGNORE INTO library_roots (path_key, path, added_at) VALUES (?, ?, ?)",
                    (path_key(real), display_path(real), _now()),
                )

    def library_roots(self) -> list[Path]:
        """The folders ``hime scan`` was given, as real paths (sorted)."""
        rows = self.conn.execute("SELECT path_key FROM library_roots ORDER BY path_key")
        return [Path(os.fsdecode(bytes(r[0]))) for r in rows]

    def count_photos(self, status: str | None = None) -> int:
        if status is None:
            return int(self.conn.execute("SELECT COUNT(*) FROM photos").fetchone()[0])
        return int(self.conn.execute("SELECT COUNT(*) FROM photos WHERE status = ?", (status,)).fetchone()[0])

    # ------------------------------------------------------------------ faces

    def replace_faces(self, photo_id: int, faces: Sequence[ScannedFace]) -> list[int]:
        """Replace a photo's faces in one transaction; returns the new face ids in order.

        A new face whose box overlaps an old one (IoU ≥ 0.5) inherits its identity,
        ``assigned_by`` and the user's "not a face" (``rejected``), so re-scanning an edited photo
        does not undo the user's decisions. A face the quality gate rejects gets no identity.
        """
        with self.transaction() as conn:
            old = [
                (Box(r[0], r[1], r[2], r[3]), r[4], r[5], int(r[6]))
                for r in conn.execute(
                    "SELECT x0, y0, x1, y1, identity_id, assigned_by, rejected FROM faces WHERE photo_id = ?"
                    " ORDER BY id",
                    (photo_id,),
                )
            ]
            conn.execute("DELETE FROM faces WHERE photo_id = ?", (photo_id,))
            ids: list[int] = []
            taken: set[int] = set()
            for face in faces:
                box = face.detected.box
                identity_id, assigned_by, rejected = None, "auto", 0
                best, best_iou = -1, _KEEP_IDENTITY_IOU
                for i, (old_box, _, _, _) in enumerate(old):
                    iou = box.iou(old_box)
                    if i not in taken and iou >= best_iou:
                        best, best_iou = i, iou
                if best >= 0:
                    taken.add(best)
                    _, identity_id, assigned_by, rejected = old[best]
                if rejected or face.quality == "reject":
                    identity_id = None
                embedding = None
                if face.embedding is not None:
                    embedding = np.ascontiguousarray(face.embedding, dtype=np.float32).tobytes()
                cursor = conn.execute(
                    "INSERT INTO faces (photo_id, x0, y0, x1, y1, landmarks, score, size, sharpness, embedding,"
                    " identity_id, assigned_by, quality, quality_reason, rejected)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        photo_id,
                        box.x0,
                        box.y0,
                        box.x1,
                        box.y1,
                        np.ascontiguousarray(face.detected.landmarks, dtype=np.float32).reshape(10).tobytes(),
                        float(face.detected.score),
                        float(face.detected.size),
                        float(face.sharpness),
                        embedding,
                        identity_id,
                        assigned_by,
                        face.quality,
                        face.quality_reason,
                        rejected,
                    ),
                )
                ids.append(int(cursor.lastrowid))  # type: ignore[arg-type]
        return ids

    def record_photo(
        self, path: str | os.PathLike[str], faces: Sequence[ScannedFace], **photo: Any
    ) -> tuple[int, list[int]]:
        """Write a scanned photo and its faces in ONE transaction (safe against SIGKILL midway)."""
        with self.transaction():
            photo_id = self.upsert_photo(path, **photo)
            face_ids = self.replace_faces(photo_id, faces)
        return photo_id, face_ids

    def iter_faces(
        self,
        *,
        with_embeddings: bool = True,
        identity_id: int | None = None,
        embedder: str | None = None,
        include_rejected: bool = False,
    ) -> Iterator[Face]:
        """Every face of every indexed photo (ordered by face id), optionally filtered.

        Faces that are not faces (the quality gate's ``reject``, the user's ``hime faces
        reject``) are left out unless ``include_rejected``: nothing clusters, shows, enhances or
        picks them as exemplars.
        """
        sql = f"SELECT {_face_columns(with_embeddings)} FROM faces f JOIN photos p ON p.id = f.photo_id"
        where: list[str] = [] if include_rejected else [_NOT_REJECTED]
        params: list[Any] = []
        if identity_id is not None:
            where.append("f.identity_id = ?")
            params.append(identity_id)
        if embedder is not None:
            where.append("p.embedder = ?")
            params.append(embedder)
        if where:
            sql += " WHERE " + " AND ".join(where)
        for row in self.conn.execute(sql + " ORDER BY f.id", params):
            yield _face_from_row(row, with_embeddings)

    def faces_for_photo(
        self, photo_id: int, *, with_embeddings: bool = True, include_rejected: bool = False
    ) -> list[Face]:
        """A photo's faces in id order (without rejected ones unless ``include_rejected``)."""
        sql = f"SELECT {_face_columns(with_embeddings)} FROM faces f JOIN photos p ON p.id = f.photo_id"
        sql += " WHERE f.photo_id = ?" + ("" if include_rejected else f" AND {_NOT_REJECTED}")
        rows = self.conn.execute(sql + " ORDER BY f.id", (photo_id,))
        return [_face_from_row(r, with_embeddings) for r in rows]

    def face_by_id(self, face_id: int, *, with_embeddings: bool = True) -> Face | None:
        sql = f"SELECT {_face_columns(with_embeddings)} FROM faces f JOIN photos p ON p.id = f.photo_id"
        row = self.conn.execute(sql + " WHERE f.id = ?", (face_id,)).fetchone()
        return _face_from_row(row, with_embeddings) if row else None

    def count_faces(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0])

    def set_rejected(self, face_ids: Sequence[int], rejected: bool = True) -> list[int]:
        """The user's "not a face" (or its undo) on ``face_ids``; returns the ids that exist.

        A rejected face leaves its identity at once; an un-rejected one has none and is placed by
        the next ``update_identities`` like a new face. Kept across re-scans (``replace_faces``).
        """
        ids = [int(f) for f in dict.fromkeys(face_ids)]
        with self.transaction() as conn:
            found = [f for f in ids if conn.execute("SELECT 1 FROM faces WHERE id = ?", (f,)).fetchone()]
            conn.executemany(
                "UPDATE faces SET rejected = ?, identity_id = NULL, assigned_by = 'user' WHERE id = ?",
                [(int(rejected), f) for f in found],
            )
        return found


# ---------------------------------------------------------------------- row mapping

_PHOTO_COLUMNS = (
    "id, path_key, width, height, size, mtime_ns, sha256, format, orientation, taken_at, camera_make,"
    " camera_model, gps_lat, gps_lon, status, error, scanned_at, embedder"
)


def _photo_from_row(row: Sequence[Any]) -> PhotoRecord:
    return PhotoRecord(
        id=row[0],
        path=Path(os.fsdecode(bytes(row[1]))),
        width=row[2] if row[2] is not None else 0,
        height=row[3] if row[3] is not None else 0,
        size_bytes=row[4],
        mtime_ns=row[5],
        sha256=row[6],
        format=row[7],
        orientation=row[8] if row[8] is not None else 1,
        taken_at=row[9],
        camera_make=row[10],
        camera_model=row[11],
        gps_lat=row[12],
        gps_lon=row[13],
        status=row[14],
        error=row[15],
        scanned_at=row[16],
        embedder=row[17],
    )


# A face that is a face: neither the gate's reject nor the user's "not a face".
_NOT_REJECTED = "f.rejected = 0 AND (f.quality IS NULL OR f.quality != 'reject')"


def _face_columns(with_embeddings: bool) -> str:
    cols = (
        "f.id, f.photo_id, p.path_key, f.x0, f.y0, f.x1, f.y1, f.landmarks, f.score, f.size, f.sharpness,"
        " f.identity_id, f.quality, f.rejected"
    )
    return cols + (", f.embedding" if with_embeddings else "")


def _face_from_row(row: Sequence[Any], with_embeddings: bool) -> Face:
    embedding = None
    if with_embeddings and row[14] is not None:
        embedding = np.frombuffer(row[14], dtype=np.float32).copy()
    return Face(
        id=row[0],
        photo_id=row[1],
        photo_path=Path(os.fsdecode(bytes(row[2]))),
        box=Box(row[3], row[4], row[5], row[6]),
        landmarks=np.frombuffer(row[7], dtype=np.float32).reshape(5, 2).copy(),
        score=row[8],
        size=row[9],
        sharpness=row[10],
        embedding=embedding,
        identity_id=row[11],
        quality=row[12],
        rejected=bool(row[13]),
    )


# ---------------------------------------------------------------------- the writer lock


def _acquire_lock(lock_path: Path, timeout: float) -> int:
    from hime_cli.files import LockBusy, acquire_lock

    try:
        return acquire_lock(lock_path, timeout, poll=0.1)
    except LockBusy as busy:
        raise IndexLockedError(
            f"the library index {lock_path.with_suffix('')} is in use by another hime process{busy.holder_text}.",
            hint="wait for that run to finish (or stop it) and try again.",
        ) from None


def _release_lock(fd: int) -> None:
    from hime_cli.files import release_lock

    release_lock(fd)
