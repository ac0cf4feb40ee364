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
face: on ``../shared/data/photos`` the 19 non-faces lay 0.27-0.38 from the mean (unit-length)
dlib embedding of the ``celeba-wild/dev`` faces (``MEAN_DLIB_EMBEDDING``), the turned Solvay
face at 0.83 at 0.45. Close to the mean alone is no proof (confident, real faces lie as close as
0.34: profiles, sunglasses, a plain frontal face), so it rejects only together with a detection
score below ``WEAK_SCORE``; the cut ``WEAK_GENERIC_DISTANCE`` sits midway between the farthest
non-face and that Solvay face.
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
WEAK_GENERIC_DISTANCE = 0.42  # ... that also embeds this close to the average face (unit vectors)
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
        return Quality(REJECT, f"weak detection (score {score:.3f} < {MIN_SCORE})")
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
    vector = np.asarray(embedding, dtype=np.float64)
    norm = float(np.linalg.norm(vector))
    if norm == 0:
        return 0.0
    # Unit length, as faces.embed stores dlib vectors (older indexes hold raw ones).
    return float(np.linalg.norm(vector / norm - MEAN_DLIB_EMBEDDING))


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


# The mean of the 872 celeba-wild/dev faces' dlib embeddings (largest face per photo; flip-averaged,
# unit length, as faces.embed stores them), rounded; benchmarks/face_features.py caches the vectors.
# fmt: off
MEAN_DLIB_EMBEDDING = np.array([
    -0.0726, 0.0588, 0.0477, -0.0512, -0.0798, -0.0051, -0.0232, -0.0659, 0.1145, -0.0661,
    0.1226, -0.0254, -0.1653, 0.0085, -0.0319, 0.1002, -0.1000, -0.1017, -0.0576, -0.0438,
    0.0193, 0.0253, 0.0057, 0.0530, -0.0956, -0.2059, -0.0426, -0.0480, 0.0125, -0.0614,
    -0.0020, 0.0419, -0.1253, -0.0089, 0.0202, 0.0738, -0.0278, -0.0688, 0.1161, 0.0039,
    -0.1430, -0.0188, 0.0485, 0.1728, 0.1334, 0.0019, 0.0166, -0.0556, 0.0835, -0.1883,
    0.0322, 0.0971, 0.0522, 0.0510, 0.0542, -0.1201, 0.0180, 0.0907, -0.1139, 0.0382,
    0.0422, -0.0453, -0.0083, -0.0514, 0.1505, 0.0685, -0.0895, -0.0890, 0.1210, -0.1065,
    -0.0345, 0.0609, -0.0765, -0.1237, -0.1751, 0.0152, 0.2696, 0.1080, -0.1070, 0.0270,
    -0.0489, -0.0076, 0.0128, 0.0717, -0.0344, 0.0069, -0.0611, 0.0282, 0.1503, -0.0098,
    -0.0068, 0.1664, 0.0078, -0.0060, 0.0131, 0.0412, -0.0827, -0.0078, -0.0914, -0.0196,
    0.0107, -0.0336, 0.0001, 0.0798, -0.1249, 0.1095, -0.0142, -0.0117, -0.0140, -0.0024,
    -0.0517, -0.0190, 0.1054, -0.1770, 0.1122, 0.1073, 0.0309, 0.0926, 0.0384, 0.0454,
    0.0192, -0.0264, -0.0968, -0.0493, 0.0300, -0.0378, 0.0185, 0.0307,
], dtype=np.float64)
# fmt: on
