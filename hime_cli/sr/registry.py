"""Model registry (learn from timm): an explicit dict filled by explicit registration.

Architectures register a constructor with :func:`register_model`; weights are addressed as
``arch.tag`` (e.g. ``hime_small_x4.celeba_wild_v1``) and resolved by :mod:`hime_cli.hub`.
Weights are loaded with ``safetensors`` and ``strict=True``; pickles are never unpickled.

This module is a leaf: it imports no architecture. Each architecture module registers itself
when imported, and ``hime_cli/sr/__init__.py`` is the one place that imports them all, so any
``from hime_cli.sr.registry import create_model`` sees every architecture.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from hime_cli.errors import ModelError

__all__ = ["create_model", "list_models", "load_state", "register_model", "split_model_name"]

ModelConstructor = Callable[..., nn.Module]
KeyFilter = Callable[[dict], dict]

_MODELS: dict[str, ModelConstructor] = {}
_FILTERS: dict[str, KeyFilter] = {}


def register_model(fn: ModelConstructor | None = None, *, checkpoint_filter: KeyFilter | None = None):
    """Decorator registering an architecture constructor under its function name; duplicates raise."""

    def wrap(constructor: ModelConstructor) -> ModelConstructor:
        name = constructor.__name__
        if name in _MODELS:
            raise ValueError(f"model architecture {name!r} is already registered")
        _MODELS[name] = constructor
        if checkpoint_filter is not None:
            _FILTERS[name] = checkpoint_filter
        return constructor

    return wrap(fn) if fn is not None else wrap


def list_models() -> list[str]:
    """Names of every registered architecture, sorted."""
    return sorted(_MODELS)


def split_model_name(name: str) -> tuple[str, str | None]:
    """``"hime_small_x4.celeba_wild_v1"`` -> (``"hime_small_x4"``, ``"celeba_wild_v1"``)."""
    arch, _, tag = name.partition(".")
    return arch, tag or None


def load_state(
    model: nn.Module,
    path: str | Path,
    checkpoint_filter: KeyFilter | None = None,
    allow_missing: tuple[str, ...] = (),
) -> nn.Module:
    """Load a ``.safetensors`` state dict into ``model`` strictly; key mismatches raise ModelError.

    ``allow_missing``: key prefixes the file may lack (a fine-tune that adds a zero-initialised
    branch to released weights, e.g. ``("fine.",)``); those parameters keep their init.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ModelError(
            f"refusing to load {path.name}: only .safetensors weights are supported",
            hint="convert the checkpoint to safetensors; pickled checkpoints are never loaded",
        )
    try:
        state = load_file(str(path), device="cpu")
    except (OSError, SafetensorError) as exc:
        raise ModelError(
            f"cannot read weights {path}: {exc}",
            hint="check the file; `hime models verify` checks the registered copies, "
            "`hime models download NAME --force` fetches one again",
        ) from exc
    if checkpoint_filter is not None:
        state = checkpoint_filter(state)
    broken = [
        key for key, tensor in state.items() if tensor.is_floating_point() and not tensor.isfinite().all()
    ]
    if broken:  # would turn every face into NaN and fail each photo without saying why
        raise ModelError(
            f"weights {path.name} are damaged: {len(broken)} tensors hold NaN or infinite values "
            f"({', '.join(broken[:3])}{', …' if len(broken) > 3 else ''})",
            hint="use another weight file (a training run that diverged writes such weights)",
        )
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    kept = {key for key in missing if key.startswith(allow_missing)} if allow_missing else set()
    missing = [key for key in missing if key not in kept]
    if missing or unexpected:
        raise ModelError(
            f"weights {path.name} do not match {type(model).__name__}: "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}",
            hint="check that the weight file belongs to this architecture (name and scale)",
        )
    try:
        if kept:
            state = {**{key: value for key, value in model.state_dict().items() if key in kept}, **state}
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # shape mismatches
        raise ModelError(f"weights {path.name} do not fit the architecture: {exc}") from exc
    return model


def create_model(
    name: str,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
    allow_missing: tuple[str, ...] = (),
    **overrides,
) -> nn.Module:
    """Build a registered architecture; ``name`` may carry a weight tag (``arch.tag``).

    Weights: ``checkpoint_path`` if given, else ``hime_cli.hub.resolve_weights(name)`` when
    ``pretrained``; otherwise random init. ``overrides`` replace fields of the architecture config;
    ``allow_missing`` as in :func:`load_state`.
    """
    arch, _ = split_model_name(name)
    if arch not in _MODELS:
        raise ModelError(f"unknown model {arch!r}", hint=f"choose one of: {', '.join(list_models())}")
    model = _MODELS[arch](**overrides)
    if checkpoint_path is None and pretrained:
        from hime_cli.hub import resolve_weights  # lazy: the hub pulls in huggingface_hub

        checkpoint_path = resolve_weights(name)
    if checkpoint_path is not None:
        load_state(model, checkpoint_path, _FILTERS.get(arch), allow_missing)
    return model
