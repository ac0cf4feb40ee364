"""``hime clusters``: review and correct the identities found in the library.

``list`` / ``show`` / ``export`` read the index; ``update`` / ``name`` / ``merge`` / ``split``
write it. Decisions made here are the user's: a later scan never undoes them.
"""

from __future__ import annotations

from pathlib import Path

import typer

from hime_cli.cli.common import err, out, print_json
from hime_cli.cli.options import ExemplarHrSizeOpt, JsonOpt
from hime_cli.errors import UsageError
from hime_cli.faces import TRAIN_HR_SIZE  # the HR crop side of the released models


def _open(readonly: bool):  # -> LibraryIndex
    from hime_cli.library.index import LibraryIndex

    return LibraryIndex.open(readonly=readonly, lock_timeout=10.0)


def _parse_face_ids(values: list[str]) -> list[int]:
    ids: list[int] = []
    for value in values:
        for part in value.replace(" ", ",").split(","):
            if not part:
                continue
            try:
                ids.append(int(part))
            except ValueError:
                raise UsageError(
                    f"{part!r} is not a face id.", hint="give face ids as numbers, e.g. --faces 41,42,57."
                ) from None
    return ids


def _note_resolved(requested: int, live: int) -> None:
    if requested != live:
        err.print(f"identity {requested} was merged into {live}; using {live}.", highlight=False)


clusters_app = typer.Typer(
    name="clusters",
    help="Review and correct identities: list, show, name, merge, split, export.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Register the ``clusters`` group on the root app."""
    app.add_typer(clusters_app, name="clusters")


@clusters_app.command("list")
def list_cmd(
    json_out: JsonOpt = False,
    min_faces: int | None = typer.Option(
        None,
        "--min-faces",
        min=1,
        help="Show people with at least this many faces (default 3; named people always show).",
    ),
    show_all: bool = typer.Option(
        False, "--all", help="Every identity: small ones, people seen once, hidden ones."
    ),
    hr_size: ExemplarHrSizeOpt = TRAIN_HR_SIZE,
) -> None:
    """List people, most faces first; smaller identities and faces seen once are counted below."""
    from hime_cli.identities.store import DEFAULT_MIN_FACES, list_identities, people_view

    with _open(readonly=True) as index:
        if show_all:
            rows = list_identities(index, hr_size=hr_size, min_faces=1)
            view = None
        else:
            view = people_view(index, hr_size=hr_size, min_faces=min_faces or DEFAULT_MIN_FACES)
            rows = view.people
    if json_out:
        print_json([r.as_dict() for r in rows])
        return
    if not rows and (view is None or not (view.fewer_faces or view.unsorted_faces or view.hidden)):
        out.print("No identities yet: run `hime scan PATH` (or `hime clusters update`).", highlight=False)
        return
    from rich.markup import escape
    from rich.table import Table

    title = f"{len(rows)} {'identities' if show_all else 'people'}"
    table = Table(title=title, title_justify="left")
    table.add_column("id", justify="right", style="bold")
    table.add_column("name")
    table.add_column("faces", justify="right")
    table.add_column("photos", justify="right")
    table.add_column("exemplars", justify="right")
    table.add_column("best face", justify="right")
    for r in rows:
        name = escape(r.name) if r.name else "[dim]-[/]"  # a name is user text: never markup
        if r.hidden:
            name += " [dim](hidden)[/]"
        table.add_row(
            str(r.id),
            name,
            str(r.faces),
            str(r.photos),
            str(r.exemplars) if r.exemplars else "[yellow]0[/]",
            f"{r.best_face_size:.0f} px",
        )
    out.print(table)
    if view is not None:
        notes = []
        if view.fewer_faces:
            notes.append(f"{view.fewer_faces} more with fewer than {min_faces or DEFAULT_MIN_FACES} faces")
        if view.unsorted_faces:
            notes.append(f"{view.unsorted_faces} unsorted faces (seen once)")
        if view.hidden:
            notes.append(f"{view.hidden} hidden")
        if notes:
            out.print("; ".join(notes) + ": `hime clusters list --all` lists them.", highlight=False)


@clusters_app.command("hide")
def hide_cmd(
    identity_ids: list[int] = typer.Argument(..., help="Identity ids to hide from `clusters list`."),
    undo: bool = typer.Option(False, "--undo", help="Show these identities again."),
) -> None:
    """Hide people from `clusters list` (kept across scans; new faces of them stay hidden)."""
    from hime_cli.identities.store import hide_identity

    with _open(readonly=False) as index:
        live = [hide_identity(index, i, hidden=not undo) for i in identity_ids]
    for requested, resolved in zip(identity_ids, live, strict=True):
        _note_resolved(requested, resolved)
    verb = "shown again" if undo else "hidden"
    out.print(f"identit{'ies' if len(live) > 1 else 'y'} {', '.join(map(str, live))} {verb}", highlight=False)


@clusters_app.command("show")
def show_cmd(
    identity_id: int | None = typer.Argument(
        None, help="Identity id (see `hime clusters list`); none: one overview sheet of all people."
    ),
    out_path: Path | None = typer.Option(
        None, "--out", "-o", help="PNG to write (default: under the hime cache dir)."
    ),
    limit: int = typer.Option(200, "--limit", min=1, help="At most this many faces on the sheet."),
    hr_size: ExemplarHrSizeOpt = TRAIN_HR_SIZE,
) -> None:
    """Write a PNG contact sheet of an identity's faces (exemplars outlined) and print its path.

    Without an id: one overview sheet of every person (as `clusters list` shows them), a face
    each with its id, name and face count.
    """
    from hime_cli.identities.review import write_contact_sheet, write_overview_sheet

    if identity_id is None:
        with _open(readonly=True) as index:
            overview = write_overview_sheet(index, out_path, hr_size=hr_size, max_people=limit)
        err.print(f"{overview.people} people on the sheet", highlight=False)
        out.print(str(overview.path), highlight=False, soft_wrap=True)
        return
    with _open(readonly=True) as index:
        sheet = write_contact_sheet(index, identity_id, out_path, hr_size=hr_size, max_faces=limit)
    _note_resolved(identity_id, sheet.identity_id)
    err.print(
        f"identity {sheet.identity_id}: {sheet.faces_shown} of {sheet.faces_total} faces, "
        f"{sheet.exemplars} exemplars outlined"
        + (f", {sheet.unreadable} photos unreadable" if sheet.unreadable else ""),
        highlight=False,
    )
    out.print(str(sheet.path), highlight=False, soft_wrap=True)


@clusters_app.command("name")
def name_cmd(
    identity_id: int = typer.Argument(..., help="Identity id."),
    name: str = typer.Argument(..., help="The person's name."),
) -> None:
    """Name (or rename) an identity."""
    from hime_cli.identities.store import identities_named, name_identity

    with _open(readonly=False) as index:
        live = name_identity(index, identity_id, name)
        others = [i for i in identities_named(index, name) if i != live]
    _note_resolved(identity_id, live)
    from rich.markup import escape

    out.print(f"identity {live} is now named {escape(repr(' '.join(name.split())))}", highlight=False)
    if others:
        ids = " ".join(map(str, others))
        err.print(
            f"identity {ids} has the same name; if it is the same person: hime clusters merge {live} {ids}",
            highlight=False,
        )


@clusters_app.command("merge")
def merge_cmd(
    identity_ids: list[int] = typer.Argument(..., help="Identity ids; all merge into the first."),
) -> None:
    """Merge identities into the first one (it keeps its id and name)."""
    from hime_cli.identities.store import merge_identities

    if len(identity_ids) < 2:
        raise UsageError("merge needs at least two identity ids.", hint="e.g. `hime clusters merge 3 7 12`.")
    with _open(readonly=False) as index:
        report = merge_identities(index, identity_ids[0], identity_ids[1:])
    if not report.merged:
        out.print(f"nothing to merge: those ids are all identity {report.identity_id}", highlight=False)
        return
    merged = ", ".join(map(str, report.merged))
    from rich.markup import escape

    named = f" ({escape(report.name)})" if report.name else ""
    out.print(
        f"merged {merged} into {report.identity_id}{named}: {report.moved_faces} faces moved",
        highlight=False,
    )


@clusters_app.command("split")
def split_cmd(
    identity_id: int = typer.Argument(..., help="Identity id."),
    faces: list[str] = typer.Option(
        [], "--faces", "-f", help="Face ids to move to a new identity (comma-separated; see `show`)."
    ),
    recluster: bool = typer.Option(
        False, "--recluster", help="Re-cluster this identity with a tighter threshold instead."
    ),
    threshold: float | None = typer.Option(
        None, "--threshold", help="Distance threshold for --recluster (default: 0.85 × the tuned one)."
    ),
    embedder: str = typer.Option("dlib", "--embedder", help="Embeddings to re-cluster with."),
) -> None:
    """Split faces off an identity: the chosen faces, or by re-clustering it tighter."""
    from hime_cli.identities.store import recluster_identity, split_faces

    if bool(faces) == recluster:
        raise UsageError(
            "give either --faces or --recluster.",
            hint="e.g. `hime clusters split 3 --faces 41,42` or `hime clusters split 3 --recluster`.",
        )
    if threshold is not None and not recluster:
        raise UsageError("--threshold only applies with --recluster.")
    with _open(readonly=False) as index:
        if recluster:
            report = recluster_identity(index, identity_id, embedder=embedder, threshold=threshold)
        else:
            report = split_faces(index, identity_id, _parse_face_ids(faces))
    _note_resolved(identity_id, report.identity_id)
    if not report.new_identities:
        out.print(
            f"identity {report.identity_id} stays whole: no tighter sub-group "
            "(faces you placed yourself are never moved; use --faces)",
            highlight=False,
        )
        return
    new = ", ".join(map(str, report.new_identities))
    out.print(
        f"split {len(report.moved_faces)} faces off identity {report.identity_id} "
        f"into new identit{'ies' if len(report.new_identities) > 1 else 'y'} {new}; "
        f"{report.kept_faces} faces stay",
        highlight=False,
    )


@clusters_app.command("export")
def export_cmd(
    identity_id: int = typer.Argument(..., help="Identity id."),
    out_dir: Path = typer.Argument(..., help="Folder to write the crops into (usable as --refs DIR)."),
    limit: int = typer.Option(20, "--limit", min=1, help="At most this many crops (best first)."),
    hr_size: ExemplarHrSizeOpt = TRAIN_HR_SIZE,
) -> None:
    """Write an identity's exemplar faces as aligned PNG crops (with margin) into DIR."""
    from hime_cli.cli.common import EXIT_FAILED
    from hime_cli.identities.review import export_exemplars

    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir} exists and is not a folder.")
    with _open(readonly=True) as index:
        written, failed = export_exemplars(index, identity_id, out_dir, hr_size=hr_size, limit=limit)
    for face, reason in failed:
        from rich.markup import escape

        err.print(escape(f"face {face.id} ({face.photo_path}): {reason}"), highlight=False)
    if not written and not failed:
        raise UsageError(
            f"identity {identity_id} has no face of at least {hr_size} px to export.",
            hint="exemplars must be at least the HR size; lower --hr-size or add better photos.",
        )
    from rich.markup import escape

    out.print(escape(f"wrote {len(written)} crops to {out_dir}"), highlight=False)
    if failed:
        raise typer.Exit(EXIT_FAILED)


@clusters_app.command("update")
def update_cmd(
    threshold: float | None = typer.Option(
        None, "--threshold", help="Average-link distance threshold (default: tuned for the embedder)."
    ),
    embedder: str = typer.Option("dlib", "--embedder", help="Cluster faces embedded with this model."),
    json_out: JsonOpt = False,
) -> None:
    """Place faces that have no identity yet (a scan does this itself); assigned faces never move."""
    from hime_cli.identities.store import update_identities

    with _open(readonly=False) as index:
        report = update_identities(index, embedder=embedder, threshold=threshold)
    data = {
        "new_faces": report.new_faces,
        "joined_existing": report.joined_existing,
        "new_identities": list(report.new_identities),
        "skipped_without_embedding": report.skipped_without_embedding,
        "threshold": report.threshold,
        "embedder": report.embedder,
    }
    if json_out:
        print_json(data)
        return
    out.print(
        f"{report.new_faces} new faces: {report.joined_existing} joined existing identities, "
        f"{report.faces_in_new_identities} formed {len(report.new_identities)} new identities",
        highlight=False,
    )
