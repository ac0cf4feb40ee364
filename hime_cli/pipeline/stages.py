"""The stages of ``hime enhance`` for one photo, each a plain function over frozen dataclasses:

    select_faces → gather_exemplars (→ ExemplarSet) → super_resolve → paste_faces → write_output

:mod:`hime_cli.pipeline.run` chains them over chunks of photos (faces of many photos share SR
batches); every stage can be called, and is tested, alone.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hime_cli.errors import HimeError, ImageWriteError
from hime_cli.faces.align import (
    alignment_matrix,
    crop_image,
    face_crop,
    region_size,
    resize_crop,
    upscaled_crop_matrix,
    warp_to_crop,
)
from hime_cli.files import atomic_write, sha256_file
from hime_cli.identities.exemplars import APPEARANCE_POOL, order_by_appearance, ranked_candidates
from hime_cli.luma import luma
from hime_cli.pipeline.options import (
    CROP_CACHE,
    REF_MIN_FRACTION,
    REF_MIN_GAIN,
    SAME_SHOT_DIFF,
    EnhanceOptions,
    FaceReport,
)
from hime_cli.pipeline.sources import ExemplarSource, IndexSource, RefsFolderSource, TargetFace
from hime_cli.sr.pasteback import FacePaste, PasteOptions, render_upscaled
from hime_cli.types import Exemplar, ExemplarSet, Face, LoadedImage

if TYPE_CHECKING:
    from hime_cli.pipeline.ledger import EnhanceLedger
    from hime_cli.pipeline.plan import PlannedPhoto
    from hime_cli.sr.inference import CropRules, FaceSuperResolver, RoutedSuperResolver

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------- select_faces


@dataclass(frozen=True)
class SelectedFace:
    """A face chosen for SR, with its LR crop (the crop policy of ``faces.align``)."""

    index: int  # among the photo's faces
    face: TargetFace
    report: FaceReport  # its report so far (box, size, score, identity)
    matrix: np.ndarray  # photo → LR crop (2, 3)
    lr_size: int  # L
    lr: np.ndarray  # (L, L, 3) float32
    hr_size: int  # L · model scale: the SR crop, and the exemplars' crop size
    route: int = 0  # the network it goes to (sr.inference.CropRules; 0: the main one)


def select_faces(
    rgb: np.ndarray,
    faces: Sequence[TargetFace],
    targets: set[int],
    options: EnhanceOptions,
    rules: CropRules,
) -> tuple[FaceReport | SelectedFace, ...]:
    """Every face of a photo in order: a :class:`FaceReport` saying why it is left alone
    (not-target, low-score, too-large), or a :class:`SelectedFace` cropped for SR.

    ``rules`` names each face's network by its size and the zoom its LR crop is sized for
    (``faces.align.face_crop``): a ×4 network trained for ×8 takes faces from 10 px up at their
    own size (16 px enlarged below), its references and output are ``4L`` px."""
    chosen: list[FaceReport | SelectedFace] = []
    for k, face in enumerate(faces):
        det = face.detected
        size = region_size(det.landmarks)  # the one face size: the canonical crop region's side
        base = FaceReport(tuple(det.box.as_list()), size, det.score, "", face.identity_id)  # type: ignore[arg-type]
        if k not in targets:
            chosen.append(replace(base, status="not-target", reason="not the person in --refs"))
        elif det.score < options.min_score:
            chosen.append(replace(base, status="low-score", reason=f"detection score < {options.min_score}"))
        elif size > options.face_limit:
            chosen.append(
                replace(base, status="too-large", reason=f"face region > {options.face_limit:g} px")
            )
        else:
            route = rules.for_region(size)
            matrix, lr_size = face_crop(det.landmarks, route.crop_scale)
            lr = crop_image(rgb, matrix, lr_size)
            hr_size = lr_size * route.model_scale
            chosen.append(SelectedFace(k, face, base, matrix, lr_size, lr, hr_size, route.route))
    return tuple(chosen)


# ---------------------------------------------------------------------------------- gather_exemplars


class ImageCache:
    """A few decoded exemplar photos (decoding a big JPEG costs more than cropping it many times)."""

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self._items: OrderedDict[Path, np.ndarray] = OrderedDict()

    def get(self, path: Path) -> np.ndarray:
        from hime_cli.library.backup import load_original

        if path in self._items:
            self._items.move_to_end(path)
            return self._items[path]
        rgb = load_original(path).rgb  # a photo enhanced in place serves its original face
        self._items[path] = rgb
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return rgb


class ExemplarCrops:
    """Aligned exemplar crops, cached (a person's exemplars serve many faces, a photo many crops)."""

    def __init__(self, capacity: int = CROP_CACHE) -> None:
        self.capacity = capacity
        self.images = ImageCache()
        self._crops: OrderedDict[tuple[str, bytes, int], np.ndarray] = OrderedDict()

    def get(self, cand: Face, hr_size: int) -> np.ndarray | None:
        """The candidate's aligned ``hr_size`` crop; None (logged) when its photo is unreadable."""
        key = (str(cand.photo_path), np.asarray(cand.landmarks, np.float32).tobytes(), hr_size)
        crop = self._crops.get(key)
        if crop is not None:
            self._crops.move_to_end(key)
            return crop
        try:
            rgb = self.images.get(Path(cand.photo_path))
        except (HimeError, OSError) as exc:
            log.warning("exemplar %s unreadable: %s", cand.photo_path, exc)
            return None
        crop = warp_to_crop(rgb, alignment_matrix(cand.landmarks, hr_size), hr_size)
        self._crops[key] = crop
        while len(self._crops) > self.capacity:
            self._crops.popitem(last=False)
        return crop


def ref_size_tiers(landmarks: np.ndarray, hr_size: int, hr_size_option: int | None) -> tuple[float, ...]:
    """The native face region (px) a reference needs, best tier first.

    ``--hr-size N``: N. Otherwise the SR crop's resolution ``L·s``, then, to fill the quota,
    ``min(REF_MIN_FRACTION · L·s, REF_MIN_GAIN · R)`` for a face of region ``R``: twice the
    face's own detail is enough to help it (a 42 px face takes 100 px references).
    """
    if hr_size_option is not None:
        return (float(hr_size_option),)
    fill = min(REF_MIN_FRACTION * hr_size, REF_MIN_GAIN * region_size(landmarks))
    return (float(hr_size), fill)


def gather_exemplars(
    selected: SelectedFace,
    rgb: np.ndarray,
    source: ExemplarSource,
    crops: ExemplarCrops,
    options: EnhanceOptions,
    photo: Path,
) -> ExemplarSet:
    """Up to ``max_refs`` exemplars for a face: candidates in the policy's order
    (:func:`hime_cli.identities.exemplars.ranked_candidates`), never a copy of the photo itself
    (index mode: :func:`same_shot`); of the ``APPEARANCE_POOL`` best, those that look most like
    the LR face. An empty set says why (``reason``: the words the summary counts)."""
    face = selected.face
    if options.max_refs == 0:
        return ExemplarSet(face.identity_id, reason="--max-refs 0")
    tiers = ref_size_tiers(face.landmarks, selected.hr_size, options.hr_size)
    check_copies = isinstance(source, IndexSource)
    # the canonical (rotated) LR crop for the same-shot check and the appearance order, made only
    # once a candidate's crop is at hand
    canonical: np.ndarray | None = None
    pool: list[tuple[np.ndarray, Face]] = []
    pool_size = max(options.max_refs, APPEARANCE_POOL)
    candidates = source.candidates(face)
    copies = unreadable = 0
    for cand in ranked_candidates(face, candidates, tiers):
        if len(pool) >= pool_size:
            break
        crop = crops.get(cand, selected.hr_size)
        if crop is None:
            unreadable += 1
            continue
        if canonical is None:
            canonical = warp_to_crop(
                rgb, alignment_matrix(face.landmarks, selected.lr_size), selected.lr_size
            )
        if check_copies and same_shot(canonical, crop):
            log.info("exemplar %s is a copy of %s; not used", cand.photo_path, photo)
            copies += 1
            continue
        pool.append((crop, cand))
    # of the best-scored candidates, those that look most like the LR face
    order = order_by_appearance(canonical, [c for c, _ in pool]) if canonical is not None else []
    exemplars = tuple(
        Exemplar(pool[i][0], pool[i][1].id, Path(pool[i][1].photo_path)) for i in order[: options.max_refs]
    )
    reason = None if exemplars else why_no_refs(source, face, candidates, tiers[-1], copies, unreadable)
    return ExemplarSet(face.identity_id, exemplars, reason)


def why_no_refs(
    source: ExemplarSource,
    face: TargetFace,
    candidates: Sequence[Face],
    min_region: float,
    copies: int,
    unreadable: int,
) -> str:
    """Why a face got no references, in the words the summary counts (before any " (detail)")."""
    refs_mode = isinstance(source, RefsFolderSource)
    if not refs_mode and face.identity_id is None:
        return "no photo of this person (the face is in no identity; `hime scan` the person's photos)"
    others = [c for c in candidates if c.id != face.id and c.photo_id != face.photo_id]
    if not others:
        return "no face found in --refs" if refs_mode else "no other photo of this person"
    usable = [c for c in others if c.usable]
    if not usable:
        return f"references rejected or of poor quality ({len(others)} faces)"
    largest = max(region_size(c.landmarks) for c in usable)
    if largest < min_region:
        return (
            f"references smaller than {min_region:.0f} px (the largest is {largest:.0f} px; "
            "--hr-size lowers the bar)"
        )
    if copies:
        return f"the only references are copies of this photo ({copies})"
    if unreadable:
        return f"reference photos unreadable ({unreadable})"
    return "no usable reference"


def same_shot(lr_crop: np.ndarray, ref_crop: np.ndarray) -> bool:
    """Is ``ref_crop`` (at L·s) the same picture as ``lr_crop`` (at L)? Both aligned with one policy.

    Mean absolute difference of the zero-mean grey crops at the LR size, after a 1 px blur that
    absorbs the landmark jitter of a small face. On celeba-wild dev (12 identities, faces ≥ 100 px
    downscaled ×4) a photo against its own original scores 0.011-0.064, against other photos of the
    same person 0.089 and up (except near-duplicate shots, 0.017-0.026, which are copies too).
    """
    import cv2

    size = lr_crop.shape[0]
    small = cv2.resize(ref_crop, (size, size), interpolation=cv2.INTER_AREA)
    a = cv2.GaussianBlur(luma(lr_crop), (0, 0), 1.0)
    b = cv2.GaussianBlur(luma(small), (0, 0), 1.0)
    diff = float(np.abs((a - a.mean()) - (b - b.mean())).mean())
    return diff < SAME_SHOT_DIFF


# ---------------------------------------------------------------------------------- super_resolve


@dataclass(frozen=True)
class FaceJob:
    """A selected face with its exemplars: one input of :func:`super_resolve`."""

    selected: SelectedFace
    exemplars: ExemplarSet


def super_resolve(
    model: FaceSuperResolver | RoutedSuperResolver,
    jobs: Sequence[FaceJob],
    on_batch: Callable[[int], None] | None = None,
) -> list[np.ndarray]:
    """The SR crop (L·model_scale px) of every job, in order; faces of equal L share batches."""
    from hime_cli.sr.inference import SRJob

    return model.run(
        [SRJob(j.selected.lr, tuple(e.crop for e in j.exemplars.exemplars), j.selected.route) for j in jobs],
        on_batch=on_batch,
    )


# ---------------------------------------------------------------------------------- paste_faces


def paste_faces(
    rgb: np.ndarray,
    scale: int,
    jobs: Sequence[FaceJob],
    sr: Sequence[np.ndarray],
    put: Callable[[int, int, np.ndarray], None] | None,
    paste: PasteOptions,
) -> list[np.ndarray]:
    """The photo upscaled ``scale``× (Lanczos) with every SR face blended in through the inverse of
    its crop, block by block into ``put`` (the output's pixels; None: only the faces are made).
    Returns each face as pasted (colour-matched, blended) at L·scale px, for the compare sheet."""
    pastes = [
        # upscaled photo → SR crop (L·s px)
        FacePaste(
            resize_crop(out, j.selected.lr_size * scale), upscaled_crop_matrix(j.selected.matrix, scale)
        )
        for j, out in zip(jobs, sr, strict=True)
    ]
    return render_upscaled(rgb, scale, pastes, put, scale, paste, background=put is not None)


# ---------------------------------------------------------------------------------- write_output


def write_output(
    plan: PlannedPhoto,
    loaded: LoadedImage,
    canvas: Any,
    alpha: np.ndarray | None,
    settings: str,
    ledger: EnhanceLedger | None,
    in_place: bool,
    source: bytes | None = None,
) -> None:
    """Encode into a temp file, check it decodes, record it in the ledger, then replace ``dest``.

    The encoder writes straight into the temp file (no copy of the encoded photo in memory)
    and the canvas is dropped as soon as it is encoded, before the decode check. The output's
    hash is recorded before the rename (a run killed in between still knows its work).
    ``source``: the bytes ``loaded`` was decoded from; the encoder settings (DPI above all)
    come from them, not from the file at the photo's path, which may be an enhanced version.
    In place, the original is backed up (verified) first and swapped atomically (``library.backup``).
    """
    from hime_cli.library.writer import encode_image_to, written_check

    width, height = canvas.size

    def encode(fh: Any) -> None:
        encode_image_to(fh, loaded, canvas.pixels, alpha, source=source, out_format=plan.out_format)
        canvas.release()

    check = written_check(width, height)
    if in_place:  # the manifest records what hime wrote; the ledger the settings
        from hime_cli.library.backup import replace_in_place

        if ledger is not None:
            ledger.expect(plan.dest, settings, None, None, source=plan.source)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                encode(fh)
            check(tmp)

        if replace_in_place(plan.source, write).already_replaced:
            raise ImageWriteError(f"{plan.source} is already an enhanced version; nothing replaced.")
    else:
        source_sha = sha256_file(plan.source)

        def check_and_record(tmp: Path) -> None:
            check(tmp)
            if ledger is not None:
                ledger.expect(plan.dest, settings, source_sha, sha256_file(tmp), source=plan.source)

        if plan.out_root is not None and ledger is not None and not plan.out_root.exists():
            ledger.record_folder(plan.out_root)  # hime's own folder: a scan never enters it
        plan.dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(plan.dest, encode, check=check_and_record)
    if ledger is not None:
        ledger.finish(plan.dest)


def restore_if_enhanced(path: Path, dry_run: bool) -> bool:
    """In-place re-run with other settings (or --force): start again from the original.

    When ``path`` is a file hime put in place, its verified original is restored first (so
    a photo is never enhanced twice over). Returns True when that was (or, dry run, would be) done.
    """
    from hime_cli.library.backup import restore, written_in_place

    if not written_in_place(path):
        return False
    if not dry_run:
        report = restore([path])
        if not report.ok:
            problems = report.refused + report.missing + report.failed
            reason = problems[0][1] if problems else "unknown"
            raise ImageWriteError(f"cannot restore the original of {path} before re-enhancing it: {reason}")
    return True
