"""The ``hime`` typer application: registers one sub-app per command group."""

from __future__ import annotations

import typer

from hime_cli import __version__
from hime_cli.cli import (
    bench,
    clusters,
    doctor,
    enhance,
    evaluate,
    faces,
    models,
    restore,
    scan,
    system,
    train,
)
from hime_cli.cli.common import HimeGroup

app = typer.Typer(
    name="hime",
    cls=HimeGroup,
    help="Sharpen the small faces in your photos, using each person's own good photos as references.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hime {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version."
    ),
) -> None:
    """hime: reference-based super-resolution of the small faces in a photo library."""


system.register(app)
scan.register(app)
faces.register(app)
clusters.register(app)
enhance.register(app)
models.register(app)
restore.register(app)
doctor.register(app)
train.register(app)
evaluate.register(app)
bench.register(app)


def main() -> None:
    """Entry point (``hime``). Errors are worded by the root group (:class:`HimeGroup`), not here."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
