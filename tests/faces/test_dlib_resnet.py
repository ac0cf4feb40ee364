"""The torch copy of dlib's face-recognition ResNet gives dlib's own vectors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hime_cli.faces.detect import get_detector
from hime_cli.faces.dlib_resnet import DlibWeightsError, read_weights
from hime_cli.faces.embed import DlibEmbedder, _model_file

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def faces_and_photos() -> list[tuple[np.ndarray, list]]:
    """The astronaut at three sizes and mirrored: faces of 60-200 px, one turned the other way."""
    astronaut = skimage_data.astronaut()
    photos = [astronaut, astronaut[:, ::-1].copy()]
    for side in (320, 200):
        photos.append(np.asarray(Image.fromarray(astronaut).resize((side, side), Image.BICUBIC)))
    detector = get_detector()
    return [(photo, detector.detect(photo)) for photo in photos]


def test_torch_backend_equals_dlib(faces_and_photos: list[tuple[np.ndarray, list]]) -> None:
    fast, slow = DlibEmbedder(), DlibEmbedder(backend="dlib")
    assert fast.backend == "torch" and slow.backend == "dlib"
    for photo, faces in faces_and_photos:
        assert faces
        for flip in (False, True):
            got = fast.embed_views(photo, faces, flip=flip)
            want = slow.embed_views(photo, faces, flip=flip)
            for a, b in zip(got, want, strict=True):
                if b is None:
                    assert a is None
                    continue
                assert a.shape == b.shape == (len(faces), 128)
                # float32 sums in another order: ~1e-6 apart; distances that matter are ~0.1-0.6
                assert float(np.abs(a - b).max()) < 1e-4
        np.testing.assert_allclose(fast.embed(photo, faces), slow.embed(photo, faces), atol=1e-4)


def test_weights_are_dlibs_network() -> None:
    convs, fc = read_weights(_model_file("dlib_face_recognition_resnet_model_v1.dat"))
    assert len(convs) == 29 and fc.shape == (256, 128)
    assert convs[0][0].shape == (32, 3, 7, 7) and convs[0][2] == 2
    widths = [c[0].shape[0] for c in convs[1:]]
    assert [widths.count(n) for n in (32, 64, 128, 256)] == [6, 8, 6, 8]
    assert [c[2] for c in convs].count(2) == 5  # the stem and four down units


def test_a_file_that_is_not_the_network_is_refused(tmp_path) -> None:
    bogus = tmp_path / "model.dat"
    bogus.write_bytes(b"\x00" * 64)
    with pytest.raises(DlibWeightsError):
        read_weights(bogus)


def test_jitter_uses_dlib() -> None:
    assert DlibEmbedder(jitter=1).backend == "dlib"


def test_the_scan_embedder_runs_the_torch_copy() -> None:
    from hime_cli.faces.embed import get_embedder

    assert getattr(get_embedder("dlib"), "backend", None) == "torch"
