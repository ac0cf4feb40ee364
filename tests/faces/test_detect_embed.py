from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hime_cli.errors import UsageError
from hime_cli.faces.detect import get_detector
from hime_cli.faces.embed import get_embedder
from hime_cli.faces.quality import sharpness

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()  # public-domain NASA portrait, ships with scikit-image


def test_detects_the_astronaut_face_upright(astronaut: np.ndarray) -> None:
    faces = get_detector().detect(astronaut)
    assert len(faces) == 1
    face = faces[0]
    assert face.score > 0.95
    assert 80 < face.size < 200
    left_eye, right_eye, nose, mouth_l, mouth_r = face.landmarks
    assert left_eye[0] < right_eye[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_l[1], mouth_r[1])


def test_no_face_in_noise_and_tiny_images() -> None:
    rng = np.random.default_rng(0)
    assert get_detector().detect(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)) == []
    assert get_detector().detect(np.zeros((8, 8, 3), dtype=np.uint8)) == []


def test_embedding_is_stable_across_scale(astronaut: np.ndarray) -> None:
    det, emb = get_detector(), get_embedder("dlib")
    small = np.asarray(Image.fromarray(astronaut).resize((256, 256), Image.BICUBIC))
    f_big, f_small = det.detect(astronaut)[0], det.detect(small)[0]
    e_big = emb.embed(astronaut, [f_big])
    e_small = emb.embed(small, [f_small])
    assert e_big.shape == (1, 128) and e_big.dtype == np.float32
    assert float(np.linalg.norm(e_big - e_small)) < 0.4  # same person
    assert emb.embed(astronaut, []).shape == (0, 128)


def test_sharpness_drops_with_blur(astronaut: np.ndarray) -> None:
    face = get_detector().detect(astronaut)[0]
    blurred = np.asarray(
        Image.fromarray(astronaut).resize((128, 128), Image.BILINEAR).resize((512, 512), Image.BILINEAR)
    )
    assert sharpness(astronaut, face) > 2.0 * sharpness(blurred, face)


def test_unknown_embedder_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        get_embedder("nope")


@pytest.mark.parametrize("shape", [(15, 40, 3), (19, 19, 3), (25, 25, 3)])
def test_images_smaller_than_the_minimum_face_have_no_faces(shape: tuple[int, int, int]) -> None:
    assert get_detector().detect(np.full(shape, 128, dtype=np.uint8)) == []
