"""``hime scan PATH...``: index the photos under folders (faces, embeddings, metadata)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from hime_cli.cli.common import EXIT_FAILED, EXIT_OK, err, out, print_json, progress_enabled
from hime_cli.cli.options import JsonOpt

if TYPE_CHECKING:
    from hime_cli.identities.store import ClusterReport
    from hime_cli.library.scan import ScanEvent, ScanReport

EMBEDDER_HELP = "Face embedder: dlib (default, works offline) or facenet (downloads its weights once)."


def register(app: typer.Typer) -> None:
    """Register ``hime scan`` on the root app."""
    app.command("scan")(scan_cmd)


def scan_cmd(
    paths: list[Path] = typer.Argument(..., help="Folders (scanned recursively) or photo files."),
    embedder: str = typer.Option("dlib", "--embedder", "-e", help=EMBEDDER_HELP),
    force: bool = typer.Option(False, "--force", help="Re-process every photo, even unchanged ones."),
    json_out: JsonOpt = False,
) -> None:
    """Index every photo under PATH: faces, sharpness, embeddings, EXIF. Re-runs skip unchanged photos.

    Exit code 1 when some photos could not be read (listed in the summary), 0 otherwise.
    """
    from hime_cli.errors import UsageError
    from hime_cli.faces.embed import EMBEDDERS
    from hime_cli.identities.scan import scan_and_place
    from hime_cli.library.index import LibraryIndex

    if embedder not in EMBEDDERS:
        raise UsageError(f"unknown embedder {embedder!r}.", hint=f"choose one of: {', '.join(EMBEDDERS)}.")
    with LibraryIndex.open(lock_timeout=2.0) as index, _ScanProgress() as progress:
        result = scan_and_place(paths, index, embedder=embedder, progress=progress, force=force)
    report, identities = result.scan, _identities_summary(result.identities)
    if json_out:
        data = report.to_dict()
        data["index"] = str(index.path)
        data["identities"] = identities
        print_json(data)
    else:
        _print_summary(report, identities)
    raise typer.Exit(EXIT_FAILED if report.failures else EXIT_OK)


class _ScanProgress:
    """A rich progress bar on stderr (only on a terminal) and one line per failed photo."""

    def __init__(self) -> None:
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> _ScanProgress:
        if progress_enabled():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]scan"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[name]}", style="dim"),
                console=err,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("scan", total=None, name="")
        return self

    def __call__(self, event: ScanEvent) -> None:
        from hime_cli.library.index import display_path

        if event.outcome == "failed":
            err.print(
                f"[yellow]failed[/] {_escape(display_path(event.path))}: {_escape(event.error or '')}",
                highlight=False,
            )
        if self._progress is not None:
            self._progress.update(self._task, completed=event.done, total=event.total, name=event.path.name)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def _identities_summary(placed: ClusterReport | None) -> dict[str, Any] | None:
    """The ``identities`` part of the report: None when the scan changed no face."""
    if placed is None:
        return None
    return {
        "new_faces": placed.new_faces,
        "joined_existing": placed.joined_existing,
        "new_identities": len(placed.new_identities),
    }


def _print_summary(report: ScanReport, identities: dict[str, Any] | None) -> None:
    from rich.table import Table

    from hime_cli.library.index import display_path

    table = Table(title="Scan summary", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("photos found", str(report.photos))
    table.add_row("new", str(report.new))
    table.add_row("updated", str(report.updated))
    table.add_row("unchanged", str(report.unchanged))
    table.add_row("moved", str(report.moved))
    table.add_row("failed", f"[red]{report.failed}[/]" if report.failed else "0")
    table.add_row("faces found", str(report.faces_found))
    if report.faces_rejected:
        table.add_row("  of them not faces", str(report.faces_rejected))
    if report.missing:
        table.add_row("missing (file gone)", str(report.missing))
    if identities is not None and identities.get("new_faces") is not None:
        table.add_row("new identities", str(identities["new_identities"]))
    table.add_row("time", f"{report.duration_s:.1f} s")
    out.print(table)
    if report.failures:
        failed = Table(title="Failed photos", title_justify="left")
        failed.add_column("photo", overflow="fold")
        failed.add_column("reason", overflow="fold")
        for failure in report.failures:
            failed.add_row(_escape(display_path(failure.path)), _escape(failure.reason))
        out.print(failed)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
