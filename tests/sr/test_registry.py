"""Registry, strict safetensors loading and hub delegation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hime_cli.errors import ModelError
from hime_cli.sr.hime import checkpoint_filter
from hime_cli.sr.registry import create_model, list_models, load_state, register_model, split_model_name


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def test_list_models_has_every_architecture():
    names = list_models()
    for name in [
        "hime_small_x4",
        "hime_small_x8",
        "hime_large_x4",
        "hime_large_x8",
        "hime_test_x4",
        "hime_test_x8",
        "hime_small_fine_x4",
        "hime_small_fine_x8",
        "hime_test_fine_x4",
    ]:
        assert name in names


def test_duplicate_registration_raises():
    def hime_test_x4():  # same name as a registered architecture
        raise AssertionError("never built")

    with pytest.raises(ValueError, match="already registered"):
        register_model(hime_test_x4)


def test_unknown_model_raises_model_error():
    with pytest.raises(ModelError, match="unknown model"):
        create_model("hime_huge_x4")


def test_overrides_and_names():
    model = create_model("hime_test_x4.some_tag", aggregate="max", align="conv")
    assert model.config.aggregate == "max" and model.config.align == "conv" and model.scale == 4
    assert model.name == "hime_test_x4"
    assert split_model_name("hime_small_x4.celeba_wild_v1") == ("hime_small_x4", "celeba_wild_v1")


def test_safetensors_round_trip_with_wrapper_prefixes(tmp_path):
    torch.manual_seed(0)
    source = create_model("hime_test_x4").eval()
    path = tmp_path / "w.safetensors"
    save_file({f"_orig_mod.module.{k}": v for k, v in _state(source).items()}, str(path))
    torch.manual_seed(1)
    loaded = create_model("hime_test_x4", checkpoint_path=path).eval()
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    lr, refs = torch.rand(1, 3, 8, 8), torch.rand(1, 1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(source(lr, refs), loaded(lr, refs))


def test_missing_extra_and_misshaped_keys_fail_loudly(tmp_path):
    model = create_model("hime_test_x4")
    state = _state(model)
    missing = dict(state)
    missing.pop("reconstructor.tail.weight")
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(ModelError, match="1 missing keys"):
        load_state(model, tmp_path / "missing.safetensors")
    extra = dict(state, **{"extra.weight": torch.zeros(1)})
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(ModelError, match="1 unexpected keys"):
        load_state(model, tmp_path / "extra.safetensors")
    misshaped = dict(state, **{"reconstructor.tail.bias": torch.zeros(4)})
    save_file(misshaped, str(tmp_path / "shape.safetensors"))
    with pytest.raises(ModelError, match="do not fit"):
        load_state(model, tmp_path / "shape.safetensors")
    x8 = create_model("hime_test_x8")
    save_file(_state(x8), str(tmp_path / "x8.safetensors"))
    with pytest.raises(ModelError):
        create_model("hime_test_x4", checkpoint_path=tmp_path / "x8.safetensors")


def test_pickles_and_corrupt_files_are_refused(tmp_path):
    model = create_model("hime_test_x4")
    pickle_path = tmp_path / "w.pth"
    pickle_path.write_bytes(b"not loaded")
    with pytest.raises(ModelError, match="only .safetensors"):
        load_state(model, pickle_path)
    corrupt = tmp_path / "w.safetensors"
    corrupt.write_bytes(b"\x00" * 20)
    with pytest.raises(ModelError, match="cannot read"):
        load_state(model, corrupt)


def test_pretrained_loads_the_registered_file():
    """``pretrained=True`` goes through the real hub resolution (offline: the repo's models/)."""
    from safetensors.torch import load_file

    from hime_cli.hub import resolve_weights

    models = Path(__file__).resolve().parents[2] / "models"
    entry = next(w for w in json.loads((models / "registry.json").read_text())["weights"] if w["scale"] == 4)
    resolved = resolve_weights(entry["name"])
    assert (resolved.path.name, resolved.source) == (entry["file"], "bundled")
    model = create_model(entry["name"], pretrained=True)
    expected = load_file(str(models / entry["file"]))
    assert torch.equal(model.reconstructor.tail.weight, expected["reconstructor.tail.weight"])
    assert not torch.equal(
        model.reconstructor.tail.weight, create_model(entry["arch"]).reconstructor.tail.weight
    )


def test_registry_is_a_leaf():
    """The registry imports no architecture (they register themselves; hime_cli.sr imports them)."""
    import ast

    import hime_cli.sr.registry as registry

    tree = ast.parse(Path(registry.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m.startswith("hime_cli.sr")}, imported
    assert "hime_small_x4" in list_models()


def test_checkpoint_filter_strips_prefixes_only_at_the_start():
    state = {"module._orig_mod.a.weight": 1, "b.module.weight": 2}
    assert checkpoint_filter(state) == {"a.weight": 1, "b.module.weight": 2}


def test_nan_weights_are_blamed_on_the_weights(tmp_path):
    """#11 D14: NaN weights failed each photo without blaming the weights."""
    state = _state(create_model("hime_test_x4"))
    key = next(iter(k for k, v in state.items() if v.is_floating_point()))
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, str(tmp_path / "nan.safetensors"))
    with pytest.raises(ModelError, match="NaN") as info:
        create_model("hime_test_x4", checkpoint_path=tmp_path / "nan.safetensors")
    assert key in info.value.message


def test_corrupt_weights_hint_names_commands_that_exist(tmp_path):
    """#11 D13: the hint suggested a `hime models pull` that does not exist."""
    corrupt = tmp_path / "w.safetensors"
    corrupt.write_bytes(b"\x00" * 20)
    with pytest.raises(ModelError) as info:
        load_state(create_model("hime_test_x4"), corrupt)
    assert "pull" not in info.value.hint and "hime models verify" in info.value.hint


def test_architecture_comes_from_the_files_metadata(tmp_path):
    """#11 D14: the architecture was read from the file name, not from the file's metadata."""
    from hime_cli.sr.ensemble import unwrap
    from hime_cli.sr.inference import load_super_resolver

    torch.manual_seed(5)
    source = create_model("hime_test_x4")
    path = tmp_path / "my_finetune.safetensors"  # a name that says nothing
    save_file(_state(source), str(path), metadata={"arch": "hime_test_x4"})
    resolver = load_super_resolver(str(path), 4, "cpu")
    assert type(unwrap(resolver.model)).__name__ == type(source).__name__
    unnamed = tmp_path / "other.safetensors"
    save_file(_state(source), str(unnamed))
    with pytest.raises(ModelError, match="cannot tell the architecture"):
        load_super_resolver(str(unnamed), 4, "cpu")
