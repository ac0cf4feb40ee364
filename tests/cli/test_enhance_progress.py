"""Progress of `hime enhance` when stderr is not a terminal (issue #10 item 8): a line per stage
(the model loading among them), one per N photos with an ETA, and a final summary line."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from hime_cli.cli.enhance import LogLines
from hime_cli.pipeline import Progress
from tests.cli.test_enhance import _base, _invoke, astronaut, weights  # noqa: F401 - fixture


def test_log_lines_per_stage_and_every_n_photos_with_an_eta() -> None:
    lines: list[str] = []
    log = LogLines(lines.append, every=2)
    log(Progress(5, 0, 0, 0, "planning", "planning"))
    log(Progress(5, 0, 0, 0, "loading the model", "loading the model"))
    log(Progress(5, 0, 0, 0, "enhancing", "enhancing"))
    for done in range(1, 6):
        log(Progress(5, done, done, done, f"p{done}.jpg", "enhancing"))
        log(Progress(5, done, done, done, f"p{done}.jpg", "enhancing"))  # repeats print nothing
    assert lines[:3] == ["hime: planning…", "hime: loading the model…", "hime: enhancing…"]
    counts = [line for line in lines[3:]]
    assert [c.split(" photos")[0] for c in counts] == ["hime: 2/5", "hime: 4/5", "hime: 5/5"]
    assert "ETA" in counts[0] and "ETA" not in counts[-1]


def test_redirected_stderr_gets_progress_lines(
    tmp_path: Path,
    weights: Path,  # noqa: F811 - fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HIME_NO_PROGRESS", raising=False)
    src = tmp_path / "in" / "a.jpg"
    src.parent.mkdir()
    Image.fromarray(astronaut()).save(src, quality=92)
    result = _invoke(["enhance", str(src), "--out", str(tmp_path / "out"), *_base(weights)])
    assert result.exit_code == 0, result.stderr
    assert "hime: loading the model…" in result.stderr
    assert "hime: 1/1 photos, 1 faces" in result.stderr
    assert "hime: finished: 1 done, 0 failed, 1 faces" in result.stderr
    monkeypatch.setenv("HIME_NO_PROGRESS", "1")
    quiet = _invoke(["enhance", str(src), "--out", str(tmp_path / "out"), *_base(weights)])
    assert "hime:" not in quiet.stderr
