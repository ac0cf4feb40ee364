"""`hime doctor` through the real CLI: it finds damage in hime's own files and repairs what it can."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from hime_cli.cli.app import app
from hime_cli.library import backup
from hime_cli.library.backup import backup_original, find_backups, replace_in_place, restore
from hime_cli.paths import get_paths

runner = CliRunner()


def _doctor(*args: str) -> tuple[int, dict]:
    result = runner.invoke(app, ["doctor", "--json", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, json.loads(result.stdout)


def _status(report: dict) -> dict[str, str]:
    return {c["what"]: c["status"] for c in report["checks"]}


def test_a_fresh_home_checks_out() -> None:
    code, report = _doctor()
    assert code == 0 and report["ok"]
    assert set(_status(report).values()) == {"ok"}
    plain = runner.invoke(app, ["doctor"])
    assert plain.exit_code == 0 and "library index" in plain.stdout


def test_damaged_manifest_is_rebuilt_from_the_sidecar_records(tmp_path: Path) -> None:
    photos = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    for p in photos:
        p.write_bytes(p.name.encode() * 50)
        replace_in_place(p, lambda tmp, p=p: tmp.write_bytes(b"enhanced " + p.name.encode()))
    manifest = backup.manifest_path()
    manifest.write_bytes(b"not a database any more" * 100)
    code, report = _doctor()
    assert code == 1 and _status(report)["backup manifest"] == "problem"
    check = next(c for c in report["checks"] if c["what"] == "backup manifest")
    assert "rebuild it from 2 sidecar records" in check["repair"]
    assert manifest.read_bytes().startswith(b"not a database")  # a check changes nothing
    code, report = _doctor("--repair")
    assert code == 0 and _status(report)["backup manifest"] == "repaired"
    assert list(manifest.parent.glob("manifest.sqlite3.damaged-*"))  # kept aside, not deleted
    code, report = _doctor()
    assert code == 0 and set(_status(report).values()) == {"ok"}
    assert [r.state for r in find_backups(photos[0])] == ["replaced"]
    assert restore([tmp_path]).ok and photos[1].read_bytes() == b"b.jpg" * 50


def test_missing_sidecars_and_a_damaged_object_are_repaired(tmp_path: Path) -> None:
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"original bytes")
    rec = backup_original(photo)  # backed up, photo still the original
    for sidecar in rec.backup_path.parent.glob("*.json"):
        sidecar.unlink()  # as for a backup made before hime kept sidecar records
    rec.backup_path.write_bytes(b"bit rot!!!!!!!")
    code, report = _doctor()
    status = _status(report)
    assert code == 1 and status["backup records"] == "problem" and status["backup objects"] == "problem"
    code, report = _doctor("--repair")
    assert code == 0, report
    assert rec.backup_path.read_bytes() == b"original bytes"
    assert backup.sidecar_records(photo)[0].sha256 == rec.sha256


def test_damaged_index_and_ledger_are_named_and_moved_aside_on_repair() -> None:
    paths = get_paths()
    paths.index_path.parent.mkdir(parents=True, exist_ok=True)
    paths.index_path.write_bytes(b"garbage " * 600)
    ledger = paths.data_dir / "enhance-ledger.sqlite3"
    ledger.write_bytes(b"garbage " * 600)
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 1
    assert "library index" in result.stdout and "would repair" in result.stdout and "re-scan" in result.stdout
    code, report = _doctor("--repair")
    assert code == 0 and _status(report)["library index"] == "repaired"
    assert not paths.index_path.exists() and list(paths.index_path.parent.glob("*.damaged-*"))
    assert _status(report)["enhance ledger"] == "repaired" and not ledger.exists()
