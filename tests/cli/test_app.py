from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from hime_cli.cli.app import app

runner = CliRunner()


def test_help_lists_command_groups() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    listed = {
        line.split()[1]
        for line in result.output.splitlines()
        if line.startswith("│ ") and len(line.split()) > 2
    }
    expected = {"paths", "scan", "faces", "clusters", "enhance", "compare", "models", "restore", "doctor"}
    expected |= {"train", "eval", "bench"}
    assert expected <= listed, listed


def test_every_command_error_goes_through_the_one_table(monkeypatch) -> None:
    """Errors no command catches (OS, SQLite, Ctrl-C) are worded once, by the root group."""
    import sqlite3

    import hime_cli.paths as paths

    def boom(exc: BaseException):
        def raise_it(*args, **kwargs):
            raise exc

        return raise_it

    for exc, code, words in [
        (sqlite3.OperationalError("disk I/O error"), 1, "database error"),
        (PermissionError(13, "Permission denied", "/x/index.sqlite3"), 1, "check the permissions"),
        (KeyboardInterrupt(), 130, "Interrupted"),
    ]:
        monkeypatch.setattr(paths, "get_paths", boom(exc))
        result = runner.invoke(app, ["paths"])
        assert result.exit_code == code, (exc, result.output)
        assert words in result.stderr and "Traceback" not in result.output
        assert code == 130 or result.stderr.startswith("Error:")
    monkeypatch.setattr(paths, "get_paths", boom(ValueError("a bug")))
    result = runner.invoke(app, ["paths"])
    assert isinstance(result.exception, ValueError)  # a bug keeps its traceback


def test_help_imports_neither_torch_nor_numpy_nor_opencv() -> None:
    code = (
        "import sys; from hime_cli.cli.app import app; "
        "print(sorted(m for m in ('torch', 'numpy', 'cv2') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_paths_follow_hime_home(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HIME_HOME", str(tmp_path / "h"))
    result = runner.invoke(app, ["paths", "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["index"].startswith(str(tmp_path / "h"))
    assert data["hf_cache"].startswith(str(tmp_path / "h"))


def test_damaged_index_is_one_line_with_a_hint_not_a_traceback(tmp_path) -> None:
    """#11 D7: a corrupt index gave a raw sqlite3 traceback."""
    from hime_cli.paths import get_paths

    index = get_paths().index_path
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_bytes(b"this is not a database, it is a damaged index " * 200)
    result = runner.invoke(app, ["faces", "list"])
    assert result.exit_code == 1
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    assert "Error:" in result.stderr and "damaged" in result.stderr
    assert "hime doctor" in result.stderr and "re-scan" in result.stderr
    assert "Traceback" not in result.output


def test_os_errors_are_one_line(monkeypatch, tmp_path) -> None:
    """A full disk (or any OS error) reaching the CLI is one `Error: … Hint: …` line."""
    import errno

    from hime_cli.cli.common import describe_error

    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))
    message, hint, code = describe_error(full)
    assert "No space left" in message and "free some disk space" in hint and code == 1
    import sqlite3

    message, hint, _ = describe_error(sqlite3.OperationalError("database or disk is full"))
    assert "disk is full" in message and "free some disk space" in hint
    assert describe_error(ValueError("a bug")) is None  # bugs keep their traceback


def _commands(typer_app, prefix: tuple[str, ...] = ()):
    """(command path, callback) of every command registered under ``typer_app``, sub-apps included."""
    for command in typer_app.registered_commands:
        yield (*prefix, command.name), command.callback
    for group in typer_app.registered_groups:
        yield from _commands(group.typer_instance, (*prefix, group.name))


def test_every_command_is_a_module_level_function() -> None:
    """Commands are importable and testable on their own (#13), not closures inside register()."""
    import importlib

    commands = dict(_commands(app))
    assert len(commands) >= 20 and ("clusters", "merge") in commands and ("doctor",) in commands
    for path, callback in commands.items():
        assert "<locals>" not in callback.__qualname__, (path, callback.__qualname__)
        module = importlib.import_module(callback.__module__)
        assert module.__name__.startswith("hime_cli.cli."), path
        assert getattr(module, callback.__name__) is callback, path


def test_module_level_commands_run_without_the_app(capsys) -> None:
    """A command is a plain function: called directly it does what `hime …` does."""
    import pytest

    from hime_cli.cli.clusters import merge_cmd
    from hime_cli.cli.system import paths_cmd
    from hime_cli.errors import UsageError
    from hime_cli.paths import get_paths

    paths_cmd(json_out=True)
    assert json.loads(capsys.readouterr().out)["index"] == str(get_paths().index_path)
    with pytest.raises(UsageError, match="at least two identity ids"):
        merge_cmd(identity_ids=[3])


def test_shared_options_take_the_librarys_constants() -> None:
    """One --hr-size for the clusters commands, defaulting to the models' HR crop side, and one
    --device, defaulting to the pipeline's: the CLI and the library cannot disagree."""
    import typer.main

    from hime_cli.faces.align import TRAIN_HR_SIZE
    from hime_cli.pipeline.options import DEFAULT_DEVICE

    def option(path: tuple[str, ...], name: str):  # type: ignore[no-untyped-def]
        command = typer.main.get_command(app)
        for part in path:
            command = command.commands[part]  # type: ignore[attr-defined]
        return next(p for p in command.params if name in p.opts)

    hr_sizes = [option(("clusters", c), "--hr-size") for c in ("list", "show", "export")]
    assert {p.default for p in hr_sizes} == {TRAIN_HR_SIZE} and len({p.help for p in hr_sizes}) == 1
    devices = [option(path, "--device") for path in [("train",), ("enhance",), ("compare",)]]
    assert {p.default for p in devices} == {DEFAULT_DEVICE} and len({p.help for p in devices}) == 1


def test_clusters_defaults_that_hime_help_does_not_import_agree_with_the_library() -> None:
    """The clusters defaults spelt in the CLI (importing identities.store and review would slow
    every `hime --help`) are the library's own numbers."""
    import typer.main

    from hime_cli.identities.review import DEFAULT_MAX_FACES
    from hime_cli.identities.store import DEFAULT_MIN_FACES, RECLUSTER_TIGHTEN

    clusters = typer.main.get_command(app).commands["clusters"]  # type: ignore[attr-defined]

    def option(command: str, name: str):  # type: ignore[no-untyped-def]
        return next(p for p in clusters.commands[command].params if name in p.opts)

    assert option("show", "--limit").default == DEFAULT_MAX_FACES
    assert f"(default {DEFAULT_MIN_FACES};" in option("list", "--min-faces").help
    assert f"(default: {RECLUSTER_TIGHTEN} × the tuned one)" in option("split", "--threshold").help
