from __future__ import annotations

import json

from typer.testing import CliRunner

from hime_cli.cli.app import app


def test_bench_sr_reports_ms_per_face_and_complexity() -> None:
    res = CliRunner().invoke(
        app,
        ["bench", "sr", "--model", "hime_test_x4", "--batch", "2", "--refs", "1", "--repeats", "1", "--json"],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["name"] == "hime_test_x4" and data["batch"] == 2 and data["refs"] == 1
    assert data["ms_per_face"] > 0 and data["params"] > 0 and data["gmacs"] > 0
