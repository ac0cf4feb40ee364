from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from hime_cli.cli.app import app
from hime_cli.errors import DependencyError
from hime_cli.library.index import LibraryIndex
from tests.library.corpus import broken_files

runner = CliRunner()


@pytest.fixture(scope="module")
def astronaut_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from skimage.data import astronaut

    path = tmp_path_factory.mktemp("src") / "astronaut.png"
    Image.fromarray(astronaut()).resize((256, 256)).save(path)
    return path


def _library(root: Path, astronaut_png: Path, name: str = "astronaut.png") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(astronaut_png.read_bytes())
    return root


def test_scan_json_then_rescan_is_unchanged(tmp_path: Path, astronaut_png: Path) -> None:
    root = _library(tmp_path / "photos", astronaut_png)
    result = runner.invoke(app, ["scan", str(root), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["photos"], report["new"], report["failed"], report["faces_found"]) == (1, 1, 0, 1)
    assert report["embedder"] == "dlib" and report["failures"] == []
    assert Path(report["index"]).exists()
    again = json.loads(runner.invoke(app, ["scan", str(root), "--json"]).stdout)
    assert (again["unchanged"], again["new"], again["faces_found"]) == (1, 0, 0)
    forced = json.loads(runner.invoke(app, ["scan", str(root), "--json", "--force"]).stdout)
    assert forced["updated"] == 1


def test_scan_with_broken_files_reports_each_and_exits_1(tmp_path: Path, astronaut_png: Path) -> None:
    root = _library(tmp_path / "photos", astronaut_png)
    broken = broken_files(root / "broken")
    result = runner.invoke(app, ["scan", str(root)])
    assert result.exit_code == 1, result.output
    # One line per failed photo as it happens (stderr), and a summary table (stdout).
    for path in broken.values():
        assert f"failed {path}" in result.stderr
        assert path.name in result.stdout
    assert "Scan summary" in result.stdout and "Failed photos" in result.stdout
    assert "decompression bomb" in result.stdout and "empty file" in result.stdout
    data = json.loads(runner.invoke(app, ["scan", str(root), "--json"]).stdout)
    assert data["failed"] == len(broken) and data["unchanged"] == 1
    assert {Path(f["path"]).name for f in data["failures"]} == {p.name for p in broken.values()}


def test_scan_usage_errors_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["scan", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "no such file or folder" in result.stderr
    result = runner.invoke(app, ["scan", str(tmp_path), "--embedder", "nope"])
    assert result.exit_code == 2 and "unknown embedder" in result.stderr


def test_facenet_offline_fails_clearly(
    tmp_path: Path, astronaut_png: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hime_cli.faces.embed as embed

    def offline(self, device: str = "cpu") -> None:  # type: ignore[no-untyped-def]
        raise DependencyError("could not load facenet weights (offline).", hint="use '--embedder dlib'.")

    monkeypatch.setattr(embed.FacenetEmbedder, "__init__", offline)
    embed.get_embedder.cache_clear()
    root = _library(tmp_path / "photos", astronaut_png)
    result = runner.invoke(app, ["scan", str(root), "--embedder", "facenet"])
    assert result.exit_code == 1
    assert "Error:" in result.stderr and "--embedder dlib" in result.stderr
    with LibraryIndex.open(readonly=True) as index:
        assert index.count_photos() == 0
    embed.get_embedder.cache_clear()


def test_scan_refuses_when_index_is_locked(tmp_path: Path, astronaut_png: Path) -> None:
    root = _library(tmp_path / "photos", astronaut_png)
    with LibraryIndex.open():
        result = runner.invoke(app, ["scan", str(root)])
    assert result.exit_code == 1
    assert "in use by another hime process" in result.stderr


def test_scan_assigns_identities_and_handles_non_utf8_names(tmp_path: Path, astronaut_png: Path) -> None:
    name = os.fsdecode(b"astro-\xe9.png")
    root = _library(tmp_path / "photos", astronaut_png, name=name)
    result = runner.invoke(app, ["scan", str(root), "--json"])
    assert result.exit_code == 0, result.output
    faces = json.loads(runner.invoke(app, ["faces", "list", "--json"]).stdout)
    assert len(faces) == 1
    assert faces[0]["photo"].endswith("astro-\\xe9.png")
    assert isinstance(faces[0]["identity_id"], int)  # the scan ran the identities update
