"""``hime enhance`` and ``hime compare``: sharpen the small faces of photos, or preview it side by side."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from hime_cli.cli.common import (
    EXIT_FAILED,
    err,
    out,
    print_json,
    progress_enabled,
    progress_lines_enabled,
    safe,
)
from hime_cli.cli.options import (
    AllFacesOpt,
    AllPhotosOpt,
    DeviceOpt,
    HrSizeOpt,
    JsonOpt,
    MaxFaceOpt,
    MaxRefsOpt,
    MinScoreOpt,
    MirrorOpt,
    PathsArg,
    RefsOpt,
    ScaleOpt,
    WeightsOpt,
)
from hime_cli.pipeline.options import DEFAULT_DEVICE, DEFAULT_MAX_REFS, DEFAULT_MIN_SCORE, DEFAULT_SCALE

if TYPE_CHECKING:
    from hime_cli.pipeline import EnhanceOptions, EnhanceReport, Progress


def register(app: typer.Typer) -> None:
    """Register ``enhance`` and ``compare`` on the root app."""
    app.command("enhance")(enhance_cmd)
    app.command("compare")(compare_cmd)


def enhance_cmd(
    paths: PathsArg,
    scale: ScaleOpt = DEFAULT_SCALE,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Output folder (mirrors relative paths). Default: hime-enhanced/ next to each input.",
            show_default=False,
        ),
    ] = None,
    in_place: Annotated[
        bool,
        typer.Option(
            "--in-place", help="Replace the originals (after a verified backup; `hime restore` undoes)."
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Redo photos already enhanced with the same settings.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would change; write nothing.")
    ] = False,
    max_face: MaxFaceOpt = None,
    min_score: MinScoreOpt = DEFAULT_MIN_SCORE,
    max_refs: MaxRefsOpt = DEFAULT_MAX_REFS,
    refs: RefsOpt = None,
    all_faces: AllFacesOpt = False,
    all_photos: AllPhotosOpt = False,
    hr_size: HrSizeOpt = None,
    weights: WeightsOpt = None,
    mirror: MirrorOpt = True,
    device: DeviceOpt = DEFAULT_DEVICE,
    compare: Annotated[
        bool, typer.Option("--compare", help="Also write before/after face sheets (PNG + an HTML page).")
    ] = False,
    compare_dir: Annotated[
        Path | None,
        typer.Option(
            "--compare-dir",
            help="Where --compare writes (default: hime-compare/ next to the output).",
            show_default=False,
        ),
    ] = None,  # fmt: skip
    json_out: JsonOpt = False,
) -> None:
    """Upscale photos ×SCALE with their small faces super-resolved from the person's own photos.

    --scale 1 restores the faces and keeps the photo's size: every pixel outside the faces stays
    as it was (JPEG, HEIC and WebP photos are then written as PNG, which keeps them).

    Examples:

      hime enhance ~/Pictures/2009 --scale 4

      hime enhance ~/Pictures/2009 --scale 1

      hime enhance --refs ~/refs/grandma old_scan.jpg --out enhanced/
    """
    from hime_cli.pipeline import EnhanceOptions

    options = EnhanceOptions(
        scale=scale,
        out_dir=out_dir,
        in_place=in_place,
        force=force,
        dry_run=dry_run,
        max_face=max_face,
        min_score=min_score,
        max_refs=max_refs,
        refs_dir=refs,
        all_faces=all_faces,
        all_photos=all_photos,
        hr_size=hr_size,
        weights=weights,
        mirror=mirror,
        device=device,
        compare=compare or compare_dir is not None,
        compare_dir=compare_dir,
    )
    _run(paths, options, json_out)


def compare_cmd(
    paths: PathsArg,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Where to write the sheets (default: hime-compare/ next to each input).",
            show_default=False,
        ),
    ] = None,  # fmt: skip
    scale: ScaleOpt = DEFAULT_SCALE,
    max_face: MaxFaceOpt = None,
    min_score: MinScoreOpt = DEFAULT_MIN_SCORE,
    max_refs: MaxRefsOpt = DEFAULT_MAX_REFS,
    refs: RefsOpt = None,
    all_faces: AllFacesOpt = False,
    hr_size: HrSizeOpt = None,
    weights: WeightsOpt = None,
    mirror: MirrorOpt = True,
    device: DeviceOpt = DEFAULT_DEVICE,
    json_out: JsonOpt = False,
) -> None:
    """Write side-by-side face crops (input bicubic | hime | exemplars) without touching any photo.

    One PNG per photo plus an index.html to look at them in a browser.
    """
    from hime_cli.pipeline import EnhanceOptions

    options = EnhanceOptions(
        scale=scale,
        max_face=max_face,
        min_score=min_score,
        max_refs=max_refs,
        refs_dir=refs,
        all_faces=all_faces,
        hr_size=hr_size,
        weights=weights,
        mirror=mirror,
        device=device,
        compare=True,
        compare_dir=out_dir,
        write_photos=False,
    )
    _run(paths, options, json_out)


def _setup_logging() -> None:
    from rich.logging import RichHandler

    logger = logging.getLogger("hime_cli")
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        handler = RichHandler(console=err, show_time=False, show_path=False, markup=False)
        handler.setLevel(logging.INFO if _verbose() else logging.WARNING)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO if _verbose() else logging.WARNING)


def _verbose() -> bool:
    import os

    return bool(os.environ.get("HIME_DEBUG") or os.environ.get("HIME_VERBOSE"))


def _run(paths: list[Path], options: EnhanceOptions, json_out: bool) -> None:
    from hime_cli.pipeline import enhance

    _setup_logging()
    if progress_enabled():
        report = _with_progress(paths, options)
    elif progress_lines_enabled():
        report = _with_log_lines(paths, options)
    else:
        report = enhance(paths, options)
    if json_out:
        print_json(report.to_json())
    else:
        _print_report(report, options)
    if report.failed:
        raise typer.Exit(EXIT_FAILED)


class LogLines:
    """Progress when stderr is not a terminal (a log file, CI): one line per stage, one per
    ``every`` photos with the elapsed time and an ETA, and a final summary line."""

    def __init__(self, write: Callable[[str], None], every: int | None = None) -> None:
        self.write = write
        self.every = every
        self.start = time.monotonic()
        self.stage = ""
        self.enhancing_since: float | None = None
        self.done_at_start = 0
        self.last_done = -1

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        if p.stage and p.stage != self.stage:
            self.stage = p.stage
            self.write(f"hime: {p.stage}…")
            if p.stage == "enhancing":
                self.enhancing_since, self.done_at_start = now, p.photos_done
        every = self.every or max(1, min(25, round(p.photos_total / 20)))
        if p.photos_done == self.last_done or not p.photos_total or not p.photos_done:
            return
        if p.photos_done % every and p.photos_done != p.photos_total:
            return
        self.last_done = p.photos_done
        line = f"hime: {p.photos_done}/{p.photos_total} photos, {p.faces_done} faces, {_duration(now - self.start)}"
        if (
            self.enhancing_since is not None
            and p.photos_done > self.done_at_start
            and p.photos_done < p.photos_total
        ):
            rate = (now - self.enhancing_since) / (p.photos_done - self.done_at_start)
            line += f", ETA {_duration(rate * (p.photos_total - p.photos_done))}"
        self.write(line)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _with_log_lines(paths: list[Path], options: EnhanceOptions) -> EnhanceReport:
    from hime_cli.pipeline import enhance

    lines = LogLines(lambda text: err.print(safe(text), highlight=False))
    report = enhance(paths, options, lines)
    summary = ", ".join(
        f"{report.count(status)} {name}"
        for status, name in (
            ("done", "done"),
            ("skipped", "skipped"),
            ("no-face", "no face"),
            ("failed", "failed"),
            ("dry-run", "planned"),
        )
        if report.count(status) or status in ("done", "failed")
    )
    err.print(
        safe(f"hime: finished: {summary}, {report.faces_enhanced} faces, {_duration(report.seconds)}"),
        highlight=False,
    )
    return report


def _with_progress(paths: list[Path], options: EnhanceOptions) -> EnhanceReport:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from hime_cli.pipeline import enhance

    columns = (
        TextColumn("{task.description:<7}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("[dim]{task.fields[note]}"),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        photos = bar.add_task("photos", total=None, note="")
        faces = bar.add_task("faces", total=None, note="")

        def update(p: Progress) -> None:  # type: ignore[no-redef]
            # while the model loads (20-30 s) the bar says so instead of a bare "0/?"
            bar.update(photos, total=p.photos_total, completed=p.photos_done, note=safe(p.message))
            bar.update(faces, total=max(p.faces_total, 1), completed=p.faces_done, note="")

        return enhance(paths, options, update)


def _print_report(report: EnhanceReport, options: EnhanceOptions) -> None:
    from rich.table import Table

    if options.dry_run:
        table = Table(title="Would enhance", box=None, pad_edge=False)
        for col in ("photo", "output", "faces", "without refs", "left alone"):
            table.add_column(col, overflow="fold")
        for p in report.photos:
            if p.status == "dry-run":
                left = len(p.faces) - p.faces_enhanced
                table.add_row(
                    safe(p.source), safe(p.dest), str(p.faces_enhanced), str(p.faces_without_refs), str(left)
                )
        out.print(table)
    summary = Table(title=f"hime enhance ×{report.scale}", box=None, pad_edge=False, show_header=False)
    summary.add_column(style="bold")
    summary.add_column(justify="right")
    rows = [
        ("photos done", report.count("done")),
        ("skipped (already done)", report.count("skipped")),
        ("skipped (no face to enhance)", report.count("no-face")),
        ("failed", report.count("failed")),
        ("faces enhanced", report.faces_enhanced),
        ("faces without references", report.faces_without_refs),
    ]
    rows += [(f"  {reason}", n) for reason, n in sorted(report.without_refs_reasons.items())]
    if options.dry_run:
        rows.insert(0, ("photos to enhance", report.count("dry-run")))
    fallbacks = [p for p in report.photos if p.out_format and p.status != "failed"]
    if fallbacks:
        rows.append(
            (
                f"written as another format ({', '.join(sorted({p.out_format or '' for p in fallbacks}))})",
                len(fallbacks),
            )
        )
    for name, value in rows:
        summary.add_row(name, str(value))
    summary.add_row("model", safe(f"{report.model or '-'} on {report.device or '-'}"))
    summary.add_row("time", f"{report.seconds:.1f} s (SR {report.sr_seconds:.1f} s)")
    out.print(summary)
    failed = [p for p in report.photos if p.status == "failed"]
    for title, why, photos in (("Failed", "reason", failed), ("Written in another format", "why", fallbacks)):
        if photos:
            table = Table(title=title, box=None, pad_edge=False)
            table.add_column("photo", overflow="fold")
            table.add_column(why, overflow="fold")
            for p in photos:
                table.add_row(safe(p.source), safe((p.reason if why == "reason" else p.note) or ""))
            out.print(table)
    if report.compare_index is not None:
        out.print(f"Before/after sheets: {safe(report.compare_index)}", highlight=False)
    written = {p.dest.parent for p in report.photos if p.status == "done" and p.dest is not None}
    if written and options.write_photos and not options.in_place:
        roots = sorted({str(_common_root(written))})
        out.print(f"Enhanced photos in: {', '.join(safe(r) for r in roots)}", highlight=False)


def _common_root(folders: set[Path]) -> Path:
    import os

    return Path(os.path.commonpath([str(f) for f in folders]))
