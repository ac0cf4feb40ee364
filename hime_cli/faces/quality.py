"""Face quality: a sharpness score comparable across face sizes, and the scan's quality gate.

The gate sorts every detection into one of three levels (``docs/library.md``, "Face quality"):

- ``reject``: **not a face** (or too degraded to be anyone): stored so the decision is visible
  and survives re-scans, but never embedded, never clustered, never an exemplar, never enhanced.
- ``poor``: a real face that carries little identity: it joins a person only at a stricter
  distance and is never an exemplar.
- ``good``: everything else.

Evidence, cheapest first: the detector's score and the sharpness of the aligned crop (before
embedding, so a rejected face costs no embedding), then the embedding itself. dlib's network maps
an input with no facial detail (hair, fur, a flower, a blurred object) close to the *average*
face: on ``../shared/data/photos`` the non-faces lay 0.41-0.56 from the mean dlib embedding of
the ``celeba-wild/dev`` faces (``MEAN_DLIB_EMBEDDING``). Close to the mean alone is no proof
(profiles and sunglasses are there too: 0.45 would have rejected 5 real dev faces and 1 LFW
face), so it rejects only together with a detection score below ``WEAK_SCORE``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from hime_cli.faces.align import alignment_matrix, warp_to_crop
from hime_cli.luma import luma
from hime_cli.types import DetectedFace

# Measured on a fixed-size aligned grey crop, so a big face and a small face of equal optical
# quality score alike; a face smaller than this is upsampled to it and scores low, as it should.
SHARPNESS_CROP = 64

GOOD, POOR, REJECT = "good", "poor", "reject"
LEVELS = (GOOD, POOR, REJECT)

# --- reject: not a face. Thresholds from ../shared/data/photos (16 non-faces, 101 real faces),
# checked for false rejections on celeba-wild/dev and LFW (docs/library.md has the counts).
MIN_SCORE = 0.80  # MTCNN probability; Immich's default minimum is 0.7
MIN_SHARPNESS = 15.0  # below this the crop has no facial detail at all
WEAK_SCORE = 0.97  # a detection below this score ...
WEAK_GENERIC_DISTANCE = 0.55  # ... that also embeds this close to the average face
# --- poor: a real face with little identity in it.
POOR_SCORE = 0.95
POOR_SHARPNESS = 40.0
POOR_SIZE = 24.0  # box side in photo pixels


@dataclass(frozen=True)
class Quality:
    """The gate's verdict on one face: a level and, unless good, why."""

    level: str
    reason: str | None = None

    @property
    def rejected(self) -> bool:
        return self.level == REJECT


def sharpness(rgb: np.ndarray, face: DetectedFace | np.ndarray) -> float:
    """Variance of the Laplacian of the aligned 64 px grey face crop (×1000; higher = sharper)."""
    landmarks = face.landmarks if isinstance(face, DetectedFace) else np.asarray(face)
    crop = warp_to_crop(rgb, alignment_matrix(landmarks, SHARPNESS_CROP), SHARPNESS_CROP)
    grey = luma(crop) if crop.ndim == 3 else crop
    # Inner 3/4 of the crop: the face itself, not the background around it.
    m = SHARPNESS_CROP // 8
    lap = cv2.Laplacian(grey[m:-m, m:-m], cv2.CV_32F, ksize=3)
    return float(lap.var() * 1000.0)


def assess_detection(score: float, sharpness_value: float, size: float) -> Quality:
    """The verdict from what is known before embedding (a rejected face is not embedded)."""
    if score < MIN_SCORE:
        return Quality(REJECT, f"weak detection (score {score:.2f} < {MIN_SCORE})")
    if sharpness_value < MIN_SHARPNESS:
        return Quality(REJECT, f"no detail (sharpness {sharpness_value:.0f} < {MIN_SHARPNESS:.0f})")
    if score < POOR_SCORE:
        return Quality(POOR, f"low detection score ({score:.2f})")
    if sharpness_value < POOR_SHARPNESS:
        return Quality(POOR, f"blurry (sharpness {sharpness_value:.0f})")
    if size < POOR_SIZE:
        return Quality(POOR, f"tiny ({size:.0f} px)")
    return Quality(GOOD)


def generic_distance(embedding: np.ndarray, embedder: str = "dlib") -> float | None:
    """Distance of an embedding from the average face of ``embedder`` (None: no reference for it)."""
    if embedder != "dlib" or embedding.shape != MEAN_DLIB_EMBEDDING.shape:
        return None
    return float(np.linalg.norm(np.asarray(embedding, dtype=np.float64) - MEAN_DLIB_EMBEDDING))


def assess(
    score: float,
    sharpness_value: float,
    size: float,
    embedding: np.ndarray | None = None,
    embedder: str = "dlib",
) -> Quality:
    """The full verdict: :func:`assess_detection`, then the embedding's sanity when there is one."""
    verdict = assess_detection(score, sharpness_value, size)
    if verdict.rejected or embedding is None:
        return verdict
    distance = generic_distance(embedding, embedder)
    if distance is None:
        return verdict
    if distance < WEAK_GENERIC_DISTANCE and score < WEAK_SCORE:
        return Quality(
            REJECT, f"weak detection ({score:.2f}) that embeds like an average face (distance {distance:.2f})"
        )
    return verdict


# The mean dlib embedding of the 872 celeba-wild/dev faces (largest face per photo), rounded;
# recomputed by benchmarks/face_quality.py.
# fmt: off
MEAN_DLIB_EMBEDDING = np.array([
    -0.1083, 0.0878, 0.0710, -0.0769, -0.1192, -0.0064, -0.0351, -0.0976, 0.1708, -0.0983,
    0.1811, -0.0375, -0.2462, 0.0141, -0.0480, 0.1488, -0.1484, -0.1516, -0.0843, -0.0650,
    0.0293, 0.0382, 0.0078, 0.0791, -0.1420, -0.3055, -0.0628, -0.0713, 0.0177, -0.0912,
    -0.0023, 0.0616, -0.1856, -0.0127, 0.0302, 0.1106, -0.0415, -0.1032, 0.1719, 0.0060,
    -0.2122, -0.0292, 0.0726, 0.2568, 0.1984, 0.0028, 0.0247, -0.0826, 0.1240, -0.2806,
    0.0485, 0.1446, 0.0776, 0.0760, 0.0806, -0.1791, 0.0271, 0.1354, -0.1688, 0.0580,
    0.0630, -0.0677, -0.0115, -0.0760, 0.2244, 0.1013, -0.1334, -0.1314, 0.1799, -0.1579,
    -0.0519, 0.0897, -0.1144, -0.1848, -0.2596, 0.0234, 0.4001, 0.1613, -0.1586, 0.0403,
    -0.0717, -0.0105, 0.0187, 0.1084, -0.0503, 0.0091, -0.0906, 0.0417, 0.2234, -0.0147,
    -0.0102, 0.2479, 0.0113, -0.0097, 0.0188, 0.0614, -0.1229, -0.0113, -0.1357, -0.0297,
    0.0158, -0.0493, 0.0001, 0.1193, -0.1856, 0.1617, -0.0216, -0.0178, -0.0207, -0.0048,
    -0.0767, -0.0288, 0.1573, -0.2621, 0.1663, 0.1598, 0.0470, 0.1382, 0.0572, 0.0675,
    0.0307, -0.0395, -0.1436, -0.0724, 0.0442, -0.0560, 0.0266, 0.0459,
], dtype=np.float64)
# fmt: on
