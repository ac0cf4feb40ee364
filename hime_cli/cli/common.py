"""Shared CLI plumbing: consoles, error mapping, exit codes, JSON output.

Results go to stdout, progress and logs to stderr. Exit codes: 0 ok, 1 some items failed,
2 usage error, 130 interrupted.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from hime_cli.errors import HimeError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

out = Console(soft_wrap=True)  # results (stdout)
err = Console(stderr=True, soft_wrap=True)  # progress, logs, errors (stderr)

F = TypeVar("F", bound=Callable[..., Any])


def progress_enabled() -> bool:
    """Progress bars only when stderr is a terminal."""
    return err.is_terminal and not os.environ.get("HIME_NO_PROGRESS")


def print_json(obj: Any) -> None:
    """Write one JSON document to stdout (plain, no rich markup)."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def fail(message: str, hint: str | None = None, code: int = EXIT_FAILED) -> typer.Exit:
    """Print ``Error: ... Hint: ...`` on stderr and return the Exit to raise."""
    line = f"[bold red]Error:[/] {_escape(message)}"
    if hint:
        line += f" [dim]Hint: {_escape(hint)}[/]"
    err.print(line, highlight=False)
    return typer.Exit(code)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def handle_errors(func: F) -> F:
    """Decorator for commands: HimeError → one line + its exit code; Ctrl-C → 130."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            err.print("[yellow]Interrupted.[/]")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except HimeError as exc:
            if os.environ.get("HIME_DEBUG"):
                traceback.print_exc()
            raise fail(exc.message, exc.hint, exc.exit_code) from None

    return wrapper  # type: ignore[return-value]
