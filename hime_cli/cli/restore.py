"""``hime restore PATH...``: put back the originals that ``hime enhance --in-place`` replaced."""

from __future__ import annotations

from pathlib import Path

import typer

from hime_cli.cli.common import EXIT_FAILED, err, out, print_json, safe
from hime_cli.cli.options import JsonOpt


def register(app: typer.Typer) -> None:
    """Register ``hime restore`` on the root app."""
    app.command("restore")(restore_cmd)


def restore_cmd(
    paths: list[Path] = typer.Argument(
        None, help="Photos or folders to restore (folders: every backup under them)."
    ),
    force: bool = typer.Option(False, "--force", help="Also restore photos edited since hime replaced them."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be restored; change nothing."),
    list_only: bool = typer.Option(
        False, "--list", help="List the recorded backups (under PATHS, if given)."
    ),
    json_out: JsonOpt = False,
) -> None:
    """Restore originals from the verified backups kept by `hime enhance --in-place`."""
    from hime_cli.errors import UsageError
    from hime_cli.library.backup import list_backups, restore

    if list_only:
        records = [r for p in (paths or [None]) for r in list_backups(p)]
        rows = [
            {
                "path": str(r.original_path),
                "state": r.state,
                "size_bytes": r.size_bytes,
                "sha256": r.sha256,
                "backup": str(r.backup_path),
            }
            for r in records
        ]
        if json_out:
            print_json(rows)
        else:
            for row in rows:
                out.print(f"{row['state']:9} {safe(row['path'])}", highlight=False)
            if not rows:
                err.print("No backups recorded.")
        return
    if not paths:
        raise UsageError("name the photos or folders to restore", hint="e.g. `hime restore ~/Pictures/2019`")
    report = restore(paths, force=force, dry_run=dry_run)
    if json_out:
        print_json(
            {
                "dry_run": report.dry_run,
                "restored": [str(p) for p in report.restored],
                "unchanged": [str(p) for p in report.unchanged],
                "refused": [{"path": str(p), "reason": r} for p, r in report.refused],
                "missing": [{"path": str(p), "reason": r} for p, r in report.missing],
                "failed": [{"path": str(p), "reason": r} for p, r in report.failed],
            }
        )
    else:
        verb = "would restore" if dry_run else "restored"
        for p in report.restored:
            out.print(f"[green]{verb}[/] {safe(p)}", highlight=False)
        for p in report.unchanged:
            out.print(f"[dim]original[/] {safe(p)}", highlight=False)
        for label, items in (
            ("refused", report.refused),
            ("missing", report.missing),
            ("failed", report.failed),
        ):
            for p, reason in items:
                out.print(f"[yellow]{label}[/] {safe(p)}: {safe(reason)}", highlight=False)
        err.print(
            f"{len(report.restored)} {verb}, {len(report.unchanged)} already original, "
            f"{len(report.refused)} refused, {len(report.missing)} without backup, {len(report.failed)} failed",
            highlight=False,
        )
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)
