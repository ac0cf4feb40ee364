"""Shared CLI plumbing: consoles, error mapping, exit codes, JSON output.

Results go to stdout, progress and logs to stderr. Exit codes: 0 ok, 1 some items failed,
2 usage error, 130 interrupted.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any

import click
import typer
from rich.console import Console
from typer.core import TyperGroup

from hime_cli.errors import HimeError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

out = Console(soft_wrap=True)  # results (stdout)
err = Console(stderr=True, soft_wrap=True)  # progress, logs, errors (stderr)


def progress_enabled() -> bool:
    """Progress bars only when stderr is a terminal."""
    return err.is_terminal and not os.environ.get("HIME_NO_PROGRESS")


def progress_lines_enabled() -> bool:
    """stderr is not a terminal (a log, CI): progress as a few plain lines, unless HIME_NO_PROGRESS."""
    return not err.is_terminal and not os.environ.get("HIME_NO_PROGRESS")


def print_json(obj: Any) -> None:
    """Write one JSON document to stdout (plain, no rich markup), always valid UTF-8.

    A non-UTF-8 file name reaches Python as a str with lone surrogates (``\\udcff``); written
    raw they made invalid UTF-8. They are written as JSON ``\\udcXX`` escapes instead, which
    ``json.loads`` turns back into the same str (``os.fsencode`` then gives the exact bytes).
    """
    text = json.dumps(obj, indent=2, default=_json_default, ensure_ascii=False) + "\n"
    # json.dumps escapes every backslash of the data, so each one backslashreplace adds is a
    # valid \\uXXXX escape of an unencodable (surrogate) character.
    sys.stdout.write(text.encode("utf-8", "backslashreplace").decode("utf-8"))
    sys.stdout.flush()


def _json_default(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)


def fail(message: str, hint: str | None = None, code: int = EXIT_FAILED) -> typer.Exit:
    """Print ``Error: ... Hint: ...`` on stderr and return the Exit to raise."""
    line = f"[bold red]Error:[/] {safe(message)}"
    if hint:
        line += f" [dim]Hint: {safe(hint)}[/]"
    err.print(line, highlight=False)
    return typer.Exit(code)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def describe_error(exc: BaseException) -> tuple[str, str | None, int] | None:
    """(message, hint, exit code) for the errors a command may end with; None for a bug.

    The one table of error → message (DESIGN: CLI): hime's own errors carry their hint; OS and
    SQLite errors that reach the CLI (a full disk, a damaged database) get one here.
    """
    import sqlite3

    from hime_cli.library.sqlite_store import is_damage

    if isinstance(exc, HimeError):
        return exc.message, exc.hint, exc.exit_code
    if isinstance(exc, sqlite3.Error):
        index = _index_path()
        if is_damage(exc):
            return (
                f"a hime database is damaged ({exc}); most likely the library index {index}.",
                f"run `hime doctor` to see which; to start the index afresh, move {index} aside and re-scan.",
                EXIT_FAILED,
            )
        text = str(exc).lower()
        if "disk is full" in text:
            return (
                f"cannot write a hime database: the disk is full ({exc}).",
                "free some disk space.",
                EXIT_FAILED,
            )
        if "locked" in text:
            return (
                f"a hime database is locked ({exc}).",
                "wait for the other hime process to finish.",
                EXIT_FAILED,
            )
        return f"database error: {exc}.", f"run `hime doctor` to check {index}.", EXIT_FAILED
    if isinstance(exc, OSError):
        import errno

        where = f": {display_path(exc.filename)}" if exc.filename else ""
        message = f"{exc.strerror or exc}{where}."
        if exc.errno == errno.ENOSPC:
            return message, "free some disk space (see `hime paths` for where hime writes).", EXIT_FAILED
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return message, "check the permissions (see `hime paths` for where hime writes).", EXIT_FAILED
        return message, None, EXIT_FAILED
    return None


def _index_path() -> str:
    try:
        from hime_cli.paths import get_paths

        return str(get_paths().index_path)
    except Exception:  # noqa: BLE001 - only used to word a message
        return "the index"


def display_path(path: object) -> str:
    """A path as text that prints anywhere: undecodable bytes of a file name shown as ``\\xNN``."""
    text: str | bytes = os.fspath(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path)
    if isinstance(text, bytes):
        return text.decode("utf-8", "backslashreplace")
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def safe(text: object) -> str:
    """User text (a path, a reason) ready for rich: printable, markup escaped."""
    return _escape(display_path(text))


class HimeGroup(TyperGroup):
    """The root command group: the one place where an error a command ends with becomes one line.

    Every command (and sub-group) runs inside :meth:`invoke`, under ``hime`` and under typer's
    CliRunner alike: known errors (:func:`describe_error`: hime's own, SQLite, OS) print
    ``Error: … Hint: …`` and exit with their code, Ctrl-C exits 130, ``HIME_DEBUG=1`` adds the
    traceback; anything else is a bug and keeps its traceback.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            err.print("[yellow]Interrupted.[/]")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:
            described = describe_error(exc)
            if described is None:
                raise
            if os.environ.get("HIME_DEBUG"):
                traceback.print_exc()
            message, hint, code = described
            raise fail(message, hint, code) from None
