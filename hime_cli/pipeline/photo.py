"""One photo through the stages: :func:`prepare_photo` (read, select_faces, gather_exemplars) before
the chunk's shared SR batches, :func:`finish_photo` (paste_faces, write_output, compare sheet) after."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from hime_cli.pipeline import stages
from hime_cli.pipeline.compare import write_sheet
from hime_cli.pipeline.ledger import EnhanceLedger
from hime_cli.pipeline.options import EnhanceOptions, FaceReport, PhotoReport
from hime_cli.pipeline.plan import PlannedPhoto
from hime_cli.pipeline.sources import ExemplarSource
from hime_cli.types import LoadedImage

if TYPE_CHECKING:
    from hime_cli.sr.inference import CropRules

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedPhoto:
    """A photo read, its faces selected and their exemplars gathered: ready for SR."""

    plan: PlannedPhoto
    loaded: LoadedImage
    reports: tuple[FaceReport, ...]  # one per face, in order
    jobs: tuple[stages.FaceJob, ...]
    started: float
    source: bytes | None  # the bytes ``loaded`` came from (the original's, for a photo replaced in place)


def prepare_photo(
    plan: PlannedPhoto,
    source: ExemplarSource,
    crops: stages.ExemplarCrops,
    opts: EnhanceOptions,
    rules: CropRules,
) -> PreparedPhoto:
    """Read a photo (its original, when hime replaced it in place), find its faces, then
    select_faces → gather_exemplars."""
    from hime_cli.library.backup import load_original_with_bytes

    started = time.perf_counter()
    if opts.in_place and stages.restore_if_enhanced(plan.source, opts.dry_run):
        log.info("%s: restored the original before enhancing it again", plan.source)
    # A photo enhanced in place earlier is enhanced again from its original, never from itself.
    loaded, original = load_original_with_bytes(plan.source)
    faces = source.faces(plan.source, loaded)
    reports: list[FaceReport] = []
    jobs: list[stages.FaceJob] = []
    for item in stages.select_faces(loaded.rgb, faces, source.targets(faces, opts), opts, rules):
        if isinstance(item, stages.SelectedFace):
            refs = stages.gather_exemplars(item, loaded.rgb, source, crops, opts, plan.source)
            jobs.append(stages.FaceJob(item, refs))
            paths = tuple(str(e.photo_path) for e in refs.exemplars)
            status = "would-enhance" if opts.dry_run else "enhanced"
            item = replace(
                item.report, status=status, lr_size=item.lr_size, refs=paths, refs_reason=refs.reason
            )
        reports.append(item)
    return PreparedPhoto(
        plan, loaded, tuple(reports), tuple(jobs), started, None if opts.dry_run else original
    )


def finish_photo(
    photo: PreparedPhoto,
    sr: Sequence[np.ndarray],
    opts: EnhanceOptions,
    settings: str,
    ledger: EnhanceLedger | None,
) -> PhotoReport:
    """paste_faces → write_output (and the compare sheet) for one photo, given its SR faces."""
    from hime_cli.library.writer import output_canvas
    from hime_cli.sr.pasteback import upscale_photo

    plan, loaded, s = photo.plan, photo.loaded, opts.scale
    size, out_size = (loaded.width, loaded.height), (loaded.width * s, loaded.height * s)
    if not photo.jobs and not opts.all_photos:  # a plain resize gains nothing: not written
        return PhotoReport(
            plan.source, None, "no-face", "no face to enhance (--all-photos upscales it anyway)",
            photo.reports, size, out_size, seconds=time.perf_counter() - photo.started,
        )  # fmt: skip
    if opts.dry_run:
        return PhotoReport(
            plan.source, plan.dest, "dry-run", None, photo.reports, size, out_size,
            seconds=time.perf_counter() - photo.started, out_format=plan.out_format, note=plan.note,
        )  # fmt: skip
    # The output is assembled block by block (Lanczos strips, then a window per group of
    # faces) straight into its final pixels: no float copy of the whole photo (docs/enhance.md).
    canvas = output_canvas(loaded, *out_size, plan.out_format) if opts.write_photos else None
    results = stages.paste_faces(loaded.rgb, s, photo.jobs, sr, canvas.put if canvas else None, opts.paste)
    sheet = write_sheet(plan, loaded.rgb, s, photo.jobs, results) if opts.compare and photo.jobs else None
    if canvas is not None:
        alpha = upscale_photo(loaded.alpha[..., None], s)[..., 0] if loaded.alpha is not None else None
        stages.write_output(plan, loaded, canvas, alpha, settings, ledger, opts.in_place, photo.source)
    return PhotoReport(
        plan.source, plan.dest if opts.write_photos else None, "done", None, photo.reports, size, out_size,
        sheet, time.perf_counter() - photo.started, out_format=plan.out_format, note=plan.note,
    )  # fmt: skip
