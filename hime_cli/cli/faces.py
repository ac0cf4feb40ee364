"""``hime faces list``: every indexed face."""

from __future__ import annotations

import typer

from hime_cli.cli.common import err, handle_errors, out, print_json

faces_app = typer.Typer(help="Inspect the faces in the library index.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(faces_app, name="faces")


@faces_app.command("list")
@handle_errors
def list_cmd(
    json_out: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
    identity: int | None = typer.Option(None, "--identity", help="Only the faces of this identity id."),
    max_size: float | None = typer.Option(None, "--max-size", help="Only faces at most this many pixels."),
) -> None:
    """List every indexed face: id, photo, box in the upright photo's pixels, score, size, sharpness, identity."""
    from hime_cli.library.index import LibraryIndex, display_path
    from hime_cli.paths import get_paths

    if not get_paths().index_path.exists():
        err.print("No library index yet: run `hime scan PATH` first.", highlight=False)
        rows: list[dict[str, object]] = []
    else:
        with LibraryIndex.open(readonly=True) as index:
            rows = [
                {
                    "face_id": face.id,
                    "photo": display_path(face.photo_path),
                    "box": [round(v, 2) for v in face.box.as_list()],
                    "score": round(float(face.score), 4),
                    "size": round(float(face.size), 2),
                    "sharpness": round(float(face.sharpness), 3),
                    "identity_id": face.identity_id,
                }
                for face in index.iter_faces(with_embeddings=False, identity_id=identity)
                if max_size is None or face.size <= max_size
            ]
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
        ("identity", "right"),
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
            "-" if row["identity_id"] is None else str(row["identity_id"]),
        )
    out.print(table)
