"""What `hime enhance` decides per photo and per face (issue #10): photos with no face to enhance,
`hime compare` leaving the index alone, the reason a face gets no references, the dry run as plan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hime_cli.pipeline import enhance
from tests.test_pipeline import _options, assets, small_astronaut  # noqa: F401 - fixture


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """A folder with a portrait and a landscape (no face)."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(small_astronaut()).save(folder / "face.jpg", quality=92)
    y, x = np.mgrid[0:96, 0:128]
    land = np.stack([x * 2 % 256, y * 2 % 256, (x + y) % 256], axis=2).astype(np.uint8)
    Image.fromarray(land).save(folder / "landscape.jpg", quality=92)
    return folder


def test_photos_with_no_face_are_skipped_and_counted_unless_all_photos(
    assets: Path,  # noqa: F811 - fixture
    mixed: Path,
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    report = enhance([mixed], _options(assets, out_dir=out, refs_dir=assets / "refs"))
    by_name = {p.source.name: p for p in report.photos}
    assert by_name["face.jpg"].status == "done"
    assert by_name["landscape.jpg"].status == "no-face" and by_name["landscape.jpg"].dest is None
    assert "no face to enhance" in (by_name["landscape.jpg"].reason or "")
    assert not (out / "landscape.jpg").exists() and (out / "face.jpg").exists()
    assert report.to_json()["summary"]["no_face"] == 1 and not report.failed
    dry = enhance([mixed], _options(assets, out_dir=tmp_path / "o2", refs_dir=assets / "refs", dry_run=True))
    assert {p.source.name: p.status for p in dry.photos}["landscape.jpg"] == "no-face"  # the plan says so
    every = enhance([mixed], _options(assets, out_dir=out, refs_dir=assets / "refs", all_photos=True))
    statuses = {p.source.name: p.status for p in every.photos}
    assert statuses == {"face.jpg": "skipped", "landscape.jpg": "done"}  # the portrait was already done
    with Image.open(out / "landscape.jpg") as im:
        assert im.size == (512, 384)


def test_compare_writes_nothing_to_the_index(assets: Path, mixed: Path, tmp_path: Path) -> None:  # noqa: F811
    from hime_cli.library.index import LibraryIndex
    from hime_cli.paths import get_paths

    report = enhance(
        [mixed / "face.jpg"],
        _options(assets, compare=True, compare_dir=tmp_path / "sheets", write_photos=False),
    )
    assert report.count("done") == 1 and report.faces_enhanced == 1  # detected here, not scanned in
    index_path = get_paths().index_path
    if index_path.exists():
        index = LibraryIndex.open(readonly=True)
        try:
            assert index.count_photos() == 0 and index.count_faces() == 0
        finally:
            index.close()


def test_every_face_without_references_says_why(assets: Path, tmp_path: Path) -> None:  # noqa: F811
    """References smaller than the rule asks (relative to the face) are named, with the size;
    --hr-size lowers the bar; --max-refs 0 says so; the summary counts the reasons."""
    from hime_cli.faces.align import region_size
    from hime_cli.faces.detect import get_detector

    refs = tmp_path / "small-refs"
    refs.mkdir()
    Image.fromarray(small_astronaut(150)[:, ::-1].copy()).save(refs / "small.jpg", quality=95)
    target = tmp_path / "t.jpg"
    Image.fromarray(small_astronaut(128)).save(target, quality=92)
    (ref_face,) = get_detector().detect(np.asarray(Image.open(refs / "small.jpg"), np.float32) / 255)
    ref_region = region_size(ref_face.landmarks)

    report = enhance([target], _options(assets, out_dir=tmp_path / "o1", refs_dir=refs, dry_run=True))
    (face,) = report.photos[0].faces
    assert face.enhanced and face.refs == ()
    # the face's region is ~33 px (SR crop 34·4 = 136 px): references need 2 × 33 = 66 px to fill
    assert face.refs_reason.startswith("references smaller than 6")
    assert f"the largest is {ref_region:.0f} px" in face.refs_reason
    data = report.to_json()
    assert data["photos"][0]["faces"][0]["refs_reason"] == face.refs_reason
    assert data["summary"]["without_refs_reasons"] == {face.refs_reason.split(" (")[0]: 1}

    lowered = enhance(
        [target],
        _options(assets, out_dir=tmp_path / "o2", refs_dir=refs, dry_run=True, hr_size=int(ref_region) - 1),
    )
    (face,) = lowered.photos[0].faces
    assert [Path(r).name for r in face.refs] == ["small.jpg"] and face.refs_reason is None

    none = enhance(
        [target], _options(assets, out_dir=tmp_path / "o3", refs_dir=refs, dry_run=True, max_refs=0)
    )
    assert none.photos[0].faces[0].refs_reason == "--max-refs 0"


def test_the_reference_rule_is_relative_to_the_face() -> None:
    """A 42 px face (region ~55 px) takes ~110 px references to fill, not 0.75 · 4 · 55 = 165 px."""
    from hime_cli.faces.align import CANONICAL_LANDMARKS
    from hime_cli.pipeline.stages import ref_size_tiers

    landmarks = (CANONICAL_LANDMARKS * 55.0 + 10).astype(np.float32)
    best, fill = ref_size_tiers(landmarks, 55 * 4, None)
    assert best == 220 and fill == pytest.approx(110, abs=2)
    assert ref_size_tiers(landmarks, 220, 80) == (80.0,)


def test_the_dry_run_skips_what_the_real_run_skips(assets: Path, mixed: Path, tmp_path: Path) -> None:  # noqa: F811
    from hime_cli.paths import get_paths
    from hime_cli.pipeline import LEDGER_NAME

    out = tmp_path / "out"
    opts = {"out_dir": out, "refs_dir": assets / "refs"}
    enhance([mixed / "face.jpg"], _options(assets, **opts))
    ledger = get_paths().data_dir / LEDGER_NAME
    stamp = ledger.stat().st_mtime_ns
    dry = enhance([mixed / "face.jpg"], _options(assets, dry_run=True, **opts))
    assert [(p.status, p.reason) for p in dry.photos] == [("skipped", "already enhanced with these settings")]
    real = enhance([mixed / "face.jpg"], _options(assets, **opts))
    assert [p.status for p in real.photos] == ["skipped"]
    assert ledger.stat().st_mtime_ns >= stamp
    forced = enhance([mixed / "face.jpg"], _options(assets, dry_run=True, force=True, **opts))
    assert [p.status for p in forced.photos] == ["dry-run"]


def test_files_hime_wrote_never_become_exemplars(tmp_path: Path) -> None:
    """An --out inside the library gets scanned; its enhanced faces are never candidates (#10 item 5,
    the part that lives in the pipeline: the ledger knows every file a run wrote)."""
    import os
    from dataclasses import replace as dc_replace

    from hime_cli.pipeline import EnhanceLedger, IndexSource, TargetFace
    from hime_cli.types import Box, DetectedFace, Face

    ledger = EnhanceLedger(tmp_path / "ledger.sqlite3")
    written = tmp_path / "lib" / "out" / "a.jpg"
    ledger.expect(written, "settings", "src-sha", "dest-sha")
    ledger.expect(tmp_path / "lib" / "b.jpg", "settings", None, None)  # in place: the user's photo
    outputs = ledger.outputs()
    ledger.close()

    lm = np.zeros((5, 2), np.float32)
    face = Face(1, 1, tmp_path / "lib" / "c.jpg", Box(0, 0, 10, 10), lm, 0.99, 10.0, 1.0, identity_id=7)
    faces = [
        dc_replace(face, id=2, photo_id=2, photo_path=written),
        dc_replace(face, id=3, photo_id=3, photo_path=tmp_path / "lib" / "b.jpg"),
    ]

    class Index:
        def iter_faces(self, **kw):
            assert kw["identity_id"] == 7
            return iter(faces)

    source = IndexSource(Index())  # type: ignore[arg-type]
    source.outputs = outputs
    target = TargetFace(DetectedFace(Box(0, 0, 10, 10), lm, 0.99), identity_id=7)
    assert [f.id for f in source.candidates(target)] == [3]
    assert outputs.contains(written) and not outputs.contains(tmp_path / "lib" / "b.jpg")
    assert os.fsencode(os.path.abspath(written)) in outputs.files
