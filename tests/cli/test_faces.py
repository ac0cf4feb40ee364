from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from hime_cli.cli.app import app
from hime_cli.library.index import LibraryIndex, ScannedFace
from hime_cli.types import Box, DetectedFace

runner = CliRunner()


def _face(x0: float, side: float) -> ScannedFace:
    lm = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]], np.float32) * side + [
        x0,
        10,
    ]
    return ScannedFace(
        DetectedFace(Box(x0, 10, x0 + side, 10 + side), lm.astype(np.float32), 0.98), 7.5, None
    )


def test_faces_list_without_index_is_empty() -> None:
    result = runner.invoke(app, ["faces", "list", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == []
    assert "hime scan" in result.stderr


def test_faces_list_json_fields_and_filters(tmp_path: Path) -> None:
    photo = tmp_path / "p.jpg"
    with LibraryIndex.open() as index:
        pid, (small, big) = index.record_photo(
            photo, [_face(5, 24), _face(60, 120)], size=1, mtime_ns=1, sha256=None, width=200, height=150
        )
        with index.transaction() as conn:
            conn.execute("INSERT INTO identities (name, created_at) VALUES ('Bo', 'now')")
            conn.execute("UPDATE faces SET identity_id = 1 WHERE id = ?", (big,))
    result = runner.invoke(app, ["faces", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["face_id"] for r in rows] == [small, big]
    assert set(rows[0]) == {
        "face_id", "photo", "box", "score", "size", "sharpness", "quality", "identity_id", "name"
    }  # fmt: skip
    assert (rows[0]["name"], rows[1]["name"]) == (None, "Bo") and rows[0]["quality"] == "good"
    assert rows[0]["photo"] == str(photo) and Path(rows[0]["photo"]).is_absolute()
    assert rows[0]["box"] == [5.0, 10.0, 29.0, 34.0]
    # the size is the crop region side (faces.align.region_size), not the 24 px detection box
    assert rows[0]["size"] == 28.92 and rows[0]["score"] == 0.98 and rows[0]["sharpness"] == 7.5
    assert (rows[0]["identity_id"], rows[1]["identity_id"]) == (None, 1)
    only = json.loads(runner.invoke(app, ["faces", "list", "--json", "--identity", "1"]).stdout)
    assert [r["face_id"] for r in only] == [big]
    small_only = json.loads(runner.invoke(app, ["faces", "list", "--json", "--max-size", "64"]).stdout)
    assert [r["face_id"] for r in small_only] == [small]
    # --max-size filters on the size listed: the 24 px box has a 28.9 px region
    boxed = json.loads(runner.invoke(app, ["faces", "list", "--json", "--max-size", "25"]).stdout)
    assert boxed == []
    table = runner.invoke(app, ["faces", "list"], env={"COLUMNS": "250"})
    assert table.exit_code == 0 and "2 faces" in table.stdout and "p.jpg" in table.stdout
    assert "Bo" in table.stdout  # the name next to the identity id


def test_names_with_markup_are_printed_as_typed(tmp_path: Path) -> None:
    # Issue #11 D3: rich markup in a user's string crashed (`[/]`) or vanished (`[dad]`).
    with LibraryIndex.open() as index:
        _, (a, b) = index.record_photo(
            tmp_path / "p.jpg", [_face(5, 24), _face(60, 120)], size=1, mtime_ns=1, sha256=None
        )
        with index.transaction() as conn:
            conn.execute("INSERT INTO identities (name, created_at) VALUES ('Anne [/] Marie', 'now')")
            conn.execute("INSERT INTO identities (name, created_at) VALUES ('Bob [dad]', 'now')")
            conn.execute("UPDATE faces SET identity_id = 1 WHERE id = ?", (a,))
            conn.execute("UPDATE faces SET identity_id = 2 WHERE id = ?", (b,))
    table = runner.invoke(app, ["faces", "list"], env={"COLUMNS": "250"})
    assert table.exit_code == 0, table.output
    assert "Anne [/] Marie" in table.stdout and "Bob [dad]" in table.stdout


def test_reject_a_face_and_undo(tmp_path: Path) -> None:
    with LibraryIndex.open() as index:
        _, (small, big) = index.record_photo(
            tmp_path / "p.jpg", [_face(5, 24), _face(60, 120)], size=1, mtime_ns=1, sha256=None
        )
        with index.transaction() as conn:
            conn.execute("INSERT INTO identities (name, created_at) VALUES ('Bo', 'now')")
            conn.execute("UPDATE faces SET identity_id = 1")
    result = runner.invoke(app, ["faces", "reject", str(small)])
    assert result.exit_code == 0, result.output
    assert "not a face" in result.stdout
    rows = json.loads(runner.invoke(app, ["faces", "list", "--json"]).stdout)
    assert [r["face_id"] for r in rows] == [big]  # gone from every view
    rows = json.loads(runner.invoke(app, ["faces", "list", "--json", "--all"]).stdout)
    assert [(r["face_id"], r["quality"], r["identity_id"]) for r in rows] == [
        (small, "rejected", None),
        (big, "good", 1),
    ]
    result = runner.invoke(app, ["faces", "reject", "999"])
    assert result.exit_code == 2 and "no face 999" in result.stderr
    assert runner.invoke(app, ["faces", "reject", str(small), "--undo"]).exit_code == 0
    rows = json.loads(runner.invoke(app, ["faces", "list", "--json"]).stdout)
    assert [r["face_id"] for r in rows] == [small, big]


def test_faces_list_after_a_real_scan_matches_the_photo(tmp_path: Path) -> None:
    from skimage.data import astronaut

    root = tmp_path / "photos"
    root.mkdir()
    # Stored rotated with EXIF orientation 6: boxes must be in the upright photo's pixels.
    upright = astronaut()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(
        root / "rot.jpg", exif=exif, quality=95
    )
    assert runner.invoke(app, ["scan", str(root)]).exit_code == 0
    (row,) = json.loads(runner.invoke(app, ["faces", "list", "--json"]).stdout)
    x0, y0, x1, y1 = row["box"]
    # Upright, the astronaut's face is in the upper middle of the 512 × 512 picture.
    assert 150 < (x0 + x1) / 2 < 260 and 50 < (y0 + y1) / 2 < 160
    assert row["photo"] == str(root / "rot.jpg") and row["size"] > 50


def test_faces_list_the_contact_sheet_and_the_exemplar_rule_give_one_size(
    tmp_path: Path, monkeypatch
) -> None:
    """Issue #10 item 9: one face size (the crop region side) in `faces list`, on the contact
    sheet's caption and in the exemplar rule (a face of size S is an exemplar at --hr-size S)."""
    from hime_cli.identities import review
    from hime_cli.identities.exemplars import exemplar_faces_for_identity

    photo = tmp_path / "p.png"
    Image.fromarray(np.full((200, 240, 3), 128, np.uint8)).save(photo)
    with LibraryIndex.open() as index:
        _, (face_id,) = index.record_photo(photo, [_face(40, 120)], size=1, mtime_ns=1, sha256=None)
        with index.transaction() as conn:
            conn.execute("INSERT INTO identities (name, created_at) VALUES ('Bo', 'now')")
            conn.execute("UPDATE faces SET identity_id = 1")
    (row,) = json.loads(runner.invoke(app, ["faces", "list", "--json"]).stdout)
    size = row["size"]
    assert 140 < size < 150  # the 120 px box's region, not the box

    captions: list[tuple[str, bool]] = []
    real_render = review.render_contact_sheet

    def capture(tiles, *args, **kwargs):
        captions.extend((label, exemplar) for _, label, exemplar in tiles)
        return real_render(tiles, *args, **kwargs)

    monkeypatch.setattr(review, "render_contact_sheet", capture)
    with LibraryIndex.open() as index:
        review.write_contact_sheet(index, 1, tmp_path / "sheet.png", hr_size=size - 0.01)
        review.write_contact_sheet(index, 1, tmp_path / "sheet2.png", hr_size=size + 0.01)
        at_size = [f.id for f in exemplar_faces_for_identity(index, 1, size - 0.01)]
        above = [f.id for f in exemplar_faces_for_identity(index, 1, size + 0.01)]
    (label, outlined), (_, outlined_above) = captions
    assert label.startswith(f"#{face_id}  {size:.0f}px")  # the sheet prints the listed size
    assert (at_size, above) == ([face_id], [])  # the exemplar rule compares the listed size
    assert outlined and not outlined_above  # and the sheet outlines exemplars by the same rule
