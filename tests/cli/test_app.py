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
    assert "paths" in result.output


def test_help_does_not_import_torch() -> None:
    code = "import sys; from hime_cli.cli.app import app; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"


def test_paths_follow_hime_home(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HIME_HOME", str(tmp_path / "h"))
    result = runner.invoke(app, ["paths", "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["index"].startswith(str(tmp_path / "h"))
    assert data["hf_cache"].startswith(str(tmp_path / "h"))
