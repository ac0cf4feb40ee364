"""``hime faces``: every indexed face (``list``), and the user's "not a face" (``reject``)."""

from __future__ import annotations

import typer

from hime_cli.cli.common import err, out, print_json
from hime_cli.cli.options import JsonOpt
from hime_cli.errors import UsageError

faces_app = typer.Typer(help="Inspect the faces in the library index.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(faces_app, name="faces")


@faces_app.command("list")
def list_cmd(
    json_out: JsonOpt = False,
    identity: int | None = typer.Option(None, "--identity", help="Only the faces of this identity id."),
    max_size: float | None = typer.Option(
        None, "--max-size", help="Only faces of at most this size (px: the crop region side, as everywhere)."
    ),
    show_all: bool = typer.Option(
        False, "--all", help="Also detections that are not faces (the quality gate's and yours)."
    ),
) -> None:
    """List every indexed face: id, photo, box in the upright photo's pixels, score, size, sharpness, quality, identity and name.

    The size is hime's one face size: the side of the face's crop region in photo pixels
    (``faces.align.region_size``), the size the contact sheets print and the exemplar rule
    (``--hr-size``) compares; the box is the detector's, a little smaller.
    """
    from hime_cli.faces.align import region_size
    from hime_cli.identities.store import identity_names
    from hime_cli.library.index import LibraryIndex, display_path
    from hime_cli.paths import get_paths

    if not get_paths().index_path.exists():
        err.print("No library index yet: run `hime scan PATH` first.", highlight=False)
        rows: list[dict[str, object]] = []
    else:
        with LibraryIndex.open(readonly=True) as index:
            names = identity_names(index)
            rows = []
            for face in index.iter_faces(
                with_embeddings=False, identity_id=identity, include_rejected=show_all
            ):
                size = region_size(face.landmarks)
                if max_size is not None and size > max_size:
                    continue
                rows.append(
                    {
                        "face_id": face.id,
                        "photo": display_path(face.photo_path),
                        "box": [round(v, 2) for v in face.box.as_list()],
                        "score": round(float(face.score), 4),
                        "size": round(size, 2),
                        "sharpness": round(float(face.sharpness), 3),
                        "quality": "rejected" if face.rejected else face.quality,
                        "identity_id": face.identity_id,
                        "name": names.get(face.identity_id) if face.identity_id is not None else None,
                    }
                )
    if json_out:
        print_json(rows)
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{len(rows)} faces", title_justify="left")
    for column, justify in (
        ("id", "right"),
        ("photo", "left"),
        ("box", "left"),
        ("size", "right"),
        ("score", "right"),
        ("sharpness", "right"),
        ("quality", "left"),
        ("identity", "right"),
        ("name", "left"),
    ):
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for row in rows:
        box = row["box"]
        assert isinstance(box, list)
        table.add_row(
            str(row["face_id"]),
            escape(str(row["photo"])),
            ", ".join(f"{v:.0f}" for v in box),
            f"{row['size']:.0f}",
            f"{row['score']:.3f}",
            f"{row['sharpness']:.1f}",
            str(row["quality"] or "-"),
            "-" if row["identity_id"] is None else str(row["identity_id"]),
            escape(str(row["name"])) if row["name"] else "",  # user text: never markup
        )
    out.print(table)


@faces_app.command("reject")
def reject_cmd(
    face_ids: list[int] = typer.Argument(..., help="Face ids (see `hime faces list` or a contact sheet)."),
    undo: bool = typer.Option(False, "--undo", help="They are faces after all: place them again."),
) -> None:
    """Mark detections as "not a face": they leave their person and never come back, even after a re-scan."""
    from hime_cli.library.index import LibraryIndex

    with LibraryIndex.open(lock_timeout=10.0) as index:
        found = index.set_rejected(face_ids, rejected=not undo)
        gated: list[tuple[int, str]] = []
        if undo and found:
            from hime_cli.identities.store import update_identities

            update_identities(index)
            marks = ",".join("?" * len(found))
            gated = index.conn.execute(
                f"SELECT id, quality_reason FROM faces WHERE quality = 'reject' AND id IN ({marks})", found
            ).fetchall()
    missing = [f for f in dict.fromkeys(face_ids) if f not in found]
    if missing:
        raise UsageError(
            f"no face {', '.join(map(str, missing))} in the index.",
            hint="see the ids with `hime faces list --all`.",
        )
    from rich.markup import escape

    for face_id, reason in gated:
        err.print(
            escape(
                f"face {face_id} stays out: the scan's quality gate rejected it ({reason}); it has no embedding."
            ),
            highlight=False,
        )
    verb = "are faces again" if undo else "marked as not a face"
    out.print(f"face{'s' if len(found) > 1 else ''} {', '.join(map(str, found))} {verb}", highlight=False)
