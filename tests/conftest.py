"""Test fixtures shared by every test module.

Every test runs with HIME_HOME and HF_HOME under tmp_path and HF_HUB_OFFLINE=1: no test touches
the user's files or the network. Tests marked ``data`` need ../shared/data and skip without it.
"""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path

import numpy as np
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


class FaceMemo:
    """The real MTCNN detector and dlib embedder, remembering every answer for the session.

    Several data tests look at the same celeba-wild/dev photos (tests/identities/test_dev_clustering.py,
    the real-photo tests of tests/test_pipeline.py): each distinct photo is detected and embedded
    once. The answer is looked up by the exact call (the photo's uint8 pixels, and for embeddings
    the exact boxes), so a test gets the result the models give for that call (they are
    deterministic; a scan worker runs torch on one thread, which may move the last float bits).
    ``detector()`` and ``embedder()`` are picklable: scan workers get copies of what is known so
    far and run the real models for the rest. Only the tests that ask for ``face_memo`` use it.
    """

    def __init__(self) -> None:
        self.detections: dict[tuple, list] = {}
        self.embeddings: dict[tuple, np.ndarray] = {}

    @staticmethod
    def key(rgb: np.ndarray) -> tuple:
        from hime_cli.faces.detect import to_uint8

        image = to_uint8(rgb)
        return (image.shape, hashlib.blake2b(image.data, digest_size=20).digest())

    def detector(self) -> _MemoDetector:
        return _MemoDetector(self)

    def embedder(self) -> _MemoEmbedder:
        return _MemoEmbedder(self)

    def patch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Code that asks for the default detector or the dlib embedder gets these instead."""
        from hime_cli.faces import detect, embed

        _REAL.setdefault("get_detector", detect.get_detector)
        _REAL.setdefault("get_embedder", embed.get_embedder)
        get_detector, get_embedder = _REAL["get_detector"], _REAL["get_embedder"]
        monkeypatch.setattr(
            detect, "get_detector", lambda *a, **k: self.detector() if not (a or k) else get_detector(*a, **k)
        )
        monkeypatch.setattr(
            embed,
            "get_embedder",
            lambda name="dlib": self.embedder() if name == "dlib" else get_embedder(name),
        )


_REAL: dict[str, object] = {}  # the unpatched get_detector and get_embedder (FaceMemo.patch)


def _real(name: str):
    if name not in _REAL:
        from hime_cli.faces import detect, embed

        return getattr(detect if name == "get_detector" else embed, name)
    return _REAL[name]


class _MemoDetector:
    def __init__(self, memo: FaceMemo) -> None:
        self._memo = memo

    def detect(self, rgb: np.ndarray) -> list:
        key = FaceMemo.key(rgb)
        if key not in self._memo.detections:
            self._memo.detections[key] = _real("get_detector")().detect(rgb)
        return copy.deepcopy(self._memo.detections[key])


class _MemoEmbedder:
    name = "dlib"
    dim = 128

    def __init__(self, memo: FaceMemo) -> None:
        self._memo = memo

    def embed(self, rgb: np.ndarray, faces: list) -> np.ndarray:
        key = (*FaceMemo.key(rgb), tuple(tuple(f.box.as_list()) for f in faces))
        if key not in self._memo.embeddings:
            self._memo.embeddings[key] = _real("get_embedder")("dlib").embed(rgb, faces)
        return self._memo.embeddings[key].copy()


@pytest.fixture(scope="session")
def face_memo() -> FaceMemo:
    """One FaceMemo for the whole session (see FaceMemo)."""
    return FaceMemo()
