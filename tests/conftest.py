"""Test fixtures shared by every test module.

Every test runs with HIME_HOME and HF_HOME under tmp_path and HF_HUB_OFFLINE=1: no test touches
the user's files or the network. Tests marked ``data`` need ../shared/data and skip without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HIME_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

# Set before anything imports huggingface_hub (it reads the variable at import time).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HIME_NO_PROGRESS", "1")


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIME_HOME", str(tmp_path / "hime_home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HIME_HUB_REPO", raising=False)
    monkeypatch.delenv("HIME_DEBUG", raising=False)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data not found at {SHARED_DATA}")
    return SHARED_DATA


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"needs ../shared/data ({SHARED_DATA} is absent)")
    for item in items:
        if "data" in item.keywords:
            item.add_marker(skip)
