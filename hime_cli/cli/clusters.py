"""`hime clusters` commands (being built; see the issue tracker)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Register this group's commands on the root app."""
