"""`hime enhance --scale 1`: restore faces, keep the size (issue #10, item 7). Faces are restored
at their native resolution and pasted back; every decoded pixel outside their paste boxes is the
input's, bit for bit (lossy inputs are written losslessly, as PNG, so that this holds)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from hime_cli.pipeline import EnhanceOptions, enhance
from tests.test_pipeline import _options, assets, small_astronaut  # noqa: F401 - fixture


def _photo() -> np.ndarray:
    """A 240 × 320 photo: a textured background with the astronaut's portrait (a ~40 px face)."""
    y, x = np.mgrid[0:240, 0:320]
    rgb = np.stack([x * 3 % 256, y * 5 % 256, (x * y) % 256], axis=2).astype(np.uint8)
    rgb[40:168, 100:228] = small_astronaut(128)
    return rgb


def _face_boxes(path: Path) -> list[tuple[int, int, int, int]]:
    """The boxes the paste may touch: each face's SR crop square (faces.align) + the paste's 1 px."""
    from hime_cli.faces.align import face_crop, upscaled_crop_matrix
    from hime_cli.faces.detect import get_detector
    from hime_cli.library.reader import load_image
    from hime_cli.sr.pasteback import paste_box

    loaded = load_image(path)
    boxes = []
    for face in get_detector().detect(loaded.rgb):
        matrix, size = face_crop(face.landmarks, 4)
        box = paste_box(upscaled_crop_matrix(matrix, 1), size, loaded.width, loaded.height)
        assert box is not None
        boxes.append(box)
    return boxes


def _outside(shape: tuple[int, ...], boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    mask = np.ones(shape[:2], bool)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = False
    return mask


def _decoded(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


@pytest.mark.parametrize("kind", ["png", "jpeg", "png16"])
def test_scale_1_restores_faces_and_leaves_every_other_pixel_bit_identical(
    assets: Path,  # noqa: F811 - fixture
    tmp_path: Path,
    kind: str,
) -> None:
    rgb = _photo()
    src = tmp_path / "in" / {"png": "p.png", "jpeg": "p.jpg", "png16": "p16.png"}[kind]
    src.parent.mkdir()
    if kind == "png":
        Image.fromarray(rgb).save(src)
    elif kind == "jpeg":
        exif = Image.Exif()
        exif[0x010F] = "HimeCam"
        Image.fromarray(rgb).save(src, quality=80, exif=exif)
    else:
        cv2.imwrite(str(src), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257 + 100)
    report = enhance([src], _options(assets, scale=1, out_dir=tmp_path / "out", refs_dir=assets / "refs"))
    (photo,) = report.photos
    assert photo.status == "done" and photo.faces_enhanced == 1, photo
    assert photo.out_size == photo.size == (320, 240)
    if kind == "jpeg":  # a JPEG re-encode would change every pixel: written as PNG, metadata kept
        assert photo.out_format == "PNG" and photo.dest == tmp_path / "out" / "p.png"
        assert "--scale 1 leaves every pixel outside the faces" in (photo.note or "")
        with Image.open(photo.dest) as im:
            assert im.getexif().get(0x010F) == "HimeCam"
    else:
        assert photo.out_format is None and photo.dest == tmp_path / "out" / src.name
    before, after = _decoded(src), _decoded(photo.dest)  # type: ignore[arg-type]
    assert before.shape == after.shape and before.dtype == after.dtype
    boxes = _face_boxes(src)
    assert len(boxes) == 1
    outside = _outside(before.shape, boxes)
    assert outside.mean() > 0.8  # most of the photo is outside the face
    assert np.array_equal(before[outside], after[outside])  # bit-identical, decoded vs decoded
    assert not np.array_equal(before[~outside], after[~outside])  # the face was restored


def test_scale_1_in_place_keeps_lossless_photos_and_refuses_lossy_ones(
    assets: Path,  # noqa: F811 - fixture
    tmp_path: Path,
) -> None:
    jpeg, png = tmp_path / "p.jpg", tmp_path / "q.png"
    Image.fromarray(_photo()).save(jpeg, quality=85)
    Image.fromarray(_photo()).save(png)
    original = _decoded(png)
    dry = enhance(
        [jpeg, png], _options(assets, scale=1, in_place=True, dry_run=True, refs_dir=assets / "refs")
    )
    statuses = {p.source.name: (p.status, p.reason) for p in dry.photos}
    assert statuses["q.png"] == ("dry-run", None)
    assert (
        statuses["p.jpg"][0] == "failed" and "--in-place keeps the format: use --out" in statuses["p.jpg"][1]
    )
    real = enhance([png], _options(assets, scale=1, in_place=True, refs_dir=assets / "refs"))
    assert [p.status for p in real.photos] == ["done"]
    outside = _outside(original.shape, _face_boxes(png))
    assert np.array_equal(original[outside], _decoded(png)[outside])


def test_scale_1_is_a_scale_and_others_are_not() -> None:
    from hime_cli.errors import UsageError

    EnhanceOptions(scale=1).validate()
    with pytest.raises(UsageError, match="1, 2, 4 or 8"):
        EnhanceOptions(scale=3).validate()
