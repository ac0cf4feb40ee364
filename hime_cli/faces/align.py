"""The one crop/alignment policy shared by training, evaluation and ``hime enhance``.

A face crop is the square region of the photo that a similarity transform (rotation, uniform
scale, translation) maps onto a canonical template of the five MTCNN landmarks. Training crops
HR faces with it, evaluation measures on it, and enhance crops the LR face with it and pastes the
super-resolved face back through its inverse, so the network always sees faces framed the same
way.

The SR crop of ``hime enhance`` (:func:`face_crop`: the canonical square, snapped to the pixel grid
when the face is upright enough) and its inverse for the paste-back (:func:`upscaled_crop_matrix`,
:func:`invert_affine`) are here too: one module owns every photo ↔ crop transform.

Template (unit square, x right, y down), measured on celeba-wild dev detections: MTCNN boxes are
about 2.3 inter-ocular distances wide and 3.0 tall, eyes at 40 % and the mouth at 75 % of the box
height. The crop side is 3.2 inter-ocular distances, about 1.07 × the box height, so the whole face
(brows to chin) is inside with a thin margin of hair, ears and background.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from hime_cli.faces import TRAIN_HR_SIZE  # re-exported: the HR face crop side of the released models

# (x, y) in [0, 1] crop coordinates: left eye, right eye, nose, left mouth, right mouth.
CANONICAL_LANDMARKS = np.array(
    [
        [0.34375, 0.400],
        [0.65625, 0.400],
        [0.50000, 0.567],
        [0.37000, 0.7375],
        [0.63000, 0.7375],
    ],
    dtype=np.float64,
)

# Shrinking by more than this is antialiased (area-averaged) before the warp.
_ANTIALIAS_ABOVE = 1.25


def _similarity_lstsq(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (2, 3) mapping src points to dst (Umeyama, no reflection)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s_c, d_c = src - mu_s, dst - mu_d
    var_s = (s_c**2).sum() / len(src)
    cov = d_c.T @ s_c / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1, 1] = -1.0
    rot = u @ d @ vt
    scale = float(np.trace(np.diag(sig) @ d) / max(var_s, 1e-12))
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def alignment_matrix(landmarks: np.ndarray, crop_size: int) -> np.ndarray:
    """Photo → crop affine (2, 3) placing ``landmarks`` (5, 2) on the template of a crop_size crop."""
    lm = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    return _similarity_lstsq(lm, CANONICAL_LANDMARKS * float(crop_size))


def affine_scale(matrix: np.ndarray) -> float:
    """Uniform scale factor of a similarity transform."""
    return float(np.sqrt(abs(np.linalg.det(np.asarray(matrix, dtype=np.float64)[:, :2]))))


def region_size(landmarks: np.ndarray) -> float:
    """Side, in photo pixels, of the canonical crop region: the face's native crop resolution."""
    return 1.0 / affine_scale(alignment_matrix(landmarks, 1))


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) affine transform."""
    m = np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])
    return np.linalg.inv(m)[:2]


def scale_affine(matrix: np.ndarray, s: float) -> np.ndarray:
    """The same crop taken from the photo resized by ``s`` (photo coordinates multiplied by s)."""
    m = np.asarray(matrix, dtype=np.float64).copy()
    m[:, :2] /= s
    return m


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """outer ∘ inner for (2, 3) affines."""
    a = np.vstack([np.asarray(outer, dtype=np.float64), [0, 0, 1]])
    b = np.vstack([np.asarray(inner, dtype=np.float64), [0, 0, 1]])
    return (a @ b)[:2]


def _pixel_centre_matrix(matrix: np.ndarray) -> np.ndarray:
    """Continuous-coordinate affine → the pixel-index affine cv2 expects (pixel centres at +0.5)."""
    shift_in = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    shift_out = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
    m = np.vstack([np.asarray(matrix, dtype=np.float64), [0, 0, 1]])
    return (shift_out @ m @ shift_in)[:2]


def warp_image(
    image: np.ndarray,
    matrix: np.ndarray,
    out_size: tuple[int, int],
    border: int = cv2.BORDER_REPLICATE,
    interpolation: int = cv2.INTER_CUBIC,
) -> np.ndarray:
    """Warp ``image`` (H, W[, C]) by a continuous-coordinate affine into (out_h, out_w) pixels.

    Antialiased: when the transform shrinks by more than 1.25×, the source region is first
    area-averaged to about the output scale, so small crops of big faces don't alias.
    """
    out_h, out_w = out_size
    m = np.asarray(matrix, dtype=np.float64)
    shrink = 1.0 / max(affine_scale(m), 1e-12)
    src = image
    if shrink > _ANTIALIAS_ABOVE:
        # Only the part of the photo the output needs, plus a margin for the cubic kernel.
        inv = invert_affine(m)
        corners = np.array([[0, 0], [out_w, 0], [0, out_h], [out_w, out_h]], dtype=np.float64)
        pts = corners @ inv[:, :2].T + inv[:, 2]
        pad = 4 * shrink
        x0 = int(max(0, np.floor(pts[:, 0].min() - pad)))
        y0 = int(max(0, np.floor(pts[:, 1].min() - pad)))
        x1 = int(min(image.shape[1], np.ceil(pts[:, 0].max() + pad)))
        y1 = int(min(image.shape[0], np.ceil(pts[:, 1].max() + pad)))
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            roi = image[y0:y1, x0:x1]
            new_w = max(1, int(round((x1 - x0) / shrink)))
            new_h = max(1, int(round((y1 - y0) / shrink)))
            small = cv2.resize(roi, (new_w, new_h), interpolation=cv2.INTER_AREA)
            sx, sy = new_w / (x1 - x0), new_h / (y1 - y0)
            to_small = np.array([[sx, 0.0, -x0 * sx], [0.0, sy, -y0 * sy]])
            m = compose_affine(m, invert_affine(to_small))
            src = small
    return cv2.warpAffine(
        src,
        _pixel_centre_matrix(m),
        (out_w, out_h),
        flags=interpolation,
        borderMode=border,
    )


def warp_to_crop(rgb: np.ndarray, matrix: np.ndarray, crop_size: int) -> np.ndarray:
    """Aligned square face crop (crop_size, crop_size, C) as float32 in [0, 1]."""
    image = rgb.astype(np.float32) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float32, copy=False)
    crop = warp_image(image, matrix, (crop_size, crop_size))
    return np.clip(crop, 0.0, 1.0)


def crop_face(rgb: np.ndarray, landmarks: np.ndarray, crop_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Convenience: (aligned crop, photo→crop matrix) for one face."""
    m = alignment_matrix(landmarks, crop_size)
    return warp_to_crop(rgb, m, crop_size), m


# ---------------------------------------------------------------- the SR crop of hime enhance


# A face region of at least this share of the training LR side (20 of 32 px for a ×4 network) is
# cropped at its own size; a smaller one is enlarged to the training side. Measured with the ×4
# default on dev photos shrunk so the face box is t px (12 faces per size, gain over Lanczos ×4,
# JPEG q95; docs/enhance.md "Small faces: the SR crop size"): t = 20–28 (regions ~22–31 px) gain 0.14–0.56 dB more
# at their own size, t = 16 (regions ~18 px) 0.57 dB less.
NATIVE_MIN_FRACTION = 0.625


def native_min_size(model_scale: int, train_hr: int = TRAIN_HR_SIZE) -> int:
    """The smallest face region (px) cropped at its own size: ``ceil(0.625 · train_hr / model_scale)``."""
    return int(math.ceil(train_hr // model_scale * NATIVE_MIN_FRACTION - 1e-6))


def own_crop_size(region: float) -> int:
    """The crop side of a face cropped at its own size: ``ceil(region)``."""
    return int(math.ceil(region - 1e-6))


def lr_crop_size(region: float, model_scale: int, train_hr: int = TRAIN_HR_SIZE) -> int:
    """LR crop side ``L``: ``ceil(region)`` from :func:`native_min_size` up, else the training side
    ``train_hr / model_scale`` (the small face enlarged to it)."""
    native = own_crop_size(region)
    return native if native >= native_min_size(model_scale, train_hr) else train_hr // model_scale


# A face rolled by at most this much is cropped axis-aligned (the network trains with ±6° jitter).
MAX_UNROTATED_DEG = 6.0


def face_crop(
    landmarks: np.ndarray, model_scale: int, train_hr: int = TRAIN_HR_SIZE
) -> tuple[np.ndarray, int]:
    """(photo → LR crop affine (2, 3), L) for a face: the crop policy of ``faces.align``, resampling-free when it can be.

    ``L = lr_crop_size(region_size(landmarks))``. When the face is cropped at its own size
    (``L = ceil(region)``, from :func:`native_min_size` up) and rolled
    by at most ``MAX_UNROTATED_DEG``, the crop is the canonical region's ``L × L`` square snapped to
    the photo's pixel grid (no rotation, scale 1, integer offset): no interpolation blurs the input,
    and the SR crop maps back onto the upscaled photo's grid exactly. The deviation from the
    canonical crop (≤ 6° of roll, ≤ 0.5 px of shift, < 1/L of scale) is within the framing jitter
    the network is trained with. Measured on celeba-wild dev faces of 128-180 px downscaled ×4
    (7 faces, ×4, PSNR of the SR crop vs the original): resampled crop 27.66 dB (Lanczos 26.77),
    grid-snapped 28.59 dB (Lanczos 27.17). Smaller or more rolled faces use the full similarity.
    """
    region = region_size(landmarks)
    size = lr_crop_size(region, model_scale, train_hr)
    unit = alignment_matrix(landmarks, 1)
    roll = math.degrees(math.atan2(unit[1, 0], unit[0, 0]))
    if size == own_crop_size(region) and abs(roll) <= MAX_UNROTATED_DEG:
        inverse = np.linalg.inv(np.vstack([unit, [0.0, 0.0, 1.0]]))
        cx, cy, _ = inverse @ np.array([0.5, 0.5, 1.0])
        x0, y0 = int(round(cx - size / 2)), int(round(cy - size / 2))
        return np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0]]), size
    return alignment_matrix(landmarks, size), size


def upscaled_crop_matrix(matrix: np.ndarray, scale: int) -> np.ndarray:
    """The same crop ``scale`` times larger, from the photo upscaled ``scale`` times: ``[A | s·t]``."""
    out = np.asarray(matrix, dtype=np.float64).copy()
    out[:, 2] *= scale
    return out


def crop_image(rgb: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """``size``² crop through ``matrix``: an exact slice on the pixel grid, else a Lanczos warp."""
    m = np.asarray(matrix, dtype=np.float64)
    if np.allclose(m[:, :2], np.eye(2)) and np.allclose(m[:, 2], np.round(m[:, 2])):
        x0, y0 = -int(round(m[0, 2])), -int(round(m[1, 2]))
        h, w = rgb.shape[:2]
        if 0 <= x0 and 0 <= y0 and x0 + size <= w and y0 + size <= h:
            return np.clip(
                np.ascontiguousarray(rgb[y0 : y0 + size, x0 : x0 + size], dtype=np.float32), 0.0, 1.0
            )
    image = rgb.astype(np.float32) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float32, copy=False)
    return np.clip(warp_image(image, m, (size, size), interpolation=cv2.INTER_LANCZOS4), 0.0, 1.0)


def resize_crop(crop: np.ndarray, size: int) -> np.ndarray:
    """Square crop → ``size`` px: area-averaged when shrinking, bicubic when growing."""
    if crop.shape[0] == size:
        return crop
    interp = cv2.INTER_AREA if size < crop.shape[0] else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(crop, dtype=np.float32), (size, size), interpolation=interp)
