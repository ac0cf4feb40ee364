"""`hime models list|info|download|verify` through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hime_cli import hub
from hime_cli.cli.app import app
from hime_cli.paths import get_paths

runner = CliRunner()


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """Two registered tiny weights: one bundled, one only on the (fake) hub."""
    from safetensors.numpy import save_file

    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setenv("HIME_MODELS_DIR", str(models))
    payloads = {}
    for i, name in enumerate(["tiny_x4.bundled", "tiny_x4.remote"]):
        path = tmp_path / "build" / f"{name}.safetensors"
        path.parent.mkdir(exist_ok=True)
        save_file({"w": np.full((10, 10), i, np.float32)}, str(path))
        payloads[name] = path.read_bytes()
        entry = hub.entry_from_file(
            path,
            name,
            scale=4,
            variant="test",
            default=(i == 0),
            dev_metrics={"psnr": 24.0 + i},
            card=f"{name}.md",
        )
        hub.register_weight(entry)
    (models / "tiny_x4.bundled.safetensors").write_bytes(payloads["tiny_x4.bundled"])
    (models / "tiny_x4.bundled.md").write_text("# tiny\n")
    return payloads


def test_list_json(registry) -> None:
    result = runner.invoke(app, ["models", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["tiny_x4.bundled"]["where"] == "bundled" and rows["tiny_x4.bundled"]["default"]
    assert rows["tiny_x4.remote"]["where"] == "missing"
    assert rows["tiny_x4.bundled"]["params"] == 100 and rows["tiny_x4.remote"]["dev_psnr"] == 25.0
    table = runner.invoke(app, ["models", "list"])
    assert "tiny_x4.bundled (default)" in table.stdout and "25.00" in table.stdout


def test_info(registry) -> None:
    result = runner.invoke(app, ["models", "info", "tiny_x4", "--json"])
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    assert info["name"] == "tiny_x4.bundled" and info["card_path"].endswith("tiny_x4.bundled.md")
    unknown = runner.invoke(app, ["models", "info", "nope_x2"])
    assert unknown.exit_code == 1 and "hime models list" in unknown.stderr


def test_download_offline_is_one_clear_error(registry, monkeypatch) -> None:
    result = runner.invoke(app, ["models", "download", "tiny_x4.remote"])
    assert result.exit_code == 1 and "HIME_HUB_REPO" in result.stderr
    monkeypatch.setenv("HIME_HUB_REPO", "someone/hime")
    result = runner.invoke(app, ["models", "download", "tiny_x4.remote"])
    assert result.exit_code == 1 and "HF_HUB_OFFLINE" in result.stderr


def test_download_then_verify_detects_damage(registry, monkeypatch) -> None:
    import huggingface_hub

    def fake_download(repo_id, filename, *, cache_dir=None, revision=None, force_download=False, **kw):
        target = Path(cache_dir) / "fake" / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(registry[filename.removesuffix(".safetensors")])
        return str(target)

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HIME_HUB_REPO", "someone/hime")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    result = runner.invoke(app, ["models", "download", "tiny_x4.remote"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith(str(get_paths().hf_cache_dir))

    cached = get_paths().weights_dir / "tiny_x4.remote.safetensors"  # a copy placed in the cache
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(registry["tiny_x4.remote"])
    ok = runner.invoke(app, ["models", "verify", "--json"])
    assert ok.exit_code == 0
    assert {r["status"] for r in json.loads(ok.stdout)} == {"ok"}

    cached.write_bytes(registry["tiny_x4.remote"][:-4] + b"\x00\x00\x00\x00")
    bad = runner.invoke(app, ["models", "verify"])
    assert bad.exit_code == 1
    assert "MISMATCH" in bad.stdout and "--force" in bad.stderr
    listed = json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)
    assert {r["name"]: r["where"] for r in listed}["tiny_x4.remote"] == "cache"


def test_empty_registry(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HIME_MODELS_DIR", str(tmp_path / "empty"))
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 0 and "No weights registered" in result.stderr


def test_verify_hint_works_without_a_hub(registry) -> None:
    """#11 D13: `models verify` suggested `download --force`, which fails with no hub configured."""
    cached = get_paths().weights_dir / "tiny_x4.bundled.safetensors"
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(registry["tiny_x4.bundled"][:-4] + b"\xff\xff\xff\xff")
    bad = runner.invoke(app, ["models", "verify"])
    assert bad.exit_code == 1 and "MISMATCH" in bad.stdout
    assert "delete the damaged copy" in bad.stderr and "--force" not in bad.stderr
