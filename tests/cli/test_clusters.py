from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from hime_cli.cli.app import app
from hime_cli.identities.review import EXEMPLAR_COLOUR
from hime_cli.identities.store import update_identities
from hime_cli.library.index import LibraryIndex
from tests.identities.synthetic import add_photo, face_embedding, face_identities, person_centres

runner = CliRunner()


@pytest.fixture
def library(tmp_path: Path) -> dict[str, list[int]]:
    """A clustered index of real (synthetic) photo files: Ann 3 faces (2 large, 1 small), Bob 2, Cy 1."""
    centres = person_centres(3, 0)
    rng = np.random.default_rng(1)
    photos = tmp_path / "photos"
    faces: dict[str, list[int]] = {"ann": [], "bob": [], "cy": []}
    with LibraryIndex.open() as index:
        faces["ann"] += add_photo(
            index, "ann1.png", [face_embedding(centres[0], rng)], 200, folder=photos, colours=[(255, 0, 0)]
        )
        faces["ann"] += add_photo(
            index, "ann2.png", [face_embedding(centres[0], rng)], 160, folder=photos, colours=[(255, 0, 0)]
        )
        faces["ann"] += add_photo(
            index, "ann3.png", [face_embedding(centres[0], rng)], 60, folder=photos, colours=[(255, 0, 0)]
        )
        faces["bob"] += add_photo(
            index, "bob1.png", [face_embedding(centres[1], rng)], 150, folder=photos, colours=[(0, 0, 255)]
        )
        faces["bob"] += add_photo(
            index, "bob2.png", [face_embedding(centres[1], rng)], 90, folder=photos, colours=[(0, 0, 255)]
        )
        faces["cy"] += add_photo(index, "cy.png", [face_embedding(centres[2], rng)], 40, folder=photos)
        update_identities(index)
    return faces


def identity_of(face_id: int) -> int | None:
    with LibraryIndex.open(readonly=True) as index:
        return face_identities(index)[face_id]


def list_json(*args: str) -> list[dict]:
    result = runner.invoke(app, ["clusters", "list", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_list_json_and_table(library: dict[str, list[int]]) -> None:
    rows = list_json("--all")
    assert [r["faces"] for r in rows] == [3, 2, 1]
    assert [r["faces"] for r in list_json()] == [3]  # people: at least 3 faces by default
    ann = rows[0]
    assert ann["id"] == identity_of(library["ann"][0])
    assert ann["photos"] == 3 and ann["exemplars"] == 2 and ann["name"] is None
    assert ann["best_face_size"] == pytest.approx(200, abs=0.5)
    assert [r["exemplars"] for r in rows] == [2, 1, 0]
    assert len(list_json("--min-faces", "2")) == 2
    assert list_json("--hr-size", "170")[0]["exemplars"] == 1

    table = runner.invoke(app, ["clusters", "list"])
    assert table.exit_code == 0
    for column in ("id", "name", "faces", "photos", "exemplars", "best face"):
        assert column in table.stdout
    assert "200 px" in table.stdout
    # Bob (2 faces) and Cy (seen once) are counted, not listed.
    assert "1 people" in table.stdout
    assert "1 more with fewer than 3 faces" in table.stdout and "1 unsorted faces" in table.stdout
    assert "--all" in table.stdout
    table = runner.invoke(app, ["clusters", "list", "--all"])
    assert "3 identities" in table.stdout and "unsorted" not in table.stdout


def test_named_people_always_show_and_hide(library: dict[str, list[int]]) -> None:
    bob, cy = identity_of(library["bob"][0]), identity_of(library["cy"][0])
    assert runner.invoke(app, ["clusters", "name", str(cy), "Cy"]).exit_code == 0
    assert [r["name"] for r in list_json()] == [None, "Cy"]  # a named person is a person
    result = runner.invoke(app, ["clusters", "hide", str(cy)])
    assert result.exit_code == 0 and "hidden" in result.stdout
    assert [r["faces"] for r in list_json()] == [3]
    table = runner.invoke(app, ["clusters", "list"])
    assert "1 hidden" in table.stdout
    hidden = [r for r in list_json("--all") if r["hidden"]]
    assert [r["id"] for r in hidden] == [cy]
    # A hidden person stays hidden when a scan brings more of their faces.
    centres = person_centres(3, 0)
    with LibraryIndex.open() as index:
        (new_face,) = add_photo(index, "cy2.jpg", [face_embedding(centres[2], np.random.default_rng(9))])
        update_identities(index)
    assert identity_of(new_face) == cy
    assert cy not in [r["id"] for r in list_json()]
    assert runner.invoke(app, ["clusters", "hide", str(cy), "--undo"]).exit_code == 0
    assert cy in [r["id"] for r in list_json()]
    assert runner.invoke(app, ["clusters", "hide", "999"]).exit_code == 2
    assert bob not in [r["id"] for r in list_json()]


def test_names_with_markup_are_listed_as_typed(library: dict[str, list[int]]) -> None:
    # Issue #11 D3: `Anne [/] Marie` crashed every `clusters list` (MarkupError); `Bob [dad]` showed as `Bob `.
    ann, bob = identity_of(library["ann"][0]), identity_of(library["bob"][0])
    result = runner.invoke(app, ["clusters", "name", str(ann), "Anne [/] Marie"])
    assert result.exit_code == 0, result.output
    assert "Anne [/] Marie" in result.stdout
    assert runner.invoke(app, ["clusters", "name", str(bob), "Bob [dad]"]).exit_code == 0
    table = runner.invoke(app, ["clusters", "list"])
    assert table.exit_code == 0, table.output
    assert "Anne [/] Marie" in table.stdout and "Bob [dad]" in table.stdout
    result = runner.invoke(app, ["clusters", "merge", str(ann), str(bob)])
    assert result.exit_code == 0 and "Anne [/] Marie" in result.stdout


def test_show_without_id_writes_an_overview_of_people(library: dict[str, list[int]], tmp_path: Path) -> None:
    ann = identity_of(library["ann"][0])
    runner.invoke(app, ["clusters", "name", str(ann), "Ann"])
    out = tmp_path / "people.png"
    result = runner.invoke(app, ["clusters", "show", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out) and "1 people" in result.stderr
    sheet = np.asarray(Image.open(out).convert("RGB")).astype(int)
    red = (sheet[..., 0] > 200) & (sheet[..., 1] < 60) & (sheet[..., 2] < 60)
    assert red.sum() > 50 * 50  # Ann's face tile (her faces are red)
    default = runner.invoke(app, ["clusters", "show"])
    assert default.exit_code == 0 and Path(default.stdout.strip()).name == "people.png"


def test_sheet_captions_name_the_photo_file(
    library: dict[str, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import hime_cli.identities.review as review

    captured: list[str] = []
    real = review.render_contact_sheet

    def spy(tiles, *args, **kwargs):  # type: ignore[no-untyped-def]
        captured.extend(label for _, label, _ in tiles)
        return real(tiles, *args, **kwargs)

    monkeypatch.setattr(review, "render_contact_sheet", spy)
    ann = identity_of(library["ann"][0])
    assert runner.invoke(app, ["clusters", "show", str(ann)]).exit_code == 0
    assert sorted(label.split("\n")[1] for label in captured) == ["ann1.png", "ann2.png", "ann3.png"]
    assert review._short_name(Path("/x/" + "a" * 40 + ".jpg"), 112).endswith("aaa.jpg")
    assert len(review._short_name(Path("/x/" + "a" * 40 + ".jpg"), 112)) <= 17


def test_list_without_index_is_a_clear_error() -> None:
    result = runner.invoke(app, ["clusters", "list"])
    assert result.exit_code == 1
    assert "Error:" in result.stderr and "hime scan" in result.stderr


def test_name_merge_split_flow(library: dict[str, list[int]]) -> None:
    ann, bob, cy = (identity_of(library[p][0]) for p in ("ann", "bob", "cy"))
    result = runner.invoke(app, ["clusters", "name", str(ann), "Ann"])
    assert result.exit_code == 0 and "Ann" in result.stdout

    result = runner.invoke(app, ["clusters", "merge", str(ann), str(bob), str(cy)])
    assert result.exit_code == 0, result.output
    assert "3 faces moved" in result.stdout
    rows = list_json("--all")
    assert len(rows) == 1 and rows[0]["faces"] == 6 and rows[0]["name"] == "Ann"

    # Undo part of it by hand: Bob's faces are someone else.
    bob_faces = ",".join(map(str, library["bob"]))
    result = runner.invoke(app, ["clusters", "split", str(ann), "--faces", bob_faces])
    assert result.exit_code == 0, result.output
    new_bob = identity_of(library["bob"][0])
    assert new_bob not in (ann, bob, cy)  # a new id; old ids are never reused
    assert identity_of(library["bob"][1]) == new_bob
    # A re-cluster after a scan keeps every decision.
    with LibraryIndex.open() as index:
        update_identities(index)
    assert identity_of(library["bob"][0]) == new_bob and identity_of(library["cy"][0]) == ann
    # The merged-away id still works, with a note.
    result = runner.invoke(app, ["clusters", "name", str(bob), "Ann B"])
    assert result.exit_code == 0 and f"merged into {ann}" in result.stderr


def test_split_recluster(library: dict[str, list[int]]) -> None:
    ann, bob = identity_of(library["ann"][0]), identity_of(library["bob"][0])
    with LibraryIndex.open() as index:  # an automatic mistake: Bob's faces went into Ann
        index.conn.execute("UPDATE faces SET identity_id = ? WHERE identity_id = ?", (ann, bob))
    result = runner.invoke(app, ["clusters", "split", str(ann), "--recluster"])
    assert result.exit_code == 0, result.output
    assert identity_of(library["ann"][0]) == ann
    moved_to = identity_of(library["bob"][0])
    assert moved_to != ann and identity_of(library["bob"][1]) == moved_to
    # Nothing left to split.
    result = runner.invoke(app, ["clusters", "split", str(ann), "--recluster"])
    assert result.exit_code == 0 and "stays whole" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["clusters", "show", "999"],
        ["clusters", "name", "999", "X"],
        ["clusters", "merge", "999", "1"],
        ["clusters", "split", "999", "--faces", "1"],
        ["clusters", "export", "999", "out"],
    ],
)
def test_unknown_identity_is_a_usage_error(library: dict[str, list[int]], args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "no identity 999" in result.stderr and "hime clusters list" in result.stderr


def test_usage_errors(library: dict[str, list[int]]) -> None:
    ann, bob = identity_of(library["ann"][0]), identity_of(library["bob"][0])
    cases = [
        (["clusters", "merge", str(ann)], "at least two"),
        (["clusters", "split", str(ann)], "either --faces or --recluster"),
        (["clusters", "split", str(ann), "--faces", "x1"], "not a face id"),
        (["clusters", "split", str(ann), "--faces", str(library["bob"][0])], "not in identity"),
        (["clusters", "split", str(ann), "--faces", "1", "--recluster"], "either --faces or --recluster"),
        (["clusters", "name", str(ann), "  "], "empty"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
    assert identity_of(library["bob"][0]) == bob  # nothing changed


def test_show_writes_a_contact_sheet(library: dict[str, list[int]], tmp_path: Path) -> None:
    ann = identity_of(library["ann"][0])
    out = tmp_path / "sheets" / "ann.png"
    result = runner.invoke(app, ["clusters", "show", str(ann), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    assert "2 exemplars" in result.stderr
    sheet = np.asarray(Image.open(out).convert("RGB")).astype(int)
    # Three red face tiles and exactly two green outlines (the two faces >= 128 px).
    red = (sheet[..., 0] > 200) & (sheet[..., 1] < 60) & (sheet[..., 2] < 60)
    green = np.all(np.abs(sheet - np.array(EXEMPLAR_COLOUR)) < 3, axis=-1)
    assert red.sum() > 3 * 50 * 50
    # Outlined tiles: count connected green frames by counting rows with long green runs.
    green_cols = green.any(axis=0)
    runs = np.flatnonzero(np.diff(np.concatenate([[0], green_cols.astype(int), [0]])) == 1)
    assert len(runs) == 3  # the legend swatch + two exemplar frames (tiles on one row)

    # Default location: under the cache dir, and the path printed.
    result = runner.invoke(app, ["clusters", "show", str(ann)])
    assert result.exit_code == 0
    printed = Path(result.stdout.strip())
    assert printed.is_file() and "hime_home" in str(printed)


def test_show_survives_a_missing_photo(library: dict[str, list[int]], tmp_path: Path) -> None:
    (tmp_path / "photos" / "bob2.png").unlink()
    bob = identity_of(library["bob"][0])
    result = runner.invoke(app, ["clusters", "show", str(bob), "--out", str(tmp_path / "b.png")])
    assert result.exit_code == 0, result.output
    assert "1 photos unreadable" in result.stderr


def test_export_writes_exemplar_crops(library: dict[str, list[int]], tmp_path: Path) -> None:
    ann = identity_of(library["ann"][0])
    out = tmp_path / "refs"
    result = runner.invoke(app, ["clusters", "export", str(ann), str(out)])
    assert result.exit_code == 0, result.output
    files = sorted(out.glob("*.png"))
    assert len(files) == 2  # the 60 px face is too small to be a reference
    sizes = sorted(Image.open(f).size for f in files)
    assert sizes == [(320, 320), (400, 400)]  # native region × 2 (margin)
    # The centre of each crop is the (red) face; the corners are the grey background around it.
    for f in files:
        crop = np.asarray(Image.open(f).convert("RGB")).astype(int)
        h, w, _ = crop.shape
        assert tuple(crop[h // 2, w // 2]) == (255, 0, 0)
        assert abs(crop[2, 2] - 128).max() <= 2
    # Exporting again replaces the previous crops (nothing stale left for --refs), and keeps other files.
    (out / "notes.txt").write_text("mine")
    (out / f"identity{ann}_009_face999.png").write_bytes(b"stale")
    result = runner.invoke(app, ["clusters", "export", str(ann), str(out), "--limit", "1"])
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*.png"))) == 1 and (out / "notes.txt").read_text() == "mine"
    # An identity with no usable face is a usage error.
    cy = identity_of(library["cy"][0])
    result = runner.invoke(app, ["clusters", "export", str(cy), str(tmp_path / "cy")])
    assert result.exit_code == 2 and "no face of at least 128 px" in result.stderr


def test_update_command(library: dict[str, list[int]]) -> None:
    centres = person_centres(3, 0)
    with LibraryIndex.open() as index:
        (new_face,) = add_photo(index, "ann4.jpg", [face_embedding(centres[0], np.random.default_rng(5))])
    result = runner.invoke(app, ["clusters", "update", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["new_faces"] == 1 and data["joined_existing"] == 1 and data["new_identities"] == []
    assert identity_of(new_face) == identity_of(library["ann"][0])
