"""Choosing exemplars: the person's own good face crops that guide the super-resolution of a face.

One policy, used everywhere an exemplar is chosen: :func:`rank_exemplars` (eligibility and the
score) and :func:`ranked_candidates` (best first, one per photo, size tiers). ``hime enhance``
ranks for a target face (``stages.gather_exemplars``); the review sheets, ``hime clusters list``
and ``export`` rank without one (target ``None``: the same rules less the pose part and the
identity and photo checks, :func:`exemplar_faces_for_identity`).

For a target face of identity X, a candidate is **eligible** when it

- belongs to X (``identity_id`` equal to the target's; ``None == None`` lets a caller pass an
  explicit reference set, e.g. faces found in a ``--refs`` folder),
- comes from another photo than the target (never a copy of the blurry face itself),
- is usable (``Face.usable``): not rejected as "not a face", not poor (blurry, weak detection),
- has a native crop resolution ``region_size(landmarks)`` of at least ``min_region`` photo
  pixels (the HR crop size: a reference smaller than the output would have to be upsampled and
  brings no detail).

Eligible candidates are ranked by a score in [0, 1], a weighted sum of four parts, each in [0, 1]:

- ``pose`` (weight 0.40): ``exp(-(d / 0.025)^2)`` where ``d`` is the RMS distance between the
  target's and the candidate's five landmarks after each is mapped by its own alignment
  (similarity) transform into the unit crop: what is left is pose and expression (yaw moves the
  nose sideways, pitch moves it up and down), not position, size or in-plane rotation.
  On a rigid 3D face model (orthographic), a head turn of 15° gives d = 0.013 (score 0.77),
  27° gives d = 0.025 (score ``1/e``), 45° gives d = 0.048 (score 0.02).
- ``sharpness`` (0.30): the candidate's percentile rank of ``faces.quality.sharpness`` among the
  eligible candidates (ranks, not raw values: the scale of a Laplacian variance varies with
  lighting and content).
- ``resolution`` (0.15): ``min(region / min_region, 2) - 1``: more pixels help up to twice the
  HR size; beyond that the crop is downsampled anyway.
- ``detection`` (0.15): the detector's confidence (a proxy for an unoccluded, well-lit face).

Ties break on the face id, so the choice is deterministic.

**Appearance** (at SR time, :func:`order_by_appearance`): the best-scored candidates (a pool of
``APPEARANCE_POOL``) are cropped with the shared alignment policy and the ``max_refs`` whose grey
crop, area-resampled to the LR size, correlates best with the LR face (zero-mean, unit-norm) are
used. This is what the landmarks cannot see (expression, lighting direction, glasses, hair over
the forehead) and what decides whether the network can transfer detail: on celeba-wild dev, a
larger pool picks better references (120 faces, a mid-training checkpoint: +0.02 dB over no
references from a pool of 3, +0.13 from 8, +0.17 from 16, +0.21 from all of the person's ~20
photos; docs/training.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from hime_cli.faces.align import TRAIN_HR_SIZE, alignment_matrix, region_size
from hime_cli.luma import luma
from hime_cli.types import Face

if TYPE_CHECKING:
    from hime_cli.library.index import LibraryIndex

APPEARANCE_POOL = 32  # best-scored candidates cropped and compared with the LR face per target
DEFAULT_MIN_REGION = float(TRAIN_HR_SIZE)  # the HR crop size of the released models
POSE_SIGMA = 0.025


@dataclass(frozen=True)
class ExemplarWeights:
    pose: float = 0.40
    sharpness: float = 0.30
    resolution: float = 0.15
    detection: float = 0.15


@dataclass(frozen=True)
class RankedExemplar:
    """A candidate with its score and the parts it is made of (for logs and contact sheets)."""

    face: Face
    score: float
    pose: float | None  # None: ranked without a target
    sharpness: float
    resolution: float
    detection: float
    region: float


def normalised_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """The five landmarks in unit-crop coordinates (their own alignment transform applied)."""
    lm = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    m = alignment_matrix(lm, 1)
    return lm @ m[:, :2].T + m[:, 2]


def pose_distance(a: np.ndarray, b: np.ndarray) -> float:
    """RMS distance between two faces' normalised landmarks (0 = same pose and expression)."""
    diff = normalised_landmarks(a) - normalised_landmarks(b)
    return float(np.sqrt((diff**2).sum(axis=1).mean()))


def pose_similarity(a: np.ndarray, b: np.ndarray, sigma: float = POSE_SIGMA) -> float:
    """``exp(-(d / sigma)^2)`` of :func:`pose_distance`: 1 for the same pose, towards 0 apart."""
    return float(np.exp(-((pose_distance(a, b) / sigma) ** 2)))


class ExemplarTarget(Protocol):
    """What ranking needs of a target face: an indexed :class:`Face`, or the pipeline's
    ``TargetFace`` for one the index may not hold (``id``/``photo_id`` None: it excludes no
    candidate; no fake ids)."""

    @property
    def id(self) -> int | None: ...
    @property
    def photo_id(self) -> int | None: ...
    @property
    def identity_id(self) -> int | None: ...
    @property
    def landmarks(self) -> np.ndarray: ...


def _percentile_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks scaled to [0, 1] (ties share their average rank); a single value ranks 1."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 1:
        return np.ones(1)
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v), dtype=np.float64)
    for value in np.unique(v):  # average the ranks of ties
        same = v == value
        ranks[same] = ranks[same].mean()
    return ranks / (len(v) - 1)


def is_eligible(target: ExemplarTarget | None, candidate: Face, min_region: float) -> bool:
    """Usable, at least ``min_region`` native pixels and, for a target, same identity and another
    photo."""
    if target is None:
        return candidate.usable and region_size(candidate.landmarks) >= min_region
    return (
        candidate.id != target.id
        and candidate.usable  # never a rejected face, never a poor one (blurry, weak detection)
        and candidate.photo_id != target.photo_id
        and candidate.identity_id == target.identity_id
        and region_size(candidate.landmarks) >= min_region
    )


def rank_exemplars(
    target: ExemplarTarget | None,
    candidates: Sequence[Face],
    min_region: float = DEFAULT_MIN_REGION,
    weights: ExemplarWeights | None = None,
) -> list[RankedExemplar]:
    """Every eligible candidate with its score, best first (see the module docstring).

    Without a target (``None``: an identity's exemplar set, not chosen for one face) the score has
    no pose part and the other three weights are renormalised.
    """
    w = weights or ExemplarWeights()
    pose_weight = w.pose if target is not None else 0.0
    eligible = [c for c in candidates if is_eligible(target, c, min_region)]
    if not eligible:
        return []
    sharp = _percentile_ranks([c.sharpness for c in eligible])
    ranked = []
    for face, sharp_part in zip(eligible, sharp, strict=True):
        region = region_size(face.landmarks)
        pose = pose_similarity(target.landmarks, face.landmarks) if target is not None else None
        resolution = min(region / min_region, 2.0) - 1.0 if min_region > 0 else 1.0
        detection = float(np.clip(face.score, 0.0, 1.0))
        score = (
            pose_weight * (pose or 0.0)
            + w.sharpness * float(sharp_part)
            + w.resolution * resolution
            + w.detection * detection
        ) / (pose_weight + w.sharpness + w.resolution + w.detection)
        ranked.append(RankedExemplar(face, score, pose, float(sharp_part), resolution, detection, region))
    ranked.sort(key=lambda r: (-r.score, r.face.id))
    return ranked


def ranked_candidates(
    target: ExemplarTarget | None,
    candidates: Sequence[Face],
    tiers: Sequence[float] = (DEFAULT_MIN_REGION,),
    weights: ExemplarWeights | None = None,
) -> Iterator[Face]:
    """The exemplar policy: eligible candidates best first, at most one per photo; those with at
    least ``tiers[0]`` native pixels, then (to fill a quota) those with at least the next tier.

    Lazy: a caller that crops each candidate stops as soon as it has enough.
    """
    used_photos: set[int] = set()
    seen: set[int] = set()
    for min_region in tiers:
        for ranked in rank_exemplars(target, candidates, min_region, weights):
            cand = ranked.face
            if cand.id in seen or cand.photo_id in used_photos:  # a mirror, a print: one per photo
                continue
            seen.add(cand.id)
            used_photos.add(cand.photo_id)
            yield cand


def exemplar_faces_for_identity(
    index: LibraryIndex,
    identity_id: int,
    hr_size: float = DEFAULT_MIN_REGION,
    *,
    one_per_photo: bool = False,
) -> list[Face]:
    """The identity's usable exemplar set, best first: its faces with a native crop of at least
    ``hr_size`` pixels, ranked without a target (:func:`rank_exemplars`); ``one_per_photo``: the
    best face of each photo only (:func:`ranked_candidates`). A merged-away id resolves to the
    identity it went into. ``hime clusters list`` shows the count, the sheets outline them,
    ``export`` writes them (one per photo)."""
    from hime_cli.identities.store import resolve_identity

    live = resolve_identity(index, identity_id)
    faces = list(index.iter_faces(with_embeddings=False, identity_id=live))
    if one_per_photo:
        return list(ranked_candidates(None, faces, (hr_size,)))
    return [ranked.face for ranked in rank_exemplars(None, faces, hr_size)]


def appearance_vector(image: np.ndarray, size: int) -> np.ndarray:
    """A face crop (H, W, 3) or (H, W) in any range → grey, area-resampled to ``size`` px, zero-mean, unit-norm."""
    import cv2

    grey = np.asarray(image, dtype=np.float32)
    if grey.ndim == 3:
        grey = luma(grey)
    if grey.shape[:2] != (size, size):
        grey = cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA)
    v = grey.ravel() - grey.mean()
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 1e-8 else np.zeros_like(v)


def order_by_appearance(lr: np.ndarray, crops: Sequence[np.ndarray]) -> list[int]:
    """Indices of ``crops`` (aligned HR face crops) best first by correlation with the aligned LR face ``lr``.

    Ties keep the given order (the caller's score ranking), so the choice is deterministic.
    """
    if not crops:
        return []
    size = int(lr.shape[0])
    target = appearance_vector(lr, size)
    scores = [float(appearance_vector(c, size) @ target) for c in crops]
    return sorted(range(len(crops)), key=lambda i: (-scores[i], i))
