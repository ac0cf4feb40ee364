"""Scan benchmarks: throughput on a real folder, and the re-scan time of a large unchanged index.

Both run against a fresh index in a temporary folder, never the user's. Used by
``hime bench scan`` and ``benchmarks/bench_scan.py``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hime_cli.library.index import LibraryIndex, ScannedFace
from hime_cli.library.reader import iter_photos
from hime_cli.library.scan import PROCESS_MIN_PHOTOS, scan_paths, worker_count
from hime_cli.types import Box, DetectedFace


@dataclass(frozen=True)
class ScanBenchResult:
    folder: str
    photos: int
    failed: int
    faces: int
    seconds: float
    photos_per_s: float
    ms_per_face: float | None
    model_load_s: float
    embedder: str
    parallel: bool
    workers: int
    cpu_count: int
    load_average: tuple[float, float, float] | None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class RescanBenchResult:
    photos: int
    build_s: float
    rescan_s: float
    unchanged: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def bench_scan(
    folder: str | os.PathLike[str],
    limit: int | None = None,
    embedder: str = "dlib",
    parallel: bool = True,
    device: str = "cpu",
    workers: int | None = None,
) -> ScanBenchResult:
    """Scan ``folder`` (its first ``limit`` photos) into a fresh index; every face is embedded.

    ``photos_per_s`` includes starting the worker processes (each loads its own models: a few
    seconds, amortised over the folder); ``model_load_s`` is the load time in this process.
    """
    from hime_cli.faces.detect import get_detector
    from hime_cli.faces.embed import get_embedder

    files = list(iter_photos([folder]))
    if limit is not None:
        files = files[:limit]
    t0 = time.perf_counter()
    get_detector(device)
    get_embedder(embedder)
    model_load_s = time.perf_counter() - t0
    with (
        tempfile.TemporaryDirectory(prefix="hime-bench-") as tmp,
        LibraryIndex.open(Path(tmp) / "index.sqlite3") as index,
    ):
        report = scan_paths(
            files, index, embedder=embedder, parallel=parallel, device=device, workers=workers
        )
    faces = report.faces_found
    return ScanBenchResult(
        folder=str(folder),
        photos=report.photos,
        failed=report.failed,
        faces=faces,
        seconds=round(report.duration_s, 3),
        photos_per_s=round(report.photos / report.duration_s, 3) if report.duration_s > 0 else 0.0,
        ms_per_face=round(report.duration_s * 1000 / faces, 2) if faces else None,
        model_load_s=round(model_load_s, 3),
        embedder=embedder,
        parallel=parallel,
        workers=worker_count(workers) if parallel and len(files) >= PROCESS_MIN_PHOTOS else 1,
        cpu_count=os.cpu_count() or 1,
        load_average=_load_average(),
    )


def bench_rescan(photos: int = 5000, faces_per_photo: int = 2) -> RescanBenchResult:
    """Time the re-scan of an unchanged index of ``photos`` photos (synthetic files and rows).

    The files are tiny (the re-scan must not read them anyway); their rows and faces go in through
    the index API exactly as a scan writes them, so the re-scan does the real work: one query of
    every stamp, a walk of the folders, one ``stat`` per file.
    """
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="hime-bench-rescan-") as tmp:
        root = Path(tmp) / "photos"
        t0 = time.perf_counter()
        paths = []
        for i in range(photos):
            folder = root / f"{2000 + i // 1000}" / f"album{i // 100 % 10:02d}"
            if i % 100 == 0:
                folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"IMG_{i:05d}.jpg"
            path.write_bytes(b"\xff\xd8\xff\xd9" + i.to_bytes(4, "little"))
            paths.append(path)
        with LibraryIndex.open(Path(tmp) / "index.sqlite3") as index:
            with index.transaction():
                for path in paths:
                    st = os.stat(path)
                    faces = [_synthetic_face(rng, k) for k in range(faces_per_photo)]
                    index.record_photo(
                        os.path.realpath(path),
                        faces,
                        size=st.st_size,
                        mtime_ns=st.st_mtime_ns,
                        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                        width=4000,
                        height=3000,
                        format="JPEG",
                        embedder="dlib",
                    )
            build_s = time.perf_counter() - t0
            report = scan_paths([root], index, embedder="dlib")
    return RescanBenchResult(
        photos=photos,
        build_s=round(build_s, 3),
        rescan_s=round(report.duration_s, 4),
        unchanged=report.unchanged,
    )


def _synthetic_face(rng: np.random.Generator, k: int) -> ScannedFace:
    x0, y0, side = 100.0 + 300 * k, 200.0, 80.0
    landmarks = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]], np.float32) * side
    return ScannedFace(
        detected=DetectedFace(Box(x0, y0, x0 + side, y0 + side), landmarks + [x0, y0], 0.99),
        sharpness=10.0,
        embedding=rng.normal(size=128).astype(np.float32),
    )


def _load_average() -> tuple[float, float, float] | None:
    try:
        return tuple(round(v, 2) for v in os.getloadavg())  # type: ignore[return-value]
    except OSError:
        return None
