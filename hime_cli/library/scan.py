"""Scanning: walk folders, and index every photo's faces (box, landmarks, score, sharpness, embedding).

Re-scans are cheap: one query loads every indexed (path, size, mtime), then each file costs one
``stat``; a photo with the same path, size and mtime (and embedder) is skipped without being read.
A changed stamp costs a read and a SHA-256: the same content as an indexed photo whose file is
gone is a *move* (the row follows the file, faces and identities kept); the same content at the
same path is a mere touch. Everything else is decoded, detected and embedded.

Each photo's row and faces are written in one transaction, so a scan killed at any point (even by
SIGKILL) leaves a consistent index, and the next scan carries on with what is left.

Both cores work: a worker *process* reads, hashes, decodes and detects (MTCNN, torch on one
thread) a few photos ahead while the calling process embeds (dlib) and writes. A process, not a
thread: dlib holds the GIL while it computes, which starved a detection thread (measured: a
Python thread ran at 7 % of its speed during dlib embedding, 64 % during a torch matmul). A
worker that dies on a photo (a decoder crash) costs that photo only: it is recorded as failed and
a fresh worker takes the rest. Small scans (under ``PROCESS_MIN_PHOTOS`` photos to process) run
in-process, as the worker costs a few seconds to start. Nothing here prints; progress goes
through a callback.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from hime_cli.errors import HimeError
from hime_cli.library.index import KnownPhoto, LibraryIndex, ScannedFace, path_key
from hime_cli.library.reader import (
    PhotoMetadata,
    decode_image,
    iter_photos,
    metadata_from_exif,
    read_file,
)

if TYPE_CHECKING:
    from hime_cli.faces.embed import Embedder
    from hime_cli.types import DetectedFace

log = logging.getLogger(__name__)

# Photos analysed ahead of the embedding stage (bounds memory: each holds a decoded image).
_READ_AHEAD = 3
# Fewer photos to process than this: no worker process (starting one costs a few seconds).
PROCESS_MIN_PHOTOS = 8


class Detector(Protocol):
    def detect(self, rgb: np.ndarray) -> list[DetectedFace]: ...


@dataclass(frozen=True)
class ScanFailure:
    path: Path
    reason: str


@dataclass(frozen=True)
class ScanEvent:
    """One photo done: ``outcome`` is new, updated, unchanged, moved or failed."""

    done: int
    total: int
    path: Path
    outcome: str
    faces: int = 0
    error: str | None = None


@dataclass(frozen=True)
class ScanReport:
    photos: int  # photo files found under the scanned paths
    new: int
    updated: int
    unchanged: int
    moved: int
    failures: tuple[ScanFailure, ...]
    faces_found: int  # faces detected in the new and updated photos
    missing: int  # indexed photos under the scanned folders whose file is gone (kept in the index)
    duration_s: float
    embedder: str

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def changed(self) -> bool:
        """True when faces were added, replaced or moved (identities may need updating)."""
        return bool(self.new or self.updated or self.moved)

    def to_dict(self) -> dict[str, Any]:
        from hime_cli.library.index import display_path

        return {
            "photos": self.photos,
            "new": self.new,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "moved": self.moved,
            "failed": self.failed,
            "faces_found": self.faces_found,
            "missing": self.missing,
            "duration_s": round(self.duration_s, 3),
            "embedder": self.embedder,
            "failures": [{"path": display_path(f.path), "reason": f.reason} for f in self.failures],
        }


ProgressCallback = Callable[[ScanEvent], None]


# ---------------------------------------------------------------------- per-photo work


@dataclass(frozen=True)
class _Pending:
    """A photo that may need work: where it is, its stamp, and what the index knew of it."""

    path: Path
    key: bytes
    size: int
    mtime_ns: int
    known: KnownPhoto | None


@dataclass
class _Analysed:
    """What the analysis stage found out about one pending photo (sent between processes)."""

    pending: _Pending
    sha256: str | None = None
    move_from: int | None = None  # photo id whose file vanished and had this content
    touched: bool = False  # same path, same content, new stamp
    rgb: np.ndarray | None = None  # (H, W, 3) uint8, oriented
    format: str | None = None
    orientation: int = 1
    metadata: PhotoMetadata | None = None
    faces: list[DetectedFace] = field(default_factory=list)
    sharpness: list[float] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class _Content:
    """An indexed photo as seen by move detection."""

    photo_id: int
    path: bytes
    embedder: str | None


class _Analyser:
    """Read → hash → (move? touch?) → decode → metadata → detect → sharpness, for one photo."""

    def __init__(
        self,
        by_sha: dict[str, list[_Content]],
        embedder_name: str,
        force: bool,
        detector: Detector | None,
        device: str,
    ) -> None:
        self._by_sha = by_sha
        self._embedder_name = embedder_name
        self._force = force
        self._detector = detector
        self._device = device
        self.uses_default_detector = detector is None

    def __call__(self, pending: _Pending, *, allow_shortcuts: bool = True) -> _Analysed:
        result = _Analysed(pending)
        try:
            data = read_file(pending.path)
            result.sha256 = hashlib.sha256(data).hexdigest()
            if allow_shortcuts and not self._force and self._shortcut(result):
                return result
            decoded = decode_image(data)
            del data
            result.metadata = metadata_from_exif(decoded.exif)
            result.format = decoded.format
            result.orientation = decoded.orientation
            rgb = decoded.rgb_uint8()
            del decoded
            result.rgb = rgb
            if self._detector is None:
                self._detector = _default_detector(self._device)
            result.faces = list(self._detector.detect(rgb))
            from hime_cli.faces.quality import sharpness

            result.sharpness = [sharpness(rgb, face) for face in result.faces]
        except HimeError as exc:
            result.error = exc.message
        except MemoryError:
            result.error = "not enough memory to process this photo."
        except Exception as exc:  # one odd photo must never stop a library scan
            log.debug("scan failed on %s", pending.path, exc_info=True)
            result.error = f"{type(exc).__name__}: {exc}"
        return result

    def _shortcut(self, result: _Analysed) -> bool:
        """Moves and touches need no decoding: same content, faces already indexed."""
        pending = result.pending
        for content in self._by_sha.get(result.sha256 or "", []):
            if content.embedder != self._embedder_name:
                continue
            if content.path == pending.key:
                result.touched = True
                return True
            if not os.path.lexists(os.fsdecode(content.path)):
                result.move_from = content.photo_id
                return True
        return False


# ---------------------------------------------------------------------- the scan


def scan_paths(
    paths: Iterable[str | os.PathLike[str]],
    index: LibraryIndex,
    embedder: str | Embedder = "dlib",
    progress: ProgressCallback | None = None,
    force: bool = False,
    *,
    detector: Detector | None = None,
    device: str = "cpu",
    parallel: bool = True,
) -> ScanReport:
    """Index every photo under ``paths`` into ``index``; see the module docstring.

    ``embedder`` is a name (``dlib``, ``facenet``) or an object with ``name`` and ``embed``;
    ``detector`` defaults to the shared MTCNN detector. ``force`` re-processes every photo.
    ``parallel=False`` runs everything on the calling thread (for debugging and measuring).
    """
    started = time.perf_counter()
    roots = [Path(os.path.realpath(p)) for p in paths]
    files = list(iter_photos(roots))
    embedder_name = embedder if isinstance(embedder, str) else embedder.name
    known = index.known_photos()

    counts = {"new": 0, "updated": 0, "unchanged": 0, "moved": 0}
    failures: list[ScanFailure] = []
    faces_found = 0
    done = 0
    total = len(files)
    seen: set[bytes] = set()

    def emit(path: Path, outcome: str, faces: int = 0, error: str | None = None) -> None:
        nonlocal done
        done += 1
        if outcome == "failed":
            failures.append(ScanFailure(path, error or "unknown error"))
        else:
            counts[outcome] += 1
        if progress is not None:
            progress(ScanEvent(done, total, path, outcome, faces, error))

    # 1. Cheap pass: one stat per file; unchanged photos are done here.
    todo: list[_Pending] = []
    for file in files:
        real = os.path.realpath(file)
        key = path_key(real)
        if key in seen:  # the same file reached through a symlink
            total -= 1
            continue
        seen.add(key)
        try:
            st = os.stat(real)
        except OSError as exc:
            index.mark_failed(real, _os_reason(exc))
            emit(Path(real), "failed", error=_os_reason(exc))
            continue
        entry = known.get(key)
        if (
            not force
            and entry is not None
            and entry.status == "ok"
            and entry.size == st.st_size
            and entry.mtime_ns == st.st_mtime_ns
            and entry.embedder == embedder_name
        ):
            emit(Path(real), "unchanged")
            continue
        todo.append(_Pending(Path(real), key, st.st_size, st.st_mtime_ns, entry))

    # 2. The rest: read, hash, decode, detect, embed, write.
    if todo:
        embed_model = _resolve_embedder(embedder)
        analyser_args = (_contents_by_sha(index), embedder_name, force, detector, device)
        analyser = _Analyser(*analyser_args)
        use_worker = parallel and len(todo) >= PROCESS_MIN_PHOTOS
        claimed_moves: set[int] = set()
        with _single_threaded_torch(use_worker):
            for analysed in _analyse_all(todo, analyser, analyser_args if use_worker else None):
                pending = analysed.pending
                if analysed.move_from is not None and analysed.move_from in claimed_moves:
                    # Two new files with the content of one vanished photo: only the first is a move.
                    analysed = analyser(pending, allow_shortcuts=False)
                outcome, n_faces, error = _store(index, analysed, embed_model, embedder_name)
                if analysed.move_from is not None and outcome == "moved":
                    claimed_moves.add(analysed.move_from)
                faces_found += n_faces
                emit(pending.path, outcome, n_faces, error)

    missing = _count_missing(index, roots, seen)
    return ScanReport(
        photos=total,
        new=counts["new"],
        updated=counts["updated"],
        unchanged=counts["unchanged"],
        moved=counts["moved"],
        failures=tuple(failures),
        faces_found=faces_found,
        missing=missing,
        duration_s=time.perf_counter() - started,
        embedder=embedder_name,
    )


def _store(
    index: LibraryIndex, analysed: _Analysed, embed_model: Embedder, embedder_name: str
) -> tuple[str, int, str | None]:
    """Write one analysed photo (one transaction); returns (outcome, faces found, error)."""
    pending = analysed.pending
    if analysed.error is None and analysed.move_from is not None:
        index.move_photo(analysed.move_from, pending.path, size=pending.size, mtime_ns=pending.mtime_ns)
        return "moved", 0, None
    if analysed.error is None and analysed.touched and pending.known is not None:
        index.touch_photo(pending.known.id, size=pending.size, mtime_ns=pending.mtime_ns)
        return "unchanged", 0, None
    error = analysed.error
    embeddings: np.ndarray | None = None
    if error is None:
        assert analysed.rgb is not None
        try:
            embeddings = embed_model.embed(analysed.rgb, analysed.faces) if analysed.faces else None
        except HimeError as exc:
            error = exc.message
        except MemoryError:
            error = "not enough memory to process this photo."
        except Exception as exc:  # one odd photo must never stop a library scan
            log.debug("embedding failed on %s", pending.path, exc_info=True)
            error = f"embedding failed ({type(exc).__name__}: {exc})"
    if error is None:
        faces = [
            ScannedFace(face, sharp, embeddings[i] if embeddings is not None else None)
            for i, (face, sharp) in enumerate(zip(analysed.faces, analysed.sharpness, strict=True))
        ]
        # Index errors (disk full, …) are not the photo's fault: they propagate and stop the scan.
        index.record_photo(
            pending.path,
            faces,
            size=pending.size,
            mtime_ns=pending.mtime_ns,
            sha256=analysed.sha256,
            width=int(analysed.rgb.shape[1]),
            height=int(analysed.rgb.shape[0]),
            format=analysed.format,
            orientation=analysed.orientation,
            metadata=analysed.metadata,
            embedder=embedder_name,
        )
        return ("updated" if pending.known is not None else "new"), len(faces), None
    index.mark_failed(pending.path, error, size=pending.size, mtime_ns=pending.mtime_ns)
    return "failed", 0, error


def _analyse_all(
    todo: list[_Pending], analyser: _Analyser, worker_args: tuple[Any, ...] | None
) -> Iterator[_Analysed]:
    """Analyse photos in order: in-process, or in a worker process that stays a few photos ahead."""
    if worker_args is None:
        for pending in todo:
            yield analyser(pending)
        return
    queue = deque(todo)
    in_flight: deque[tuple[_Pending, Future[_Analysed]]] = deque()
    pool = _start_worker(worker_args)
    try:
        while queue or in_flight:
            while queue and len(in_flight) < _READ_AHEAD:
                pending = queue.popleft()
                in_flight.append((pending, pool.submit(_analyse_in_worker, pending)))
            pending, future = in_flight.popleft()
            try:
                result = future.result()
            except BrokenProcessPool:
                # The worker handles photos in order, so it died on this one (a crashing decoder,
                # or the out-of-memory killer). Record it, and give the others to a new worker.
                result = _Analysed(
                    pending, error="the image decoder crashed on this file (worker process died)."
                )
                queue.extendleft(reversed([p for p, _ in in_flight]))
                in_flight.clear()
                pool.shutdown(wait=False, cancel_futures=True)
                pool = _start_worker(worker_args)
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _start_worker(worker_args: tuple[Any, ...]) -> ProcessPoolExecutor:
    # spawn, not fork: forking a process that has started torch's or dlib's threads can deadlock.
    return ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=worker_args,
    )


_worker_analyser: _Analyser | None = None


def _init_worker(*args: Any) -> None:
    """Runs once in the worker process: die with the parent, one torch thread, an analyser."""
    global _worker_analyser
    _die_with_parent()
    _worker_analyser = _Analyser(*args)
    if _worker_analyser.uses_default_detector:
        import torch

        torch.set_num_threads(1)


def _analyse_in_worker(pending: _Pending) -> _Analysed:
    assert _worker_analyser is not None
    return _worker_analyser(pending)


def _die_with_parent() -> None:
    """On Linux, have the kernel kill this worker when the scanning process dies (even by SIGKILL)."""
    if sys.platform != "linux":
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)
    except (OSError, AttributeError):
        pass


def _resolve_embedder(embedder: str | Embedder) -> Embedder:
    if isinstance(embedder, str):
        from hime_cli.faces.embed import get_embedder

        return get_embedder(embedder)
    return embedder


def _default_detector(device: str) -> Detector:
    from hime_cli.faces.detect import get_detector

    return get_detector(device)


@contextmanager
def _single_threaded_torch(enabled: bool) -> Iterator[None]:
    """With a worker detecting on the other core, torch here (facenet) must keep to one thread."""
    if not enabled or "torch" not in sys.modules:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _contents_by_sha(index: LibraryIndex) -> dict[str, list[_Content]]:
    by_sha: dict[str, list[_Content]] = {}
    rows = index.conn.execute(
        "SELECT sha256, id, path_key, embedder FROM photos WHERE status = 'ok' AND sha256 IS NOT NULL"
    )
    for sha, photo_id, key, embedder in rows:
        by_sha.setdefault(sha, []).append(_Content(photo_id, bytes(key), embedder))
    return by_sha


def _count_missing(index: LibraryIndex, roots: list[Path], seen: set[bytes]) -> int:
    prefixes = [os.fsencode(r) for r in roots]
    folders = tuple(p if p.endswith(b"/") else p + os.sep.encode() for p in prefixes)
    missing = 0
    for (key,) in index.conn.execute("SELECT path_key FROM photos WHERE status = 'ok'"):
        key = bytes(key)
        if key in seen or not (key in prefixes or key.startswith(folders)):
            continue
        if not os.path.lexists(os.fsdecode(key)):
            missing += 1
    return missing


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found (deleted, or a broken symlink)."
    if isinstance(exc, PermissionError):
        return "permission denied."
    return f"cannot read the file: {exc.strerror or exc}."
