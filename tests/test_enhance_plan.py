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
