"""`hime restore` drives the real CLI."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from hime_cli.cli.app import app
from hime_cli.library.backup import replace_in_place

runner = CliRunner()


def test_restore_cli(tmp_path) -> None:
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"original")
    replace_in_place(photo, lambda tmp: tmp.write_bytes(b"enhanced"))

    listed = runner.invoke(app, ["restore", "--list", "--json"])
    assert listed.exit_code == 0
    assert [r["state"] for r in json.loads(listed.stdout)] == ["replaced"]

    dry = runner.invoke(app, ["restore", str(photo), "--dry-run"])
    assert dry.exit_code == 0 and photo.read_bytes() == b"enhanced"

    result = runner.invoke(app, ["restore", str(tmp_path), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["restored"] == [str(photo.resolve())]
    assert photo.read_bytes() == b"original"

    other = tmp_path / "b.jpg"
    other.write_bytes(b"never enhanced")
    missing = runner.invoke(app, ["restore", str(other)])
    assert missing.exit_code == 1 and "missing" in missing.stdout


def test_restore_without_paths_is_a_usage_error() -> None:
    result = runner.invoke(app, ["restore"])
    assert result.exit_code == 2
    assert "Error:" in result.stderr


def test_restore_cli_works_with_a_damaged_manifest(tmp_path) -> None:
    """#11 D7: a corrupt manifest made the backups unreachable through the CLI."""
    from hime_cli.library.backup import manifest_path

    photo = tmp_path / "a [red]x.jpg"  # markup in a name is printed as text
    photo.write_bytes(b"original")
    replace_in_place(photo, lambda tmp: tmp.write_bytes(b"enhanced"))
    manifest_path().write_bytes(b"garbage, not sqlite" * 100)
    listed = runner.invoke(app, ["restore", "--list"])
    assert listed.exit_code == 0 and "a [red]x.jpg" in listed.stdout
    result = runner.invoke(app, ["restore", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert photo.read_bytes() == b"original" and "a [red]x.jpg" in result.stdout
