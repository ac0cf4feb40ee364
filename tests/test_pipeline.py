"""The enhance pipeline end to end on synthetic photos made from skimage's astronaut (no network).

The tiny random ``hime_test_x4`` architecture stands in for trained weights: these tests check the
plumbing (planning, exemplars, batching, paste-back, writing, re-runs, in-place safety), not the
quality of the super-resolution (see tests/test_pipeline_data.py for that, on real photos).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from hime_cli.errors import ModelError, UsageError
from hime_cli.pipeline import EnhanceOptions, PlannedPhoto, enhance, plan_outputs
from hime_cli.sr.pasteback import upscale_photo


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """refs/ (two 512 px portraits), a tiny random weight file."""
    from safetensors.torch import save_file
    from skimage import data

    from hime_cli.sr.registry import create_model

    root = tmp_path_factory.mktemp("assets")
    astronaut = data.astronaut()
    refs = root / "refs"
    refs.mkdir()
    Image.fromarray(astronaut[:, ::-1].copy()).save(refs / "mirrored.jpg", quality=92)
    relit = np.clip(astronaut.astype(np.float32) * 0.9 + 12, 0, 255).astype(np.uint8)
    Image.fromarray(relit).save(refs / "relit.png")
    torch.manual_seed(0)
    model = create_model("hime_test_x4")
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(root / "hime_test_x4.rand.safetensors"),
    )
    return root


def small_astronaut(size: int = 128) -> np.ndarray:
    from skimage import data

    return cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)


def _options(assets: Path, **kw) -> EnhanceOptions:
    base = {"scale": 4, "weights": str(assets / "hime_test_x4.rand.safetensors"), "device": "cpu"}
    base.update(kw)
    return EnhanceOptions(**base)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(small_astronaut()).save(folder / "a.jpg", quality=92)
    Image.fromarray(small_astronaut(112)).save(folder / "sub" / "b.png")
    return folder


def test_plan_outputs_default_and_out_dir(tmp_path: Path, photos: Path) -> None:
    planned = plan_outputs([photos], EnhanceOptions())
    assert all(isinstance(p, PlannedPhoto) for p in planned)
    dests = sorted(p.dest for p in planned)  # type: ignore[union-attr]
    base = photos.resolve().parent / "hime-enhanced" / "photos"
    assert dests == [base / "a.jpg", base / "sub" / "b.png"]
    out = tmp_path / "out"
    planned = plan_outputs([photos, photos / "a.jpg"], EnhanceOptions(out_dir=out))
    assert [p.dest for p in planned] == [
        out.resolve() / "a.jpg",
        out.resolve() / "sub" / "b.png",
        out.resolve() / "a.jpg",
    ]  # type: ignore[union-attr]


def test_plan_outputs_rejects_collisions_and_skips_own_output(tmp_path: Path, photos: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(photos / "a.jpg", other / "a.jpg")
    with pytest.raises(UsageError, match="both be written"):
        plan_outputs([photos, other], EnhanceOptions(out_dir=tmp_path / "out"))
    # An --out folder inside the input folder is never read back as input.
    inside = photos / "enhanced"
    inside.mkdir()
    shutil.copy(photos / "a.jpg", inside / "x.jpg")
    planned = plan_outputs([photos], EnhanceOptions(out_dir=inside))
    assert all("enhanced" not in p.source.parts for p in planned)  # type: ignore[union-attr]
    with pytest.raises(UsageError):
        plan_outputs([tmp_path / "missing"], EnhanceOptions())


def test_plan_outputs_reports_links_that_lead_nowhere_and_does_a_photo_once(
    tmp_path: Path, photos: Path
) -> None:
    """#11 D8, D16, D17: a self-referencing symlink no longer aborts the batch (RuntimeError in
    plan_outputs); loops and dangling links fail under their own names; a photo reached twice
    through a symlink is done once with --in-place (the repeat was a spurious failure)."""
    (photos / "loop.jpg").symlink_to(photos / "loop.jpg")
    (photos / "dangling.jpg").symlink_to(photos / "gone.jpg")
    (photos / "alias.jpg").symlink_to(photos / "a.jpg")
    for options in (EnhanceOptions(in_place=True), EnhanceOptions(out_dir=tmp_path / "out")):
        planned = {p.source.name: p for p in plan_outputs([photos], options)}
        assert isinstance(planned["a.jpg"], PlannedPhoto)
        assert planned["loop.jpg"].status == "failed" and "symlink loop" in planned["loop.jpg"].reason
        dangling = planned["dangling.jpg"]
        assert dangling.status == "failed" and "dangling symlink" in dangling.reason
        assert dangling.source == photos / "dangling.jpg"  # its own name, not gone.jpg
        alias = planned["alias.jpg"]  # another output name with --out; the same file in place
        assert alias.status == "skipped" if options.in_place else isinstance(alias, PlannedPhoto)
    planned = plan_outputs([photos, photos / "alias.jpg"], EnhanceOptions(in_place=True))
    repeats = [p for p in planned if not isinstance(p, PlannedPhoto) and p.status == "skipped"]
    assert [p.source.name for p in repeats] == ["alias.jpg", "alias.jpg"]
    assert "same photo as" in repeats[0].reason


def test_out_pointing_at_a_file_is_a_usage_error_up_front(tmp_path: Path, photos: Path) -> None:
    """#11 D16: --out naming an existing file fails once, before any work, not photo by photo."""
    (tmp_path / "taken.jpg").write_bytes(b"a file, not a folder")
    with pytest.raises(UsageError, match="not a folder"):
        enhance([photos], EnhanceOptions(out_dir=tmp_path / "taken.jpg", device="cpu"))


def test_failed_photo_counts_no_enhanced_faces() -> None:
    """#11 D15: faces_enhanced counted the faces of photos that failed."""
    from hime_cli.pipeline import EnhanceReport, FaceReport, PhotoReport

    face = FaceReport((0.0, 0.0, 10.0, 10.0), 10.0, 0.99, "enhanced", lr_size=32)
    failed = PhotoReport(Path("x.jpg"), Path("out/x.jpg"), "failed", "disk full", (face,))
    done = PhotoReport(Path("y.jpg"), Path("out/y.jpg"), "done", None, (face,))
    report = EnhanceReport((failed, done), 4, 96.0, None, None, 0.0)
    assert failed.faces_enhanced == 0 and report.faces_enhanced == 1
    assert report.to_json()["summary"]["faces_enhanced"] == 1


def test_damaged_ledger_is_moved_aside_and_the_run_goes_on(tmp_path: Path) -> None:
    """#11 D7: a corrupt enhance ledger gave a raw sqlite3 traceback."""
    from hime_cli.pipeline import EnhanceLedger

    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(b"definitely not sqlite " * 300)
    ledger = EnhanceLedger(path)
    try:
        ledger.expect(tmp_path / "out.jpg", "settings", "a" * 64, "b" * 64)
        assert not ledger.is_done(tmp_path / "in.jpg", tmp_path / "out.jpg", "settings", False)
    finally:
        ledger.close()
    (aside,) = tmp_path.glob("ledger.sqlite3.damaged-*")
    assert aside.read_bytes().startswith(b"definitely not sqlite")


def test_ledger_migrates_to_one_record_of_what_hime_wrote(tmp_path: Path) -> None:
    """Ledger v1 → v2: in-place rows drop their own output hash (the backup manifest has it)."""
    import sqlite3

    from hime_cli.library.sqlite_store import current_version
    from hime_cli.pipeline import LEDGER_MIGRATIONS, EnhanceLedger

    path = tmp_path / "ledger.sqlite3"
    old = sqlite3.connect(path)
    old.execute(LEDGER_MIGRATIONS[0].statements[0])
    old.execute("INSERT INTO outputs VALUES (?, 's', NULL, 'x', 1, 2, NULL)", (b"/in/place.jpg",))
    old.execute("INSERT INTO outputs VALUES (?, 's', 'src', 'out', 1, 2, NULL)", (b"/out/a.jpg",))
    old.commit()
    old.close()
    EnhanceLedger(path).close()
    db = sqlite3.connect(path)
    try:
        assert current_version(db) == LEDGER_MIGRATIONS[-1].version >= 2
        rows = dict(db.execute("SELECT dest, dest_sha FROM outputs").fetchall())
        assert rows == {b"/in/place.jpg": None, b"/out/a.jpg": "out"}
    finally:
        db.close()


def test_a_second_in_place_run_at_once_is_refused_up_front(photos: Path) -> None:
    """#11 D4: two `enhance --refs --in-place` runs at once took no lock."""
    from hime_cli.library.backup import BackupLockedError, in_place_run_lock

    original = (photos / "a.jpg").read_bytes()
    with in_place_run_lock():  # another run holds it
        with pytest.raises(BackupLockedError, match="another `hime enhance --in-place`") as info:
            enhance([photos], EnhanceOptions(in_place=True, device="cpu"))
        assert "wait" in (info.value.hint or "")
    assert (photos / "a.jpg").read_bytes() == original


def test_bad_option_combinations() -> None:
    with pytest.raises(UsageError):
        enhance([], EnhanceOptions(scale=3))
    with pytest.raises(UsageError):
        enhance([], EnhanceOptions(in_place=True, out_dir=Path("x")))
    with pytest.raises(UsageError):
        enhance([], EnhanceOptions(all_faces=True))


def test_enhance_with_refs_writes_4x_photo_and_pastes_faces(
    assets: Path, photos: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    events = []
    report = enhance([photos], _options(assets, out_dir=out, refs_dir=assets / "refs"), events.append)
    assert not report.failed and report.count("done") == 2
    assert events and events[-1].photos_done == events[-1].photos_total == 2
    assert events[-1].faces_done == events[-1].faces_total == report.faces_enhanced == 2
    by_name = {p.source.name: p for p in report.photos}
    jpg = by_name["a.jpg"]
    assert jpg.dest == out.resolve() / "a.jpg" and jpg.out_size == (512, 512)
    face = jpg.faces[0]
    assert face.status == "enhanced" and face.lr_size == 34  # native crop region 33.4 px > 32
    assert {Path(r).name for r in face.refs} == {"mirrored.jpg", "relit.png"}  # both refs used

    written = np.asarray(Image.open(out / "sub" / "b.png").convert("RGB"), dtype=np.float32) / 255
    assert written.shape == (448, 448, 3)
    # Outside the face the output is the Lanczos upscale; inside, the network's face was pasted.
    original = np.asarray(Image.open(photos / "sub" / "b.png").convert("RGB"), dtype=np.float32) / 255
    lanczos = upscale_photo(original, 4)
    box = by_name["b.png"].faces[0].box
    x0, y0, x1, y1 = (int(round(v * 4)) for v in box)
    diff = np.abs(written - lanczos).max(axis=2)
    assert diff[y0:y1, x0:x1].mean() > 2e-3  # the face changed
    mask = np.ones(diff.shape, bool)
    mask[max(0, y0 - 80) : y1 + 80, max(0, x0 - 80) : x1 + 80] = False
    assert diff[mask].max() <= 1.0 / 255 + 1e-6  # the rest is the plain upscale (PNG rounding)


def test_max_face_leaves_large_faces_alone(assets: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = enhance([photos / "a.jpg"], _options(assets, out_dir=out, max_face=5, max_refs=0))
    (photo,) = report.photos
    # no face left to enhance: skipped by default (issue #10), upscaled with --all-photos
    assert photo.status == "no-face" and photo.faces_enhanced == 0 and not (out / "a.jpg").exists()
    assert [f.status for f in photo.faces] == ["too-large"]
    assert report.sr_seconds == 0.0
    report = enhance(
        [photos / "a.jpg"], _options(assets, out_dir=out, max_face=5, max_refs=0, all_photos=True)
    )
    (photo,) = report.photos
    assert photo.status == "done" and [f.status for f in photo.faces] == ["too-large"]
    assert (out / "a.jpg").exists()


def test_rerun_skips_then_force_and_source_change_redo(assets: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    opts = _options(assets, out_dir=out, max_refs=0)
    first = enhance([photos / "a.jpg"], opts)
    assert first.count("done") == 1
    again = enhance([photos / "a.jpg"], opts)
    assert again.count("skipped") == 1 and again.model is None  # nothing loaded
    assert (
        enhance([photos / "a.jpg"], _options(assets, out_dir=out, max_refs=0, force=True)).count("done") == 1
    )
    # Other settings: redone.
    assert enhance([photos / "a.jpg"], _options(assets, out_dir=out, max_refs=0, scale=2)).count("done") == 1
    assert Image.open(out / "a.jpg").size == (256, 256)
    # A changed source: redone.
    Image.fromarray(small_astronaut(120)).save(photos / "a.jpg", quality=90)
    redo = enhance([photos / "a.jpg"], _options(assets, out_dir=out, max_refs=0, scale=2))
    assert redo.count("done") == 1 and Image.open(out / "a.jpg").size == (240, 240)


def test_scale_8_with_the_x8_model_and_with_the_x4_model(assets: Path, photos: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from hime_cli.sr.registry import create_model

    torch.manual_seed(0)
    x8 = tmp_path / "hime_test_x8.rand.safetensors"
    save_file({k: v.contiguous() for k, v in create_model("hime_test_x8").state_dict().items()}, str(x8))
    report = enhance(
        [photos / "a.jpg"],
        _options(assets, scale=8, max_face=64, weights=str(x8), out_dir=tmp_path / "o8", max_refs=0),
    )
    (photo,) = report.photos
    assert photo.out_size == (1024, 1024) and report.model == x8.name
    assert photo.faces[0].lr_size == 34  # native resolution (region 33.4 px) > L0 = 128 / 8
    # The ×4 model at ×8: its output is resampled ×2 before the paste-back.
    report = enhance(
        [photos / "a.jpg"], _options(assets, scale=8, max_face=64, out_dir=tmp_path / "o4", max_refs=0)
    )
    (photo,) = report.photos
    assert photo.status == "done" and photo.out_size == (1024, 1024) and photo.faces[0].lr_size == 34
    assert report.model == "hime_test_x4.rand.safetensors"
    assert Image.open(tmp_path / "o4" / "a.jpg").size == (1024, 1024)


def test_dry_run_writes_nothing(assets: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = enhance([photos], _options(assets, out_dir=out, refs_dir=assets / "refs", dry_run=True))
    assert report.count("dry-run") == 2 and report.faces_enhanced == 2
    assert {f.status for p in report.photos for f in p.faces} == {"would-enhance"}
    assert not out.exists()


def test_missing_weights_is_one_clear_model_error(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HIME_MODELS_DIR", str(tmp_path / "no-models"))
    with pytest.raises(ModelError) as info:
        enhance([photos / "a.jpg"], EnhanceOptions(out_dir=tmp_path / "out", device="cpu"))
    assert info.value.hint and "hime models" in info.value.hint
    assert not (tmp_path / "out").exists()


def test_unreadable_photo_is_reported_and_others_continue(assets: Path, photos: Path, tmp_path: Path) -> None:
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    report = enhance([photos], _options(assets, out_dir=tmp_path / "out", max_refs=0))
    statuses = {p.source.name: p.status for p in report.photos}
    assert statuses == {"a.jpg": "done", "broken.jpg": "failed", "b.png": "done"}
    assert report.failed
    reason = next(p.reason for p in report.photos if p.status == "failed")
    assert reason


def test_in_place_keeps_a_backup_and_reruns_start_from_the_original(
    assets: Path, photos: Path, tmp_path: Path
) -> None:
    from hime_cli.library.backup import find_backups, restore

    target = photos / "a.jpg"
    original = target.read_bytes()
    report = enhance([target], _options(assets, in_place=True, refs_dir=assets / "refs"))
    assert report.count("done") == 1 and Image.open(target).size == (512, 512)
    (record,) = find_backups(target)
    assert Path(record.backup_path).read_bytes() == original
    assert enhance([target], _options(assets, in_place=True, refs_dir=assets / "refs")).count("skipped") == 1
    # --force redoes it from the original: 4x the original, not 16x.
    again = enhance([target], _options(assets, in_place=True, refs_dir=assets / "refs", force=True))
    assert again.count("done") == 1 and Image.open(target).size == (512, 512)
    restore([target])
    assert target.read_bytes() == original


@pytest.mark.slow
def test_in_place_batch_survives_fifo_loop_and_alias(assets: Path, photos: Path) -> None:
    """#11 D2, D8, D16 end to end: a FIFO named pipe.jpg does not hang the run, a symlink loop
    does not abort it, a photo reached through a symlink is done once: one photo done, no hang."""
    import threading

    os.mkfifo(photos / "pipe.jpg")
    (photos / "loop.jpg").symlink_to(photos / "loop.jpg")
    (photos / "alias.jpg").symlink_to(photos / "a.jpg")
    (photos / "sub" / "b.png").unlink()
    box: dict[str, object] = {}
    opts = _options(assets, in_place=True, refs_dir=assets / "refs")
    thread = threading.Thread(target=lambda: box.update(report=enhance([photos], opts)), daemon=True)
    thread.start()
    thread.join(120)
    if thread.is_alive():
        os.close(os.open(photos / "pipe.jpg", os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("enhance blocked on a FIFO")
    report = box["report"]
    statuses = {p.source.name: p.status for p in report.photos}
    assert statuses == {"a.jpg": "done", "alias.jpg": "skipped", "loop.jpg": "failed", "pipe.jpg": "failed"}
    reasons = {p.source.name: p.reason for p in report.photos}
    assert "named pipe" in reasons["pipe.jpg"] and "symlink loop" in reasons["loop.jpg"]
    assert report.faces_enhanced == 1 and Image.open(photos / "a.jpg").size == (512, 512)


@pytest.mark.slow
def test_out_from_a_photo_enhanced_in_place_scales_dpi_once(
    assets: Path, photos: Path, tmp_path: Path
) -> None:
    """#11 D11: --out on a photo enhanced in place earlier read the DPI of the enhanced file."""
    target = photos / "a.jpg"
    Image.fromarray(small_astronaut()).save(target, quality=92, dpi=(300, 300))
    refs = assets / "refs"
    assert enhance([target], _options(assets, in_place=True, refs_dir=refs)).count("done") == 1
    with Image.open(target) as im:
        assert tuple(round(v) for v in im.info["dpi"]) == (1200, 1200)
    out = tmp_path / "out"
    assert enhance([target], _options(assets, out_dir=out, refs_dir=refs)).count("done") == 1
    with Image.open(out / "a.jpg") as im:
        assert im.size == (512, 512) and tuple(round(v) for v in im.info["dpi"]) == (1200, 1200)


@pytest.mark.slow
def test_edit_after_restore_survives_a_second_in_place_run(assets: Path, photos: Path) -> None:
    """#11 D1 end to end: enhance in place, restore, edit, enhance in place, restore: the edit is back."""
    from hime_cli.library.backup import restore

    target = photos / "a.jpg"
    refs = assets / "refs"
    assert enhance([target], _options(assets, in_place=True, refs_dir=refs)).count("done") == 1
    assert restore([target]).ok
    edited = np.asarray(Image.open(target).convert("RGB")).copy()
    edited[:8] = 255  # the user's edit: a white band at the top
    Image.fromarray(edited).save(target, quality=95)
    edit = target.read_bytes()
    assert enhance([target], _options(assets, in_place=True, refs_dir=refs)).count("done") == 1
    out = np.asarray(Image.open(target).convert("RGB"))
    assert out.shape == (512, 512, 3) and out[:24].mean() > 240  # built from the edit
    assert restore([target]).ok
    assert target.read_bytes() == edit


def test_compare_only_writes_sheets(assets: Path, photos: Path, tmp_path: Path) -> None:
    sheets = tmp_path / "sheets"
    report = enhance(
        [photos],
        _options(assets, refs_dir=assets / "refs", compare=True, compare_dir=sheets, write_photos=False),
    )
    assert report.count("done") == 2 and report.compare_index == sheets.resolve() / "index.html"
    pngs = sorted(p.relative_to(sheets) for p in sheets.rglob("*.png"))
    assert pngs == [Path("a.jpg.png"), Path("sub/b.png.png")]
    sheet = Image.open(sheets / "a.jpg.png")
    assert sheet.width > 3 * 192  # input | hime | two exemplars
    html = (sheets / "index.html").read_text()
    assert "a.jpg.png" in html and "sub/b.png.png" in html
    assert not (photos.parent / "hime-enhanced").exists()


# ---------------------------------------------------------------------------------- real photos
# celeba-wild dev photos with one clear face of 128-180 px, downscaled ×4 (antialiased bicubic, the
# training degradation), enhanced ×4: on the face box the result must beat a Lanczos ×4 upscale.

N_REAL = 10
OTHER_REFS = 8  # other photos of the identity given as --refs / scanned as its cluster


@pytest.fixture(scope="module")
def trained_weights() -> str:
    from hime_cli.errors import ModelError
    from hime_cli.hub import resolve_weights

    try:
        resolve_weights("hime_small_x4", allow_download=False)
    except ModelError as exc:
        pytest.skip(f"no trained ×4 weights available: {exc}")
    return "hime_small_x4"


@pytest.fixture(scope="module")
def dev_targets(
    trained_weights: str, shared_data: Path, face_memo
) -> list[tuple[Path, Path, tuple[float, float, float, float]]]:
    """(identity folder, photo, face box) for the first N_REAL identities with a suitable photo."""
    from hime_cli.library.reader import load_image

    detector = face_memo.detector()
    found = []
    for identity in sorted((shared_data / "celeba-wild" / "dev").iterdir()):
        photos = sorted(identity.glob("*.jpg"))
        if len(photos) < 4:
            continue
        for photo in photos[:6]:
            faces = [f for f in detector.detect(load_image(photo).rgb) if f.score >= 0.9]
            if len(faces) == 1 and 128 <= faces[0].size <= 180 and faces[0].score >= 0.98:
                found.append((identity, photo, tuple(faces[0].box.as_list())))
                break
        if len(found) == N_REAL:
            break
    assert len(found) == N_REAL
    return found


def _downscale(photo: Path, dest: Path) -> tuple[np.ndarray, np.ndarray]:
    """Write the ×4-downscaled photo; return (original cropped to 4× the small size, small) as float."""
    from hime_cli.library.reader import load_image

    rgb = load_image(photo).rgb_uint8()
    h, w = rgb.shape[0] // 4, rgb.shape[1] // 4
    rgb = rgb[: 4 * h, : 4 * w]  # crop first: the small photo is then exactly ÷4 (no drift across it)
    Image.fromarray(rgb).resize((w, h), Image.Resampling.BICUBIC).save(dest, quality=95)
    small = np.asarray(Image.open(dest).convert("RGB"), np.float32) / 255
    return rgb.astype(np.float32) / 255, small


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / max(np.mean((a - b) ** 2), 1e-12)))


def _face_gain(original: np.ndarray, small: np.ndarray, enhanced_path: Path, box) -> tuple[float, float]:
    enhanced = np.asarray(Image.open(enhanced_path).convert("RGB"), np.float32) / 255
    assert enhanced.shape == (small.shape[0] * 4, small.shape[1] * 4, 3)  # exactly 4× the input
    lanczos = upscale_photo(small, 4)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    region = (slice(y0, y1), slice(x0, x1))
    return _psnr(enhanced[region], original[region]), _psnr(lanczos[region], original[region])


def _others(identity: Path, photo: Path) -> list[Path]:
    return [p for p in sorted(identity.glob("*.jpg")) if p != photo][:OTHER_REFS]


@pytest.mark.data
@pytest.mark.slow
def test_real_photos_with_refs_beat_lanczos(
    dev_targets, trained_weights: str, tmp_path: Path, face_memo, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MTCNN and dlib through the session's FaceMemo (the same answers; the scanned-identities
    # test below and tests/identities/test_dev_clustering.py look at the same photos).
    face_memo.patch(monkeypatch)
    weights = trained_weights
    gains = []
    for k, (identity, photo, box) in enumerate(dev_targets):
        refs = tmp_path / f"refs{k}"
        refs.mkdir()
        for p in _others(identity, photo):
            (refs / p.name).symlink_to(p)
        small_path = tmp_path / f"in{k}" / "small.jpg"
        small_path.parent.mkdir()
        original, small = _downscale(photo, small_path)
        out = tmp_path / f"out{k}"
        report = enhance(
            [small_path], EnhanceOptions(scale=4, refs_dir=refs, out_dir=out, weights=weights, device="cpu")
        )
        (result,) = report.photos
        assert result.status == "done" and result.faces_enhanced == 1, result
        used = [Path(r) for f in result.faces for r in f.refs]
        assert used and all(r.parent == refs for r in used), result.faces
        ours, lanczos = _face_gain(original, small, out / "small.jpg", box)
        gains.append(ours - lanczos)
        print(f"{photo.parent.name}/{photo.name}: hime {ours:.2f} dB, lanczos {lanczos:.2f} dB")
    print(f"mean PSNR gain on the face box over Lanczos: {np.mean(gains):+.2f} dB ({len(gains)} photos)")
    assert min(gains) > 0, gains


@pytest.mark.data
@pytest.mark.slow
def test_real_photos_with_scanned_identities_never_use_the_photo_itself(
    dev_targets, trained_weights: str, tmp_path: Path, face_memo
) -> None:
    from hime_cli.identities.store import update_identities
    from hime_cli.library.index import LibraryIndex
    from hime_cli.library.scan import scan_paths

    weights = trained_weights
    # The library: for each identity the original photo itself and other photos of the person.
    library = tmp_path / "library"
    for identity, photo, _ in dev_targets:
        folder = library / identity.name
        folder.mkdir(parents=True)
        for p in [photo, *_others(identity, photo)]:
            (folder / p.name).symlink_to(p)
    with LibraryIndex.open() as index:
        # the photos the test above gave as --refs: MTCNN and dlib answers from the session's FaceMemo
        scan_paths([library], index, face_memo.embedder(), detector=face_memo.detector())
        update_identities(index)

    inputs = tmp_path / "in"
    inputs.mkdir()
    truth = {}
    for k, (_, photo, box) in enumerate(dev_targets):
        truth[f"small{k}.jpg"] = (photo, box, *_downscale(photo, inputs / f"small{k}.jpg"))
    out = tmp_path / "out"
    report = enhance([inputs], EnhanceOptions(scale=4, out_dir=out, weights=weights, device="cpu"))
    assert not report.failed
    gains, with_refs = [], 0
    for result in report.photos:
        photo, box, original, small = truth[result.source.name]
        target = [f for f in result.faces if f.status == "enhanced"]
        assert target, result
        used = {Path(r).resolve() for f in target for r in f.refs}
        assert photo.resolve() not in used  # never the photo itself (its resized copy is the input)
        with_refs += any(f.refs for f in target)
        ours, lanczos = _face_gain(original, small, out / result.source.name, box)
        gains.append(ours - lanczos)
    print(f"index mode: {with_refs}/{len(gains)} photos with exemplars; mean gain {np.mean(gains):+.2f} dB")
    assert with_refs >= len(gains) - 1
    assert min(gains) > 0, gains


def test_settings_key_follows_the_default_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """A photo enhanced by an earlier default model is not 'already enhanced' once it changes."""
    import hime_cli.sr.inference as inference
    from hime_cli.pipeline.options import EnhanceOptions

    default, pinned = EnhanceOptions(scale=8), EnhanceOptions(scale=8, weights="hime_small_x4")
    before = default.settings_key(), pinned.settings_key()
    monkeypatch.setattr(inference, "default_weights_name", lambda scale: "hime_small_x8")
    assert default.settings_key() != before[0]
    assert pinned.settings_key() == before[1]  # --weights given: what was typed is the model
    # the small-face weights the default runs on the smallest faces are part of it too
    changed = default.settings_key()
    monkeypatch.setattr(inference, "SMALL_FACE_WEIGHTS", "hime_small_x4.celeba_wild_real_x8_v1")
    assert default.settings_key() != changed
    assert pinned.settings_key() == before[1]
