"""The one "scan, then place new faces into identities" routine, and its two callers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from hime_cli.identities import scan as identities_scan
from hime_cli.identities.scan import ScanResult, scan_and_place
from hime_cli.identities.store import ClusterReport
from hime_cli.library.index import LibraryIndex
from hime_cli.library.scan import ScanReport
from hime_cli.types import DetectedFace
from tests.library.corpus import asymmetric_rgb
from tests.library.fakes import CentreDetector, MeanColourEmbedder


class SureDetector(CentreDetector):
    """CentreDetector with a confident score (0.9 would be a "poor" face, which founds no identity)."""

    def detect(self, rgb):  # type: ignore[no-untyped-def]
        return [DetectedFace(f.box, f.landmarks, 0.99) for f in super().detect(rgb)]


def _photos(root: Path, n: int) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = root / f"p{i}.jpg"
        Image.fromarray(asymmetric_rgb(96, 64, seed=i)).save(path, quality=92)
        paths.append(path)
    return paths


def _place(paths, index, placing: list[str]) -> ScanResult:  # type: ignore[no-untyped-def]
    return scan_and_place(
        paths,
        index,
        embedder=MeanColourEmbedder(),
        threshold=0.5,
        detector=SureDetector(),
        parallel=False,
        before_placing=lambda: placing.append("placing"),
    )


def test_scan_and_place_gives_new_faces_an_identity_and_leaves_unchanged_scans_alone(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    _photos(root, 3)
    placing: list[str] = []
    with LibraryIndex.open() as index:
        first = _place([root], index, placing)
        assert (first.scan.new, first.scan.faces_found) == (3, 3)
        assert first.identities is not None and first.identities.new_faces == 3
        assert first.identities.embedder == "fake" and placing == ["placing"]
        assert all(f.identity_id is not None for f in index.iter_faces())

        again = _place([root], index, placing)  # nothing changed: identities are not touched
        assert again.scan.unchanged == 3 and again.identities is None and placing == ["placing"]

        _photos(tmp_path / "more", 1)
        added = _place([tmp_path / "more"], index, placing)
        assert added.identities is not None and added.identities.new_faces == 1
        assert placing == ["placing", "placing"]


def _fake_result(embedder: str = "dlib") -> ScanResult:
    scan = ScanReport(
        photos=2, new=2, updated=0, unchanged=0, moved=0, failures=(), faces_found=3, missing=0,
        duration_s=0.1, embedder=embedder,
    )  # fmt: skip
    return ScanResult(scan, ClusterReport(embedder, 0.4, new_faces=3, joined_existing=1, new_identities=(7,)))


def test_hime_scan_reports_what_the_one_routine_did(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hime_cli.cli.app import app

    calls: list[dict] = []

    def recording(paths, index, **kwargs):  # type: ignore[no-untyped-def]
        calls.append({"paths": list(paths), **kwargs})
        return _fake_result(kwargs["embedder"])

    monkeypatch.setattr(identities_scan, "scan_and_place", recording)
    result = CliRunner().invoke(app, ["scan", str(tmp_path), "--json", "--force"])
    assert result.exit_code == 0, result.output
    assert len(calls) == 1 and calls[0]["paths"] == [tmp_path]
    assert calls[0]["force"] is True and calls[0]["embedder"] == "dlib"
    report = json.loads(result.stdout)
    assert report["new"] == 2 and report["faces_found"] == 3
    assert report["identities"] == {"new_faces": 3, "joined_existing": 1, "new_identities": 1}


def test_enhance_scan_step_uses_the_one_routine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hime_cli.pipeline.sources import IndexSource, scan_missing

    photos = _photos(tmp_path / "photos", 2)
    calls: list[list[Path]] = []

    def recording(paths, index, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(list(paths))
        kwargs["before_placing"]()
        return _fake_result()

    monkeypatch.setattr(identities_scan, "scan_and_place", recording)
    messages: list[str] = []
    source = IndexSource(LibraryIndex.open())
    try:
        scan_missing(source, photos, messages.append)
    finally:
        source.close()
    assert calls == [photos]  # both photos are missing from the (empty) index
    assert messages == ["placing new faces into identities"]
