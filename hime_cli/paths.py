"""Where hime keeps its files.

``HIME_HOME`` overrides everything (index, cache, weights). Otherwise platformdirs decides:
the index lives in the user data dir, crops and downloaded weights in the user cache dir
(hub downloads go through the Hugging Face cache under ``<cache>/hub`` unless ``HF_HOME`` or
``HF_HUB_CACHE`` is set). Nothing is ever written inside the installed package.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

APP_NAME = "hime"


@dataclass(frozen=True)
class HimePaths:
    home: Path | None
    data_dir: Path
    cache_dir: Path
    index_path: Path
    crops_dir: Path
    weights_dir: Path
    hf_cache_dir: Path
    backups_dir: Path


def _hf_cache(default: Path) -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return default


def get_paths() -> HimePaths:
    """Resolve every location from the environment (read at call time, so tests can patch it)."""
    home_env = os.environ.get("HIME_HOME")
    if home_env:
        home = Path(home_env).expanduser().resolve()
        data_dir = home / "data"
        cache_dir = home / "cache"
        hf_cache = cache_dir / "hub"  # HIME_HOME overrides all, the Hugging Face cache included
    else:
        import platformdirs

        home = None
        data_dir = Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
        cache_dir = Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))
        hf_cache = _hf_cache(cache_dir / "hub")
    return HimePaths(
        home=home,
        data_dir=data_dir,
        cache_dir=cache_dir,
        index_path=data_dir / "index.sqlite3",
        crops_dir=cache_dir / "crops",
        weights_dir=cache_dir / "weights",
        hf_cache_dir=hf_cache,
        backups_dir=data_dir / "backups",
    )
