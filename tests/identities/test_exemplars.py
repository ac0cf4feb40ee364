from __future__ import annotations

from collections.abc import Sequence
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from hime_cli.faces.align import CANONICAL_LANDMARKS, region_size
from hime_cli.identities.exemplars import (
    ExemplarTarget,
    normalised_landmarks,
    pose_distance,
    pose_similarity,
    rank_exemplars,
    ranked_candidates,
)
from hime_cli.types import Box, Face


def landmarks(
    region: float, x: float = 100.0, y: float = 100.0, angle: float = 0.0, yaw: float = 0.0
) -> np.ndarray:
    """Canonical landmarks scaled to a ``region``-pixel crop, rotated in-plane by ``angle``
    radians, placed at (x, y); ``yaw`` shifts the nose sideways (in crop widths) like a head turn."""
    lm = CANONICAL_LANDMARKS.copy()
    lm[2, 0] += yaw
    lm = (lm - 0.5) * region
    c, s = np.cos(angle), np.sin(angle)
    lm = lm @ np.array([[c, s], [-s, c]])
    return (lm + [x, y]).astype(np.float32)


def face(
    fid: int,
    photo: int,
    region: float = 200.0,
    sharp: float = 10.0,
    score: float = 0.99,
    identity: int | None = 1,
    yaw: float = 0.0,
    angle: float = 0.0,
) -> Face:
    lm = landmarks(region, yaw=yaw, angle=angle)
    return Face(
        id=fid,
        photo_id=photo,
        photo_path=Path(f"/photos/{photo}.jpg"),
        box=Box(50, 50, 50 + region, 50 + region),
        landmarks=lm,
        score=score,
        size=region,
        sharpness=sharp,
        identity_id=identity,
    )


def first_exemplars(
    target: ExemplarTarget | None, candidates: Sequence[Face], max_refs: int = 3, min_region: float = 128
) -> list[Face]:
    """The first ``max_refs`` of the one policy's order, as `hime enhance` takes them (before the
    appearance order of its pool)."""
    return list(islice(ranked_candidates(target, candidates, (min_region,)), max_refs))


def quality_order(faces: Sequence[Face], min_region: float = 128) -> list[int]:
    """Ids of an identity's exemplar set, best first: the policy without a target."""
    return [r.face.id for r in rank_exemplars(None, faces, min_region)]


def test_region_size_of_synthetic_landmarks() -> None:
    assert region_size(landmarks(200.0)) == pytest.approx(200.0, rel=1e-6)


def test_pose_distance_ignores_position_scale_and_rotation() -> None:
    a = landmarks(64, x=10, y=300)
    b = landmarks(400, x=500, y=50, angle=0.4)
    assert pose_distance(a, b) == pytest.approx(0.0, abs=1e-6)
    assert pose_similarity(a, b) == pytest.approx(1.0)
    np.testing.assert_allclose(normalised_landmarks(b), CANONICAL_LANDMARKS, atol=1e-6)


def test_pose_distance_grows_with_head_turn() -> None:
    front = landmarks(200)
    d_small = pose_distance(front, landmarks(200, yaw=0.03))
    d_big = pose_distance(front, landmarks(200, yaw=0.12))
    assert 0 < d_small < d_big
    assert pose_similarity(front, landmarks(200, yaw=0.12)) < pose_similarity(front, landmarks(200, yaw=0.03))


def test_never_same_photo_other_identity_or_too_small() -> None:
    target = face(1, photo=10, region=40)
    candidates = [
        face(2, photo=10, region=300, sharp=99),  # same photo as the target
        face(3, photo=11, region=300, sharp=99, identity=2),  # another person
        face(4, photo=12, region=100, sharp=99),  # below the HR size
        face(5, photo=13, region=130, sharp=1),  # eligible
        target,  # the target itself
    ]
    assert [f.id for f in first_exemplars(target, candidates, max_refs=3, min_region=128)] == [5]


def test_ranks_by_pose_then_quality() -> None:
    target = face(1, photo=1, region=40, yaw=0.1)
    candidates = [
        face(2, photo=2, yaw=0.0, sharp=50),  # frontal, sharpest
        face(3, photo=3, yaw=0.1, sharp=20),  # same pose as the target
        face(4, photo=4, yaw=0.1, sharp=5),  # same pose, blurrier
        face(5, photo=5, yaw=-0.1, sharp=10),  # turned the other way
    ]
    chosen = [f.id for f in first_exemplars(target, candidates, max_refs=2)]
    assert chosen == [3, 4]
    ranked = rank_exemplars(target, candidates)
    assert [r.face.id for r in ranked][-1] == 5
    assert all(0.0 <= r.score <= 1.0 for r in ranked)


def test_sharpness_and_resolution_break_equal_poses() -> None:
    target = face(1, photo=1, region=40)
    sharp_small = face(2, photo=2, region=130, sharp=30)
    blurry_big = face(3, photo=3, region=256, sharp=1)
    blurry_small = face(4, photo=4, region=130, sharp=1)
    ranked = [r.face.id for r in rank_exemplars(target, [blurry_small, blurry_big, sharp_small])]
    assert ranked == [2, 3, 4]


def test_one_exemplar_per_photo_and_max_refs() -> None:
    target = face(1, photo=1, region=40)
    candidates = [face(10 + i, photo=2 + i // 2, sharp=float(i)) for i in range(8)]  # 2 faces per photo
    chosen = first_exemplars(target, candidates, max_refs=3)
    assert len(chosen) == 3
    assert len({f.photo_id for f in chosen}) == 3
    assert first_exemplars(target, candidates, max_refs=0) == []


def test_deterministic_ties_break_on_id() -> None:
    target = face(1, photo=1, region=40)
    candidates = [face(fid, photo=fid) for fid in (9, 4, 7)]
    assert [f.id for f in first_exemplars(target, candidates, max_refs=3)] == [4, 7, 9]


def test_explicit_reference_set_without_identity() -> None:
    target = face(1, photo=1, region=40, identity=None)
    refs = [face(2, photo=2, identity=None), face(3, photo=3, identity=5)]
    assert [f.id for f in first_exemplars(target, refs)] == [2]


def test_quality_order_filters_small_and_prefers_sharp() -> None:
    faces = [face(1, 1, region=100, sharp=100), face(2, 2, sharp=5), face(3, 3, sharp=50)]
    assert quality_order(faces, min_region=128) == [3, 2]
    assert quality_order([], 128) == []


def test_pose_similarity_matches_documented_head_turns() -> None:
    """The docstring's calibration: a rigid 3D face turned by 15°, 27° and 45° (orthographic)."""
    model = np.array([[-32, 0, 0], [32, 0, 0], [0, 35, 25], [-24, 65, 5], [24, 65, 5]], dtype=float)

    def turned(degrees: float) -> np.ndarray:
        a = np.radians(degrees)
        rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        return (model @ rot.T)[:, :2]

    front = turned(0)
    assert pose_similarity(front, turned(15)) == pytest.approx(0.77, abs=0.03)
    assert pose_similarity(front, turned(27)) == pytest.approx(np.exp(-1), abs=0.05)
    assert pose_similarity(front, turned(45)) < 0.05


def test_order_by_appearance_prefers_the_crop_that_looks_like_the_lr_face() -> None:
    from hime_cli.identities.exemplars import appearance_vector, order_by_appearance

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:128, 0:128] / 128.0
    face = np.stack([np.sin(6 * xx + 3 * yy)] * 3, -1).astype(np.float32) * 0.4 + 0.5
    other = np.stack([np.sin(9 * yy)] * 3, -1).astype(np.float32) * 0.4 + 0.5
    lr = face[::4, ::4] * 0.7 + 0.1  # darker, lower contrast: correlation ignores both
    noisy = np.clip(face + rng.normal(0, 0.2, face.shape), 0, 1).astype(np.float32)
    assert order_by_appearance(lr, [other, noisy, face]) == [2, 1, 0]
    assert order_by_appearance(lr, []) == []
    flat = np.full((32, 32, 3), 0.5, np.float32)
    assert not appearance_vector(flat, 32).any()  # no NaN for a flat crop
    assert order_by_appearance(lr, [flat, face]) == [1, 0]


def test_never_a_rejected_or_poor_face() -> None:
    from dataclasses import replace

    target = face(1, photo=10, region=40)
    good = face(2, photo=11, region=300, sharp=99)
    poor = replace(face(3, photo=12, region=400, sharp=300), quality="poor")  # e.g. a weak detection
    rejected = replace(face(4, photo=13, region=500, sharp=300), rejected=True)  # "not a face"
    unjudged = face(5, photo=14, region=300, sharp=50)  # indexed before the gate: judged later
    candidates = [good, poor, rejected, unjudged]
    assert [f.id for f in first_exemplars(target, candidates, max_refs=5)] == [2, 5]
    assert quality_order(candidates) == [2, 5]


def test_without_a_target_the_same_policy_less_the_pose() -> None:
    """An identity's exemplar set (sheets, `clusters list`, export) is ranked by the same score and
    rules as `hime enhance`'s choice for a face, less the pose part and the target's own checks."""
    target = face(1, photo=1, region=40)  # frontal, like every candidate: pose is 1 for all
    candidates = [
        face(2, photo=2, region=140, sharp=30, score=0.95),
        face(3, photo=3, region=300, sharp=5, score=0.99),
        face(4, photo=4, region=200, sharp=20, score=0.90),
        face(5, photo=5, region=100, sharp=99),  # too small for either
    ]
    with_target = [r.face.id for r in rank_exemplars(target, candidates)]
    assert with_target == quality_order(candidates) == [2, 4, 3]  # sharpness 0.30 outweighs size 0.15
    assert all(r.pose is None for r in rank_exemplars(None, candidates))
    # the weights without pose are renormalised: scores stay in [0, 1]
    assert all(0.0 <= r.score <= 1.0 for r in rank_exemplars(None, candidates))
    # no target: no identity or photo check (the caller passes one identity's faces) ...
    others = [face(6, photo=1, identity=9), face(7, photo=7, identity=None)]
    assert sorted(quality_order(others)) == [6, 7]
    # ... and one per photo, as enhance takes them
    two_per_photo = [face(10 + i, photo=20 + i // 2, sharp=float(i)) for i in range(6)]
    chosen = list(ranked_candidates(None, two_per_photo))
    assert [f.id for f in chosen] == [15, 13, 11]
