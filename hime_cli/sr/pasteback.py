"""Seamless paste-back of super-resolved face crops into the upscaled photo.

The SR crop lives in crop coordinates given by ``M = alignment_matrix(landmarks * s, crop_size)``
(upscaled photo → crop, the project's one crop policy). Pasting it back is three steps:

1. **Colour match**: the network may shift colour or brightness a little, and a square with a
   different tint is the first thing a person notices. The crop keeps its own high frequencies
   (the detail the network added) but takes its low frequencies from the same region of the
   Lanczos-upscaled photo: ``sr + blur(photo_crop) - blur(sr)``. The blur's sigma is measured in
   *input photo* pixels (3 by default), so only frequencies the low-resolution input knew well
   (features a few input pixels wide and larger) are replaced.
2. **Feathered mask**: 1 in the middle of the crop, falling smoothly (a raised-cosine ramp) to 0
   over the outer ``feather`` fraction of each side, so no edge of the square survives.
3. **Inverse warp**: crop and mask are warped back through ``M⁻¹`` into the bounding box of the
   face in the upscaled photo and alpha-blended there; nothing outside that box is touched.

:func:`render_upscaled` does all of it for a whole photo in bounded memory: the Lanczos background
in strips of output rows, each group of overlapping faces in a window of its own; every block is
handed to a sink (which turns it into the output's 8-bit pixels), so no float copy of the full
output exists. Lanczos4 reads 4 input pixels on each side, so a block resized from the input with
``WINDOW_MARGIN`` (8) more input pixels around it is bit-identical to the same part of a
whole-photo resize (tested): the streamed photo equals the one :func:`upscale_photo` +
:func:`paste_face` make.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from hime_cli.faces.align import affine_scale, compose_affine, invert_affine, warp_image, warp_to_crop

# Fraction of the crop side over which the mask falls from 1 to 0 (each side).
DEFAULT_FEATHER = 0.15
# Colour-match blur sigma, in pixels of the *input* photo. What it costs a perfect SR crop (the
# original's own face pasted with the policy; 8 celeba-wild dev faces of 128-180 px, ×4): face-box
# PSNR 39.4 dB unmatched, 37.8 at sigma 2, 38.3 at 3, 38.5 at 4, 38.8 at 6 (Lanczos: 26.4). A
# constant cast (+0.04/-0.03/+0.02) or a linear colour ramp is fully removed at every sigma
# (29.5 / 32.3 dB unmatched → the values above). 3 input pixels: the face keeps its detail, the
# colour field (tens of pixels across a face) comes from the photo.
DEFAULT_COLOUR_SIGMA = 3.0


@dataclass(frozen=True)
class PasteOptions:
    feather: float = DEFAULT_FEATHER
    colour_sigma: float = DEFAULT_COLOUR_SIGMA  # in input-photo pixels; 0 disables colour matching


def feather_mask(size: int, feather: float = DEFAULT_FEATHER) -> np.ndarray:
    """(size, size) float32 mask: 1 inside, a raised-cosine fall to 0 over the outer ``feather`` of each side.

    Separable (product of two 1-D ramps), so corners fade smoothly too. Values are sampled at
    pixel centres; the outermost pixels are (close to) 0, so the warped edge of the square is
    invisible.
    """
    if size <= 0:
        raise ValueError("mask size must be positive")
    if not 0.0 < feather <= 0.5:
        raise ValueError("feather must be in (0, 0.5]")
    centres = (np.arange(size, dtype=np.float64) + 0.5) / size  # in (0, 1)
    dist = np.minimum(centres, 1.0 - centres)  # distance to the nearest edge, in crop sides
    t = np.clip(dist / feather, 0.0, 1.0)
    ramp = 0.5 - 0.5 * np.cos(np.pi * t)  # 0 at the edge, 1 after ``feather``
    return np.outer(ramp, ramp).astype(np.float32)


def match_colour(sr_crop: np.ndarray, reference_crop: np.ndarray, sigma: float) -> np.ndarray:
    """``sr + blur(reference) - blur(sr)``: the SR detail on the reference's low-frequency colour.

    Both crops are (S, S, 3) float32 and aligned (same crop transform). ``sigma`` is the Gaussian
    sigma in crop pixels; ``sigma <= 0`` returns the SR crop unchanged.
    """
    sr = np.asarray(sr_crop, dtype=np.float32)
    if sigma <= 0:
        return sr
    ref = np.asarray(reference_crop, dtype=np.float32)
    if ref.shape != sr.shape:
        raise ValueError(f"crop shapes differ: {sr.shape} vs {ref.shape}")
    ksize = 2 * int(np.ceil(3.0 * sigma)) + 1

    def blur(img: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(
            img, (ksize, ksize), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT
        )

    return sr + (blur(ref) - blur(sr))


def colour_sigma_in_crop(matrix: np.ndarray, scale: float, sigma_input_px: float) -> float:
    """Convert a sigma in input-photo pixels to crop pixels for a canvas→crop matrix.

    ``matrix`` maps the upscaled photo (``scale`` × the input) to the crop; one input pixel is
    ``scale`` canvas pixels, i.e. ``scale * affine_scale(matrix)`` crop pixels.
    """
    return float(sigma_input_px * scale * affine_scale(matrix))


def paste_face(
    canvas: np.ndarray,
    sr_crop: np.ndarray,
    matrix: np.ndarray,
    scale: float,
    options: PasteOptions | None = None,
) -> tuple[int, int, int, int] | None:
    """Blend ``sr_crop`` into ``canvas`` (in place) through the inverse of ``matrix``.

    canvas: (H, W, 3) float32 upscaled photo (Lanczos), modified in place.
    sr_crop: (S, S, 3) float32 SR face (not necessarily clamped).
    matrix: canvas → crop affine (2, 3), e.g. ``alignment_matrix(landmarks * scale, S)``.
    scale: canvas pixels per input-photo pixel (sets the colour-match sigma).
    Returns the (x0, y0, x1, y1) canvas box that was touched, or None when the face lies outside.
    """
    opts = options or PasteOptions()
    size = int(sr_crop.shape[0])
    if sr_crop.shape[:2] != (size, size):
        raise ValueError(f"SR crop must be square, got {sr_crop.shape}")
    if canvas.dtype != np.float32:
        raise TypeError("canvas must be float32")
    height, width = canvas.shape[:2]
    box = paste_box(matrix, size, width, height)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    to_canvas = invert_affine(matrix)

    face = np.asarray(sr_crop, dtype=np.float32)
    if opts.colour_sigma > 0:
        reference = warp_to_crop(canvas, matrix, size)
        sigma = colour_sigma_in_crop(matrix, scale, opts.colour_sigma)
        face = match_colour(face, reference, sigma)
    face = np.clip(face, 0.0, 1.0)
    mask = feather_mask(size, opts.feather)

    # crop → ROI of the canvas: translate the canvas→crop inverse by the ROI origin.
    crop_to_roi = compose_affine(np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0]]), to_canvas)
    roi_size = (y1 - y0, x1 - x0)
    # Lanczos: on a grid-aligned crop (an integer translation) it is an exact copy; otherwise the
    # sharpest of OpenCV's kernels, so the paste-back blurs the new detail as little as possible.
    face_roi = warp_image(
        face, crop_to_roi, roi_size, border=cv2.BORDER_REPLICATE, interpolation=cv2.INTER_LANCZOS4
    )
    mask_roi = warp_image(
        mask, crop_to_roi, roi_size, border=cv2.BORDER_CONSTANT, interpolation=cv2.INTER_LINEAR
    )
    mask_roi = np.clip(mask_roi, 0.0, 1.0)[..., None]
    roi = canvas[y0:y1, x0:x1]
    roi += mask_roi * (np.clip(face_roi, 0.0, 1.0) - roi)
    return x0, y0, x1, y1


def paste_box(matrix: np.ndarray, size: int, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The (x0, y0, x1, y1) canvas box :func:`paste_face` touches for a ``size`` crop, or None when
    it lies outside the ``width`` × ``height`` canvas: the crop square's bounding box + 1 px for
    the interpolation kernel."""
    to_canvas = invert_affine(matrix)
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], dtype=np.float64)
    pts = corners @ to_canvas[:, :2].T + to_canvas[:, 2]
    x0 = max(0, int(np.floor(pts[:, 0].min())) - 1)
    y0 = max(0, int(np.floor(pts[:, 1].min())) - 1)
    x1 = min(width, int(np.ceil(pts[:, 0].max())) + 1)
    y1 = min(height, int(np.ceil(pts[:, 1].max())) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def upscale_photo(rgb: np.ndarray, scale: int) -> np.ndarray:
    """The background: the whole photo resized ×scale with Lanczos (8×8 kernel), float32 clipped to [0, 1]."""
    image = np.asarray(rgb, dtype=np.float32)
    height, width = image.shape[:2]
    out = cv2.resize(image, (width * scale, height * scale), interpolation=cv2.INTER_LANCZOS4)
    if out.ndim == 2 and image.ndim == 3:  # cv2 drops a trailing singleton channel
        out = out[..., None]
    return np.clip(out, 0.0, 1.0, out=out)


# Input pixels around every block resized on its own: Lanczos4 reads 4 on each side (8 taps), so 8
# keeps the block bit-identical to a whole-photo resize; the colour match's cubic reads of the
# canvas need 2 canvas pixels more than the paste box, well inside it.
WINDOW_MARGIN = 8
STRIP_ROWS = 64  # input rows per background strip (×4, 4000 px wide: 256 × 16000 × 12 B = 49 MB float)

# Faces whose boxes come this close share a window: the colour match of one reads (cubic) up to
# 2 px beyond its box, so a neighbour pasted before it must already be in that window.
_GROUP_PAD = 4

BlockSink = Callable[[int, int, np.ndarray], None]  # (x0, y0, float32 (h, w, C) block in [0, 1])


@dataclass(frozen=True)
class FacePaste:
    """One SR face to paste: its crop (S, S, 3) and the canvas → crop affine (2, 3)."""

    crop: np.ndarray
    matrix: np.ndarray


def upscale_region(rgb: np.ndarray, scale: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Output pixels [y0, y1) × [x0, x1) of :func:`upscale_photo` (bit-identical), from a window of the input.

    Only the input rows and columns those pixels need (+ ``WINDOW_MARGIN``) are resized.
    """
    height, width = rgb.shape[:2]
    ia = max(0, x0 // scale - WINDOW_MARGIN)
    ib = min(width, -(-x1 // scale) + WINDOW_MARGIN)
    ja = max(0, y0 // scale - WINDOW_MARGIN)
    jb = min(height, -(-y1 // scale) + WINDOW_MARGIN)
    window = upscale_photo(rgb[ja:jb, ia:ib], scale)
    return window[y0 - ja * scale : y1 - ja * scale, x0 - ia * scale : x1 - ia * scale]


def _shift(matrix: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """A canvas → crop matrix for a window whose origin is canvas pixel (dx, dy)."""
    m = np.asarray(matrix, dtype=np.float64).copy()
    m[:, 2] += m[:, :2] @ np.array([dx, dy], dtype=np.float64)
    return m


def face_groups(
    faces: Sequence[FacePaste], width: int, height: int
) -> list[tuple[tuple[int, int, int, int], list[int]]]:
    """Faces whose paste boxes overlap, grouped (input order kept), each with the union box.

    Two faces in one group are pasted into one window, in order, as :func:`paste_face` on the
    whole canvas would; faces of different groups touch disjoint pixels.
    """
    boxes: list[tuple[tuple[int, int, int, int], list[int]]] = []
    for i, face in enumerate(faces):
        box = paste_box(face.matrix, int(face.crop.shape[0]), width, height)
        if box is None:
            continue
        members = [i]
        merged = True
        while merged:
            merged = False
            for k, (other, idx) in enumerate(boxes):
                if (
                    other[0] < box[2] + _GROUP_PAD
                    and box[0] < other[2] + _GROUP_PAD
                    and other[1] < box[3] + _GROUP_PAD
                    and box[1] < other[3] + _GROUP_PAD
                ):
                    box = (
                        min(box[0], other[0]),
                        min(box[1], other[1]),
                        max(box[2], other[2]),
                        max(box[3], other[3]),
                    )
                    members = idx + members
                    del boxes[k]
                    merged = True
                    break
        boxes.append((box, sorted(members)))
    return boxes


def render_upscaled(
    rgb: np.ndarray,
    scale: int,
    faces: Sequence[FacePaste],
    sink: BlockSink | None,
    input_scale: float,
    options: PasteOptions | None = None,
    *,
    background: bool = True,
) -> list[np.ndarray]:
    """The photo ×``scale`` with ``faces`` pasted, streamed to ``sink`` block by block.

    First the Lanczos background in strips of ``STRIP_ROWS`` input rows (``background=False``
    skips it, e.g. for compare sheets only), then one window per group of overlapping faces, its
    union box written over the background. The sink receives ``(x0, y0, block)``; nothing of the
    size of the output is allocated here. ``input_scale``: canvas pixels per input pixel (the
    colour-match sigma's unit, as in :func:`paste_face`). Returns each face's pasted result as
    an (S, S, 3) crop through its matrix (what the compare sheets show), in input order.
    """
    height, width = rgb.shape[0] * scale, rgb.shape[1] * scale
    if background and sink is not None:
        step = STRIP_ROWS * scale
        for y0 in range(0, height, step):
            sink(0, y0, upscale_region(rgb, scale, 0, y0, width, min(height, y0 + step)))
    results: list[np.ndarray | None] = [None] * len(faces)
    for (x0, y0, x1, y1), members in face_groups(faces, width, height):
        m = WINDOW_MARGIN * scale  # room for the colour match's reads around the box
        wa, wb = max(0, x0 - m), min(width, x1 + m)
        ha, hb = max(0, y0 - m), min(height, y1 + m)
        window = np.ascontiguousarray(upscale_region(rgb, scale, wa, ha, wb, hb))
        for i in members:
            paste_face(window, faces[i].crop, _shift(faces[i].matrix, wa, ha), input_scale, options)
        for i in members:
            size = int(faces[i].crop.shape[0])
            results[i] = warp_to_crop(window, _shift(faces[i].matrix, wa, ha), size)
        if sink is not None:
            sink(x0, y0, window[y0 - ha : y1 - ha, x0 - wa : x1 - wa])
    for i, face in enumerate(faces):
        if results[i] is None:  # outside the photo: the sheet shows the background there
            size = int(face.crop.shape[0])
            results[i] = np.zeros((size, size, rgb.shape[2]), np.float32)
    return [r for r in results if r is not None]
