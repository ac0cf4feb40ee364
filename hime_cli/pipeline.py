"""``hime enhance`` orchestration: photos in, photos ×scale out with their small faces super-resolved.

For every input photo (files and folders, recursively):

1. **Plan**: where the output goes (``--out DIR`` mirroring relative paths, a ``hime-enhanced/``
   folder next to each input root by default, or the photo itself with ``--in-place``), and whether
   a previous run already produced it with the same settings (the ledger; ``--force`` redoes it).
2. **Faces**: from the library index (photos not yet in it are scanned first, new faces placed
   into identities), or, with ``--refs DIR``, detected here and matched to the faces in DIR.
   A face is enhanced when its detection score is at least ``min_score`` and its size (the larger
   side of its detection box, in input pixels) at most ``max_face``.
3. **Exemplars**: up to ``max_refs`` crops of the same person from other photos
   (:func:`hime_cli.identities.exemplars.rank_exemplars`: resolution, sharpness, detection score,
   pose), never from the same photo nor from a copy of it (a resized export of the same shot);
   of the ``APPEARANCE_POOL`` best, those that look most like the LR face
   (:func:`hime_cli.identities.exemplars.order_by_appearance`).
4. **SR**: each face is cropped with the project's one crop policy (``faces.align``) at
   ``L = max(128 / model_scale, ceil(region))`` pixels; faces of many photos are batched by ``L``
   (:mod:`hime_cli.sr.inference`).
5. **Paste-back**: the whole photo is upscaled with Lanczos, each SR face is colour-matched and
   blended in through the inverse crop transform with a feathered mask (:mod:`hime_cli.sr.pasteback`).
6. **Write**: same format and extension, metadata kept (``library.writer``), atomically; in place
   only after a verified backup (``library.backup``).

Nothing here prints: progress goes to a callback, results come back as frozen dataclasses.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import html
import io
import json
import logging
import math
import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hime_cli.errors import HimeError, StoreDamagedError, UsageError
from hime_cli.faces.align import alignment_matrix, warp_to_crop
from hime_cli.files import atomic_write_bytes, sha256_file
from hime_cli.identities.exemplars import APPEARANCE_POOL, order_by_appearance
from hime_cli.library.sqlite_store import StoreMigration, apply_migrations, move_aside, translate
from hime_cli.luma import luma
from hime_cli.paths import get_paths
from hime_cli.sr.pasteback import FacePaste, PasteOptions, render_upscaled, upscale_photo
from hime_cli.types import DetectedFace, Face, LoadedImage

if TYPE_CHECKING:
    from hime_cli.library.index import LibraryIndex
    from hime_cli.sr.inference import FaceSuperResolver

log = logging.getLogger(__name__)

SCALES = (2, 4, 8)
OUTPUT_FOLDER = "hime-enhanced"
COMPARE_FOLDER = "hime-compare"
DEFAULT_MIN_SCORE = 0.90
DEFAULT_MAX_REFS = 3
# Measured at ×4 (benchmarks/bench_enhance.py --sweep, docs/enhance.md): the gain over Lanczos on
# the face box falls from +1.39 dB at 32 px faces to +0.40 dB at 96 px, the largest size the dev
# photos can give a ground truth for; beyond it nothing shows that HIME helps, and the SR cost grows
# with the face's area. ×2 runs the same ×4 model on the same input faces: the same limit. The ×8
# model is trained on 16 px faces, half the ×4 model's: half the limit.
_DEFAULT_MAX_FACE = {2: 96.0, 4: 96.0, 8: 48.0}
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


def default_max_face(scale: int) -> float:
    """Default ``--max-face`` (detection box side, input pixels) for an output scale."""
    return _DEFAULT_MAX_FACE[scale]


# ---------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class EnhanceOptions:
    scale: int = 4
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
    device: str = "auto"
    compare: bool = False  # write before/after sheets
    compare_dir: Path | None = None
    write_photos: bool = True  # False: `hime compare` (sheets only; the index is only read)
    all_photos: bool = False  # also upscale photos with no face to enhance (skipped by default)
    paste: PasteOptions = field(default_factory=PasteOptions)
    batch_pixels: int | None = None
    hr_size: int | None = None  # references need a face region of at least this (px); None: the rule

    @property
    def face_limit(self) -> float:
        return self.max_face if self.max_face is not None else default_max_face(self.scale)

    def settings_key(self) -> str:
        """What makes two runs produce the same output (the re-run skip compares it)."""
        from hime_cli import __version__

        refs = None
        if self.refs_dir is not None:
            refs = [
                (os.fspath(p), p.stat().st_size, p.stat().st_mtime_ns) for p in _list_photos([self.refs_dir])
            ]
        settings = {
            "version": __version__,
            "scale": self.scale,
            "max_face": self.face_limit,
            "min_score": self.min_score,
            "max_refs": self.max_refs,
            "refs": refs,
            "all_faces": self.all_faces,
            "hr_size": self.hr_size,
            "weights": self.weights,
            "paste": asdict(self.paste),
        }
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class FaceReport:
    box: tuple[float, float, float, float]
    size: float  # detection box side, input pixels
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


# ---------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class PlannedPhoto:
    source: Path
    dest: Path
    relative: Path  # mirrored path under the output root (also names the compare sheet)
    compare_root: Path
    out_format: str | None = None  # the format-limit fallback (None: the input's format)
    note: str | None = None  # why the fallback was taken


def format_plan(source: Path, scale: int) -> tuple[str | None, str | None, str | None]:
    """(fallback format, note, refusal) for a photo's ×``scale`` output, from its header alone.

    When the photo's own format cannot hold the output (HEIC above x265's 142.6 MP, WebP above
    16,383 px a side: ``library.writer.format_limit``), the output is written as JPEG (PNG when
    the photo has alpha) with the same metadata; the note says so. When even that cannot hold
    it, the refusal says why. All (None, None, None) when nothing changes or the header is unreadable.
    """
    from hime_cli.library.reader import probe_image
    from hime_cli.library.writer import fallback_format, format_limit

    header = probe_image(source)
    if header is None:
        return None, None, None
    width, height = header.width * scale, header.height * scale
    why = format_limit(header.format, width, height)
    if why is None:
        return None, None, None
    fallback = fallback_format(header.format, header.has_alpha)
    if fallback == header.format or format_limit(fallback, width, height):
        return None, None, f"{why}; no other format can hold it either (use a smaller --scale)"
    return fallback, f"{why}: written as {fallback} with the same metadata", None


_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png"}


def _list_photos(paths: Sequence[Path]) -> list[Path]:
    from hime_cli.library.reader import iter_photos

    return list(iter_photos(paths))


def _output_roots(root: Path, options: EnhanceOptions) -> tuple[Path, Path]:
    """(output root, compare-sheet root) for one input root (a folder or a photo), both absolute.

    By default a folder ``D`` goes to ``D/../hime-enhanced/D.name/`` and a photo ``P`` to
    ``P/../hime-enhanced/``; sheets go to the same places under ``hime-compare/``. With ``--out DIR``
    the folder's content is mirrored in ``DIR`` and sheets go to ``DIR/hime-compare/``.
    """
    base = root.parent
    tail = root.name if root.is_dir() else None

    def beside(folder: str) -> Path:
        return base / folder / tail if tail else (base / folder)

    if options.in_place:
        out_root = root if root.is_dir() else base
        compare = beside(COMPARE_FOLDER)
    elif options.out_dir is not None:
        out_root = _real(options.out_dir.expanduser())
        compare = out_root / COMPARE_FOLDER
    else:
        out_root = beside(OUTPUT_FOLDER)
        compare = beside(COMPARE_FOLDER)
    if options.compare_dir is not None:
        compare = _real(options.compare_dir.expanduser())
    return out_root, compare


def plan_outputs(paths: Sequence[Path], options: EnhanceOptions) -> list[PlannedPhoto | PhotoReport]:
    """Every input photo with its destination, in input order; unusable inputs as failed reports.

    Folders mirror their relative paths under the output root. Two inputs mapping to one output
    are a usage error (say ``--out`` per input root, or pass the folders separately); one photo
    reached twice (a symlink, or a folder and a file in it) is done once, the repeat is skipped.
    Symlink loops and dangling links are reported as failed photos, under their own names.
    """
    from hime_cli.library.reader import is_image_path

    planned: list[PlannedPhoto | PhotoReport] = []
    seen: dict[Path, Path] = {}  # destination → the source (resolved) that writes it
    first: dict[Path, Path] = {}  # destination → the source as first given
    excluded = [_real(p.expanduser()) for p in (options.out_dir, options.compare_dir) if p is not None]
    for raw in paths:
        root = Path(raw).expanduser()
        if not os.path.lexists(root):
            raise UsageError(
                f"no such file or folder: {root}", hint="check the paths given to `hime enhance`."
            )
        out_root, compare_root = _output_roots(_real(root), options)
        if root.is_dir():
            sources = [p for p in _list_photos([root]) if not _inside_any(_real(p), excluded)]
        else:
            sources = [root]
        for source in sources:
            if root.is_dir():
                relative = source.relative_to(root)
            else:
                relative = Path(source.name)
            if not root.is_dir() and not is_image_path(source):
                planned.append(PhotoReport(source, None, "failed", "not a supported image file"))
                continue
            broken = _broken_link(source)
            if broken is not None:
                planned.append(PhotoReport(source, None, "failed", broken))
                continue
            dest = source if options.in_place else out_root / relative
            out_format, note, refusal = (
                format_plan(source, options.scale) if options.write_photos else (None, None, None)
            )
            if refusal is not None or (out_format is not None and options.in_place and options.write_photos):
                reason = refusal or f"{note}; --in-place keeps the format: use --out, or a smaller --scale"
                planned.append(PhotoReport(source, dest, "failed", reason))
                continue
            if out_format is not None:
                dest = dest.with_suffix(_EXTENSIONS[out_format])
                if _real(dest) in seen or os.path.lexists(source.with_suffix(dest.suffix)):
                    dest = dest.with_name(source.name + _EXTENSIONS[out_format])  # IMG.heic.jpg
            key, real_source = _real(dest), _real(source)
            if key in seen and seen[key] != real_source:
                raise UsageError(
                    f"{seen[key]} and {source} would both be written to {dest}.",
                    hint="enhance them in separate runs or with different --out folders.",
                )
            if not options.in_place and key == real_source:
                raise UsageError(
                    f"the output {dest} is the input itself.", hint="use --in-place to replace originals."
                )
            if key in seen:  # the same photo again (through a symlink, or named twice)
                planned.append(PhotoReport(source, dest, "skipped", f"the same photo as {first[key]}"))
                continue
            seen[key], first[key] = real_source, source
            planned.append(PlannedPhoto(source, dest, relative, compare_root, out_format, note))
    return planned


def _real(path: Path) -> Path:
    """``path`` absolute with symlinks resolved; never raises (``Path.resolve`` does on a loop)."""
    return Path(os.path.realpath(path))


def _broken_link(path: Path) -> str | None:
    """Why ``path`` is a symlink that leads nowhere (a loop, or a missing target); None otherwise."""
    if not os.path.islink(path):
        return None
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop (the link points back at itself)"
        if exc.errno == errno.ENOENT:
            return f"a dangling symlink (its target {os.readlink(path)} does not exist)"
        return f"cannot follow the symlink: {exc.strerror or exc}"
    return None


def _inside_any(path: Path, folders: Sequence[Path]) -> bool:
    return any(path == f or f in path.parents for f in folders)


# ---------------------------------------------------------------------------------- ledger


LEDGER_NAME = "enhance-ledger.sqlite3"
# Numbered migrations of the ledger (like the index's). Version 1 is the table every ledger had
# before versions were recorded. Version 2 keeps one record of what hime wrote: for a photo
# replaced in place that is the backup manifest's ``replaced_sha256``, so the ledger no longer
# keeps a second hash that could disagree with it (issue #11); ``dest_sha`` is for ``--out`` only.
LEDGER_MIGRATIONS = (
    StoreMigration(
        1,
        "one row per output path",
        (
            "CREATE TABLE IF NOT EXISTS outputs (dest BLOB PRIMARY KEY, settings TEXT NOT NULL,"
            " source_sha TEXT, dest_sha TEXT NOT NULL, dest_size INTEGER, dest_mtime_ns INTEGER,"
            " finished_at TEXT)",
        ),
    ),
    StoreMigration(
        2,
        "in-place outputs: what hime wrote is recorded by the backup manifest alone",
        (
            "CREATE TABLE outputs_v2 (dest BLOB PRIMARY KEY, settings TEXT NOT NULL, in_place INTEGER"
            " NOT NULL DEFAULT 0, source_sha TEXT, dest_sha TEXT, dest_size INTEGER, dest_mtime_ns INTEGER,"
            " finished_at TEXT, CHECK (in_place = 1 OR dest_sha IS NOT NULL))",
            "INSERT INTO outputs_v2 SELECT dest, settings, source_sha IS NULL, source_sha,"
            " CASE WHEN source_sha IS NULL THEN NULL ELSE dest_sha END, dest_size, dest_mtime_ns,"
            " finished_at FROM outputs",
            "DROP TABLE outputs",
            "ALTER TABLE outputs_v2 RENAME TO outputs",
        ),
    ),
)


class EnhanceLedger:
    """What earlier runs produced: output path → (settings, source hash, output hash).

    A photo is skipped when its output exists, was written by a run with the same settings, still
    has the content that run wrote, and (for ``--out``) comes from an unchanged source. The
    output's hash is recorded *before* the file is moved into place, so a run killed between the
    rename and the bookkeeping still recognises its work (and never enhances a photo twice). For
    ``--in-place`` the hash is the backup manifest's (``library.backup``), recorded the same way.

    The ledger only saves work: a damaged one is moved aside (kept, with a warning) and a new one
    started, so the photos it listed are enhanced again (in place: from their originals).
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or (get_paths().data_dir / LEDGER_NAME)
        try:
            self._conn = self._open()
        except StoreDamagedError as exc:
            aside = move_aside(self.path)
            log.warning("%s Moved it to %s and started a new one.", exc.message, aside)
            self._conn = self._open()

    @classmethod
    def open_readonly(cls, path: Path | None = None) -> EnhanceLedger | None:
        """The ledger opened read-only (``--dry-run``: what the real run would skip), None when
        there is none or it cannot be read (the real run would then start a new one)."""
        self = cls.__new__(cls)
        self.path = path or (get_paths().data_dir / LEDGER_NAME)
        if not self.path.is_file():
            return None
        try:
            self._conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)
            self._conn.execute(
                "SELECT settings, source_sha, dest_sha, dest_size, dest_mtime_ns FROM outputs LIMIT 1"
            )
        except sqlite3.Error as exc:
            log.warning(
                "cannot read the enhance ledger %s (%s): the dry run lists every photo", self.path, exc
            )
            return None
        return self

    def _open(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            apply_migrations(conn, LEDGER_MIGRATIONS, "enhance ledger")
            conn.execute("SELECT count(*) FROM outputs").fetchone()  # reads every page's header
            return conn
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise self._error(exc) from exc
        except OSError as exc:
            raise HimeError(
                f"cannot open the enhance ledger {self.path}: {exc.strerror or exc}",
                hint="free some disk space"
                if exc.errno == errno.ENOSPC
                else f"check that {self.path.parent} is writable",
            ) from exc

    def _error(self, exc: sqlite3.Error) -> HimeError:
        return translate(
            exc, self.path, "enhance ledger", repair_hint=f"move {self.path} aside: hime starts a new one"
        )

    def close(self) -> None:
        self._conn.close()

    def outputs(self) -> frozenset[bytes]:
        """Every file a run wrote with ``--out`` (in place, the photo is the user's: not listed)."""
        try:
            rows = self._conn.execute("SELECT dest FROM outputs WHERE in_place = 0").fetchall()
        except sqlite3.Error:  # a read-only ledger from before version 2: all its rows
            try:
                rows = self._conn.execute("SELECT dest FROM outputs").fetchall()
            except sqlite3.Error:
                return frozenset()
        return frozenset(
            bytes(r[0]) if isinstance(r[0], (bytes, memoryview)) else os.fsencode(r[0]) for r in rows
        )

    @staticmethod
    def _key(path: Path) -> bytes:
        return os.fsencode(os.path.abspath(path))

    def is_done(self, source: Path, dest: Path, settings: str, in_place: bool) -> bool:
        try:
            row = self._conn.execute(
                "SELECT settings, source_sha, dest_sha, dest_size, dest_mtime_ns FROM outputs WHERE dest = ?",
                (self._key(dest),),
            ).fetchone()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        if row is None or row[0] != settings:
            return False
        try:
            st = dest.stat()
        except OSError:
            return False
        same_stamp = row[3] == st.st_size and row[4] == st.st_mtime_ns
        if in_place:  # the manifest says whether the file is what hime wrote
            from hime_cli.library.backup import find_backups, written_in_place

            try:
                if same_stamp:  # unchanged since this ledger saw it written: no need to hash it
                    return any(r.state == "replaced" and r.replaced_sha256 for r in find_backups(dest))
                return written_in_place(dest)
            except OSError:
                return False
        if not same_stamp and (row[2] is None or sha256_file(dest) != row[2]):
            return False
        if row[1] is not None:
            try:
                return sha256_file(source) == row[1]
            except OSError:
                return False
        return True

    def expect(self, dest: Path, settings: str, source_sha: str | None, dest_sha: str | None) -> None:
        """Record the output about to be moved into place (stamp filled in by :meth:`finish`).

        In place (``source_sha`` and ``dest_sha`` None) only the settings: the backup manifest
        records the replacement's hash.
        """
        in_place = source_sha is None and dest_sha is None
        try:
            self._conn.execute(
                "INSERT OR REPLACE INTO outputs (dest, settings, in_place, source_sha, dest_sha, dest_size,"
                " dest_mtime_ns, finished_at) VALUES (?, ?, ?, ?, ?, NULL, NULL, NULL)",
                (self._key(dest), settings, int(in_place), source_sha, dest_sha),
            )
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def finish(self, dest: Path) -> None:
        st = dest.stat()
        try:
            self._conn.execute(
                "UPDATE outputs SET dest_size = ?, dest_mtime_ns = ?, finished_at = ? WHERE dest = ?",
                (
                    st.st_size,
                    st.st_mtime_ns,
                    datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    self._key(dest),
                ),
            )
        except sqlite3.Error as exc:
            raise self._error(exc) from exc


# ---------------------------------------------------------------------------------- faces


@dataclass(frozen=True)
class TargetFace:
    """A face of an input photo, with what is known about its identity."""

    detected: DetectedFace
    face_id: int | None = None
    identity_id: int | None = None
    embedding: np.ndarray | None = None
    photo_id: int | None = None  # index id of its photo (never an exemplar source for it)


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


class ExemplarSource:
    """Finds the faces of an input photo and exemplar candidates for them."""

    def faces(self, source: Path, loaded: LoadedImage) -> list[TargetFace]:
        raise NotImplementedError

    def candidates(self, target: TargetFace) -> list[Face]:
        raise NotImplementedError

    def targets(self, faces: list[TargetFace], options: EnhanceOptions) -> set[int]:
        """Indices of the faces that are the subject of this run (all, by default)."""
        return set(range(len(faces)))

    def close(self) -> None:
        pass


def _detect_and_embed(rgb: np.ndarray) -> tuple[list[DetectedFace], np.ndarray]:
    from hime_cli.faces.detect import get_detector, to_uint8
    from hime_cli.faces.embed import get_embedder

    detected = get_detector().detect(rgb)
    if not detected:
        return [], np.zeros((0, 128), np.float32)
    return detected, get_embedder("dlib").embed(to_uint8(rgb), detected)


@functools.lru_cache(maxsize=32)
def _analyse_ref_photo(
    path: Path, size: int, mtime_ns: int
) -> tuple[np.ndarray, list[DetectedFace], np.ndarray]:
    """(rgb, faces, embeddings) of a reference photo, cached per process by its stamp."""
    from hime_cli.library.backup import load_original

    rgb = load_original(path).rgb
    rgb.flags.writeable = False
    detected, emb = _detect_and_embed(rgb)
    return rgb, detected, emb


class RefsFolderSource(ExemplarSource):
    """``--refs DIR``: the person is whoever the photos in DIR show; exemplars are their faces."""

    def __init__(self, refs_dir: Path) -> None:
        from hime_cli.faces.quality import sharpness

        paths = _list_photos([refs_dir])
        if not paths:
            raise UsageError(
                f"no photos found in {refs_dir}.", hint="--refs needs a folder of photos of the person."
            )
        per_photo: list[tuple[Path, np.ndarray, list[DetectedFace], np.ndarray]] = []
        for path in paths:
            try:
                st = path.stat()
                rgb, detected, emb = _analyse_ref_photo(path, st.st_size, st.st_mtime_ns)
            except (HimeError, OSError) as exc:
                log.warning("refs: skipping %s: %s", path, exc)
                continue
            if detected:
                per_photo.append((path, rgb, detected, emb))
        if not per_photo:
            raise UsageError(
                f"no face found in the photos of {refs_dir}.", hint="use clear photos of the person."
            )
        # The person: the medoid of each photo's largest face, then in every photo the face nearest it.
        seeds = np.stack([emb[0] for _, _, _, emb in per_photo])
        dists = np.linalg.norm(seeds[:, None] - seeds[None], axis=-1)
        self.centre = seeds[int(dists.sum(1).argmin())]
        faces: list[Face] = []
        embeddings: list[np.ndarray] = []
        for photo_index, (path, rgb, detected, emb) in enumerate(per_photo):
            d = np.linalg.norm(emb - self.centre, axis=1)
            best = int(d.argmin())
            if d[best] > REFS_MATCH_DISTANCE and len(per_photo) > 1:
                log.warning("refs: %s shows no face like the others (distance %.2f); skipped", path, d[best])
                continue
            f = detected[best]
            faces.append(
                Face(
                    id=-(len(faces) + 1),
                    photo_id=-(photo_index + 1),
                    photo_path=path,
                    box=f.box,
                    landmarks=f.landmarks,
                    score=f.score,
                    size=f.size,
                    sharpness=sharpness(rgb, f),
                    embedding=emb[best],
                )
            )
            embeddings.append(emb[best])
        self.ref_faces = faces
        self.embeddings = np.stack(embeddings)
        self.centre = self.embeddings.mean(0)
        log.info("refs: %d reference faces from %d photos in %s", len(faces), len(paths), refs_dir)

    def faces(self, source: Path, loaded: LoadedImage) -> list[TargetFace]:
        detected, emb = _detect_and_embed(loaded.rgb)
        return [TargetFace(d, embedding=e) for d, e in zip(detected, emb, strict=True)]

    def distance(self, face: TargetFace) -> float:
        if face.embedding is None:
            return math.inf
        return float(np.linalg.norm(self.embeddings - face.embedding, axis=1).mean())

    def targets(self, faces: list[TargetFace], options: EnhanceOptions) -> set[int]:
        if options.all_faces or not faces:
            return set(range(len(faces)))
        distances = [self.distance(f) for f in faces]
        best = int(np.argmin(distances))
        return {best}

    def candidates(self, target: TargetFace) -> list[Face]:
        # Source faces never share a photo id with the target (negative ids are the refs' own).
        return [replace(f, identity_id=None) for f in self.ref_faces]


class IndexSource(ExemplarSource):
    """The library index: faces and identities from ``hime scan``; exemplars from the identity."""

    def __init__(
        self, photos: Sequence[Path], dry_run: bool, progress: Callable[[str], None] | None = None
    ) -> None:
        from hime_cli.library.index import LibraryIndex

        self.dry_run = dry_run
        self.index: LibraryIndex | None
        if dry_run:
            try:
                self.index = LibraryIndex.open(readonly=True)
            except HimeError:
                self.index = None
        else:
            self.index = LibraryIndex.open(lock_timeout=30.0)
            self._scan_missing(photos, progress)
        self._identified: tuple[np.ndarray, list[int]] | None = None
        self.outputs: frozenset[bytes] = frozenset()  # files hime wrote (--out): never exemplars

    def close(self) -> None:
        if self.index is not None:
            self.index.close()

    def _fresh(self, path: Path) -> int | None:
        """Index id of ``path`` when it is indexed and unchanged since (size and mtime)."""
        if self.index is None:
            return None
        record = self.index.get_photo_by_path(os.path.realpath(path))
        if record is None or record.status != "ok":
            return None
        st = path.stat()
        if record.size_bytes != st.st_size or record.mtime_ns != st.st_mtime_ns:
            return None
        return record.id

    def _scan_missing(self, photos: Sequence[Path], progress: Callable[[str], None] | None) -> None:
        from hime_cli.identities.store import update_identities
        from hime_cli.library.scan import scan_paths

        missing = [p for p in photos if self._fresh(p) is None]
        if not missing:
            return
        assert self.index is not None
        report = scan_paths(
            missing,
            self.index,
            progress=(lambda e: progress(f"scanning {e.done}/{e.total}: {e.path.name}"))
            if progress
            else None,
        )
        for failure in report.failures:
            log.warning("scan: %s: %s", failure.path, failure.reason)
        if report.changed:
            if progress:
                progress("placing new faces into identities")
            update_identities(self.index)

    def faces(self, source: Path, loaded: LoadedImage) -> list[TargetFace]:
        photo_id = self._fresh(source)
        if photo_id is not None and self.index is not None:
            return [
                TargetFace(
                    DetectedFace(f.box, np.asarray(f.landmarks, np.float32), f.score),
                    face_id=f.id,
                    identity_id=f.identity_id,
                    embedding=f.embedding,
                    photo_id=f.photo_id,
                )
                for f in self.index.faces_for_photo(photo_id)
            ]
        # Dry run on a photo the index does not know: detect here, guess the identity.
        detected, emb = _detect_and_embed(loaded.rgb)
        return [
            TargetFace(d, embedding=e, identity_id=self._nearest_identity(e))
            for d, e in zip(detected, emb, strict=True)
        ]

    def _nearest_identity(self, embedding: np.ndarray) -> int | None:
        from hime_cli.identities.store import threshold_for

        if self.index is None:
            return None
        if self._identified is None:
            faces = [
                f
                for f in self.index.iter_faces(embedder="dlib")
                if f.identity_id is not None and f.embedding is not None
            ]
            emb = np.stack([f.embedding for f in faces]) if faces else np.zeros((0, 128), np.float32)
            self._identified = (emb, [int(f.identity_id) for f in faces])  # type: ignore[arg-type]
        emb, ids = self._identified
        if not ids:
            return None
        d = np.linalg.norm(emb - embedding, axis=1)
        best = int(d.argmin())
        return ids[best] if d[best] < threshold_for("dlib") else None

    def candidates(self, target: TargetFace) -> list[Face]:
        """The identity's faces, less those of photos hime wrote (an ``--out`` inside the library
        gets scanned: its enhanced faces must never sharpen another face)."""
        if self.index is None or target.identity_id is None:
            return []
        faces = self.index.iter_faces(identity_id=target.identity_id, with_embeddings=False)
        return [f for f in faces if not self._is_output(Path(f.photo_path))]

    def _is_output(self, path: Path) -> bool:
        if not self.outputs:
            return False
        return any(os.fsencode(p) in self.outputs for p in (os.path.abspath(path), os.path.realpath(path)))


# ---------------------------------------------------------------------------------- one photo


@dataclass
class FaceWork:
    """One face on its way through SR (mutable scratch, local to a run)."""

    photo_index: int
    face_index: int
    landmarks: np.ndarray
    matrix: np.ndarray  # photo → LR crop
    lr_size: int
    lr: np.ndarray
    refs: list[np.ndarray]
    ref_paths: list[str]
    sr: np.ndarray | None = None


@dataclass
class PhotoWork:
    plan: PlannedPhoto
    loaded: LoadedImage
    faces: list[TargetFace]
    reports: list[FaceReport]
    started: float
    works: list[FaceWork] = field(default_factory=list)
    source: bytes | None = (
        None  # the bytes ``loaded`` came from (the original's, for a photo replaced in place)
    )


def _why_no_refs(
    source: ExemplarSource,
    face: TargetFace,
    target: Face,
    candidates: Sequence[Face],
    min_region: float,
    copies: int,
    unreadable: int,
) -> str:
    """Why a face got no references, in the words the summary counts (before any " (detail)")."""
    from hime_cli.faces.align import region_size

    refs_mode = isinstance(source, RefsFolderSource)
    if not refs_mode and face.identity_id is None:
        return "no photo of this person (the face is in no identity; `hime scan` the person's photos)"
    others = [c for c in candidates if c.id != target.id and c.photo_id != target.photo_id]
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


def _same_shot(lr_crop: np.ndarray, ref_crop: np.ndarray) -> bool:
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


class Enhancer:
    """Runs the pipeline for one set of options (see :func:`enhance`)."""

    def __init__(self, options: EnhanceOptions, progress: ProgressCallback | None = None) -> None:
        if options.scale not in SCALES:
            raise UsageError(f"--scale must be 2, 4 or 8, not {options.scale}.")
        if options.in_place and options.out_dir is not None:
            raise UsageError("--in-place and --out cannot be used together.")
        if options.in_place and not options.write_photos:
            raise UsageError("--in-place makes no sense when no photos are written.")
        if options.max_refs < 0:
            raise UsageError("--max-refs must be 0 or more.")
        if not 0.0 <= options.min_score <= 1.0:
            raise UsageError("--min-score must be between 0 and 1.")
        if options.hr_size is not None and options.hr_size <= 0:
            raise UsageError("--hr-size must be positive.")
        if options.face_limit <= 0:
            raise UsageError("--max-face must be positive.")
        if options.refs_dir is not None and not options.refs_dir.is_dir():
            raise UsageError(f"--refs {options.refs_dir} is not a folder.")
        if options.all_faces and options.refs_dir is None:
            raise UsageError("--all-faces only applies with --refs.")
        for flag, folder in (("--out", options.out_dir), ("--compare-dir", options.compare_dir)):
            if (
                folder is not None
                and os.path.lexists(folder.expanduser())
                and not folder.expanduser().is_dir()
            ):
                raise UsageError(
                    f"{flag} {folder} exists and is not a folder.",
                    hint=f"give {flag} a folder (new or existing).",
                )
        self.options = options
        self._callback = progress
        self._counters = Progress(0, 0, 0, 0)
        self.model: FaceSuperResolver | None = None
        self.sr_seconds = 0.0
        self.images = ImageCache()
        self._crops: OrderedDict[tuple[str, bytes, int], np.ndarray] = OrderedDict()

    # progress --------------------------------------------------------------------------------

    def _emit(self, **changes: Any) -> None:
        self._counters = replace(self._counters, **changes)
        if self._callback is not None:
            self._callback(self._counters)

    # main ------------------------------------------------------------------------------------

    def run(self, paths: Sequence[Path]) -> EnhanceReport:
        start = time.perf_counter()
        opts = self.options
        planned = plan_outputs(paths, opts)
        settings = opts.settings_key()
        run_lock = contextlib.ExitStack()
        if opts.in_place and not opts.dry_run:
            from hime_cli.library.backup import in_place_run_lock

            run_lock.enter_context(in_place_run_lock())  # two in-place runs at once: the second refused
        with run_lock:
            return self._run(planned, settings, start)

    def _run(self, planned: list[PlannedPhoto | PhotoReport], settings: str, start: float) -> EnhanceReport:
        opts = self.options
        reports: dict[int, PhotoReport] = {}
        todo: list[tuple[int, PlannedPhoto]] = []
        ledger = EnhanceLedger() if opts.write_photos and not opts.dry_run else None
        # the dry run is the real run's plan: it skips what the real run would skip (read-only)
        done = EnhanceLedger.open_readonly() if opts.write_photos and opts.dry_run else ledger
        try:
            for i, item in enumerate(planned):
                if isinstance(item, PhotoReport):
                    reports[i] = item
                elif (
                    done is not None
                    and not opts.force
                    and done.is_done(item.source, item.dest, settings, opts.in_place)
                ):
                    reports[i] = PhotoReport(
                        item.source, item.dest, "skipped", "already enhanced with these settings"
                    )
                else:
                    todo.append((i, item))
            self._emit(
                photos_total=len(planned), photos_done=len(reports), message="planning", stage="planning"
            )
            if todo:
                self._process(todo, reports, settings, ledger)
        finally:
            if ledger is not None:
                ledger.close()
            if done is not None and done is not ledger:
                done.close()
        photos = tuple(reports[i] for i in range(len(planned)))
        compare_index = self._write_compare_index(photos) if opts.compare else None
        return EnhanceReport(
            photos=photos,
            scale=opts.scale,
            max_face=opts.face_limit,
            model=self.model.name if self.model else None,
            device=self.model.device if self.model else None,
            seconds=time.perf_counter() - start,
            sr_seconds=self.sr_seconds,
            compare_index=compare_index,
        )

    def _process(
        self,
        todo: list[tuple[int, PlannedPhoto]],
        reports: dict[int, PhotoReport],
        settings: str,
        ledger: EnhanceLedger | None,
    ) -> None:
        opts = self.options
        if not opts.dry_run:
            from hime_cli.sr.inference import load_super_resolver

            self._emit(message="loading the model", stage="loading the model")
            self.model = load_super_resolver(opts.weights, opts.scale, opts.device, opts.batch_pixels)
        source: ExemplarSource
        if opts.refs_dir is not None:
            self._emit(message="reading the reference photos", stage="reading the reference photos")
            source = RefsFolderSource(opts.refs_dir)
        else:
            self._emit(message="opening the library index", stage="opening the library index")
            # `hime compare` and --dry-run only read the index: photos it lacks are detected here
            source = IndexSource(
                [p.source for _, p in todo],
                opts.dry_run or not opts.write_photos,
                progress=lambda m: self._emit(
                    message=m, stage=m.split(" ")[0] if m.startswith("scanning") else m
                ),
            )
        if isinstance(source, IndexSource) and ledger is not None:
            source.outputs = ledger.outputs()
        elif isinstance(source, IndexSource):
            readonly = EnhanceLedger.open_readonly()
            if readonly is not None:
                source.outputs = readonly.outputs()
                readonly.close()
        self._emit(message="enhancing", stage="enhancing")
        try:
            for chunk in self._chunks(todo, source, reports):
                self._run_chunk(chunk, reports, settings, ledger)
        finally:
            source.close()

    def _chunks(
        self, todo: list[tuple[int, PlannedPhoto]], source: ExemplarSource, reports: dict[int, PhotoReport]
    ) -> Iterator[list[tuple[int, PhotoWork]]]:
        """Read photos and prepare their faces, yielding groups that share SR batches."""
        chunk: list[tuple[int, PhotoWork]] = []
        n_faces = n_pixels = 0
        for i, plan in todo:
            self._emit(message=plan.source.name)
            try:
                work = self._prepare(plan, source)
            except Exception as exc:  # one bad photo never stops the batch
                reports[i] = PhotoReport(plan.source, plan.dest, "failed", failure_reason(exc))
                self._emit(photos_done=self._counters.photos_done + 1)
                continue
            self._emit(faces_total=self._counters.faces_total + len(work.works))
            chunk.append((i, work))
            n_faces += len(work.works)
            n_pixels += work.loaded.width * work.loaded.height
            if n_faces >= CHUNK_FACES or len(chunk) >= CHUNK_PHOTOS or n_pixels >= CHUNK_PIXELS:
                yield chunk
                chunk, n_faces, n_pixels = [], 0, 0
        if chunk:
            yield chunk

    def _prepare(self, plan: PlannedPhoto, source: ExemplarSource) -> PhotoWork:
        from hime_cli.library.backup import load_original_with_bytes
        from hime_cli.sr.inference import crop_image, face_crop

        opts = self.options
        started = time.perf_counter()
        if opts.in_place and self._restore_if_enhanced(plan.source, opts.dry_run):
            log.info("%s: restored the original before enhancing it again", plan.source)
        # A photo enhanced in place earlier is enhanced again from its original, never from itself.
        loaded, original = load_original_with_bytes(plan.source)
        faces = source.faces(plan.source, loaded)
        targets = source.targets(faces, opts)
        model_scale = self.model.scale if self.model else (8 if opts.scale == 8 else 4)
        work = PhotoWork(plan, loaded, faces, [], started, source=None if opts.dry_run else original)
        for k, face in enumerate(faces):
            det = face.detected
            base = FaceReport(tuple(det.box.as_list()), det.size, det.score, "", face.identity_id)  # type: ignore[arg-type]
            if k not in targets:
                work.reports.append(replace(base, status="not-target", reason="not the person in --refs"))
                continue
            if det.score < opts.min_score:
                work.reports.append(
                    replace(base, status="low-score", reason=f"detection score < {opts.min_score}")
                )
                continue
            if det.size > opts.face_limit:
                work.reports.append(
                    replace(base, status="too-large", reason=f"face > {opts.face_limit:g} px")
                )
                continue
            matrix, lr_size = face_crop(det.landmarks, model_scale)
            hr_size = lr_size * model_scale
            lr = crop_image(loaded.rgb, matrix, lr_size)
            refs: list[np.ndarray] = []
            ref_paths: list[str] = []
            tiers = self._ref_size_tiers(det.landmarks, hr_size)
            refs_reason: str | None = "--max-refs 0" if opts.max_refs == 0 else None
            if opts.max_refs > 0:
                target_face = Face(
                    id=face.face_id if face.face_id is not None else 0,
                    # Index photo ids are positive, --refs photos negative: -10**9 matches neither.
                    photo_id=face.photo_id if face.photo_id is not None else -(10**9),
                    photo_path=plan.source,
                    box=det.box,
                    landmarks=det.landmarks,
                    score=det.score,
                    size=det.size,
                    sharpness=0.0,
                    identity_id=face.identity_id,
                )
                check_copies = isinstance(source, IndexSource)
                # the canonical (rotated) LR crop for the same-shot check and the appearance
                # order, made only once a candidate's crop is at hand
                canonical: np.ndarray | None = None
                pool: list[tuple[np.ndarray, str]] = []
                pool_size = max(opts.max_refs, APPEARANCE_POOL)
                candidates = source.candidates(face)
                copies = unreadable = 0
                for cand in self._ranked_candidates(target_face, candidates, tiers):
                    if len(pool) >= pool_size:
                        break
                    crop = self._exemplar_crop(cand, hr_size)
                    if crop is None:
                        unreadable += 1
                        continue
                    if canonical is None:
                        canonical = warp_to_crop(
                            loaded.rgb, alignment_matrix(det.landmarks, lr_size), lr_size
                        )
                    if check_copies and _same_shot(canonical, crop):
                        log.info("exemplar %s is a copy of %s; not used", cand.photo_path, plan.source)
                        copies += 1
                        continue
                    pool.append((crop, str(cand.photo_path)))
                # of the best-scored candidates, those that look most like the LR face
                order = order_by_appearance(canonical, [c for c, _ in pool]) if canonical is not None else []
                for i in order[: opts.max_refs]:
                    refs.append(pool[i][0])
                    ref_paths.append(pool[i][1])
                if not ref_paths:
                    refs_reason = _why_no_refs(
                        source, face, target_face, candidates, tiers[-1], copies, unreadable
                    )
            status = "would-enhance" if opts.dry_run else "enhanced"
            work.reports.append(
                replace(base, status=status, lr_size=lr_size, refs=tuple(ref_paths), refs_reason=refs_reason)
            )
            work.works.append(FaceWork(0, k, det.landmarks, matrix, lr_size, lr, refs, ref_paths))
        return work

    def _exemplar_crop(self, cand: Face, hr_size: int) -> np.ndarray | None:
        """The candidate's aligned ``hr_size`` crop (cached: a person's exemplars serve many faces)."""
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
        while len(self._crops) > CROP_CACHE:
            self._crops.popitem(last=False)
        return crop

    def _ref_size_tiers(self, landmarks: np.ndarray, hr_size: int) -> tuple[float, ...]:
        """The native face region (px) a reference needs, best tier first.

        ``--hr-size N``: N. Otherwise the SR crop's resolution ``L·s``, then, to fill the quota,
        ``min(REF_MIN_FRACTION · L·s, REF_MIN_GAIN · R)`` for a face of region ``R``: twice the
        face's own detail is enough to help it (a 42 px face takes 100 px references).
        """
        from hime_cli.faces.align import region_size

        if self.options.hr_size is not None:
            return (float(self.options.hr_size),)
        fill = min(REF_MIN_FRACTION * hr_size, REF_MIN_GAIN * region_size(landmarks))
        return (float(hr_size), fill)

    @staticmethod
    def _ranked_candidates(target: Face, candidates: list[Face], tiers: Sequence[float]) -> Iterator[Face]:
        """Exemplar candidates best first, one per photo: those with at least ``tiers[0]`` native
        pixels, then (to fill the quota) those with at least the next tier."""
        from hime_cli.identities.exemplars import rank_exemplars

        used_photos: set[int] = set()
        seen: set[int] = set()
        for min_region in tiers:
            for ranked in rank_exemplars(target, candidates, min_region=min_region):
                cand = ranked.face
                if cand.id in seen or cand.photo_id in used_photos:
                    continue
                seen.add(cand.id)
                used_photos.add(cand.photo_id)
                yield cand

    def _run_chunk(
        self,
        chunk: list[tuple[int, PhotoWork]],
        reports: dict[int, PhotoReport],
        settings: str,
        ledger: EnhanceLedger | None,
    ) -> None:
        opts = self.options
        works = [w for _, pw in chunk for w in pw.works]
        if works and self.model is not None:
            from hime_cli.sr.inference import SRJob

            t0 = time.perf_counter()
            try:
                outputs = self.model.run(
                    [SRJob(w.lr, tuple(w.refs)) for w in works],
                    on_batch=lambda n: self._emit(faces_done=self._counters.faces_done + n),
                )
            except Exception as exc:  # e.g. out of GPU memory: these photos fail, the run goes on
                log.error("super-resolution failed for %d faces: %s", len(works), exc)
                for i, pw in chunk:
                    reports[i] = PhotoReport(
                        pw.plan.source, pw.plan.dest, "failed", f"super-resolution: {failure_reason(exc)}"
                    )
                    self._emit(photos_done=self._counters.photos_done + 1)
                return
            self.sr_seconds += time.perf_counter() - t0
            for w, out in zip(works, outputs, strict=True):
                w.sr = out
        for i, pw in chunk:
            self._emit(message=pw.plan.source.name)
            try:
                reports[i] = self._finish(pw, settings, ledger)
            except Exception as exc:  # one bad photo never stops the batch
                reason = failure_reason(exc)
                reports[i] = PhotoReport(
                    pw.plan.source, pw.plan.dest, "failed", reason, _faces_failed(pw.reports, reason)
                )
            pw.loaded = None  # type: ignore[assignment]  # free the pixels as soon as the photo is written
            pw.source = None
            self._emit(photos_done=self._counters.photos_done + 1)
            if opts.dry_run:
                self._emit(faces_done=self._counters.faces_done + len(pw.works))

    def _finish(self, pw: PhotoWork, settings: str, ledger: EnhanceLedger | None) -> PhotoReport:
        from hime_cli.library.writer import output_canvas
        from hime_cli.sr.inference import resize_crop, upscaled_crop_matrix

        opts = self.options
        s = opts.scale
        loaded = pw.loaded
        plan = pw.plan
        size = (loaded.width, loaded.height)
        out_size = (loaded.width * s, loaded.height * s)
        if not pw.works and not opts.all_photos:  # a plain resize gains nothing: not written
            return PhotoReport(
                plan.source, None, "no-face", "no face to enhance (--all-photos upscales it anyway)",
                tuple(pw.reports), size, out_size, seconds=time.perf_counter() - pw.started,
            )  # fmt: skip
        if opts.dry_run:
            return PhotoReport(
                plan.source, plan.dest, "dry-run", None, tuple(pw.reports), size, out_size,
                seconds=time.perf_counter() - pw.started, out_format=plan.out_format, note=plan.note,
            )  # fmt: skip
        pastes = []
        for w in pw.works:
            assert w.sr is not None
            # upscaled photo → SR crop (L·s px)
            pastes.append(FacePaste(resize_crop(w.sr, w.lr_size * s), upscaled_crop_matrix(w.matrix, s)))
        # The output is assembled block by block (Lanczos strips, then a window per group of
        # faces) straight into its final pixels: no float copy of the whole photo (docs/enhance.md).
        canvas = output_canvas(loaded, *out_size, plan.out_format) if opts.write_photos else None
        results = render_upscaled(
            loaded.rgb,
            s,
            pastes,
            canvas.put if canvas else None,
            s,
            opts.paste,
            background=canvas is not None,
        )
        compare_path = None
        if opts.compare and pw.works:
            compare_path = self._write_sheet(pw, results)
        if canvas is not None:
            alpha = upscale_photo(loaded.alpha[..., None], s)[..., 0] if loaded.alpha is not None else None
            self._write(plan, loaded, canvas, alpha, settings, ledger, pw.source)
        return PhotoReport(
            plan.source,
            plan.dest if opts.write_photos else None,
            "done",
            None,
            tuple(pw.reports),
            size,
            out_size,
            compare_path,
            time.perf_counter() - pw.started,
            out_format=plan.out_format,
            note=plan.note,
        )

    # writing ---------------------------------------------------------------------------------

    def _write(
        self,
        plan: PlannedPhoto,
        loaded: LoadedImage,
        canvas: Any,
        alpha: np.ndarray | None,
        settings: str,
        ledger: EnhanceLedger | None,
        source: bytes | None = None,
    ) -> None:
        """Encode into a temp file, check it decodes, record it in the ledger, then replace ``dest``.

        The encoder writes straight into the temp file (no copy of the encoded photo in memory)
        and the canvas is dropped as soon as it is encoded, before the decode check. The output's
        hash is recorded before the rename (a run killed in between still knows its work).
        ``source``: the bytes ``loaded`` was decoded from; the encoder settings (DPI above all)
        come from them, not from the file at the photo's path, which may be an enhanced version.
        """
        from hime_cli.library.writer import atomic_write, encode_image_to, written_check

        width, height = canvas.size

        def encode(fh: Any) -> None:
            encode_image_to(fh, loaded, canvas.pixels, alpha, source=source, out_format=plan.out_format)
            canvas.release()

        check = written_check(width, height)
        if self.options.in_place:  # the manifest records what hime wrote; the ledger the settings
            if ledger is not None:
                ledger.expect(plan.dest, settings, None, None)
            self._replace_in_place(plan.source, encode, check)
        else:
            source_sha = sha256_file(plan.source)

            def check_and_record(tmp: Path) -> None:
                check(tmp)
                if ledger is not None:
                    ledger.expect(plan.dest, settings, source_sha, sha256_file(tmp))

            plan.dest.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(plan.dest, encode, check=check_and_record)
        if ledger is not None:
            ledger.finish(plan.dest)

    @staticmethod
    def _replace_in_place(path: Path, encode: Callable[[Any], None], check: Callable[[Path], None]) -> None:
        """Back the original up (verified), then swap in what ``encode`` writes, atomically (library.backup)."""
        from hime_cli.errors import ImageWriteError
        from hime_cli.library.backup import replace_in_place

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                encode(fh)
            check(tmp)

        record = replace_in_place(path, write)
        if record.already_replaced:
            raise ImageWriteError(f"{path} is already an enhanced version; nothing replaced.")

    @staticmethod
    def _restore_if_enhanced(path: Path, dry_run: bool) -> bool:
        """In-place re-run with other settings (or --force): start again from the original.

        When ``path`` is a file hime put in place, its verified original is restored first (so
        a photo is never enhanced twice over). Returns True when that was (or, dry run, would be) done.
        """
        from hime_cli.errors import ImageWriteError
        from hime_cli.library.backup import restore, written_in_place

        if not written_in_place(path):
            return False
        if not dry_run:
            report = restore([path])
            if not report.ok:
                problems = report.refused + report.missing + report.failed
                reason = problems[0][1] if problems else "unknown"
                raise ImageWriteError(
                    f"cannot restore the original of {path} before re-enhancing it: {reason}"
                )
        return True

    # compare sheets --------------------------------------------------------------------------

    def _write_sheet(self, pw: PhotoWork, results: Sequence[np.ndarray]) -> Path:
        """One PNG per photo: a row per enhanced face, input (bicubic) | hime | exemplars.

        ``results``: each face as pasted (colour-matched, blended), through its crop transform.
        """
        s = self.options.scale
        rows = []
        for w, result in zip(pw.works, results, strict=True):
            size = w.lr_size * s
            # photo → SR crop: the LR crop's transform magnified s times, sampled bicubic (what "upscale" shows)
            bicubic = warp_to_crop(pw.loaded.rgb, np.asarray(w.matrix, np.float64) * s, size)
            rows.append(
                [("input (bicubic)", bicubic), ("hime", result)]
                + [(f"ref: {Path(p).name}", ref) for p, ref in zip(w.ref_paths, w.refs, strict=True)]
            )
        dest = (pw.plan.compare_root / pw.plan.relative).with_suffix(pw.plan.relative.suffix + ".png")
        write_contact_sheet(rows, dest, title=str(pw.plan.source))
        return dest

    def _write_compare_index(self, photos: Sequence[PhotoReport]) -> Path | None:
        """A small HTML page next to the sheets, linking every photo's sheet."""
        sheets = [p for p in photos if p.compare is not None]
        if not sheets:
            return None
        root = Path(os.path.commonpath([str(p.compare.parent) for p in sheets if p.compare]))
        items = []
        for p in sheets:
            assert p.compare is not None
            rel = os.path.relpath(p.compare, root)
            n = p.faces_enhanced
            items.append(
                f"<figure><figcaption>{html.escape(str(p.source))} — {n} face{'s' if n != 1 else ''}"
                f'</figcaption><img src="{html.escape(rel)}" alt="{html.escape(p.source.name)}"></figure>'
            )
        page = (
            "<!doctype html><meta charset=utf-8><title>hime: before / after</title>"
            "<style>body{font-family:sans-serif;background:#222;color:#eee}img{max-width:100%;"
            "image-rendering:auto}figure{margin:1em 0}</style>"
            f"<h1>hime ×{self.options.scale}: input (bicubic) | hime | exemplars</h1>" + "".join(items)
        )
        index = root / "index.html"
        atomic_write_bytes(index, page.encode("utf-8"))
        return index


TILE = 192  # px per tile in a contact sheet
_LABEL_H = 18


def _faces_failed(faces: Sequence[FaceReport], reason: str) -> tuple[FaceReport, ...]:
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


def write_contact_sheet(
    rows: Sequence[Sequence[tuple[str, np.ndarray]]], dest: Path, title: str = ""
) -> None:
    """Rows of labelled square crops (float RGB) as one PNG; every crop is shown at ``TILE`` px."""
    import cv2
    from PIL import Image, ImageDraw

    n_cols = max(len(r) for r in rows)
    pad = 6
    head = _LABEL_H + pad if title else 0
    width = n_cols * (TILE + pad) + pad
    height = head + len(rows) * (TILE + _LABEL_H + pad) + pad
    sheet = Image.new("RGB", (width, height), (34, 34, 34))
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, pad // 2), title[-(width // 7) :], fill=(230, 230, 230))
    for r, row in enumerate(rows):
        y = head + pad + r * (TILE + _LABEL_H + pad)
        for c, (label, crop) in enumerate(row):
            x = pad + c * (TILE + pad)
            interp = cv2.INTER_AREA if crop.shape[0] > TILE else cv2.INTER_CUBIC
            tile = cv2.resize(np.clip(crop, 0, 1).astype(np.float32), (TILE, TILE), interpolation=interp)
            sheet.paste(
                Image.fromarray((np.clip(tile, 0, 1) * 255 + 0.5).astype(np.uint8)), (x, y + _LABEL_H)
            )
            draw.text((x, y + 2), label[: TILE // 7], fill=(230, 230, 230))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    atomic_write_bytes(dest, buffer.getvalue())


def enhance(
    paths: Sequence[str | os.PathLike[str]],
    options: EnhanceOptions | None = None,
    progress: ProgressCallback | None = None,
) -> EnhanceReport:
    """Enhance every photo under ``paths`` (see the module docstring); never raises for one bad photo."""
    enhancer = Enhancer(options or EnhanceOptions(), progress)
    return enhancer.run([Path(p) for p in paths])
