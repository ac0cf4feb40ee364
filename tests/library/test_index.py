from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hime_cli.errors import IndexError_, IndexLockedError
from hime_cli.library.index import LibraryIndex, ScannedFace, display_path, path_key
from hime_cli.library.migrations import LATEST_VERSION, MIGRATIONS, apply_migrations, current_version
from hime_cli.paths import get_paths
from hime_cli.types import Box, DetectedFace


def _face(x0: float, y0: float, side: float, seed: int = 0) -> ScannedFace:
    rng = np.random.default_rng(seed)
    landmarks = (
        np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]]) * side + [x0, y0]
    ).astype(np.float32)
    return ScannedFace(
        detected=DetectedFace(box=Box(x0, y0, x0 + side, y0 + side), landmarks=landmarks, score=0.99),
        sharpness=12.5,
        embedding=rng.normal(size=128).astype(np.float32),
    )


def test_open_default_location_creates_schema() -> None:
    with LibraryIndex.open() as index:
        assert index.path == get_paths().index_path
        assert index.schema_version == LATEST_VERSION
        mode = index.conn.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
        tables = {r[0] for r in index.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"photos", "faces", "identities", "schema_version"} <= tables
    assert get_paths().index_path.exists()


def test_migrations_are_idempotent_and_numbered(tmp_path: Path) -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    conn = sqlite3.connect(tmp_path / "x.sqlite3", isolation_level=None)
    assert current_version(conn) == 0
    assert apply_migrations(conn) == [m.version for m in MIGRATIONS]
    assert apply_migrations(conn) == []
    assert current_version(conn) == LATEST_VERSION


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "i.sqlite3"
    LibraryIndex.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_version VALUES (999, 'future', 'now')")
    conn.commit()
    conn.close()
    with pytest.raises(IndexError_, match="newer"):
        LibraryIndex.open(path)


def test_readonly_requires_existing_index(tmp_path: Path) -> None:
    with pytest.raises(IndexError_, match="hime scan"):
        LibraryIndex.open(tmp_path / "missing.sqlite3", readonly=True)
    assert not (tmp_path / "missing.sqlite3").exists()


def test_photo_round_trip_and_faces(tmp_path: Path) -> None:
    photo = tmp_path / "a.jpg"
    with LibraryIndex.open() as index:
        pid, fids = index.record_photo(
            photo,
            [_face(10, 20, 40, 1), _face(100, 20, 30, 2)],
            size=123,
            mtime_ns=456,
            sha256="ab" * 32,
            width=640,
            height=480,
            format="JPEG",
            orientation=6,
            embedder="dlib",
        )
        assert len(fids) == 2
        rec = index.get_photo_by_path(photo)
        assert rec is not None and rec.id == pid and rec.path == photo
        assert (rec.width, rec.height, rec.size_bytes, rec.mtime_ns, rec.orientation) == (
            640,
            480,
            123,
            456,
            6,
        )
        assert rec.status == "ok" and rec.embedder == "dlib"
        assert index.photo_by_id(pid) == rec
        faces = index.faces_for_photo(pid)
        assert [f.id for f in faces] == fids
        assert faces[0].photo_path == photo
        assert faces[0].box == Box(10, 20, 50, 60)
        assert faces[0].size == pytest.approx(40)
        assert faces[0].landmarks.shape == (5, 2)
        assert faces[0].embedding is not None and faces[0].embedding.shape == (128,)
        np.testing.assert_allclose(faces[0].embedding, _face(10, 20, 40, 1).embedding)
        assert index.face_by_id(fids[1]).box == Box(100, 20, 130, 50)  # type: ignore[union-attr]
        assert [f.id for f in index.iter_faces(with_embeddings=False)] == fids
        assert all(f.embedding is None for f in index.iter_faces(with_embeddings=False))
        assert index.count_faces() == 2 and index.count_photos() == 1
        assert index.known_photos()[path_key(photo)].size == 123


def test_replace_faces_keeps_identity_of_overlapping_face_and_never_reuses_ids(tmp_path: Path) -> None:
    photo = tmp_path / "a.jpg"
    with LibraryIndex.open() as index:
        pid, (f1, f2) = index.record_photo(
            photo, [_face(10, 10, 40), _face(200, 10, 40)], size=1, mtime_ns=1, sha256=None
        )
        with index.transaction() as conn:
            conn.execute("INSERT INTO identities (name, created_at) VALUES ('Ada', 'now')")
            ident = conn.execute("SELECT id FROM identities").fetchone()[0]
            conn.execute("UPDATE faces SET identity_id = ?, assigned_by = 'user' WHERE id = ?", (ident, f1))
        new_ids = index.replace_faces(pid, [_face(12, 11, 40), _face(400, 10, 40)])
        assert not set(new_ids) & {f1, f2}
        faces = index.faces_for_photo(pid)
        assert faces[0].identity_id == ident
        assert faces[1].identity_id is None
        row = index.conn.execute("SELECT assigned_by FROM faces WHERE id = ?", (new_ids[0],)).fetchone()
        assert row[0] == "user"


def test_transaction_rolls_back_everything_on_error(tmp_path: Path) -> None:
    with LibraryIndex.open() as index:
        with pytest.raises(RuntimeError):
            with index.transaction():
                index.upsert_photo(tmp_path / "a.jpg", size=1, mtime_ns=1, sha256=None)
                with index.transaction():
                    index.upsert_photo(tmp_path / "b.jpg", size=1, mtime_ns=1, sha256=None)
                raise RuntimeError("boom")
        assert index.count_photos() == 0
        # A failing inner savepoint does not undo the outer transaction's other work.
        with index.transaction():
            index.upsert_photo(tmp_path / "a.jpg", size=1, mtime_ns=1, sha256=None)
            with pytest.raises(RuntimeError):
                with index.transaction():
                    index.upsert_photo(tmp_path / "b.jpg", size=1, mtime_ns=1, sha256=None)
                    raise RuntimeError("inner")
        assert index.count_photos() == 1


def test_photo_delete_cascades_to_faces(tmp_path: Path) -> None:
    with LibraryIndex.open() as index:
        pid, _ = index.record_photo(tmp_path / "a.jpg", [_face(0, 0, 20)], size=1, mtime_ns=1, sha256=None)
        index.remove_photo(pid)
        assert index.count_faces() == 0


def test_mark_failed_keeps_faces_and_records_error(tmp_path: Path) -> None:
    # Issue #11 D9: a briefly unreadable photo kept nothing of its faces, so the user's split and
    # name were lost; now it keeps them, like a deleted photo.
    with LibraryIndex.open() as index:
        pid, fids = index.record_photo(tmp_path / "a.jpg", [_face(0, 0, 20)], size=1, mtime_ns=1, sha256="s")
        assert index.mark_failed(tmp_path / "a.jpg", "truncated", size=2, mtime_ns=3) == pid
        rec = index.photo_by_id(pid)
        assert rec is not None and rec.status == "failed" and rec.error == "truncated"
        assert (rec.size_bytes, rec.mtime_ns, rec.sha256) == (2, 3, "s")
        assert [f.id for f in index.faces_for_photo(pid)] == fids
        # A path never indexed before gets a failed row with no faces.
        other = index.mark_failed(tmp_path / "b.jpg", "not an image")
        assert index.photo_by_id(other).status == "failed" and index.faces_for_photo(other) == []


def test_move_photo_keeps_faces(tmp_path: Path) -> None:
    with LibraryIndex.open() as index:
        pid, fids = index.record_photo(tmp_path / "a.jpg", [_face(0, 0, 20)], size=1, mtime_ns=1, sha256="x")
        index.move_photo(pid, tmp_path / "sub" / "a.jpg", size=1, mtime_ns=2)
        assert index.get_photo_by_path(tmp_path / "a.jpg") is None
        rec = index.get_photo_by_path(tmp_path / "sub" / "a.jpg")
        assert rec is not None and rec.id == pid
        assert [f.id for f in index.faces_for_photo(pid)] == fids
        assert index.photos_by_sha256("x")[0].id == pid


def test_non_utf8_path_round_trips(tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xe9-\xff.jpg")  # Latin-1 bytes: not valid UTF-8
    photo = tmp_path / name
    with LibraryIndex.open() as index:
        pid = index.upsert_photo(photo, size=1, mtime_ns=1, sha256=None)
        rec = index.photo_by_id(pid)
        assert rec is not None and os.fsencode(rec.path) == os.fsencode(photo)
        shown = index.conn.execute("SELECT path FROM photos").fetchone()[0]
        assert shown.endswith("caf\\xe9-\\xff.jpg")
    assert display_path(photo).endswith("caf\\xe9-\\xff.jpg")


def test_second_writer_is_refused_with_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "i.sqlite3"
    with LibraryIndex.open(path):
        with pytest.raises(IndexLockedError, match=f"pid {os.getpid()}"):
            LibraryIndex.open(path)
        # Readers are never blocked.
        with LibraryIndex.open(path, readonly=True) as reader:
            assert reader.count_photos() == 0
    LibraryIndex.open(path).close()  # released on close


def test_lock_of_killed_process_is_released(tmp_path: Path) -> None:
    path = tmp_path / "i.sqlite3"
    code = (
        "import os, sys, time; from hime_cli.library.index import LibraryIndex\n"
        f"i = LibraryIndex.open({str(path)!r}); print('ready', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with pytest.raises(IndexLockedError):
            LibraryIndex.open(path)
    finally:
        proc.kill()
        proc.wait()
    LibraryIndex.open(path, lock_timeout=2).close()


def test_version_1_index_is_migrated_and_its_faces_are_unjudged(tmp_path: Path) -> None:
    import sqlite3

    from hime_cli.library import migrations

    db = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(db, isolation_level=None)
    real = migrations.MIGRATIONS
    try:
        migrations.MIGRATIONS = real[:1]  # what hime wrote before migration 2
        apply_migrations(conn)
    finally:
        migrations.MIGRATIONS = real
    conn.execute(
        "INSERT INTO photos (path_key, path, size, mtime_ns, status, scanned_at) VALUES (x'2f61', '/a', 1, 1, 'ok', 'now')"
    )
    conn.execute(
        "INSERT INTO faces (photo_id, x0, y0, x1, y1, landmarks, score, size, sharpness) VALUES (1, 0, 0, 9, 9, ?, 0.9, 9, 5)",
        (np.zeros(10, np.float32).tobytes(),),
    )
    conn.close()
    with LibraryIndex.open(db) as index:
        assert index.schema_version == LATEST_VERSION >= 2
        (face,) = index.iter_faces()
        assert face.quality is None and not face.rejected  # judged by the next update_identities
        hidden = index.conn.execute("SELECT hidden FROM identities").fetchall()
        assert hidden == []


def test_user_rejection_is_inherited_by_the_re_detected_face(tmp_path: Path) -> None:
    with LibraryIndex.open() as index:
        pid, (kept, gone) = index.record_photo(
            tmp_path / "a.jpg", [_face(0, 0, 40), _face(100, 0, 40)], size=1, mtime_ns=1, sha256=None
        )
        assert index.set_rejected([gone, 12345]) == [gone]
        assert [f.id for f in index.iter_faces()] == [kept]
        new_ids = index.replace_faces(
            pid, [_face(1, 1, 40), _face(101, 1, 40)]
        )  # a re-scan, boxes moved a little
        faces = index.faces_for_photo(pid, include_rejected=True)
        assert [f.rejected for f in faces] == [False, True] and [f.id for f in faces] == new_ids
        assert [f.id for f in index.iter_faces()] == [new_ids[0]]
        index.set_rejected([new_ids[1]], rejected=False)
        assert [f.id for f in index.iter_faces()] == new_ids
