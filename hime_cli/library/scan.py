"""Scanning: walk folders, and index every photo's faces (box, landmarks, score, sharpness, embedding).

Re-scans are cheap: one query loads every indexed (path, size, mtime), then each file costs one
``stat``; a photo with the same path, size and mtime (and embedder) is skipped without being read.
A changed stamp costs a read and a SHA-256: the same content as an indexed photo whose file is
gone is a *move* (the row follows the file, faces and identities kept); the same content at the
same path is a mere touch. Everything else is decoded, detected and embedded.

Each photo's row and faces are written in one transaction, so a scan killed at any point (even by
SIGKILL) leaves a consistent index, and the next scan carries on with what is left.

All cores work: one worker *process* per core (at most ``MAX_WORKERS``) reads, hashes, decodes,
detects (MTCNN, torch on one thread) and embeds (dlib) whole photos; the calling process only
writes. Processes, not threads: dlib holds the GIL while it computes (measured: a Python thread
ran at 7 % of its speed during a dlib embedding, 64 % during a torch matmul). Whole photos per
worker, not one stage per process: on 2 idle pinned cores, "detect in a worker, embed in the
caller" ran at 5.3 photos/s, no faster than one process (5.4), because detection on one thread
(~190 ms) dwarfs embedding (~80 ms) and the stages cannot be balanced.

A worker that dies on a photo (a decoder crash, the out-of-memory killer) costs that photo only:
the photos it may have been working on are re-run one at a time in a fresh worker, the culprit is
recorded as failed, and the scan goes on. If workers cannot start at all (e.g. a script without
an ``if __name__ == "__main__":`` guard), the scan carries on in-process. Scans with fewer than
``PROCESS_MIN_PHOTOS`` photos to process run in-process (a worker costs seconds to start).
Nothing here prints; progress goes through a callback.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from hime_cli.errors import HimeError
from hime_cli.library.index import KnownPhoto, LibraryIndex, ScannedFace, path_key
from hime_cli.library.reader import PhotoMetadata, decode_image, iter_photos, metadata_from_exif, read_file

if TYPE_CHECKING:
    from hime_cli.faces.embed import Embedder
    from hime_cli.types import DetectedFace

log = logging.getLogger(__name__)

# Fewer photos to process than this: no worker processes (starting one costs a few seconds).
PROCESS_MIN_PHOTOS = 8
# Each worker holds its own models (~0.5 GB); more than this rarely pays on a laptop.
MAX_WORKERS = 4
# Photos submitted per worker ahead of the writer (bounds memory and lost work on Ctrl-C).
_QUEUE_PER_WORKER = 2


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
    faces_rejected: int = 0  # of faces_found, those the quality gate found not to be faces

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
            "faces_rejected": self.faces_rejected,
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
    """Everything the index needs about one photo (built in a worker, sent to the writer)."""

    pending: _Pending
    sha256: str | None = None
    move_from: int | None = None  # photo id whose file vanished and had this content
    touched: bool = False  # same path, same content, new stamp
    width: int = 0  # upright
    height: int = 0
    format: str | None = None
    orientation: int = 1
    metadata: PhotoMetadata | None = None
    faces: list[ScannedFace] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class _Content:
    """An indexed photo as seen by move detection."""

    photo_id: int
    path: bytes
    embedder: str | None


class _Analyser:
    """Read → hash → (move? touch?) → decode → metadata → detect → sharpness → embed, one photo."""

    def __init__(
        self,
        by_sha: dict[str, list[_Content]],
        embedder: str | Embedder,
        force: bool,
        detector: Detector | None,
        device: str,
        replaced: frozenset[Path] = frozenset(),
        gate: bool = True,
    ) -> None:
        self._by_sha = by_sha
        self._gate = gate
        self._replaced = replaced
        self._embedder: Embedder | None = None if isinstance(embedder, str) else embedder
        self._embedder_name = embedder if isinstance(embedder, str) else embedder.name
        self._force = force
        self._detector = detector
        self._device = device
        # MTCNN, facenet, and dlib's ResNet (it runs in torch: faces.dlib_resnet) use torch.
        self.uses_torch = detector is None or self._embedder_name in ("facenet", "dlib")

    def __call__(self, pending: _Pending, *, allow_shortcuts: bool = True) -> _Analysed:
        result = _Analysed(pending)
        try:
            data = read_file(pending.path)
            result.sha256 = hashlib.sha256(data).hexdigest()
            if pending.path in self._replaced:
                data = self._original(pending.path, data, result)
            if allow_shortcuts and not self._force and self._shortcut(result):
                return result
            decoded = decode_image(data)
            del data
            result.metadata = metadata_from_exif(decoded.exif)
            result.format = decoded.format
            result.orientation = decoded.orientation
            rgb = decoded.rgb_uint8()
            del decoded
            result.height, result.width = int(rgb.shape[0]), int(rgb.shape[1])
            faces = list(self._get_detector().detect(rgb))
            result.faces = self._gate_and_embed(rgb, faces)
        except HimeError as exc:
            result.error = exc.message
        except MemoryError:
            result.error = "not enough memory to process this photo."
        except Exception as exc:  # one odd photo must never stop a library scan
            log.debug("scan failed on %s", pending.path, exc_info=True)
            result.error = f"{type(exc).__name__}: {exc}"
        return result

    def _gate_and_embed(self, rgb: np.ndarray, faces: list[DetectedFace]) -> list[ScannedFace]:
        """Sharpness and the quality gate for every face; only faces that pass it are embedded."""
        from hime_cli.faces.quality import GOOD, Quality, assess, assess_detection, sharpness

        sharp = [sharpness(rgb, face) for face in faces]
        if self._gate:
            verdicts = [assess_detection(f.score, s, f.size) for f, s in zip(faces, sharp, strict=True)]
        else:
            verdicts = [Quality(GOOD)] * len(faces)
        keep = [i for i, v in enumerate(verdicts) if not v.rejected]
        embeddings: list[np.ndarray | None] = [None] * len(faces)
        if keep:
            vectors = self._get_embedder().embed(rgb, [faces[i] for i in keep])
            for row, i in enumerate(keep):
                embeddings[i] = np.asarray(vectors[row], dtype=np.float32)
                if self._gate:
                    verdicts[i] = assess(
                        faces[i].score, sharp[i], faces[i].size, embeddings[i], self._embedder_name
                    )
        scanned = []
        for face, s, embedding, verdict in zip(faces, sharp, embeddings, verdicts, strict=True):
            if verdict.rejected:
                embedding = None  # not a face: its vector would only ever mislead
            scanned.append(ScannedFace(face, s, embedding, verdict.level, verdict.reason))
        return scanned

    def _original(self, path: Path, data: bytes, result: _Analysed) -> bytes:
        """A photo hime enhanced in place is indexed as its original (see ``backup.original_bytes``)."""
        from hime_cli.library.backup import original_bytes

        try:
            found = original_bytes(path, data, result.sha256)
        except HimeError as exc:
            log.warning("%s: %s; indexing the enhanced file itself", path, exc.message)
            return data
        if found is None:
            return data
        result.sha256 = found[1]
        return found[0]

    def _get_detector(self) -> Detector:
        if self._detector is None:
            from hime_cli.faces.detect import get_detector

            self._detector = get_detector(self._device)
        return self._detector

    def _get_embedder(self) -> Embedder:
        if self._embedder is None:
            from hime_cli.faces.embed import get_embedder

            self._embedder = get_embedder(self._embedder_name)
        return self._embedder

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
    workers: int | None = None,
    parallel: bool = True,
    quality_gate: bool = True,
) -> ScanReport:
    """Index every photo under ``paths`` into ``index``; see the module docstring.

    ``embedder`` is a name (``dlib``, ``facenet``) or an object with ``name`` and ``embed``;
    ``detector`` defaults to the shared MTCNN detector (objects passed here must be picklable:
    workers receive copies). ``force`` re-processes every photo. ``workers`` defaults to the
    number of usable cores (at most ``MAX_WORKERS``); ``parallel=False`` or ``workers=1``
    analyses in this process. ``quality_gate=False`` stores every detection as a good face
    (benchmarks that compare against the scan before the gate).
    """
    started = time.perf_counter()
    roots = [Path(os.path.realpath(p)) for p in paths]
    files = list(iter_photos(roots))
    embedder_name = embedder if isinstance(embedder, str) else embedder.name
    known = index.known_photos()
    folders = [r for r in roots if r.is_dir()]
    if folders:  # the libraries: hime enhance never puts its default output inside one
        index.add_library_roots(folders)
    files = _without_hime_outputs(files, index, known)

    counts = {"new": 0, "updated": 0, "unchanged": 0, "moved": 0}
    failures: list[ScanFailure] = []
    faces_found = 0
    faces_rejected = 0
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
            # a broken symlink is reported under its own name, not its missing target's (#11 D17)
            emit(Path(file) if os.path.islink(file) else Path(real), "failed", error=_os_reason(exc))
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

    # 2. The rest: read, hash, decode, detect, embed (workers), write (here).
    if todo:
        # Load the embedder here first: a missing model fails the scan at once, clearly.
        embedder_obj = embedder if not isinstance(embedder, str) else _resolve_embedder(embedder)
        by_sha = _contents_by_sha(index)
        replaced = _replaced_paths()
        analyser_args = (by_sha, embedder, force, detector, device, replaced, quality_gate)
        local = _Analyser(by_sha, embedder_obj, force, detector, device, replaced, quality_gate)
        n_workers = worker_count(workers) if parallel else 1
        if len(todo) < PROCESS_MIN_PHOTOS:
            n_workers = 1
        claimed_moves: set[int] = set()
        for analysed in _analyse_all(todo, local, analyser_args, n_workers):
            pending = analysed.pending
            if analysed.move_from is not None and analysed.move_from in claimed_moves:
                # Two new files with the content of one vanished photo: only the first is a move.
                analysed = local(pending, allow_shortcuts=False)
            outcome = _store(index, analysed, embedder_name)
            if outcome == "moved" and analysed.move_from is not None:
                claimed_moves.add(analysed.move_from)
            n_faces = len(analysed.faces) if outcome in ("new", "updated") else 0
            faces_found += n_faces
            if outcome in ("new", "updated"):
                faces_rejected += sum(1 for f in analysed.faces if f.quality == "reject")
            emit(pending.path, outcome, n_faces, analysed.error)

    missing = _count_missing(index, roots, seen)
    return ScanReport(
        photos=total,
        new=counts["new"],
        updated=counts["updated"],
        unchanged=counts["unchanged"],
        moved=counts["moved"],
        failures=tuple(failures),
        faces_found=faces_found,
        faces_rejected=faces_rejected,
        missing=missing,
        duration_s=time.perf_counter() - started,
        embedder=embedder_name,
    )


def _store(index: LibraryIndex, analysed: _Analysed, embedder_name: str) -> str:
    """Write one analysed photo (one transaction); returns the outcome.

    Index errors (disk full, …) are not the photo's fault: they propagate and stop the scan.
    """
    pending = analysed.pending
    if analysed.error is not None:
        index.mark_failed(pending.path, analysed.error, size=pending.size, mtime_ns=pending.mtime_ns)
        return "failed"
    if analysed.move_from is not None:
        index.move_photo(analysed.move_from, pending.path, size=pending.size, mtime_ns=pending.mtime_ns)
        return "moved"
    if analysed.touched and pending.known is not None:
        index.touch_photo(pending.known.id, size=pending.size, mtime_ns=pending.mtime_ns)
        return "unchanged"
    index.record_photo(
        pending.path,
        analysed.faces,
        size=pending.size,
        mtime_ns=pending.mtime_ns,
        sha256=analysed.sha256,
        width=analysed.width,
        height=analysed.height,
        format=analysed.format,
        orientation=analysed.orientation,
        metadata=analysed.metadata,
        embedder=embedder_name,
    )
    return "updated" if pending.known is not None else "new"


# ---------------------------------------------------------------------- worker processes


def worker_count(requested: int | None = None) -> int:
    """How many worker processes a scan uses: ``requested``, else the usable cores (≤ MAX_WORKERS)."""
    if requested is not None:
        return max(1, requested)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_WORKERS))


def _analyse_all(
    todo: list[_Pending], local: _Analyser, worker_args: tuple[Any, ...], n_workers: int
) -> Iterator[_Analysed]:
    """Analyse every pending photo, in worker processes when ``n_workers > 1``.

    Results come in submission order. After a worker crash, the photos that were in flight are
    re-run one at a time ("suspects") so the culprit is known exactly.
    """
    if n_workers <= 1:
        for pending in todo:
            yield local(pending)
        return
    queue = deque(todo)
    suspects: deque[_Pending] = deque()
    in_flight: deque[tuple[_Pending, Future[_Analysed], bool]] = deque()  # (photo, future, isolated)
    pool: ProcessPoolExecutor | None = _start_pool(worker_args, n_workers)
    finished = False
    try:
        while queue or suspects or in_flight:
            if pool is None:  # workers cannot start here: carry on in this process
                for pending in [p for p, _, _ in in_flight] + list(suspects) + list(queue):
                    yield local(pending)
                return
            if suspects:
                if not in_flight:
                    pending = suspects.popleft()
                    in_flight.append((pending, pool.submit(_analyse_in_worker, pending), True))
            else:
                while queue and len(in_flight) < n_workers * _QUEUE_PER_WORKER:
                    pending = queue.popleft()
                    in_flight.append((pending, pool.submit(_analyse_in_worker, pending), False))
            pending, future, isolated = in_flight.popleft()
            try:
                result = future.result()
            except BrokenProcessPool:
                others = [p for p, _, _ in in_flight]
                in_flight.clear()
                pool.shutdown(wait=False, cancel_futures=True)
                pool = _start_pool(worker_args, n_workers)
                if pool is None:
                    in_flight.append((pending, future, isolated))  # re-run in-process below
                    suspects.extendleft(reversed(others))
                    continue
                if not isolated:
                    suspects.extendleft(reversed([pending, *others]))
                    continue
                suspects.extendleft(reversed(others))
                result = _Analysed(
                    pending, error="the image decoder crashed on this file (its worker process died)."
                )
            yield result
        finished = True
    finally:
        if pool is not None:
            if finished:
                pool.shutdown(wait=True, cancel_futures=True)
            else:
                # Ctrl-C (or any error, or the caller stopping early): the photos in flight are
                # not worth waiting for (a big one takes seconds); nothing of theirs is written.
                _kill_pool(pool)


def _kill_pool(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: cancel what is queued and terminate the workers mid-photo."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # no public API for them
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        try:
            proc.terminate()
        except (OSError, AttributeError):
            pass
    for proc in procs:
        try:
            proc.join(timeout=2.0)
        except (OSError, AssertionError):
            pass


def _start_pool(worker_args: tuple[Any, ...], n_workers: int) -> ProcessPoolExecutor | None:
    """A started pool of workers, or None when worker processes cannot start here."""
    # spawn, not fork: forking a process that has started torch's or dlib's threads can deadlock.
    pool = ProcessPoolExecutor(
        max_workers=n_workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=worker_args,
    )
    try:
        pool.submit(os.getpid).result(timeout=300)
    except Exception as exc:  # BrokenProcessPool, pickling errors, timeouts
        log.warning("worker processes unavailable (%s: %s); scanning in-process", type(exc).__name__, exc)
        pool.shutdown(wait=False, cancel_futures=True)
        return None
    except BaseException:  # Ctrl-C while the workers start
        _kill_pool(pool)
        raise
    return pool


_worker_analyser: _Analyser | None = None


def _init_worker(*args: Any) -> None:
    """Runs once in each worker: die with the parent, one thread per library, an analyser."""
    global _worker_analyser
    import signal

    # Ctrl-C is the scanning process's to handle: it stops submitting and shuts the pool down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    _worker_analyser = _Analyser(*args)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    if _worker_analyser.uses_torch:
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


def _without_hime_outputs(
    files: list[Path], index: LibraryIndex, known: dict[bytes, KnownPhoto]
) -> list[Path]:
    """``files`` less those hime wrote (``library.outputs``: never photos of the library); one that
    an older hime indexed leaves the index (with its faces: they must never be exemplars)."""
    from hime_cli.library.outputs import read_outputs

    outputs = read_outputs()
    if not outputs:
        return files
    kept: list[Path] = []
    for file in files:
        if not outputs.contains(file):
            kept.append(file)
            continue
        entry = known.pop(path_key(os.path.realpath(file)), None)
        if entry is not None:
            index.remove_photo(entry.id)
    if len(kept) < len(files):
        log.info("scan: %d files hime wrote are not photos of the library; skipped", len(files) - len(kept))
    return kept


def _replaced_paths() -> frozenset[Path]:
    """Photos hime replaced in place; an unreadable backup manifest only costs that feature."""
    from hime_cli.library.backup import replaced_paths

    try:
        return replaced_paths()
    except (OSError, sqlite3.Error) as exc:
        log.warning("cannot read the backup manifest (%s); enhanced photos are indexed as they are", exc)
        return frozenset()


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
