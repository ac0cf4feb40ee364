"""`scan_paths` reports a dangling symlink under its own name (issue #11, D17)."""

from __future__ import annotations

from pathlib import Path

from hime_cli.library.index import LibraryIndex
from hime_cli.library.scan import scan_paths


def test_dangling_symlink_is_reported_under_its_own_name(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").symlink_to(tmp_path / "moved-away" / "IMG_0001.jpg")
    with LibraryIndex.open(tmp_path / "index.sqlite3") as index:
        report = scan_paths([folder], index)
    (failure,) = report.failures
    assert failure.path.name == "holiday.jpg"  # was IMG_0001.jpg, a name the user never gave
