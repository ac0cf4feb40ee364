from __future__ import annotations

import numpy as np
import pytest

from hime_cli.faces.align import (
    CANONICAL_LANDMARKS,
    affine_scale,
    alignment_matrix,
    compose_affine,
    face_crop,
    invert_affine,
    region_size,
    scale_affine,
    warp_to_crop,
)


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:2, :2].T + m[:, 2]


def _landmarks(scale: float, angle_deg: float, offset: tuple[float, float]) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return (CANONICAL_LANDMARKS * scale) @ rot.T + np.array(offset)


@pytest.mark.parametrize("angle", [-30.0, 0.0, 12.5])
def test_alignment_maps_landmarks_onto_template(angle: float) -> None:
    lm = _landmarks(90.0, angle, (40.0, 25.0))
    m = alignment_matrix(lm, 128)
    np.testing.assert_allclose(_apply(m, lm), CANONICAL_LANDMARKS * 128, atol=1e-6)
    assert region_size(lm) == pytest.approx(90.0, rel=1e-6)


def test_inverse_and_scale_compose() -> None:
    lm = _landmarks(60.0, 5.0, (10.0, 20.0))
    m = alignment_matrix(lm, 32)
    np.testing.assert_allclose(compose_affine(m, invert_affine(m)), np.eye(3)[:2], atol=1e-9)
    # The same crop from a photo upscaled ×4 needs the matrix scaled by 1/4 in photo coordinates.
    m4 = scale_affine(m, 4.0)
    np.testing.assert_allclose(_apply(m4, lm * 4.0), _apply(m, lm), atol=1e-9)
    assert affine_scale(m4) == pytest.approx(affine_scale(m) / 4.0)


def test_warp_to_crop_samples_the_right_place() -> None:
    # A photo whose value encodes x: the crop's centre column must read the photo's centre x.
    h, w = 200, 300
    xs = np.tile(np.linspace(0, 1, w, dtype=np.float32), (h, 1))
    photo = np.stack([xs, xs, xs], axis=-1)
    lm = _landmarks(100.0, 0.0, (100.0, 50.0))
    crop = warp_to_crop(photo, alignment_matrix(lm, 100), 100)
    assert crop.shape == (100, 100, 3) and crop.dtype == np.float32
    # crop pixel column 50 (centre 50.5) ↔ photo x = 150.5 → value (150.5-0.5)/(w-1)
    assert crop[50, 50, 0] == pytest.approx(150.0 / (w - 1), abs=2e-3)


def test_warp_antialiases_when_shrinking() -> None:
    # A 1-px checkerboard shrunk 8× must come out mid-grey, not aliased black/white.
    yy, xx = np.mgrid[0:800, 0:800]
    photo = np.repeat(((xx + yy) % 2).astype(np.float32)[..., None], 3, axis=-1)
    lm = _landmarks(512.0, 0.0, (100.0, 100.0))
    crop = warp_to_crop(photo, alignment_matrix(lm, 64), 64)
    assert abs(float(crop.mean()) - 0.5) < 0.02
    assert float(crop.std()) < 0.05


def _upright_face(region: float, x0: float = 40.3, y0: float = 25.6) -> np.ndarray:
    return CANONICAL_LANDMARKS * region + np.array([x0, y0])


def test_face_crop_keeps_faces_from_20_px_at_their_own_size_on_the_pixel_grid() -> None:
    for region, expected in ((18.0, 32), (22.4, 23), (27.5, 28), (45.0, 45)):
        landmarks = _upright_face(region)
        assert abs(region_size(landmarks) - region) < 1e-6
        matrix, size = face_crop(landmarks, 4)
        assert size == expected
        snapped = np.allclose(matrix[:, :2], np.eye(2)) and np.allclose(matrix[:, 2], np.round(matrix[:, 2]))
        # own size: sliced from the photo, never resampled; an enlarged small face is warped
        assert snapped == (expected != 32 or region >= 32)
    # a rolled face is warped whatever its size
    theta = np.radians(15)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    matrix, size = face_crop(_upright_face(27.5) @ rot.T, 4)
    assert size == 28 and not np.allclose(matrix[:, :2], np.eye(2))
