"""Verified backups, in-place replacement, restore, and the SIGKILL guarantee."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hime_cli.errors import ImageWriteError
from hime_cli.library import backup
from hime_cli.library.backup import backup_original, find_backups, replace_in_place, restore
from hime_cli.library.writer import TEMP_MARKER
from hime_cli.paths import get_paths


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def new_version(original: bytes) -> bytes:
    """What the fake enhancer writes: deterministic, different, same order of size."""
    return b"HIME" + sha(original).encode() + original[::-1]


def write_new(original: bytes):
    def write(tmp: Path) -> None:
        tmp.write_bytes(new_version(original))

    return write


def temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if TEMP_MARKER in p.name]


def test_backup_is_content_addressed_verified_and_idempotent(tmp_path) -> None:
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"original bytes")
    rec = backup_original(photo)
    assert rec.sha256 == sha(b"original bytes") and rec.state == "backed_up"
    assert rec.backup_path == get_paths().backups_dir / "objects" / rec.sha256[:2] / rec.sha256
    assert rec.backup_path.read_bytes() == b"original bytes"
    twin = tmp_path / "b.jpg"
    twin.write_bytes(b"original bytes")
    assert backup_original(twin).backup_path == rec.backup_path  # stored once
    assert backup_original(photo) == rec  # same path + content: the same record
    assert len(find_backups(photo)) == 1


def test_damaged_backup_is_caught_before_anything_is_replaced(tmp_path, monkeypatch) -> None:
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"original bytes")
    real_store = backup._store_object

    def store_then_corrupt(src):
        digest, size, st = real_store(src)
        backup._object_path(digest).write_bytes(b"bit rot!!!!!!!")  # same size, other content
        return digest, size, st

    monkeypatch.setattr(backup, "_store_object", store_then_corrupt)
    with pytest.raises(backup.BackupError, match="does not match"):
        replace_in_place(photo, write_new(b"original bytes"))
    assert photo.read_bytes() == b"original bytes"


def test_replace_and_restore_round_trip(tmp_path) -> None:
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"original bytes")
    os.chmod(photo, 0o640)
    os.utime(photo, ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    rec = replace_in_place(photo, write_new(b"original bytes"))
    assert photo.read_bytes() == new_version(b"original bytes")
    assert rec.state == "replaced" and rec.replaced_sha256 == sha(new_version(b"original bytes"))
    assert stat.S_IMODE(photo.stat().st_mode) == 0o640
    again = replace_in_place(photo, lambda tmp: pytest.fail("must not enhance twice"))
    assert again.already_replaced

    report = restore([photo])
    assert report.restored == (photo.resolve(),) and report.ok
    assert photo.read_bytes() == b"original bytes"
    assert photo.stat().st_mtime_ns == 1_500_000_000_000_000_000
    assert restore([photo]).unchanged == (photo.resolve(),)
    assert temps(tmp_path) == []


def test_restore_refuses_edited_photos_unless_forced_and_brings_back_deleted(tmp_path) -> None:
    edited, deleted, never = tmp_path / "e.jpg", tmp_path / "d.jpg", tmp_path / "n.jpg"
    for p in (edited, deleted, never):
        p.write_bytes(p.name.encode() * 10)
    replace_in_place(edited, write_new(edited.read_bytes()))
    replace_in_place(deleted, write_new(deleted.read_bytes()))
    edited.write_bytes(b"the user edited this afterwards")
    deleted.unlink()
    report = restore([tmp_path])  # a folder: every backup under it
    assert report.restored == (deleted.resolve(),)
    assert [p for p, _ in report.refused] == [edited.resolve()]
    assert not report.ok and never.resolve() not in report.restored
    assert edited.read_bytes() == b"the user edited this afterwards"
    assert restore([never]).missing[0][0] == never.resolve()
    dry = restore([edited], force=True, dry_run=True)
    assert dry.restored == (edited.resolve(),) and edited.read_bytes() == b"the user edited this afterwards"
    assert restore([edited], force=True).restored == (edited.resolve(),)
    assert edited.read_bytes() == b"e.jpg" * 10


def test_failed_or_concurrent_writes_keep_the_original(tmp_path) -> None:
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"original bytes")

    def crash(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError("encoder crashed")

    with pytest.raises(RuntimeError):
        replace_in_place(photo, crash)
    assert photo.read_bytes() == b"original bytes" and temps(tmp_path) == []

    def someone_else_edits(tmp: Path) -> None:
        tmp.write_bytes(b"new")
        time.sleep(0.01)
        photo.write_bytes(b"edited by another program")

    with pytest.raises(ImageWriteError, match="modified"):
        replace_in_place(photo, someone_else_edits)
    assert photo.read_bytes() == b"edited by another program"
    with pytest.raises(ImageWriteError, match="not written"):
        replace_in_place(photo, lambda tmp: None)


def test_symlinked_photo_replaces_the_target_not_the_link(tmp_path) -> None:
    real = tmp_path / "real.jpg"
    real.write_bytes(b"original bytes")
    link = tmp_path / "link.jpg"
    link.symlink_to(real)
    replace_in_place(link, write_new(b"original bytes"))
    assert link.is_symlink() and real.read_bytes() == new_version(b"original bytes")


def test_replace_in_place_with_the_real_writer(tmp_path) -> None:
    from hime_cli.library.reader import load_image
    from hime_cli.library.writer import save_image

    photo = tmp_path / "p.png"
    Image.fromarray(np.full((8, 8, 3), 40, np.uint8)).save(photo)
    loaded = load_image(photo)
    replace_in_place(photo, lambda tmp: save_image(loaded, 1.0 - loaded.rgb, None, tmp))
    assert np.asarray(Image.open(photo))[0, 0, 0] == 215
    restore([photo])
    assert np.asarray(Image.open(photo))[0, 0, 0] == 40


def test_restore_brings_back_the_latest_original_not_the_oldest(tmp_path) -> None:
    """#11 D1: enhance, restore, edit, enhance again, restore: the edit comes back, not the first original."""
    photo = tmp_path / "p.jpg"
    photo.write_bytes(b"first original")
    replace_in_place(photo, write_new(b"first original"))
    assert restore([photo]).restored == (photo.resolve(),)
    photo.write_bytes(b"the user's later edit")
    replace_in_place(photo, write_new(b"the user's later edit"))
    report = restore([photo])
    assert report.restored == (photo.resolve(),) and report.ok
    assert photo.read_bytes() == b"the user's later edit"
    # deleted after another replacement: the latest original comes back too
    replace_in_place(photo, write_new(b"the user's later edit"))
    photo.unlink()
    assert restore([photo]).restored == (photo.resolve(),)
    assert photo.read_bytes() == b"the user's later edit"
    # back to the first content and enhanced again: that one is now the latest
    photo.write_bytes(b"first original")
    replace_in_place(photo, write_new(b"first original"))
    photo.unlink()
    restore([photo])
    assert photo.read_bytes() == b"first original"


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_damaged_manifest_keeps_backups_restorable(tmp_path, damage: str) -> None:
    """#11 D7: a corrupt or truncated manifest is one clear error, and the backups stay
    restorable from the sidecar records next to the objects."""
    from hime_cli.errors import StoreDamagedError

    photo, other = tmp_path / "p.jpg", tmp_path / "q.jpg"
    photo.write_bytes(b"original bytes")
    other.write_bytes(b"another photo")
    replace_in_place(photo, write_new(b"original bytes"))
    manifest = backup.manifest_path()
    for suffix in ("-wal", "-shm"):
        Path(str(manifest) + suffix).unlink(missing_ok=True)
    if damage == "garbage":
        manifest.write_bytes(b"this is not an sqlite database at all" * 200)
    elif damage == "truncated":
        manifest.write_bytes(manifest.read_bytes()[:1500])
    else:
        manifest.write_bytes(b"")
    (rec,) = find_backups(photo)
    assert rec.state == "replaced" and rec.replaced_sha256 == sha(new_version(b"original bytes"))
    assert [r.original_path for r in backup.list_backups(tmp_path)] == [photo.resolve()]
    assert backup.replaced_paths() == {photo.resolve()}
    with pytest.raises(StoreDamagedError, match="manifest") as info:
        replace_in_place(other, write_new(b"another photo"))
    assert "doctor" in (info.value.hint or "")
    assert other.read_bytes() == b"another photo"  # nothing replaced without a manifest
    report = restore([tmp_path])
    assert report.restored == (photo.resolve(),) and photo.read_bytes() == b"original bytes"
    assert restore([photo]).unchanged == (photo.resolve(),)


def test_manifest_has_numbered_migrations_and_adopts_an_old_one(tmp_path) -> None:
    from hime_cli.library.sqlite_store import current_version

    photo = tmp_path / "p.jpg"
    photo.write_bytes(b"original bytes")
    backup.manifest_path().parent.mkdir(parents=True)
    old = sqlite3.connect(backup.manifest_path())  # a manifest as hime wrote it before versions
    old.executescript(backup.MANIFEST_MIGRATIONS[0].statements[0])
    old.close()
    replace_in_place(photo, write_new(b"original bytes"))
    db = sqlite3.connect(backup.manifest_path())
    try:
        assert current_version(db) == backup.MANIFEST_MIGRATIONS[-1].version
    finally:
        db.close()


def test_two_concurrent_replacements_of_one_photo_are_serialised(tmp_path) -> None:
    """#11 D4: two in-place runs at once recorded the other run's hash; restore then refused."""
    import threading

    photo = tmp_path / "p.jpg"
    photo.write_bytes(b"original bytes")
    entered, go = threading.Event(), threading.Event()
    results: dict[str, object] = {}

    def slow_write(tmp: Path) -> None:
        entered.set()
        go.wait(10)
        tmp.write_bytes(b"version of the first run")

    def run(name: str, write) -> None:
        try:
            results[name] = replace_in_place(photo, write)
        except Exception as exc:  # noqa: BLE001 - checked below
            results[name] = exc

    first = threading.Thread(target=run, args=("first", slow_write))
    first.start()
    assert entered.wait(10)
    second = threading.Thread(target=run, args=("second", lambda tmp: tmp.write_bytes(b"second run")))
    second.start()
    time.sleep(0.3)  # the second run reaches the backup store while the first is writing
    go.set()
    first.join(20)
    second.join(20)
    assert photo.read_bytes() == b"version of the first run"
    assert results["second"].already_replaced  # it saw what the first did, and wrote nothing
    (rec,) = find_backups(photo)
    assert rec.replaced_sha256 == sha(b"version of the first run")
    assert restore([photo]).ok and photo.read_bytes() == b"original bytes"


def test_full_disk_is_one_clear_error_and_nothing_is_replaced(tmp_path, monkeypatch) -> None:
    """#11 D7: a full disk under HIME_HOME is a BackupError with a hint, not a traceback."""
    import errno

    from hime_cli.library.sqlite_store import translate

    photo = tmp_path / "p.jpg"
    photo.write_bytes(b"original bytes")

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(backup.BackupError) as info:
        replace_in_place(photo, write_new(b"original bytes"))
    assert "free some disk space" in info.value.hint
    assert photo.read_bytes() == b"original bytes" and temps(tmp_path) == []
    monkeypatch.undo()
    error = translate(
        sqlite3.OperationalError("database or disk is full"),
        tmp_path / "m",
        "backup manifest",
        repair_hint="x",
    )
    assert "disk is full" in error.message and error.hint == "free some disk space."


# --------------------------------------------------------------------------- SIGKILL test

WORKER = r"""
import sys
from pathlib import Path
from hime_cli.library.backup import replace_in_place
import hashlib

def new_version(original):
    return b"HIME" + hashlib.sha256(original).hexdigest().encode() + original[::-1]

print("ready", flush=True)
for path in sorted(Path(sys.argv[1]).glob("*.jpg")):
    data = path.read_bytes()
    if data.startswith(b"HIME"):
        continue
    replace_in_place(path, lambda tmp, d=data: tmp.write_bytes(new_version(d)))
print("done", flush=True)
"""


def _check_invariants(folder: Path, originals: dict[str, bytes]) -> int:
    """Every photo is untouched, or fully replaced with its verified backup recorded."""
    replaced = 0
    rows = []
    manifest = get_paths().backups_dir / "manifest.sqlite3"
    if manifest.exists():  # a kill before the first backup leaves none, or one without its table
        db = sqlite3.connect(f"{manifest.as_uri()}?mode=ro", uri=True)  # never create it here
        try:
            if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'backups'").fetchone():
                rows = db.execute("SELECT original_path, sha256 FROM backups").fetchall()
        finally:
            db.close()
    recorded = {(Path(p).name, s) for p, s in rows}
    for name, data in originals.items():
        current = (folder / name).read_bytes()
        if current == data:
            continue
        assert current == new_version(data), f"{name} is torn"
        assert (name, sha(data)) in recorded, f"{name} replaced without a recorded backup"
        obj = get_paths().backups_dir / "objects" / sha(data)[:2] / sha(data)
        assert obj.read_bytes() == data, f"{name}'s backup does not verify"
        replaced += 1
    return replaced


@pytest.mark.slow
def test_sigkill_at_random_moments_never_tears_a_photo(tmp_path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = random.Random(1234)
    originals = {}
    for i in range(20):
        data = rng.randbytes(600_000 + 1000 * i)
        (folder / f"img{i:02d}.jpg").write_bytes(data)
        originals[f"img{i:02d}.jpg"] = data
    env = {**os.environ, "PYTHONPATH": str(Path(backup.__file__).resolve().parents[2])}
    script = tmp_path / "worker.py"
    script.write_text(WORKER)

    def run_once(kill_after: float | None) -> str:
        proc = subprocess.Popen([sys.executable, str(script), str(folder)], stdout=subprocess.PIPE, env=env)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        if kill_after is None:
            proc.wait(timeout=120)
            return proc.stdout.read().decode()
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        return "killed" if proc.returncode == -signal.SIGKILL else "finished"

    start = time.perf_counter()
    kills, progress = 0, []
    while kills < 12:
        outcome = run_once(rng.uniform(0.0, 0.25))
        replaced = _check_invariants(folder, originals)
        progress.append(replaced)
        kills += outcome == "killed"
        if replaced == len(originals) and kills < 12:  # a fast machine finished: start over
            assert restore([folder]).ok
            assert _check_invariants(folder, originals) == 0
    elapsed = time.perf_counter() - start
    assert run_once(None).strip() == "done"  # the re-run finishes
    assert _check_invariants(folder, originals) == len(originals)
    assert temps(folder) == [] and temps(get_paths().backups_dir) == []
    report = restore([folder])
    assert report.ok and len(report.restored) == len(originals)
    assert all((folder / n).read_bytes() == d for n, d in originals.items())
    print(f"kills={kills} replaced-after-each={progress} elapsed={elapsed:.1f}s")
    assert kills >= 10
    assert any(0 < n < len(originals) for n in progress), progress  # kills landed mid-run
