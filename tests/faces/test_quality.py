"""The scan's face-quality gate (hime_cli.faces.quality): levels and the evidence behind them."""

from __future__ import annotations

import numpy as np
import pytest

from hime_cli.faces.quality import (
    GOOD,
    MEAN_DLIB_EMBEDDING,
    POOR,
    REJECT,
    assess,
    assess_detection,
    generic_distance,
)


@pytest.mark.parametrize(
    ("score", "sharp", "size", "level"),
    [
        (0.999, 200.0, 100.0, GOOD),
        (0.75, 300.0, 100.0, REJECT),  # a weak detection: hair, cloth, fur (0.70-0.80 in the shared photos)
        (0.999, 11.0, 1076.0, REJECT),  # the blurry black object outlined as an exemplar (sharpness 11)
        (0.83, 171.0, 43.0, POOR),  # the turned Solvay face at 0.83 stays a face
        (0.99, 30.0, 100.0, POOR),  # blurry
        (0.99, 200.0, 20.0, POOR),  # tiny
    ],
)
def test_detection_levels(score: float, sharp: float, size: float, level: str) -> None:
    verdict = assess_detection(score, sharp, size)
    assert verdict.level == level
    assert (verdict.reason is None) == (level == GOOD)


def _at_distance(target: float, seed: int = 0) -> np.ndarray:
    """A vector whose unit-length version lies ``target`` from the average face."""
    v = np.random.default_rng(seed).normal(size=128)
    lo, hi = 0.0, 5.0
    for _ in range(60):  # bisect the step along v
        mid = (lo + hi) / 2
        d = generic_distance((MEAN_DLIB_EMBEDDING + mid * v / np.linalg.norm(v)).astype(np.float32))
        lo, hi = (mid, hi) if d < target else (lo, mid)
    return (MEAN_DLIB_EMBEDDING + lo * v / np.linalg.norm(v)).astype(np.float32)


def test_an_average_looking_embedding_rejects_only_a_weak_detection() -> None:
    near, far = _at_distance(0.35), _at_distance(0.55)
    assert generic_distance(near) == pytest.approx(0.35, abs=1e-3)
    assert generic_distance(near * 1.4) == pytest.approx(0.35, abs=1e-3)  # raw (older) vectors alike
    assert assess(0.90, 200.0, 80.0, near).level == REJECT  # the flowers: 0.85-0.96 at 0.32-0.38
    assert assess(0.999, 200.0, 80.0, near).level == GOOD  # profiles, sunglasses: confident and kept
    assert assess(0.90, 200.0, 80.0, far).level == POOR
    # Other embedders have no reference average: only the detection evidence counts.
    assert generic_distance(np.zeros(512, np.float32), "facenet") is None
    assert assess(0.90, 200.0, 80.0, np.zeros(512, np.float32), "facenet").level == POOR


def test_the_mean_face_is_a_plausible_dlib_embedding() -> None:
    assert MEAN_DLIB_EMBEDDING.shape == (128,)
    assert 0.5 < float(np.linalg.norm(MEAN_DLIB_EMBEDDING)) < 1.0  # a mean of unit vectors
