"""Where the faces of an input photo and their exemplar candidates come from: the library index
(:class:`IndexSource`, after the run's explicit :func:`scan_missing` step) or a ``--refs`` folder
(:class:`RefsFolderSource`)."""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hime_cli.errors import HimeError, UsageError
from hime_cli.library.outputs import HimeOutputs
from hime_cli.library.reader import iter_photos
from hime_cli.pipeline.options import REFS_MATCH_DISTANCE, EnhanceOptions
from hime_cli.types import DetectedFace, Face, LoadedImage

if TYPE_CHECKING:
    from hime_cli.library.index import LibraryIndex

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetFace:
    """A face of an input photo, with what is known about its identity."""

    detected: DetectedFace
    face_id: int | None = None
    identity_id: int | None = None
    embedding: np.ndarray | None = None
    photo_id: int | None = None  # index id of its photo (never an exemplar source for it)

    # what exemplar ranking reads (identities.exemplars.ExemplarTarget)
    @property
    def id(self) -> int | None:
        return self.face_id

    @property
    def landmarks(self) -> np.ndarray:
        return self.detected.landmarks


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

        paths = list(iter_photos([refs_dir]))
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

    def __init__(self, index: LibraryIndex | None) -> None:
        self.index = index
        self._identified: tuple[np.ndarray, list[int]] | None = None
        self.outputs = HimeOutputs()  # what hime wrote (--out files, its folders): never exemplars

    @classmethod
    def open(cls, readonly: bool) -> IndexSource:
        """The library index, read-only (``--dry-run``, ``hime compare``: None when there is none)
        or for writing (waiting up to 30 s for another run's lock). Opening scans nothing:
        :func:`scan_missing` is the run's explicit scan step."""
        from hime_cli.library.index import LibraryIndex

        if readonly:
            try:
                return cls(LibraryIndex.open(readonly=True))
            except HimeError:
                return cls(None)
        return cls(LibraryIndex.open(lock_timeout=30.0))

    def close(self) -> None:
        if self.index is not None:
            self.index.close()

    def fresh(self, path: Path) -> int | None:
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

    def faces(self, source: Path, loaded: LoadedImage) -> list[TargetFace]:
        photo_id = self.fresh(source)
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
        return self.outputs.contains(path)


def scan_missing(source: IndexSource, photos: Sequence[Path], progress: Callable[[str], None] | None) -> None:
    """The run's scan step: index the photos the index lacks (or that changed since), then place
    their new faces into identities (:func:`hime_cli.identities.scan.scan_and_place`, what
    `hime scan` does; a run never enhances unknown faces)."""
    from hime_cli.identities.scan import scan_and_place

    missing = [p for p in photos if source.fresh(p) is None]
    if not missing or source.index is None:
        return
    result = scan_and_place(
        missing,
        source.index,
        progress=(lambda e: progress(f"scanning {e.done}/{e.total}: {e.path.name}")) if progress else None,
        before_placing=(lambda: progress("placing new faces into identities")) if progress else None,
    )
    for failure in result.scan.failures:
        log.warning("scan: %s: %s", failure.path, failure.reason)
