"""The orchestration of ``hime enhance``: plan, skip finished work, scan, then chunks of photos
through the stages (:mod:`hime_cli.pipeline.stages`), with progress and per-photo errors."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hime_cli.pipeline import stages
from hime_cli.pipeline.compare import write_compare_index
from hime_cli.pipeline.ledger import EnhanceLedger
from hime_cli.pipeline.options import (
    CHUNK_FACES,
    CHUNK_PHOTOS,
    CHUNK_PIXELS,
    EnhanceOptions,
    EnhanceReport,
    PhotoReport,
    Progress,
    ProgressCallback,
    faces_failed,
    failure_reason,
)
from hime_cli.pipeline.photo import PreparedPhoto, finish_photo, prepare_photo
from hime_cli.pipeline.plan import plan_outputs
from hime_cli.pipeline.sources import ExemplarSource, IndexSource, RefsFolderSource, scan_missing

if TYPE_CHECKING:
    from hime_cli.sr.inference import CropRules

log = logging.getLogger(__name__)


class Enhancer:
    """Runs the pipeline for one set of options (see :func:`enhance`)."""

    def __init__(self, options: EnhanceOptions, progress: ProgressCallback | None = None) -> None:
        options.validate()
        self.options = options
        self._callback = progress
        self._counters = Progress(0, 0, 0, 0)
        self.model: Any = None  # FaceSuperResolver, loaded by a run that writes
        self.sr_seconds = 0.0
        self.crops = stages.ExemplarCrops()

    def _emit(self, **changes: Any) -> None:
        self._counters = replace(self._counters, **changes)
        if self._callback is not None:
            self._callback(self._counters)

    def _add(self, **steps: int) -> None:
        self._emit(**{k: getattr(self._counters, k) + n for k, n in steps.items()})

    def run(self, paths: Sequence[Path]) -> EnhanceReport:
        from hime_cli.library.index import library_roots
        from hime_cli.library.outputs import read_outputs

        start, opts = time.perf_counter(), self.options
        # the one output rule (pipeline.plan): default outputs beside the library, never inside
        # it; what hime wrote is never an input
        planned = plan_outputs(paths, opts, library_roots(), read_outputs())
        settings = opts.settings_key()
        reports: dict[int, PhotoReport] = {}
        with contextlib.ExitStack() as stack:
            if opts.in_place and not opts.dry_run:
                from hime_cli.library.backup import in_place_run_lock

                stack.enter_context(in_place_run_lock())  # two in-place runs at once: the second refused
            ledger = EnhanceLedger() if opts.write_photos and not opts.dry_run else None
            # the dry run is the real run's plan: it skips what the real run would skip (read-only)
            done = EnhanceLedger.open_readonly() if opts.write_photos and opts.dry_run else ledger
            for ld in {id(x): x for x in (ledger, done) if x is not None}.values():
                stack.callback(ld.close)
            todo = []
            for i, item in enumerate(planned):
                if isinstance(item, PhotoReport):
                    reports[i] = item
                    continue
                # "already done" is keyed by the source and the settings, wherever its output went
                found = (
                    done.find_done(item.source, item.dest, settings, opts.in_place)
                    if done is not None and not opts.force
                    else None
                )
                if found is None:
                    todo.append((i, item))
                    continue
                reason = "already enhanced with these settings"
                if found != item.dest:
                    reason += f" (the output is {found})"
                reports[i] = PhotoReport(item.source, found, "skipped", reason)
            if todo and opts.compare and opts.compare_dir is not None and not opts.dry_run:
                self._make_output_folder(_compare_root(todo), ledger)
            self._emit(
                photos_total=len(planned), photos_done=len(reports), message="planning", stage="planning"
            )
            if todo:
                self._process(todo, reports, settings, ledger)
        photos = tuple(reports[i] for i in range(len(planned)))
        return EnhanceReport(
            photos=photos, scale=opts.scale, max_face=opts.face_limit,
            model=self.model.name if self.model else None, device=self.model.device if self.model else None,
            seconds=time.perf_counter() - start, sr_seconds=self.sr_seconds,
            compare_index=write_compare_index(photos, opts.scale) if opts.compare else None,
        )  # fmt: skip

    @staticmethod
    def _make_output_folder(folder: Path, ledger: EnhanceLedger | None) -> None:
        """Create ``folder`` for hime's output; a folder hime creates is listed in the ledger, so
        that a scan never indexes what it holds (``library.outputs``)."""
        if folder.exists():
            return
        if ledger is None:  # `hime compare` writes no photo, but its sheets are not photos either
            with contextlib.closing(EnhanceLedger()) as own:
                own.record_folder(folder)
        else:
            ledger.record_folder(folder)
        folder.mkdir(parents=True, exist_ok=True)

    def _crop_rules(self) -> CropRules:
        """Which network each face goes to and how it is cropped for it (sr.inference.CropRules):
        the loaded model's, or for --dry-run (no model) the ones it would have."""
        if self.model:
            return self.model.rules
        from hime_cli.sr.inference import crop_rules

        return crop_rules(self.options.weights, self.options.scale)

    def _stage(self, name: str, stage: str | None = None) -> None:
        self._emit(message=name, stage=stage or name)

    def _process(
        self, todo: list, reports: dict[int, PhotoReport], settings: str, ledger: EnhanceLedger | None
    ) -> None:
        opts = self.options
        if not opts.dry_run:
            from hime_cli.sr.inference import load_super_resolver

            self._stage("loading the model")
            self.model = load_super_resolver(
                opts.weights, opts.scale, opts.device, opts.batch_pixels, mirror=opts.mirror
            )
        source: ExemplarSource
        if opts.refs_dir is not None:
            self._stage("reading the reference photos")
            source = RefsFolderSource(opts.refs_dir)
        else:
            self._stage("opening the library index")
            # `hime compare` and --dry-run only read the index: photos it lacks are detected here
            source = IndexSource.open(readonly=opts.dry_run or not opts.write_photos)
            if not (opts.dry_run or not opts.write_photos):  # the scan step: photos the index lacks
                scan_missing(
                    source,
                    [p.source for _, p in todo],
                    lambda m: self._stage(m, m.split(" ")[0] if m.startswith("scanning") else m),
                )
            readonly = EnhanceLedger.open_readonly() if ledger is None else None
            if ledger is not None or readonly is not None:
                source.outputs = (ledger or readonly).outputs()  # type: ignore[union-attr]
            if readonly is not None:
                readonly.close()
        self._stage("enhancing")
        try:
            for chunk in self._chunks(todo, source, reports):
                self._run_chunk(chunk, reports, settings, ledger)
        finally:
            source.close()

    def _chunks(self, todo: list, source: ExemplarSource, reports: dict[int, PhotoReport]) -> Iterator[list]:
        """Read photos and prepare their faces, yielding groups that share SR batches."""
        chunk: list[tuple[int, PreparedPhoto]] = []
        n_faces = n_pixels = 0
        rules = self._crop_rules()  # once: the same every photo
        for i, plan in todo:
            self._emit(message=plan.source.name)
            try:
                photo = prepare_photo(plan, source, self.crops, self.options, rules)
            except Exception as exc:  # one bad photo never stops the batch
                reports[i] = PhotoReport(plan.source, plan.dest, "failed", failure_reason(exc))
                self._add(photos_done=1)
                continue
            self._add(faces_total=len(photo.jobs))
            chunk.append((i, photo))
            n_faces += len(photo.jobs)
            n_pixels += photo.loaded.width * photo.loaded.height
            photo = None  # type: ignore[assignment]  # the chunk holds it (and frees it once written)
            if n_faces >= CHUNK_FACES or len(chunk) >= CHUNK_PHOTOS or n_pixels >= CHUNK_PIXELS:
                yield chunk
                chunk, n_faces, n_pixels = [], 0, 0
        if chunk:
            yield chunk

    def _run_chunk(
        self, chunk: list, reports: dict[int, PhotoReport], settings: str, ledger: EnhanceLedger | None
    ) -> None:
        """super_resolve every face of the chunk at once, then paste and write photo by photo."""
        jobs = [job for _, photo in chunk for job in photo.jobs]
        outputs: list = []
        if jobs and self.model is not None:
            t0 = time.perf_counter()
            try:
                outputs = stages.super_resolve(self.model, jobs, on_batch=lambda n: self._add(faces_done=n))
            except Exception as exc:  # e.g. out of GPU memory: these photos fail, the run goes on
                log.error("super-resolution failed for %d faces: %s", len(jobs), exc)
                for i, photo in chunk:
                    reports[i] = PhotoReport(
                        photo.plan.source,
                        photo.plan.dest,
                        "failed",
                        f"super-resolution: {failure_reason(exc)}",
                    )
                    self._add(photos_done=1)
                return
            self.sr_seconds += time.perf_counter() - t0
        for k in range(len(chunk)):
            (i, photo), chunk[k] = chunk[k], None  # free the pixels as soon as the photo is written
            sr, outputs = outputs[: len(photo.jobs)], outputs[len(photo.jobs) :]
            self._emit(message=photo.plan.source.name)
            try:
                reports[i] = finish_photo(photo, sr, self.options, settings, ledger)
            except Exception as exc:  # one bad photo never stops the batch
                reason = failure_reason(exc)
                reports[i] = PhotoReport(
                    photo.plan.source, photo.plan.dest, "failed", reason, faces_failed(photo.reports, reason)
                )
            self._add(photos_done=1)
            if self.options.dry_run:
                self._add(faces_done=len(photo.jobs))
            del photo


def _compare_root(todo: list) -> Path:
    return todo[0][1].compare_root


def enhance(
    paths: Sequence[str | Path],
    options: EnhanceOptions | None = None,
    progress: ProgressCallback | None = None,
) -> EnhanceReport:
    """Enhance every photo under ``paths`` (see :mod:`hime_cli.pipeline`); never raises for one bad photo."""
    return Enhancer(options or EnhanceOptions(), progress).run([Path(p) for p in paths])
