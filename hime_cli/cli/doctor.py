"""``hime doctor``: check the index, the backups and the enhance ledger; ``--repair`` fixes what it can."""

from __future__ import annotations

import typer

from hime_cli.cli.common import EXIT_FAILED, err, out, print_json, safe
from hime_cli.cli.options import JsonOpt


def register(app: typer.Typer) -> None:
    """Register ``hime doctor`` on the root app."""
    app.command("doctor")(doctor_cmd)


def doctor_cmd(
    repair: bool = typer.Option(
        False, "--repair", help="Do the repairs listed (damaged files are moved aside, never deleted)."
    ),
    json_out: JsonOpt = False,
) -> None:
    """Check hime's own files: the library index, the backup manifest, its records and objects, the ledger.

    Says what is wrong and what `--repair` would do. Exit 1 while a problem remains.
    """
    from hime_cli.library.doctor import check_all

    findings = check_all(repair=repair)
    problems = [f for f in findings if f.status == "problem"]
    if json_out:
        print_json(
            {
                "ok": not problems,
                "checks": [
                    {"what": f.what, "status": f.status, "detail": f.detail, "repair": f.repair}
                    for f in findings
                ],
            }
        )
    else:
        style = {"ok": "green", "problem": "bold red", "repaired": "yellow"}
        for f in findings:
            line = f"[{style[f.status]}]{f.status:8}[/] [bold]{safe(f.what)}[/]: {safe(f.detail)}"
            if f.repair:
                verb = "would repair" if f.status == "problem" else "repair"
                line += f"\n         [dim]{verb}: {safe(f.repair)}[/]"
            out.print(line, highlight=False)
        if problems and not repair:
            err.print("Run `hime doctor --repair` to do the repairs listed.", highlight=False)
        elif not problems:
            err.print("Everything checks out." if not repair else "Done.", highlight=False)
    if problems:
        raise typer.Exit(EXIT_FAILED)
