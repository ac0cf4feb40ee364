"""Exported exemplar crops must be found again by the detector (``--refs DIR`` re-detects them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hime_cli.faces.align import region_size
from hime_cli.identities.review import export_crop_matrix, export_exemplars, write_contact_sheet
from hime_cli.identities.store import update_identities
from hime_cli.library.index import LibraryIndex, ScannedFace


@pytest.fixture(scope="module")
def astronaut_detection():
    skimage_data = pytest.importorskip("skimage.data")
    from hime_cli.faces.detect import get_detector
    from hime_cli.faces.embed import get_embedder
    from hime_cli.faces.quality import sharpness

    rgb = skimage_data.astronaut()
    faces = get_detector().detect(rgb)
    assert faces, "MTCNN should find the astronaut's face"
    face = faces[0]
    emb = get_embedder("dlib").embed(rgb, [face])[0]
    return rgb, ScannedFace(face, sharpness(rgb, face), emb)


def test_export_crop_matrix_centres_the_face_region() -> None:
    from hime_cli.faces.align import CANONICAL_LANDMARKS

    lm = CANONICAL_LANDMARKS * 300 + [50, 70]
    m, size = export_crop_matrix(lm)
    assert size == 600
    mapped = lm @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(mapped, CANONICAL_LANDMARKS * 300 + 150, atol=1e-6)
    big = CANONICAL_LANDMARKS * 2000
    assert export_crop_matrix(big)[1] == 1024  # capped at 512 px of face region


@pytest.mark.slow
def test_exported_crop_is_detected_again(astronaut_detection, tmp_path: Path) -> None:
    from hime_cli.faces.detect import get_detector

    rgb, scanned = astronaut_detection
    photos = tmp_path / "photos"
    photos.mkdir()
    # Two photos of the same person (exemplars are one per photo): the original and a mirror.
    Image.fromarray(rgb).save(photos / "a.png")
    Image.fromarray(np.ascontiguousarray(rgb[:, ::-1])).save(photos / "b.png")
    mirrored_lm = scanned.detected.landmarks.copy()
    mirrored_lm[:, 0] = rgb.shape[1] - mirrored_lm[:, 0]
    mirrored_lm = mirrored_lm[[1, 0, 2, 4, 3]]  # left/right swap under a mirror
    from hime_cli.types import Box, DetectedFace

    b = scanned.detected.box
    mirrored = ScannedFace(
        DetectedFace(
            Box(rgb.shape[1] - b.x1, b.y0, rgb.shape[1] - b.x0, b.y1), mirrored_lm, scanned.detected.score
        ),
        scanned.sharpness,
        scanned.embedding,
    )
    with LibraryIndex.open(tmp_path / "index.sqlite3") as index:
        for name, face in (("a.png", scanned), ("b.png", mirrored)):
            index.record_photo(photos / name, [face], size=1, mtime_ns=1, sha256=name, embedder="dlib")
        report = update_identities(index)
        (identity,) = report.new_identities
        written, failed = export_exemplars(index, identity, tmp_path / "refs", hr_size=64)
        sheet = write_contact_sheet(index, identity, tmp_path / "sheet.png", hr_size=64)
    assert not failed and len(written) == 2
    assert sheet.path.is_file() and sheet.faces_total == 2 and sheet.exemplars == 2
    detector = get_detector()
    for crop in written:
        pixels = np.asarray(Image.open(crop.path).convert("RGB"))
        assert pixels.shape[:2] == (crop.crop_size, crop.crop_size)
        found = detector.detect(pixels)
        assert len(found) >= 1, f"no face found again in {crop.path.name}"
        again = found[0]
        # The same face, at the same scale, in the middle of the crop.
        assert region_size(again.landmarks) == pytest.approx(crop.crop_size / 2, rel=0.15)
        centre = again.landmarks.mean(axis=0)
        assert np.all(np.abs(centre - crop.crop_size / 2) < crop.crop_size * 0.1)


def test_export_takes_one_face_per_photo_from_the_exemplar_set(tmp_path: Path) -> None:
    """A photo with the person twice (a mirror, a print on the wall; merged by the user) gives one
    exported crop: the exemplar policy's one-per-photo rule, the one `hime enhance` applies."""
    from hime_cli.identities.exemplars import exemplar_faces_for_identity
    from hime_cli.identities.store import merge_identities
    from tests.identities.synthetic import add_photo, face_embedding, person_centres

    (centre,) = person_centres(1, 0)
    rng = np.random.default_rng(3)
    photos = tmp_path / "photos"
    with LibraryIndex.open() as index:
        mirror = add_photo(
            index, "mirror.png", [face_embedding(centre, rng) for _ in range(2)], 150, folder=photos
        )
        single = add_photo(index, "single.png", [face_embedding(centre, rng)], 140, folder=photos)
        update_identities(index)  # two faces of one photo are two people to the clustering ...
        identity, *others = sorted({f.identity_id for f in index.iter_faces()})
        merge_identities(index, identity, others)  # ... until the user says otherwise
        every = exemplar_faces_for_identity(index, identity, 128)
        per_photo = exemplar_faces_for_identity(index, identity, 128, one_per_photo=True)
        written, failed = export_exemplars(index, identity, tmp_path / "refs", hr_size=128)
    assert sorted(f.id for f in every) == sorted(mirror + single)
    assert len(per_photo) == 2 and {f.photo_path.name for f in per_photo} == {"mirror.png", "single.png"}
    assert [f.id for f in per_photo] == [f.id for f in every if f.id in {p.id for p in per_photo}]
    assert not failed and [w.face_id for w in written] == [f.id for f in per_photo]
