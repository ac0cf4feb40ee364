"""What ``hime enhance`` is asked (:class:`EnhanceOptions`, the defaults the CLI shows) and what it
reports (:class:`EnhanceReport`, :class:`PhotoReport`, :class:`FaceReport`, :class:`Progress`).

Imports neither torch nor the rest of the pipeline: the CLI's options take their defaults from here
while ``hime --help`` stays instant."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hime_cli.errors import HimeError, UsageError

if TYPE_CHECKING:
    from hime_cli.sr.pasteback import PasteOptions

log = logging.getLogger(__name__)

SCALES = (1, 2, 4, 8)  # 1: restore faces, keep the size (docs/enhance.md)
OUTPUT_FOLDER = "hime-enhanced"
COMPARE_FOLDER = "hime-compare"
DEFAULT_SCALE = 4
DEFAULT_DEVICE = "auto"
DEFAULT_MIN_SCORE = 0.90
DEFAULT_MAX_REFS = 3
# Measured at ×4 (benchmarks/bench_enhance.py --sweep, docs/enhance.md): the gain over Lanczos on
# the face box falls from +1.39 dB at 32 px faces to +0.40 dB at 96 px, the largest size the dev
# photos can give a ground truth for; beyond it nothing shows that HIME helps, and the SR cost grows
# with the face's area. ×2 runs the same ×4 model on the same input faces: the same limit. ×8 runs the
# ×4 model too (sr.inference.default_weights_name); its gain is measured positive up to 48 px faces,
# the largest a ×8 ground truth exists for: half the limit. --scale 1 (restore at native
# size, benchmarks/restore_native.py, docs/enhance.md): on dev photos re-saved as JPEG q50 faces of
# boxes up to 160 px (regions 74-206 px) gain +0.53 to +1.34 dB on average, blurred ones neither
# gain nor lose (-0.06 to +0.12 dB); beyond 160 px nothing was measured.
# Those sizes were detection box sides (96 / 48 / 160); the limit is now the crop region side
# (faces.align.region_size, the one face size of issue #10), converted with the measured median
# region / box ratio of MTCNN faces, 1.12 (celeba-wild dev and ../shared/data/photos, docs/enhance.md):
# 96 → 108, 48 → 54, 160 → 180.
_DEFAULT_MAX_FACE = {1: 180.0, 2: 108.0, 4: 108.0, 8: 54.0}
# A reference folder face must be at least this close to be "the person". The embeddings are
# flip-averaged unit vectors (hime_cli/faces/embed.py): on 6 dev people, 3 % of a person's own
# faces lie beyond 0.45 from their medoid and 1 % of other people's within it (at the raw-descriptor
# bar of 0.60 that these vectors replaced, 61 % of other people's faces passed).
REFS_MATCH_DISTANCE = 0.45
# Two crops this similar (see _same_shot) are the same shot, e.g. a resized export of the photo
# being enhanced: never a reference.
SAME_SHOT_DIFF = 0.075
# An exemplar should have at least the SR crop's resolution; when too few do, ones with this
# fraction of it still carry far more detail than the input face and fill the quota.
REF_MIN_FRACTION = 0.75
# ... and never more than this many times the target face's own region (the reference size rule is
# relative to the face: a 42 px face is sharpened by 100 px references, it does not need 165 px).
REF_MIN_GAIN = 2.0
CROP_CACHE = 256  # aligned exemplar crops kept in memory (≈ 200 KB each at 128 px)
# How many faces of how many photos one SR round gathers (faces of many photos share batches).
CHUNK_FACES = 64
CHUNK_PHOTOS = 16
CHUNK_PIXELS = 40_000_000  # input pixels held at once (float32 RGB: ~480 MB)


def _paste_options() -> PasteOptions:
    from hime_cli.sr.pasteback import PasteOptions  # lazy: this module is torch-free (the CLI reads it)

    return PasteOptions()


def default_max_face(scale: int) -> float:
    """Default ``--max-face`` (crop region side, ``faces.align.region_size``, input pixels)."""
    return _DEFAULT_MAX_FACE[scale]


# ---------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class EnhanceOptions:
    scale: int = DEFAULT_SCALE
    out_dir: Path | None = None
    in_place: bool = False
    force: bool = False
    dry_run: bool = False
    max_face: float | None = None  # None: default_max_face(scale)
    min_score: float = DEFAULT_MIN_SCORE
    max_refs: int = DEFAULT_MAX_REFS
    refs_dir: Path | None = None
    all_faces: bool = False  # with refs_dir: every small face, not only the best match
    weights: str | None = None
    mirror: bool = True  # run the network on each face and its mirror image, averaged (sr.ensemble)
    device: str = DEFAULT_DEVICE
    compare: bool = False  # write before/after sheets
    compare_dir: Path | None = None
    write_photos: bool = True  # False: `hime compare` (sheets only; the index is only read)
    all_photos: bool = False  # also upscale photos with no face to enhance (skipped by default)
    paste: PasteOptions = field(default_factory=lambda: _paste_options())
    batch_pixels: int | None = None
    hr_size: int | None = None  # references need a face region of at least this (px); None: the rule

    @property
    def face_limit(self) -> float:
        return self.max_face if self.max_face is not None else default_max_face(self.scale)

    def validate(self) -> None:
        """Raise :class:`UsageError` for options that cannot work together (before any work)."""
        if self.scale not in SCALES:
            raise UsageError(
                f"--scale must be 1, 2, 4 or 8, not {self.scale}.",
                hint="--scale 1 restores faces and keeps the photo's size.",
            )
        if self.in_place and self.out_dir is not None:
            raise UsageError("--in-place and --out cannot be used together.")
        if self.in_place and not self.write_photos:
            raise UsageError("--in-place makes no sense when no photos are written.")
        if self.max_refs < 0:
            raise UsageError("--max-refs must be 0 or more.")
        if not 0.0 <= self.min_score <= 1.0:
            raise UsageError("--min-score must be between 0 and 1.")
        if self.hr_size is not None and self.hr_size <= 0:
            raise UsageError("--hr-size must be positive.")
        if self.face_limit <= 0:
            raise UsageError("--max-face must be positive.")
        if self.refs_dir is not None and not self.refs_dir.is_dir():
            raise UsageError(f"--refs {self.refs_dir} is not a folder.")
        if self.all_faces and self.refs_dir is None:
            raise UsageError("--all-faces only applies with --refs.")
        for flag, folder in (("--out", self.out_dir), ("--compare-dir", self.compare_dir)):
            if (
                folder is not None
                and os.path.lexists(folder.expanduser())
                and not folder.expanduser().is_dir()
            ):
                raise UsageError(
                    f"{flag} {folder} exists and is not a folder.",
                    hint=f"give {flag} a folder (new or existing).",
                )

    def settings_key(self) -> str:
        """What makes two runs produce the same output (the re-run skip compares it)."""
        from hime_cli import __version__
        from hime_cli.library.reader import iter_photos

        refs = None
        if self.refs_dir is not None:
            refs = [
                (os.fspath(p), p.stat().st_size, p.stat().st_mtime_ns) for p in iter_photos([self.refs_dir])
            ]
        settings = {
            "version": __version__,
            "scale": self.scale,
            "max_face": self.face_limit,
            "face_size": "region",  # --max-face compares the crop region side (was the box side)
            "min_score": self.min_score,
            "max_refs": self.max_refs,
            "refs": refs,
            "all_faces": self.all_faces,
            "hr_size": self.hr_size,
            # the weights the run will use, not only what was typed: a photo enhanced with an
            # earlier default model is not "already enhanced" once the default changes
            "weights": self.weights or _default_weights_key(self.scale),
            "paste": asdict(self.paste),
            "mirror": self.mirror,
        }
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _default_weights_key(scale: int) -> str:
    """The registry entries (name and sha256) that enhance's default models resolve to for
    ``scale``: the default weights and, where it runs, the small-face weights
    (``sr.inference.small_face_weights``)."""
    from hime_cli.sr.inference import default_weights_name, small_face_weights

    names = [default_weights_name(scale), small_face_weights(scale)]
    return " + ".join(_weights_key(name) for name in names if name is not None)


def _weights_key(name: str) -> str:
    from hime_cli.errors import ModelError
    from hime_cli.hub import find_entry

    try:
        entry = find_entry(name)
    except ModelError:  # no registry entry: the name is all there is
        return name
    return f"{entry.name}:{entry.sha256}"


# ---------------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class FaceReport:
    box: tuple[float, float, float, float]
    size: float  # side of the canonical crop region (faces.align.region_size), input pixels
    score: float
    status: str  # enhanced | would-enhance | too-large | low-score | not-target | failed
    identity_id: int | None = None
    lr_size: int | None = None
    refs: tuple[str, ...] = ()  # photo paths of the exemplars used
    reason: str | None = None
    refs_reason: str | None = None  # why an enhanced face has no references

    @property
    def enhanced(self) -> bool:
        return self.status in ("enhanced", "would-enhance")


@dataclass(frozen=True)
class PhotoReport:
    source: Path
    dest: Path | None
    status: str  # done | skipped | no-face | failed | dry-run
    reason: str | None = None
    faces: tuple[FaceReport, ...] = ()
    size: tuple[int, int] | None = None  # input (width, height)
    out_size: tuple[int, int] | None = None
    compare: Path | None = None
    seconds: float = 0.0
    out_format: str | None = None  # set when it differs from the input's (a format-limit fallback)
    note: str | None = None  # why (the fallback)

    @property
    def faces_enhanced(self) -> int:
        """Faces enhanced in a written photo (none for a failed one: nothing of it was kept)."""
        if self.status == "failed":
            return 0
        return sum(1 for f in self.faces if f.enhanced)

    @property
    def faces_without_refs(self) -> int:
        if self.status == "failed":
            return 0
        return sum(1 for f in self.faces if f.enhanced and not f.refs)


@dataclass(frozen=True)
class EnhanceReport:
    photos: tuple[PhotoReport, ...]
    scale: int
    max_face: float
    model: str | None
    device: str | None
    seconds: float
    sr_seconds: float = 0.0
    compare_index: Path | None = None

    def count(self, status: str) -> int:
        return sum(1 for p in self.photos if p.status == status)

    @property
    def faces_enhanced(self) -> int:
        return sum(p.faces_enhanced for p in self.photos)

    @property
    def faces_without_refs(self) -> int:
        return sum(p.faces_without_refs for p in self.photos)

    @property
    def without_refs_reasons(self) -> dict[str, int]:
        """Faces enhanced without references, counted by reason (its words before any detail)."""
        counts: dict[str, int] = {}
        for p in self.photos:
            if p.status == "failed":
                continue
            for f in p.faces:
                if f.enhanced and not f.refs:
                    kind = (f.refs_reason or "unknown").split(" (")[0]
                    counts[kind] = counts.get(kind, 0) + 1
        return counts

    @property
    def failed(self) -> bool:
        return any(p.status == "failed" for p in self.photos)

    def to_json(self) -> dict[str, Any]:
        def face(f: FaceReport) -> dict[str, Any]:
            return {
                "box": [round(v, 1) for v in f.box],
                "size": round(f.size, 1),
                "score": round(f.score, 4),
                "status": f.status,
                "identity_id": f.identity_id,
                "lr_size": f.lr_size,
                "refs": list(f.refs),
                "reason": f.reason,
                "refs_reason": f.refs_reason,
            }

        return {
            "scale": self.scale,
            "max_face": self.max_face,
            "model": self.model,
            "device": self.device,
            "seconds": round(self.seconds, 3),
            "sr_seconds": round(self.sr_seconds, 3),
            "compare_index": str(self.compare_index) if self.compare_index else None,
            "summary": {
                "photos": len(self.photos),
                "done": self.count("done"),
                "skipped": self.count("skipped"),
                "failed": self.count("failed"),
                "dry_run": self.count("dry-run"),
                "no_face": self.count("no-face"),
                "format_fallbacks": sum(1 for p in self.photos if p.out_format and p.status != "failed"),
                "faces_enhanced": self.faces_enhanced,
                "faces_without_refs": self.faces_without_refs,
                "without_refs_reasons": self.without_refs_reasons,
            },
            "photos": [
                {
                    "source": str(p.source),
                    "dest": str(p.dest) if p.dest else None,
                    "status": p.status,
                    "reason": p.reason,
                    "size": list(p.size) if p.size else None,
                    "out_size": list(p.out_size) if p.out_size else None,
                    "compare": str(p.compare) if p.compare else None,
                    "seconds": round(p.seconds, 3),
                    "out_format": p.out_format,
                    "note": p.note,
                    "faces": [face(f) for f in p.faces],
                }
                for p in self.photos
            ],
        }


@dataclass(frozen=True)
class Progress:
    """Counters handed to the progress callback after every step."""

    photos_total: int
    photos_done: int
    faces_total: int  # faces planned so far (grows as photos are read)
    faces_done: int
    message: str = ""
    stage: str = ""  # what the run is doing: loading the model, scanning, enhancing, ...


ProgressCallback = Callable[[Progress], None]


def faces_failed(faces: Sequence[FaceReport], reason: str) -> tuple[FaceReport, ...]:
    """The faces of a photo that failed: those that were to be enhanced are not."""
    return tuple(replace(f, status="failed", reason=reason) if f.enhanced else f for f in faces)


def failure_reason(exc: BaseException) -> str:
    """One line saying why a photo failed (HimeErrors carry their hint; others their type)."""
    if isinstance(exc, HimeError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    log.debug("unexpected error", exc_info=exc)
    return f"{type(exc).__name__}: {exc}"
