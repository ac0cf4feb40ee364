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


def test_reframe_box_finds_dlibs_box_at_any_face_size(astronaut: np.ndarray) -> None:
    """The shape predictor's box comes from dlib's HOG detector on a crop around the MTCNN face
    (normalised to ~100 px), so a 25 px face and a 100 px face get the same framing."""
    import dlib

    from hime_cli.faces.embed import reframe_box

    hog = dlib.get_frontal_face_detector()
    face = get_detector().detect(astronaut)[0]
    big = reframe_box(hog, astronaut, face.box)
    assert big is not None
    x0, y0, x1, y1 = big
    assert abs((x1 - x0) - (y1 - y0)) <= 2  # HOG boxes are square
    assert 0.7 < (x1 - x0) / face.box.width < 1.5
    left_eye, right_eye, _, mouth_l, mouth_r = face.landmarks
    assert x0 < left_eye[0] < right_eye[0] < x1 and y0 < left_eye[1] < mouth_l[1] < y1
    assert x0 < mouth_l[0] < mouth_r[0] < x1

    # The same photo at a quarter of its size: the face is ~25 px, below HOG's 80 px window.
    small = np.asarray(Image.fromarray(astronaut).resize((128, 128), Image.LANCZOS))
    f_small = get_detector().detect(small)
    if f_small:  # MTCNN may miss a 25 px face; the box test then uses the scaled box
        box_small = f_small[0].box
    else:
        b = face.box
        from hime_cli.types import Box

        box_small = Box(b.x0 / 4, b.y0 / 4, b.x1 / 4, b.y1 / 4)
    tiny = reframe_box(hog, small, box_small)
    assert tiny is not None
    assert np.allclose(np.asarray(tiny) * 4, np.asarray(big), atol=0.12 * (x1 - x0))


def test_reframe_box_is_none_without_a_face_and_safe_at_the_border(astronaut: np.ndarray) -> None:
    import dlib

    from hime_cli.faces.embed import reframe_box
    from hime_cli.types import Box

    hog = dlib.get_frontal_face_detector()
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)
    assert reframe_box(hog, noise, Box(100, 100, 180, 190)) is None
    assert reframe_box(hog, noise, Box(-40, -30, 20, 40)) is None  # partly outside: padded, no error
    assert reframe_box(hog, noise, Box(10, 10, 10.5, 10.5)) is None  # degenerate box
    # A face cut by the photo's edge: the crop is zero-padded; whatever HOG says, no error.
    face = get_detector().detect(astronaut)[0]
    dx = int(face.box.x0 + face.box.width * 0.3)
    cut = astronaut[:, dx:]
    shifted = Box(face.box.x0 - dx, face.box.y0, face.box.x1 - dx, face.box.y1)
    found = reframe_box(hog, np.ascontiguousarray(cut), shifted)
    assert found is None or found[2] > 0


def test_reframed_embedding_is_close_to_the_plain_one(astronaut: np.ndarray) -> None:
    """Re-framing moves the landmarks by a few per cent, not the person: the two embeddings of one
    face are much closer than the clustering threshold (0.40)."""
    from hime_cli.faces.embed import DlibEmbedder

    face = get_detector().detect(astronaut)[0]
    plain = DlibEmbedder(reframe=False).embed(astronaut, [face])
    reframed = DlibEmbedder().embed(astronaut, [face])
    distance = float(np.linalg.norm(plain - reframed))
    assert 0.0 < distance < 0.2  # different (the box moved), but the same face
