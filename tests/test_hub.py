"""Model registry, resolution order, integrity checks and the (monkeypatched) hub download."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from hime_cli import hub
from hime_cli.errors import DependencyError, IntegrityError, ModelError
from hime_cli.paths import get_paths


def make_weight(path: Path, seed: int = 0, shape: tuple[int, ...] = (3, 5)) -> Path:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {"conv.weight": rng.standard_normal(shape).astype(np.float32), "conv.bias": np.zeros(3, np.float32)},
        str(path),
    )
    return path


@pytest.fixture
def models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setenv("HIME_MODELS_DIR", str(folder))
    return folder


@pytest.fixture
def registered(models_dir: Path, tmp_path: Path) -> hub.WeightEntry:
    """A tiny weight registered (default of its arch) but not placed anywhere yet."""
    src = make_weight(tmp_path / "build" / "tiny_x4.v1.safetensors")
    entry = hub.entry_from_file(
        src, "tiny_x4.v1", scale=4, variant="test", default=True, dev_metrics={"psnr": 25.5}
    )
    hub.register_weight(entry)
    return entry


def test_entry_from_file_counts_params_and_hashes(tmp_path: Path) -> None:
    src = make_weight(tmp_path / "a.safetensors", shape=(3, 7))
    entry = hub.entry_from_file(src, "tiny_x2.a", scale=2)
    assert entry.params == 3 * 7 + 3
    assert entry.size_bytes == src.stat().st_size
    assert entry.sha256 == hub.sha256_file(src) and len(entry.sha256) == 64
    assert (entry.arch, entry.tag) == ("tiny_x2", "a")


def test_registry_round_trip_and_duplicates(models_dir: Path, registered: hub.WeightEntry) -> None:
    loaded = hub.load_registry()
    assert loaded == {"tiny_x4.v1": registered}
    doc = json.loads((models_dir / "registry.json").read_text())
    assert doc["schema_version"] == 1 and doc["weights"][0]["arch"] == "tiny_x4"
    with pytest.raises(ModelError, match="already registered"):
        hub.register_weight(registered)
    # a hand-edited registry with a duplicate name is refused when read
    doc["weights"].append(doc["weights"][0])
    (models_dir / "registry.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="duplicate"):
        hub.load_registry()


def test_register_rejects_bad_names_and_mismatching_bundled_file(models_dir: Path, tmp_path: Path) -> None:
    src = make_weight(tmp_path / "x.safetensors")
    with pytest.raises(ModelError, match="invalid weight name"):
        hub.register_weight(hub.entry_from_file(src, "NoTag", scale=4))
    entry = hub.entry_from_file(src, "tiny_x4.v9", scale=4)
    make_weight(models_dir / entry.file, seed=1)  # a different file under the same name next to the registry
    with pytest.raises(IntegrityError):
        hub.register_weight(entry)


def test_default_moves_and_arch_name_resolves_to_default(models_dir: Path, tmp_path: Path) -> None:
    a = hub.entry_from_file(
        make_weight(tmp_path / "tiny_x4.a.safetensors", 1), "tiny_x4.a", scale=4, default=True
    )
    b = hub.entry_from_file(make_weight(tmp_path / "tiny_x4.b.safetensors", 2), "tiny_x4.b", scale=4)
    hub.register_weight(a)
    hub.register_weight(b)
    assert hub.find_entry("tiny_x4").name == "tiny_x4.a"
    hub.register_weight(
        hub.entry_from_file(tmp_path / "tiny_x4.b.safetensors", "tiny_x4.c", scale=4, default=True)
    )
    reg = hub.load_registry()
    assert [n for n, e in reg.items() if e.default] == ["tiny_x4.c"]
    assert hub.find_entry("tiny_x4").name == "tiny_x4.c"
    with pytest.raises(ModelError, match="unknown weight"):
        hub.find_entry("nope_x4")


def test_missing_weight_is_one_clear_error(registered: hub.WeightEntry) -> None:
    with pytest.raises(ModelError) as info:
        hub.resolve_weights("tiny_x4.v1")
    assert "not available" in info.value.message
    assert "hime models download tiny_x4.v1" in (info.value.hint or "")


def test_bundled_copy_is_used_and_checked(
    models_dir: Path, registered: hub.WeightEntry, tmp_path: Path
) -> None:
    bundled = models_dir / registered.file
    bundled.write_bytes((tmp_path / "build" / registered.file).read_bytes())
    res = hub.resolve_weights("tiny_x4")
    assert (res.source, res.path, res.entry) == ("bundled", bundled, registered)
    assert Path(res) == bundled  # os.PathLike: usable wherever a path is expected
    data = bytearray(bundled.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the payload
    bundled.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as info:
        hub.resolve_weights("tiny_x4.v1")
    assert "hime models download tiny_x4.v1 --force" in (info.value.hint or "")


def test_cache_wins_over_bundled(
    models_dir: Path, registered: hub.WeightEntry, tmp_path: Path, caplog
) -> None:
    payload = (tmp_path / "build" / registered.file).read_bytes()
    (models_dir / registered.file).write_bytes(payload)
    cached = get_paths().weights_dir / registered.file
    cached.parent.mkdir(parents=True)
    cached.write_bytes(payload)
    with caplog.at_level(logging.INFO, logger="hime_cli.hub"):
        res = hub.resolve_weights("tiny_x4.v1")
    assert res.source == "cache" and res.path == cached
    assert any("local cache" in r.getMessage() for r in caplog.records)


def test_explicit_path(registered: hub.WeightEntry, tmp_path: Path) -> None:
    own = make_weight(tmp_path / "mine" / "finetuned.safetensors", seed=42)
    res = hub.resolve_weights(str(own))
    assert res.source == "path" and res.entry is None and res.path == own.resolve()
    copy = tmp_path / "mine" / "copy.safetensors"
    copy.write_bytes((tmp_path / "build" / registered.file).read_bytes())
    assert hub.resolve_weights(copy).entry == registered  # recognised by its sha256
    with pytest.raises(ModelError, match="does not exist"):
        hub.resolve_weights(str(tmp_path / "missing.safetensors"))


class FakeHub:
    """Stands in for huggingface_hub.hf_hub_download: serves files from a dict, records calls."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.calls: list[dict] = []

    def __call__(
        self, repo_id: str, filename: str, *, revision=None, cache_dir=None, force_download=False, **kw
    ):
        self.calls.append({"repo_id": repo_id, "filename": filename, "force": force_download})
        if filename not in self.files:
            raise OSError(f"404 {repo_id}/{filename}")
        # the real cache layout, so that huggingface_hub.try_to_load_from_cache finds it afterwards
        repo_dir = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
        commit = "0" * 40
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / "main").write_text(commit)
        target = repo_dir / "snapshots" / commit / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.files[filename])
        return str(target)


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HIME_HUB_REPO", "someone/hime")


def test_download_path_offline_monkeypatched(registered, online, tmp_path, monkeypatch) -> None:
    import huggingface_hub

    fake = FakeHub({registered.file: (tmp_path / "build" / registered.file).read_bytes()})
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    res = hub.resolve_weights("tiny_x4.v1")
    assert res.source == "hub" and res.path.is_file()
    assert str(res.path).startswith(str(get_paths().hf_cache_dir))
    assert fake.calls == [{"repo_id": "someone/hime", "filename": registered.file, "force": False}]
    assert hub.resolve_weights("tiny_x4.v1", allow_download=False).path.is_file()


def test_download_refuses_tampered_file_and_removes_it(registered, online, monkeypatch) -> None:
    import huggingface_hub

    fake = FakeHub({registered.file: b"not the weights"})
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    with pytest.raises(IntegrityError):
        hub.download_weights("tiny_x4.v1")
    leftovers = [p for p in get_paths().hf_cache_dir.rglob("*.safetensors")]
    assert leftovers == []


def test_download_failure_falls_back_to_bundled(
    registered, online, models_dir, tmp_path, monkeypatch
) -> None:
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", FakeHub({}))
    (models_dir / registered.file).write_bytes((tmp_path / "build" / registered.file).read_bytes())
    assert hub.resolve_weights("tiny_x4.v1").source == "bundled"
    (models_dir / registered.file).unlink()
    with pytest.raises(ModelError, match="download failed"):
        hub.resolve_weights("tiny_x4.v1")


def test_force_download_replaces_damaged_cache_copy(registered, online, tmp_path, monkeypatch) -> None:
    import huggingface_hub

    good = (tmp_path / "build" / registered.file).read_bytes()
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", FakeHub({registered.file: good}))
    damaged = get_paths().weights_dir / registered.file
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(good[:-1] + b"\x00")
    with pytest.raises(IntegrityError):
        hub.download_weights("tiny_x4.v1")
    res = hub.download_weights("tiny_x4.v1", force=True)
    assert res.source == "hub" and not damaged.exists()
    assert hub.resolve_weights("tiny_x4.v1").path == res.path


def test_no_download_when_offline_or_unconfigured(registered, monkeypatch) -> None:
    import huggingface_hub

    def boom(*a, **k):
        raise AssertionError("the network must not be touched")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", boom)
    with pytest.raises(ModelError, match="HIME_HUB_REPO"):
        hub.download_weights("tiny_x4.v1")  # no repo configured
    monkeypatch.setenv("HIME_HUB_REPO", "someone/hime")
    with pytest.raises(DependencyError, match="HF_HUB_OFFLINE"):
        hub.download_weights("tiny_x4.v1")  # conftest sets HF_HUB_OFFLINE=1
    with pytest.raises(ModelError, match="not available"):
        hub.resolve_weights("tiny_x4.v1")


def test_bundled_dirs_source_checkout_then_prefix(monkeypatch) -> None:
    import sys

    monkeypatch.delenv("HIME_MODELS_DIR", raising=False)
    dirs = hub.bundled_dirs()
    assert dirs[-1] == Path(sys.prefix) / "share" / "hime" / "models"
    assert dirs[0] == Path(hub.__file__).resolve().parents[1] / "models"  # tests run from the checkout


def test_pyproject_installs_models_as_data_files() -> None:
    import tomllib

    root = Path(hub.__file__).resolve().parents[1]
    data_files = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    assert set(data_files["share/hime/models"]) >= {
        "models/*.safetensors",
        "models/*.md",
        "models/registry.json",
    }


def test_installed_package_resolves_from_share_hime_models(registered, tmp_path, monkeypatch) -> None:
    """A non-editable install: no source checkout, the weights under <sys.prefix>/share/hime/models."""
    import sys

    share = tmp_path / "prefix" / "share" / "hime" / "models"
    share.mkdir(parents=True)
    registry = Path(hub.registry_path())
    (share / "registry.json").write_bytes(registry.read_bytes())
    (share / registered.file).write_bytes((tmp_path / "build" / registered.file).read_bytes())
    monkeypatch.delenv("HIME_MODELS_DIR")
    monkeypatch.setattr(hub, "source_checkout_root", lambda: None)
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "prefix"))
    assert hub.bundled_dirs() == [share]
    res = hub.resolve_weights("tiny_x4.v1")
    assert (res.source, res.path) == ("bundled", share / registered.file)


def test_create_model_pretrained_loads_through_the_hub(models_dir: Path) -> None:
    """The sr registry's pretrained=True path goes through resolve_weights and loads strictly."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    from hime_cli.sr.registry import create_model

    torch.manual_seed(0)
    model = create_model("hime_test_x4")
    path = models_dir / "hime_test_x4.unit.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    hub.register_weight(hub.entry_from_file(path, "hime_test_x4.unit", scale=4, variant="test", default=True))
    torch.manual_seed(1)
    loaded = create_model("hime_test_x4", pretrained=True)
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_damaged_cache_copy_does_not_block_a_good_bundled_one(
    models_dir: Path, registered: hub.WeightEntry, tmp_path: Path, caplog
) -> None:
    """#11 D13: a damaged cache copy blocked `enhance` although the bundled copy was good."""
    payload = (tmp_path / "build" / registered.file).read_bytes()
    (models_dir / registered.file).write_bytes(payload)
    cached = get_paths().weights_dir / registered.file
    cached.parent.mkdir(parents=True)
    cached.write_bytes(payload[:-1] + bytes([payload[-1] ^ 0xFF]))
    with caplog.at_level(logging.WARNING, logger="hime_cli.hub"):
        res = hub.resolve_weights("tiny_x4.v1")
    assert res.source == "bundled" and res.path == models_dir / registered.file
    assert any("integrity" in r.getMessage() for r in caplog.records)


def test_integrity_hints_name_a_command_that_works_here(
    models_dir: Path, registered: hub.WeightEntry, tmp_path: Path, monkeypatch
) -> None:
    """#11 D13: the hint `hime models download … --force` failed with no hub configured."""
    cached = get_paths().weights_dir / registered.file
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"damaged" * 20)
    with pytest.raises(IntegrityError) as info:  # no bundled copy, no hub
        hub.resolve_weights("tiny_x4.v1")
    assert hub.HUB_REPO_ENV in info.value.hint and "reinstall" in info.value.hint
    (models_dir / registered.file).write_bytes((tmp_path / "build" / registered.file).read_bytes())
    hint = hub.repair_hint(registered, cached)  # e.g. for `hime models verify`
    assert "delete the damaged copy" in hint and "--force" not in hint
    monkeypatch.setenv("HIME_HUB_REPO", "someone/hime")
    assert "hime models download tiny_x4.v1 --force" in hub.repair_hint(registered, cached)


def test_unregistered_explicit_weights_load_with_a_warning(
    registered: hub.WeightEntry, tmp_path: Path, caplog
) -> None:
    """#11 D14: a --weights file matching no registered sha256 loaded with no warning."""
    own = make_weight(tmp_path / "mine" / "finetuned.safetensors", seed=42)
    with caplog.at_level(logging.WARNING, logger="hime_cli.hub"):
        assert hub.resolve_weights(str(own)).entry is None
    assert any("matches no registered weight" in r.getMessage() for r in caplog.records)
    caplog.clear()
    copy = tmp_path / "mine" / "copy.safetensors"
    copy.write_bytes((tmp_path / "build" / registered.file).read_bytes())
    with caplog.at_level(logging.WARNING, logger="hime_cli.hub"):
        hub.resolve_weights(copy)
    assert not caplog.records
