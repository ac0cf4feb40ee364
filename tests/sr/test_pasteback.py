from __future__ import annotations

import cv2
import numpy as np
import pytest

from hime_cli.faces.align import CANONICAL_LANDMARKS, alignment_matrix, warp_to_crop
from hime_cli.sr.pasteback import (
    PasteOptions,
    feather_mask,
    match_colour,
    paste_box,
    paste_face,
    upscale_photo,
)


def _landmarks(region: float, angle_deg: float, offset: tuple[float, float]) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return ((CANONICAL_LANDMARKS * region) @ rot.T + np.array(offset)).astype(np.float32)


def _crop_mask_in_canvas(canvas_shape: tuple[int, int], matrix: np.ndarray, size: int) -> np.ndarray:
    """Boolean (H, W): canvas pixels whose centre falls inside the crop square."""
    h, w = canvas_shape
    yy, xx = np.mgrid[0:h, 0:w]
    pts = np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5], axis=1)
    crop_pts = pts @ matrix[:, :2].T + matrix[:, 2]
    inside = (crop_pts >= 0).all(1) & (crop_pts <= size).all(1)
    return inside.reshape(h, w)


def test_feather_mask_shape_and_falloff() -> None:
    m = feather_mask(128, 0.15)
    assert m.shape == (128, 128) and m.dtype == np.float32
    assert m[64, 64] == pytest.approx(1.0)
    assert m[0, 64] < 0.01 and m[64, 0] < 0.01 and m[0, 0] < 1e-4
    # Monotone from the edge to the inner plateau, plateau starts at ~15 % of the side.
    row = m[64, :64]
    assert np.all(np.diff(row) >= -1e-7)
    assert row[int(0.15 * 128) + 1] == pytest.approx(1.0)
    assert row[int(0.075 * 128)] == pytest.approx(0.5, abs=0.06)


def test_match_colour_removes_offset_keeps_detail() -> None:
    rng = np.random.default_rng(0)
    ref = np.full((64, 64, 3), 0.4, np.float32)
    detail = (rng.standard_normal((64, 64, 1)) * 0.05).astype(np.float32)
    sr = ref + np.array([0.1, -0.05, 0.08], np.float32) + detail
    out = match_colour(sr, ref, sigma=4.0)
    np.testing.assert_allclose(out.mean((0, 1)), ref.mean((0, 1)), atol=2e-3)
    # Detail (high frequency) survives: correlation with the injected pattern stays high.
    resid = out[..., 0] - out[..., 0].mean()
    corr = np.corrcoef(resid.ravel(), detail[..., 0].ravel())[0, 1]
    assert corr > 0.9
    np.testing.assert_array_equal(match_colour(sr, ref, 0.0), sr)


@pytest.mark.parametrize("angle", [0.0, 17.0])
def test_flat_photo_with_colour_offset_model_comes_out_seamless(angle: float) -> None:
    colour = np.array([0.62, 0.45, 0.30], np.float32)
    photo = np.broadcast_to(colour, (60, 80, 3)).astype(np.float32)
    scale = 4
    canvas = upscale_photo(photo, scale)
    before = canvas.copy()
    lm = _landmarks(24.0, angle, (30.0, 18.0))
    size = 128
    m = alignment_matrix(lm * scale, size)
    # A "model" that returns the face with a strong colour cast.
    sr = warp_to_crop(canvas, m, size) + np.array([0.15, -0.1, 0.12], np.float32)
    box = paste_face(canvas, sr, m, scale)
    assert box is not None
    np.testing.assert_allclose(canvas, before, atol=2e-3)

    # Without colour matching the cast is visible: the test above can fail.
    canvas2 = before.copy()
    paste_face(canvas2, sr, m, scale, PasteOptions(colour_sigma=0.0))
    assert np.abs(canvas2 - before).max() > 0.1


def test_border_of_pasted_region_matches_surrounding() -> None:
    # A textured photo: smooth gradients plus a mid-frequency pattern the input resolves.
    h, w, scale = 72, 96, 4
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    photo = np.stack(
        [0.3 + 0.4 * xx / w, 0.5 + 0.2 * np.sin(yy / 7.0), 0.4 + 0.1 * np.cos((xx + yy) / 9.0)], axis=-1
    ).astype(np.float32)
    canvas = upscale_photo(photo, scale)
    before = canvas.copy()
    lm = _landmarks(30.0, 8.0, (35.0, 20.0))
    size = 128
    m = alignment_matrix(lm * scale, size)
    rng = np.random.default_rng(1)
    detail = (rng.standard_normal((size, size, 1)) * 0.04).astype(np.float32)
    sr = warp_to_crop(canvas, m, size) * 1.1 + 0.08 + detail  # gain + offset + new detail
    box = paste_face(canvas, sr, m, scale)
    assert box is not None
    x0, y0, x1, y1 = box

    # Outside the touched box nothing changed.
    outside = np.ones(canvas.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    np.testing.assert_array_equal(canvas[outside], before[outside])

    # Along the crop square's border (a band 3 px wide just inside) the result equals the photo.
    inside = _crop_mask_in_canvas(canvas.shape[:2], m, size)
    inner = _crop_mask_in_canvas(canvas.shape[:2], _shrink(m, size, 3.0 / size), size)
    band = inside & ~inner
    assert band.sum() > 100
    assert np.abs(canvas[band] - before[band]).max() < 0.02

    # In the middle the new detail is there, on the photo's colour (no shift).
    centre = _crop_mask_in_canvas(canvas.shape[:2], _shrink(m, size, 0.3), size)
    diff = canvas[centre] - before[centre]
    assert np.abs(diff.mean(0)).max() < 0.01  # no colour shift
    assert diff.std() > 0.02  # the detail was pasted


def _shrink(matrix: np.ndarray, size: int, frac: float) -> np.ndarray:
    """Canvas→crop matrix of the centred sub-square with ``frac`` cut from each side, rescaled to size."""
    k = 1.0 / (1.0 - 2.0 * frac)
    out = matrix.astype(np.float64).copy()
    out[:, :2] *= k
    out[:, 2] = (matrix[:, 2] - size * frac) * k
    return out


def test_inverse_warp_puts_the_face_back_in_place() -> None:
    # Paste the *true* high-resolution crop of a sharp image into its blurred upscale: the face
    # centre must reproduce the sharp image (geometry of the inverse transform is right).
    rng = np.random.default_rng(2)
    scale = 4
    hr = cv2_blur(rng.random((240, 320, 3)).astype(np.float32), 2.0)
    lr = hr.reshape(60, scale, 80, scale, 3).mean((1, 3))
    canvas = upscale_photo(lr, scale)
    lm = _landmarks(25.0, -12.0, (28.0, 20.0))
    size = 100
    m = alignment_matrix(lm * scale, size)
    sr = warp_to_crop(hr, m, size)
    paste_face(canvas, sr, m, scale, PasteOptions(colour_sigma=0.0))
    centre = _crop_mask_in_canvas(canvas.shape[:2], _shrink(m, size, 0.3), size)
    err_pasted = np.abs(canvas[centre] - hr[centre]).mean()
    err_lanczos = np.abs(upscale_photo(lr, scale)[centre] - hr[centre]).mean()
    assert err_pasted < 0.01
    assert err_pasted < 0.5 * err_lanczos


def test_face_partly_outside_the_photo() -> None:
    photo = np.full((40, 40, 3), 0.5, np.float32)
    canvas = upscale_photo(photo, 2)
    lm = _landmarks(30.0, 0.0, (-10.0, 25.0))  # left half beyond the left edge
    m = alignment_matrix(lm * 2, 64)
    box = paste_face(canvas, np.full((64, 64, 3), 0.5, np.float32), m, 2)
    assert box is not None and box[0] == 0
    lm_far = _landmarks(10.0, 0.0, (500.0, 500.0))
    assert paste_face(canvas, np.zeros((64, 64, 3), np.float32), alignment_matrix(lm_far * 2, 64), 2) is None


def test_upscale_photo_size_and_range() -> None:
    rng = np.random.default_rng(3)
    photo = rng.random((10, 7, 3)).astype(np.float32)
    out = upscale_photo(photo, 8)
    assert out.shape == (80, 56, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_allclose(out.mean((0, 1)), photo.mean((0, 1)), atol=0.02)


def cv2_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(img, (0, 0), sigma)


def test_render_upscaled_in_blocks_equals_the_whole_canvas() -> None:
    """Strips + face windows (issue #10) give the photo upscale_photo + paste_face give: the
    background bit for bit, the face boxes within float rounding (the window's shifted matrix)."""
    from hime_cli.sr.pasteback import STRIP_ROWS, FacePaste, face_groups, render_upscaled

    rng = np.random.default_rng(1)
    photo = cv2.GaussianBlur(rng.random((3 * STRIP_ROWS + 17, 150, 3), dtype=np.float32), (0, 0), 1.5)
    scale = 4
    faces = []
    # two overlapping faces, one across a strip boundary, one cut by the photo's edge, a rolled one
    for region, angle, offset in [
        (20.0, 0.0, (20.0, 20.0)),
        (22.0, 0.0, (35.0, 30.0)),
        (18.0, 0.0, (70.0, STRIP_ROWS - 8.0)),
        (24.0, 0.0, (120.0, -6.0)),
        (16.0, 15.0, (60.0, 2 * STRIP_ROWS + 20.0)),
    ]:
        matrix = alignment_matrix(_landmarks(region, angle, offset) * scale, 96)
        faces.append(FacePaste(rng.random((96, 96, 3), dtype=np.float32), matrix))
    canvas = upscale_photo(photo, scale)
    for f in faces:
        paste_face(canvas, f.crop, f.matrix, scale)
    out = np.full_like(canvas, -1.0)
    blocks = []

    def sink(x: int, y: int, block: np.ndarray) -> None:
        blocks.append(block.shape)
        out[y : y + block.shape[0], x : x + block.shape[1]] = block

    results = render_upscaled(photo, scale, faces, sink, scale)
    assert (out >= 0).all()  # every pixel written
    assert max(b[0] for b in blocks) < canvas.shape[0] // 2  # in strips, never the whole photo
    assert len(face_groups(faces, canvas.shape[1], canvas.shape[0])) == 4  # the overlapping two share one
    np.testing.assert_allclose(out, canvas, atol=1e-4)
    background = np.ones(canvas.shape[:2], bool)
    for f in faces:
        box = paste_box(f.matrix, 96, canvas.shape[1], canvas.shape[0])
        assert box is not None
        background[box[1] : box[3], box[0] : box[2]] = False
    np.testing.assert_array_equal(out[background], canvas[background])
    for f, result in zip(faces, results, strict=True):
        np.testing.assert_allclose(result, warp_to_crop(canvas, f.matrix, 96), atol=1e-4)
    # compare sheets need no background at all
    assert render_upscaled(photo, scale, faces, None, scale, background=False)[0].shape == (96, 96, 3)
