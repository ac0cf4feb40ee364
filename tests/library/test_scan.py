from __future__ import annotations

import builtins
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hime_cli.errors import UsageError
from hime_cli.library.index import LibraryIndex
from hime_cli.library.scan import ScanEvent, scan_paths
from hime_cli.types import DetectedFace
from tests.conftest import REPO_ROOT
from tests.library.corpus import asymmetric_rgb, broken_files, save_oriented, write_png16
from tests.library.fakes import CentreDetector, CrashingDetector, MeanColourEmbedder


def _photo(path: Path, seed: int, size: tuple[int, int] = (96, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(asymmetric_rgb(size[0], size[1], seed=seed)).save(path, quality=92)
    return path


def _scan(paths, index, **kwargs):  # type: ignore[no-untyped-def]
    detector = kwargs.pop("detector", None) or CentreDetector()
    embedder = kwargs.pop("embedder", None) or MeanColourEmbedder()
    return scan_paths(paths, index, embedder=embedder, detector=detector, **kwargs), detector, embedder


@pytest.fixture
def library(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for i in range(3):
        _photo(root / f"album{i % 2}" / f"p{i}.jpg", seed=i)
    return root


def test_first_scan_indexes_every_photo_and_face(library: Path) -> None:
    events: list[ScanEvent] = []
    with LibraryIndex.open() as index:
        report, detector, embedder = _scan([library], index, progress=events.append)
        assert (report.photos, report.new, report.unchanged, report.failed) == (3, 3, 0, 0)
        assert report.faces_found == 3 and detector.calls == 3
        assert [e.done for e in events] == [1, 2, 3] and all(e.total == 3 for e in events)
        faces = list(index.iter_faces())
        assert len(faces) == 3
        assert all(f.photo_path.is_absolute() and f.photo_path.exists() for f in faces)
        assert all(f.embedding is not None and f.embedding.shape == (128,) for f in faces)
        assert all(f.sharpness > 0 for f in faces)
        photo = index.get_photo_by_path(library / "album0" / "p0.jpg")
        assert photo is not None and (photo.width, photo.height) == (96, 64) and photo.format == "JPEG"
        assert photo.sha256 is not None and len(photo.sha256) == 64 and photo.embedder == "fake"


@pytest.mark.parametrize("parallel", [True, False])
def test_rescan_skips_unchanged_photos_without_reading_them(
    library: Path, monkeypatch: pytest.MonkeyPatch, parallel: bool
) -> None:
    with LibraryIndex.open() as index:
        _scan([library], index, parallel=parallel)
        real_open = builtins.open
        opened: list[str] = []

        def spy(file, *args, **kwargs):  # type: ignore[no-untyped-def]
            opened.append(os.fspath(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", spy)
        report, detector, embedder = _scan([library], index, parallel=parallel)
        assert (report.unchanged, report.new, report.updated) == (3, 0, 0)
        assert detector.calls == 0 and embedder.calls == 0
        assert not [p for p in opened if p.endswith(".jpg")]
        assert not report.changed


def test_touched_photo_is_hashed_once_then_skipped(library: Path) -> None:
    target = library / "album0" / "p0.jpg"
    with LibraryIndex.open() as index:
        _scan([library], index)
        face_ids = [f.id for f in index.iter_faces()]
        os.utime(target, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))
        report, detector, _ = _scan([library], index)
        assert report.unchanged == 3 and detector.calls == 0
        assert [f.id for f in index.iter_faces()] == face_ids
        record = index.get_photo_by_path(target)
        assert record is not None and record.mtime_ns == target.stat().st_mtime_ns


def test_edited_photo_is_reprocessed(library: Path) -> None:
    target = library / "album1" / "p1.jpg"
    with LibraryIndex.open() as index:
        _scan([library], index)
        old = index.get_photo_by_path(target)
        _photo(target, seed=99, size=(120, 80))
        report, detector, _ = _scan([library], index)
        assert (report.updated, report.unchanged, detector.calls) == (1, 2, 1)
        new = index.get_photo_by_path(target)
        assert new is not None and old is not None
        assert new.id == old.id and new.sha256 != old.sha256 and (new.width, new.height) == (120, 80)
        assert len(index.faces_for_photo(new.id)) == 1


def test_moved_photo_keeps_its_row_and_faces(library: Path) -> None:
    source = library / "album0" / "p0.jpg"
    with LibraryIndex.open() as index:
        _scan([library], index)
        photo = index.get_photo_by_path(source)
        assert photo is not None
        face_ids = [f.id for f in index.faces_for_photo(photo.id)]
        (library / "moved").mkdir()
        dest = library / "moved" / "renamed.jpg"
        shutil.move(source, dest)
        report, detector, _ = _scan([library], index)
        assert (report.moved, report.new, report.missing, detector.calls) == (1, 0, 0, 0)
        assert index.get_photo_by_path(source) is None
        moved = index.get_photo_by_path(dest)
        assert moved is not None and moved.id == photo.id
        assert [f.id for f in index.faces_for_photo(moved.id)] == face_ids
        assert index.count_photos() == 3


def test_copied_photo_is_a_new_photo_and_deleted_one_is_missing(library: Path) -> None:
    with LibraryIndex.open() as index:
        _scan([library], index)
        shutil.copy2(library / "album0" / "p0.jpg", library / "copy.jpg")
        (library / "album1" / "p1.jpg").unlink()
        report, _, _ = _scan([library], index)
        assert (report.new, report.moved, report.missing) == (1, 0, 1)
        assert index.count_photos() == 4  # the deleted photo stays indexed (and reported missing)


def test_force_and_embedder_change_reprocess(library: Path) -> None:
    with LibraryIndex.open() as index:
        _scan([library], index)
        report, detector, _ = _scan([library], index, force=True)
        assert (report.updated, detector.calls) == (3, 3)
        other = MeanColourEmbedder()
        other.name = "other"
        report, detector, _ = _scan([library], index, embedder=other)
        assert (report.updated, report.moved, detector.calls) == (3, 0, 3)
        assert {p.embedder for p in index.iter_photos()} == {"other"}


def test_broken_files_never_stop_a_scan(
    tmp_path: Path, library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = broken_files(library / "broken")
    locked = _photo(library / "broken" / "locked.jpg", seed=5)
    # As root nothing is unreadable: fake it, in-process (a worker process would not see the patch).
    as_root = os.geteuid() == 0
    if as_root:
        real_open, real_os_open = builtins.open, os.open

        def fake_open(file, *args, **kwargs):  # type: ignore[no-untyped-def]
            if not isinstance(file, int) and os.fspath(file) == os.fspath(locked):
                raise PermissionError(13, "Permission denied", os.fspath(locked))
            return real_open(file, *args, **kwargs)

        def fake_os_open(file, *args, **kwargs):  # type: ignore[no-untyped-def]
            # The reader opens photos with os.open (non-blocking, then fstat) since ca8a222.
            if os.fspath(file) == os.fspath(locked):
                raise PermissionError(13, "Permission denied", os.fspath(locked))
            return real_os_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(os, "open", fake_os_open)
    else:
        locked.chmod(0)
    with LibraryIndex.open() as index:
        report, _, _ = _scan([library], index, parallel=not as_root)
        assert report.new == 3
        reasons = {f.path.name: f.reason for f in report.failures}
        assert set(reasons) == {p.name for p in broken.values()} | {"locked.jpg"}
        assert "empty" in reasons["empty.jpg"]
        assert "truncated" in reasons["truncated.jpg"]
        assert "not an image" in reasons["random.jpg"] and "not an image" in reasons["notes.png"]
        assert "decompression bomb" in reasons["bomb.png"]
        assert "permission denied" in reasons["locked.jpg"]
        failed = {p.path.name: p.error for p in index.iter_photos(status="failed")}
        assert failed == reasons
        # Failed photos are retried (and reported) on every scan, not silently skipped.
        report, _, _ = _scan([library], index, parallel=not as_root)
        assert report.failed == 6 and report.unchanged == 3


def test_worker_process_handles_broken_files_and_survives_a_crash(library: Path) -> None:
    broken = broken_files(library / "broken")
    for i in range(6):
        _photo(library / "more" / f"m{i}.jpg", seed=10 + i)
    _photo(library / "more" / "m2_crash.jpg", seed=20, size=(77, 64))  # kills the worker
    with LibraryIndex.open() as index:
        report, _, _ = _scan([library], index, detector=CrashingDetector(77))
        assert report.photos == 3 + 6 + 1 + len(broken)
        assert report.new == 9 and report.faces_found == 9
        reasons = {f.path.name: f.reason for f in report.failures}
        assert set(reasons) == {p.name for p in broken.values()} | {"m2_crash.jpg"}
        assert "crashed" in reasons["m2_crash.jpg"]
        assert "decompression bomb" in reasons["bomb.png"]


def test_unusual_valid_photos_are_indexed(tmp_path: Path) -> None:
    root = tmp_path / "odd"
    root.mkdir()
    rgb = asymmetric_rgb(96, 64)
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg")
    write_png16(root / "deep.png", (rgb.astype(np.uint16) * 257))
    Image.fromarray(rgb[:, :, 0], "L").save(root / "grey.png")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)]), "RGBA").save(root / "alpha.png")
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    frames[0].save(root / "anim.webp", save_all=True, append_images=frames[1:], duration=50)
    for o in range(1, 9):
        save_oriented(root / f"orient{o}.jpg", rgb, o, fmt="JPEG")
    Image.fromarray(rgb).save(root / "名前 é.jpg")
    Image.fromarray(rgb).save(root / os.fsdecode(b"latin1-\xe9.jpg"))
    with LibraryIndex.open() as index:
        report, _, _ = _scan([root], index)
        assert report.failed == 0, report.failures
        assert report.new == 16 and report.faces_found == 16
        for photo in index.iter_photos():
            assert (photo.width, photo.height) == (96, 64), photo.path
        orientations = {p.path.name: p.orientation for p in index.iter_photos()}
        assert [orientations[f"orient{o}.jpg"] for o in range(1, 9)] == list(range(1, 9))
        assert index.get_photo_by_path(root / os.fsdecode(b"latin1-\xe9.jpg")) is not None


def test_symlinked_file_is_indexed_once(library: Path) -> None:
    (library / "link.jpg").symlink_to(library / "album0" / "p0.jpg")
    with LibraryIndex.open() as index:
        report, _, _ = _scan([library], index)
        assert (report.photos, report.new) == (3, 3)


def test_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    with LibraryIndex.open() as index:
        with pytest.raises(UsageError):
            _scan([tmp_path / "nope"], index)


def test_real_detector_and_dlib_embedder_on_astronaut(tmp_path: Path) -> None:
    from skimage.data import astronaut

    Image.fromarray(astronaut()).save(tmp_path / "astronaut.png")
    with LibraryIndex.open() as index:
        report = scan_paths([tmp_path], index)
        assert report.new == 1 and report.faces_found == 1 and report.embedder == "dlib"
        (face,) = index.iter_faces()
        assert face.embedding is not None and face.embedding.shape == (128,)
        # The stored vector is what the embedder gives for that photo and face.
        from hime_cli.faces.detect import get_detector
        from hime_cli.faces.embed import get_embedder
        from hime_cli.library.reader import load_image

        rgb = load_image(tmp_path / "astronaut.png").rgb_uint8()
        expected = get_embedder("dlib").embed(rgb, get_detector().detect(rgb)[:1])[0]
        np.testing.assert_allclose(face.embedding, expected, atol=1e-5)
        # The astronaut's face is in the upper middle of the 512 × 512 picture.
        assert 150 < (face.box.x0 + face.box.x1) / 2 < 260 and 50 < (face.box.y0 + face.box.y1) / 2 < 160
        assert 60 < face.size < 160 and face.score > 0.9 and face.sharpness > 0


_KILL_SCRIPT = """
import sys
from hime_cli.library.index import LibraryIndex
from hime_cli.library.scan import scan_paths
from hime_cli.types import DetectedFace
from tests.library.fakes import CentreDetector, CrashingDetector, MeanColourEmbedder
with LibraryIndex.open(sys.argv[1]) as index:
    scan_paths([sys.argv[2]], index, embedder=MeanColourEmbedder(delay_s=float(sys.argv[3])), detector=CentreDetector())
"""


def test_scan_killed_midway_leaves_consistent_index_and_resumes(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for i in range(12):
        _photo(root / f"p{i:02d}.jpg", seed=i)
    db = tmp_path / "index.sqlite3"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(db), str(root), "0.15"], cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 60
        done = 0
        while time.monotonic() < deadline and proc.poll() is None:
            if db.exists():
                try:
                    with sqlite3.connect(db, timeout=5) as conn:
                        done = conn.execute("SELECT COUNT(*) FROM photos").fetchone()[0]
                except sqlite3.OperationalError:
                    done = 0
            if done >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the scan finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        indexed = conn.execute("SELECT COUNT(*) FROM photos").fetchone()[0]
        # Each indexed photo has exactly its one face: photo row and faces were written together.
        per_photo = conn.execute(
            "SELECT p.id, COUNT(f.id) FROM photos p LEFT JOIN faces f ON f.photo_id = p.id GROUP BY p.id"
        ).fetchall()
    assert 3 <= indexed < 12
    assert all(n == 1 for _, n in per_photo)

    with LibraryIndex.open(db) as index:  # the dead process's lock is gone
        report, _, _ = _scan([root], index)
        assert (report.unchanged, report.new) == (indexed, 12 - indexed)
        assert index.count_photos() == 12 and index.count_faces() == 12


_UNGUARDED_SCRIPT = """
import sys
from hime_cli.library.index import LibraryIndex
from hime_cli.library.scan import scan_paths
from tests.library.fakes import CentreDetector, MeanColourEmbedder
# No `if __name__ == "__main__":` guard: spawned workers would re-run this file and cannot start.
with LibraryIndex.open(sys.argv[1]) as index:
    report = scan_paths([sys.argv[2]], index, embedder=MeanColourEmbedder(), detector=CentreDetector(), workers=2)
print("RESULT", report.new, report.failed, report.faces_found)
"""


def test_scan_falls_back_in_process_when_workers_cannot_start(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for i in range(10):
        _photo(root / f"p{i}.jpg", seed=i)
    script = tmp_path / "unguarded.py"
    script.write_text(_UNGUARDED_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "i.sqlite3"), str(root)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    result_lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert result_lines[-1] == "RESULT 10 0 10"


def _replace_with_upscale(path: Path, factor: int = 4) -> None:
    """What `hime enhance --in-place` does to a photo: a verified backup, then a bigger version."""
    from hime_cli.library.backup import replace_in_place

    im = Image.open(path)
    big = im.resize((im.width * factor, im.height * factor), Image.Resampling.BICUBIC)
    replace_in_place(path, lambda tmp: big.save(tmp, format="JPEG", quality=95))


def test_photo_enhanced_in_place_is_indexed_as_its_original(library: Path) -> None:
    from hime_cli.library.backup import load_original, restore

    target = library / "album0" / "p0.jpg"
    original = np.asarray(Image.open(target).convert("RGB"))
    with LibraryIndex.open() as index:
        _scan([library], index)
        before = index.get_photo_by_path(target)
        assert before is not None
        faces_before = index.faces_for_photo(before.id)
        _replace_with_upscale(target)
        assert Image.open(target).size == (384, 256)
        # the enhanced file is not re-detected: same row, same faces, the original's content hash
        report, detector, _ = _scan([library], index)
        assert (report.updated, report.new, report.unchanged, detector.calls) == (0, 0, 3, 0)
        after = index.get_photo_by_path(target)
        assert after is not None and after.id == before.id and after.sha256 == before.sha256
        assert (after.width, after.height) == (96, 64)
        assert after.size_bytes == target.stat().st_size  # stamp of the file now there: next scan skips it
        assert [f.id for f in index.faces_for_photo(after.id)] == [f.id for f in faces_before]
        assert _scan([library], index)[0].unchanged == 3
        # readers of the index get the original pixels (its faces' coordinates are the original's)
        np.testing.assert_array_equal(np.round(load_original(target).rgb * 255).astype(np.uint8), original)
        # restored: the same content again, nothing re-detected
        assert restore([target]).ok
        report, detector, _ = _scan([library], index)
        assert (report.updated, report.unchanged, detector.calls) == (0, 3, 0)


def test_index_built_after_an_in_place_run_describes_the_original(library: Path) -> None:
    target = library / "album1" / "p1.jpg"
    _replace_with_upscale(target)
    with LibraryIndex.open() as index:
        _scan([library], index)
        record = index.get_photo_by_path(target)
        assert record is not None and (record.width, record.height) == (96, 64)
        face = index.faces_for_photo(record.id)[0]
        assert face.box.x1 <= 96 and face.box.y1 <= 64


def test_missing_backup_falls_back_to_indexing_the_file(library: Path) -> None:
    from hime_cli.library.backup import find_backups

    target = library / "album0" / "p0.jpg"
    _replace_with_upscale(target)
    find_backups(target)[0].backup_path.unlink()
    with LibraryIndex.open() as index:
        report, _, _ = _scan([library], index)
        assert report.failed == 0
        record = index.get_photo_by_path(target)
        assert record is not None and (record.width, record.height) == (384, 256)


_INTERRUPT_SCRIPT = """
import signal
import sys
import time
from hime_cli.library.index import LibraryIndex
from hime_cli.library.scan import scan_paths
from tests.library.fakes import CentreDetector, MeanColourEmbedder


class SlowDetector(CentreDetector):
    # The delay sits in detection, which every photo goes through: the quality gate may reject a
    # synthetic face before embedding, and an embedder delay would then never happen.
    def detect(self, rgb):
        time.sleep(float(sys.argv[3]))
        return super().detect(rgb)


if __name__ == "__main__":
    # Ctrl-C as on a terminal: a shell starts background jobs (`cmd &`, CI under nohup) with SIGINT
    # ignored, which Python then never turns into KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with LibraryIndex.open(sys.argv[1]) as index:
        try:
            scan_paths([sys.argv[2]], index, embedder=MeanColourEmbedder(),
                       detector=SlowDetector(), workers=2)
        except KeyboardInterrupt:
            print("INTERRUPTED", flush=True)
            sys.exit(130)
"""


@pytest.mark.slow
def test_ctrl_c_stops_a_parallel_scan_within_seconds(tmp_path: Path) -> None:
    # Issue #11: Ctrl-C took 13-34 s, waiting for every photo the workers had in hand.
    root = tmp_path / "photos"
    for i in range(16):
        _photo(root / f"p{i:02d}.jpg", seed=i)
    db, script = tmp_path / "index.sqlite3", tmp_path / "scan.py"
    script.write_text(_INTERRUPT_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(db), str(root), "8"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        done = 0
        while time.monotonic() < deadline and proc.poll() is None and done < 1:
            if db.exists():
                try:
                    with sqlite3.connect(db, timeout=5) as conn:
                        done = conn.execute("SELECT COUNT(*) FROM photos").fetchone()[0]
                except sqlite3.OperationalError:
                    done = 0
            time.sleep(0.05)
        assert proc.poll() is None and done >= 1
        time.sleep(0.5)  # the workers are inside their next photos (8 s each)
        interrupted = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        stdout, _ = proc.communicate(timeout=60)
        took = time.monotonic() - interrupted
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and "INTERRUPTED" in stdout
    assert took < 4.0, f"Ctrl-C took {took:.1f} s"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        per_photo = conn.execute(
            "SELECT p.id, COUNT(f.id) FROM photos p LEFT JOIN faces f ON f.photo_id = p.id GROUP BY p.id"
        ).fetchall()
    assert per_photo and all(n == 1 for _, n in per_photo)


class SureDetector(CentreDetector):
    """CentreDetector with a confident score (0.9 is a "poor" face for the quality gate)."""

    def detect(self, rgb):  # type: ignore[no-untyped-def]
        return [DetectedFace(f.box, f.landmarks, 0.99) for f in super().detect(rgb)]


def test_briefly_unreadable_photo_keeps_the_users_split_and_name(library: Path) -> None:
    # Issue #11 D9: a truncated file made mark_failed delete its faces; once restored, the face
    # rejoined the old identity and "Bob" was gone.
    from hime_cli.identities.store import identity_name, name_identity, split_faces, update_identities

    photo = library / "album1" / "p1.jpg"
    original = photo.read_bytes()
    with LibraryIndex.open() as index:
        _scan([library], index, detector=SureDetector())
        update_identities(index, embedder="fake", threshold=0.5)
        faces = {f.photo_path.name: f for f in index.iter_faces()}
        (together,) = {f.identity_id for f in faces.values()}  # one "person" (similar mean colours)
        split = split_faces(index, together, [faces["p1.jpg"].id])
        bob = split.new_identities[0]
        name_identity(index, bob, "Bob")

        photo.write_bytes(original[: len(original) // 3])  # truncated while being copied
        report, _, _ = _scan([library], index, detector=SureDetector())
        assert report.failed == 1
        assert [f.identity_id for f in index.faces_for_photo(index.get_photo_by_path(photo).id)] == [bob]

        photo.write_bytes(original)  # restored
        report, _, _ = _scan([library], index, detector=SureDetector())
        assert report.failed == 0 and report.updated == 1
        update_identities(index, embedder="fake", threshold=0.5)
        (face,) = index.faces_for_photo(index.get_photo_by_path(photo).id)
        assert face.identity_id == bob and identity_name(index, bob) == "Bob"


def test_not_a_face_survives_forced_rescans_and_gate_rejects_are_not_embedded(library: Path) -> None:
    from hime_cli.identities.store import update_identities

    class WeakDetector(SureDetector):
        def detect(self, rgb):  # type: ignore[no-untyped-def]
            faces = super().detect(rgb)
            # p2 is a "flower": a weak detection the gate rejects before embedding.
            return [DetectedFace(f.box, f.landmarks, 0.75) for f in faces] if rgb.shape[1] == 97 else faces

    _photo(library / "flower.jpg", seed=7, size=(97, 64))
    with LibraryIndex.open() as index:
        report, _, embedder = _scan([library], index, detector=WeakDetector())
        assert report.faces_found == 4 and report.faces_rejected == 1
        assert embedder.calls == 3  # the rejected face cost no embedding
        flower = index.get_photo_by_path(library / "flower.jpg")
        assert index.faces_for_photo(flower.id) == []  # invisible to everything
        (stored,) = index.faces_for_photo(flower.id, include_rejected=True)
        assert stored.quality == "reject" and stored.embedding is None
        update_identities(index, embedder="fake", threshold=0.5)
        victim = next(f for f in index.iter_faces() if f.photo_path.name == "p0.jpg")
        index.set_rejected([victim.id])
        for _ in range(2):
            _scan([library], index, detector=WeakDetector(), force=True)
            update_identities(index, embedder="fake", threshold=0.5)
            names = sorted(f.photo_path.name for f in index.iter_faces())
            assert names == ["p1.jpg", "p2.jpg"]
            (again,) = index.faces_for_photo(victim.photo_id, include_rejected=True)
            assert again.rejected and again.identity_id is None
