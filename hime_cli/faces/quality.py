"""Face quality: a sharpness score comparable across face sizes."""

from __future__ import annotations

import cv2
import numpy as np

from hime_cli.faces.align import alignment_matrix, warp_to_crop
from hime_cli.luma import luma
from hime_cli.types import DetectedFace

# Measured on a fixed-size aligned grey crop, so a big face and a small face of equal optical
# quality score alike; a face smaller than this is upsampled to it and scores low, as it should.
SHARPNESS_CROP = 64


def sharpness(rgb: np.ndarray, face: DetectedFace | np.ndarray) -> float:
    """Variance of the Laplacian of the aligned 64 px grey face crop (×1000; higher = sharper)."""
    landmarks = face.landmarks if isinstance(face, DetectedFace) else np.asarray(face)
    crop = warp_to_crop(rgb, alignment_matrix(landmarks, SHARPNESS_CROP), SHARPNESS_CROP)
    grey = luma(crop) if crop.ndim == 3 else crop
    # Inner 3/4 of the crop: the face itself, not the background around it.
    m = SHARPNESS_CROP // 8
    lap = cv2.Laplacian(grey[m:-m, m:-m], cv2.CV_32F, ksize=3)
    return float(lap.var() * 1000.0)
