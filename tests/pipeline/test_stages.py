"""Each stage of ``hime enhance`` alone, on synthetic inputs (no detector, no index, no CLI)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from hime_cli.faces.align import CANONICAL_LANDMARKS, region_size
from hime_cli.pipeline import EnhanceLedger, EnhanceOptions, FaceReport, PlannedPhoto, stages
from hime_cli.pipeline.sources import ExemplarSource, TargetFace
from hime_cli.sr.inference import CropRules, crop_rules
from hime_cli.types import Box, DetectedFace, Face


def _face(x: float, y: float, side: float, score: float = 0.99, **kw) -> TargetFace:
    landmarks = (CANONICAL_LANDMARKS * side + (x, y)).astype(np.float32)
    return TargetFace(DetectedFace(Box(x, y + side * 0.1, x + side * 0.8, y + side), landmarks, score), **kw)


def _astronaut(size: int) -> np.ndarray:
    from skimage import data

    return cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)


@pytest.fixture
def rgb() -> np.ndarray:
    return _astronaut(160).astype(np.float32) / 255.0


def test_select_faces_reports_why_a_face_is_left_alone(rgb: np.ndarray) -> None:
    faces = [_face(10, 10, 40), _face(60, 10, 40, score=0.5), _face(0, 0, 150), _face(90, 90, 40)]
    chosen = stages.select_faces(rgb, faces, {0, 1, 2}, EnhanceOptions(), CropRules.single(4))
    assert [c.status if isinstance(c, FaceReport) else "selected" for c in chosen] == [
        "selected",
        "low-score",
        "too-large",
        "not-target",
    ]
    selected = chosen[0]
    assert isinstance(selected, stages.SelectedFace)
    assert selected.lr_size == max(32, int(np.ceil(region_size(faces[0].landmarks) - 1e-6)))
    assert selected.lr.shape == (selected.lr_size, selected.lr_size, 3) and selected.lr.dtype == np.float32
    assert selected.hr_size == selected.lr_size * 4


def test_select_faces_sizes_crops_for_the_weights_training_zoom(rgb: np.ndarray) -> None:
    """A ×4 network trained for ×8 (crop_scale 8) takes a small face at its native size from 16 px
    up, not upsampled to 32 px; its references and output stay the network's 4L px."""
    faces = [_face(10, 10, 18), _face(60, 60, 40)]
    small, large = stages.select_faces(rgb, faces, {0, 1}, EnhanceOptions(scale=8), CropRules.single(4, 8))
    assert isinstance(small, stages.SelectedFace) and isinstance(large, stages.SelectedFace)
    assert small.lr_size == max(16, int(np.ceil(region_size(faces[0].landmarks) - 1e-6))) < 32
    assert small.hr_size == small.lr_size * 4
    assert large.lr_size == int(np.ceil(region_size(faces[1].landmarks) - 1e-6))  # native: unchanged
    (default,) = stages.select_faces(rgb, faces[:1], {0}, EnhanceOptions(scale=8), CropRules.single(4))
    assert isinstance(default, stages.SelectedFace) and default.lr_size == 32


def test_select_faces_routes_the_smallest_faces_to_the_small_face_weights(rgb: np.ndarray) -> None:
    """With the default weights, faces under 20 px (those the ×4 default would enlarge to 32 px)
    go to route 1, the weights trained on whole 16 px faces, cropped at their own size from 10 px
    up (16 px below); the others keep the default's crop. Every SR crop is 4L px."""
    rules = crop_rules(None, 8)
    faces = [_face(10, 10, 14), _face(40, 10, 8), _face(60, 60, 19), _face(100, 100, 24), _face(10, 90, 40)]
    chosen = stages.select_faces(rgb, faces, set(range(len(faces))), EnhanceOptions(scale=8), rules)
    assert all(isinstance(c, stages.SelectedFace) for c in chosen)
    routes = [(c.route, c.lr_size, c.hr_size) for c in chosen]  # type: ignore[union-attr]
    assert routes == [(1, 14, 56), (1, 16, 64), (1, 19, 76), (0, 24, 96), (0, 41, 164)]
    # --weights names one network for every face: no route 1
    one = stages.select_faces(
        rgb, faces, set(range(5)), EnhanceOptions(scale=8), crop_rules("hime_small_x4", 8)
    )
    assert [(c.route, c.lr_size) for c in one] == [(0, 32), (0, 32), (0, 32), (0, 24), (0, 41)]  # type: ignore[union-attr]


def test_select_faces_limits_the_crop_region_side_not_the_box_side(rgb: np.ndarray) -> None:
    """--max-face compares faces.align.region_size (the one face size, issue #10), and the report's
    size is that region side: a box under the limit with a region over it is too large, and the
    reverse is enhanced."""

    def face(region: float, box: float) -> TargetFace:
        landmarks = (CANONICAL_LANDMARKS * region + 5).astype(np.float32)
        return TargetFace(DetectedFace(Box(5, 5, 5 + box, 5 + box), landmarks, 0.99))

    small_box, small_region = face(region=120, box=80), face(region=80, box=120)
    chosen = stages.select_faces(
        rgb, [small_box, small_region], {0, 1}, EnhanceOptions(max_face=96), CropRules.single(4)
    )
    too_large, selected = chosen
    assert isinstance(too_large, FaceReport) and too_large.status == "too-large"
    assert "region > 96 px" in (too_large.reason or "")
    assert isinstance(selected, stages.SelectedFace)
    assert (
        too_large.size
        == pytest.approx(region_size(small_box.detected.landmarks))
        == pytest.approx(120, abs=1e-3)
    )
    assert selected.report.size == pytest.approx(region_size(small_region.detected.landmarks))
    assert selected.report.size == pytest.approx(80, abs=1e-3)


class _Source(ExemplarSource):
    def __init__(self, faces: list[Face]) -> None:
        self.faces_ = faces

    def candidates(self, target: TargetFace) -> list[Face]:
        return self.faces_


def _candidate(path: Path, id: int, photo_id: int, side: float, **kw) -> Face:
    lm = (CANONICAL_LANDMARKS * side + 20).astype(np.float32)
    return Face(
        id, photo_id, path, Box(20, 20, 20 + side, 20 + side), lm, 0.99, side, 1.0, identity_id=7, **kw
    )


def test_gather_exemplars_best_first_one_per_photo_and_says_why_not(tmp_path: Path, rgb: np.ndarray) -> None:
    big = tmp_path / "big.png"
    Image.fromarray(_astronaut(512)).save(big)
    other = tmp_path / "other.png"
    Image.fromarray(_astronaut(480)[:, ::-1].copy()).save(other)
    target = _face(10, 10, 40, face_id=1, photo_id=1, identity_id=7)
    (selected,) = stages.select_faces(rgb, [target], {0}, EnhanceOptions(), CropRules.single(4))
    assert isinstance(selected, stages.SelectedFace)
    candidates = [
        _candidate(big, 10, 2, 300),
        _candidate(big, 11, 2, 290),  # the same photo again: never a second exemplar from it
        _candidate(other, 12, 3, 280),
        _candidate(other, 13, 1, 280),  # the target's own photo
        _candidate(tmp_path / "missing.png", 14, 4, 400),  # unreadable
    ]
    crops = stages.ExemplarCrops()
    opts = EnhanceOptions(max_refs=3)
    found = stages.gather_exemplars(selected, rgb, _Source(candidates), crops, opts, tmp_path / "t.jpg")
    assert sorted(e.face_id for e in found.exemplars) == [10, 12] and found.reason is None
    assert all(e.crop.shape == (selected.hr_size, selected.hr_size, 3) for e in found.exemplars)
    assert found.identity_id == 7
    none = stages.gather_exemplars(selected, rgb, _Source([]), crops, opts, tmp_path / "t.jpg")
    assert none.exemplars == () and none.reason == "no other photo of this person"
    small = [_candidate(big, 20, 5, 30)]
    tiny = stages.gather_exemplars(selected, rgb, _Source(small), crops, opts, tmp_path / "t.jpg")
    assert tiny.reason is not None and tiny.reason.startswith("references smaller than")
    off = stages.gather_exemplars(
        selected, rgb, _Source(candidates), crops, EnhanceOptions(max_refs=0), tmp_path
    )
    assert off.exemplars == () and off.reason == "--max-refs 0"


def test_super_resolve_and_paste_faces(rgb: np.ndarray) -> None:
    from hime_cli.sr.inference import FaceSuperResolver
    from hime_cli.sr.registry import create_model
    from hime_cli.types import ExemplarSet

    (selected,) = stages.select_faces(rgb, [_face(30, 30, 40)], {0}, EnhanceOptions(), CropRules.single(4))
    assert isinstance(selected, stages.SelectedFace)
    torch.manual_seed(0)
    model = FaceSuperResolver(create_model("hime_test_x4"), "cpu", name="hime_test_x4")
    jobs = [stages.FaceJob(selected, ExemplarSet(None))]
    batches: list[int] = []
    (sr,) = stages.super_resolve(model, jobs, on_batch=batches.append)
    assert sr.shape == (selected.hr_size, selected.hr_size, 3) and batches == [1]
    out = np.zeros((640, 640, 3), np.float32)

    def put(x: int, y: int, block: np.ndarray) -> None:
        out[y : y + block.shape[0], x : x + block.shape[1]] = block

    white = np.ones_like(sr)  # an SR face unlike the photo: the paste must show where it went
    (pasted,) = stages.paste_faces(rgb, 4, jobs, [white], put, EnhanceOptions().paste)
    assert pasted.shape == (selected.lr_size * 4, selected.lr_size * 4, 3)
    from hime_cli.sr.pasteback import upscale_photo

    plain = upscale_photo(rgb, 4)
    changed = np.abs(out - plain).max(axis=2) > 0.02
    ys, xs = np.nonzero(changed)
    assert changed.any() and 30 * 4 <= xs.mean() <= 70 * 4 and 30 * 4 <= ys.mean() <= 70 * 4  # the face, only
    assert not changed[:100].any() and not changed[:, :100].any()


def test_write_output_is_checked_recorded_and_atomic(tmp_path: Path) -> None:
    from hime_cli.library.reader import load_image
    from hime_cli.library.writer import output_canvas

    src = tmp_path / "a.jpg"
    Image.fromarray(_astronaut(64)).save(src, quality=90)
    loaded = load_image(src)
    dest = tmp_path / "out" / "a.jpg"
    plan = PlannedPhoto(src, dest, Path("a.jpg"), tmp_path / "cmp")
    ledger = EnhanceLedger(tmp_path / "ledger.sqlite3")
    canvas = output_canvas(loaded, 128, 128)
    canvas.put(0, 0, cv2.resize(loaded.rgb, (128, 128)))
    stages.write_output(plan, loaded, canvas, None, "s1", ledger, in_place=False)
    assert Image.open(dest).size == (128, 128)
    assert ledger.is_done(src, dest, "s1", in_place=False) and not ledger.is_done(src, dest, "s2", False)
    assert [p.name for p in dest.parent.iterdir()] == ["a.jpg"]  # no temp file left
    ledger.close()
