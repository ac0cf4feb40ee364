"""Small frozen dataclasses passed between the stages (scan → detect → embed → cluster → enhance).

Geometry convention: pixel coordinates in the *oriented* photo (EXIF orientation applied),
x to the right, y down, boxes as (x0, y0, x1, y1) with x1/y1 exclusive in continuous coordinates.
Landmarks are five (x, y) points in MTCNN order: left eye, right eye, nose, left mouth corner,
right mouth corner ("left" = image left).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Box:
    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def size(self) -> float:
        """Face size in pixels: the larger side of the detection box."""
        return max(self.width, self.height)

    def as_list(self) -> list[float]:
        return [self.x0, self.y0, self.x1, self.y1]

    def iou(self, other: Box) -> float:
        """Intersection over union of the two boxes (0 when they do not overlap or are empty)."""
        ix = max(0.0, min(self.x1, other.x1) - max(self.x0, other.x0))
        iy = max(0.0, min(self.y1, other.y1) - max(self.y0, other.y0))
        inter = ix * iy
        union = self.width * self.height + other.width * other.height - inter
        return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class DetectedFace:
    """One face found by the detector in an oriented RGB photo."""

    box: Box
    landmarks: np.ndarray  # (5, 2) float32, oriented-photo pixels
    score: float

    @property
    def size(self) -> float:
        return self.box.size


@dataclass(frozen=True)
class Face:
    """A face as stored in the index."""

    id: int
    photo_id: int
    photo_path: Path
    box: Box
    landmarks: np.ndarray  # (5, 2)
    score: float
    size: float
    sharpness: float
    embedding: np.ndarray | None = None  # (128,) float32
    identity_id: int | None = None
    # The scan's quality gate (faces.quality): "good", "poor" (real but weak: never an exemplar),
    # "reject" (not a face); None for a face indexed before the gate existed.
    quality: str | None = None
    rejected: bool = False  # the user said "not a face" (hime faces reject)

    @property
    def usable(self) -> bool:
        """A face that may guide super-resolution or define a person: not rejected, not poor."""
        return not self.rejected and self.quality in (None, "good")


@dataclass(frozen=True)
class Photo:
    id: int
    path: Path
    width: int  # oriented
    height: int
    size_bytes: int
    mtime_ns: int
    sha256: str | None = None
    format: str | None = None


@dataclass(frozen=True)
class Exemplar:
    """One reference crop for a target face: the aligned HR crop plus where it came from
    (``hime enhance``'s gather_exemplars stage makes them, in an :class:`ExemplarSet`)."""

    crop: np.ndarray  # (H, W, 3) float32 RGB in [0, 1], aligned with the project's crop policy
    face_id: int | None
    photo_path: Path | None
    score: float = 0.0


@dataclass(frozen=True)
class ExemplarSet:
    """The exemplars chosen for one target face (best first), or why there are none."""

    identity_id: int | None
    exemplars: tuple[Exemplar, ...] = field(default_factory=tuple)
    reason: str | None = None  # set when empty: why (the words ``hime enhance``'s summary counts)

    def __len__(self) -> int:
        return len(self.exemplars)


@dataclass(frozen=True)
class LoadedImage:
    """A decoded photo, orientation applied, plus everything needed to write it back faithfully.

    ``rgb`` follows the house convention (float32 RGB in [0, 1], (H, W, 3)); ``alpha`` is kept
    apart so it can be upscaled separately. ``exif`` is the original raw EXIF block (orientation
    tag still as in the file: the writer resets it to 1 because the pixels were rotated).
    """

    path: Path
    rgb: np.ndarray  # (H, W, 3) float32 in [0, 1], oriented
    alpha: np.ndarray | None  # (H, W) float32 in [0, 1], oriented, or None
    format: str  # PIL format name: JPEG, PNG, WEBP, TIFF, HEIF, GIF, ...
    mode: str  # original PIL mode: RGB, L, LA, RGBA, CMYK, I;16, P, ...
    bit_depth: int  # 8 or 16 bits per channel in the original
    orientation: int  # EXIF orientation of the original file (1..8; 1 when absent)
    exif: bytes | None = None
    icc_profile: bytes | None = None
    xmp: bytes | None = None
    n_frames: int = 1  # animated files: only the first frame is used

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    def rgb_uint8(self) -> np.ndarray:
        return (np.clip(self.rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
