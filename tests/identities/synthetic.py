"""A synthetic library index for identity tests: faces with made-up embeddings, no detector."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hime_cli.faces.align import CANONICAL_LANDMARKS
from hime_cli.library.index import LibraryIndex, ScannedFace
from hime_cli.types import Box, DetectedFace

DIM = 128


def person_centres(n: int, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors; random 128-d unit vectors are ~1.41 apart, far beyond the 0.6 threshold."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(n, DIM))
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def face_embedding(centre: np.ndarray, rng: np.random.Generator, spread: float = 0.2) -> np.ndarray:
    """A face of the person at ``centre``: about ``spread`` away from it (same-person pairs ~0.28)."""
    noise = rng.normal(size=DIM)
    return (centre + spread * noise / np.linalg.norm(noise)).astype(np.float32)


def scanned_face(
    embedding: np.ndarray | None, region: float = 200.0, x: float = 20.0, y: float = 20.0
) -> ScannedFace:
    lm = (CANONICAL_LANDMARKS * region + [x, y]).astype(np.float32)
    box = Box(x + 0.1 * region, y + 0.2 * region, x + 0.9 * region, y + region)
    return ScannedFace(DetectedFace(box, lm, 0.99), sharpness=10.0, embedding=embedding)


def add_photo(
    index: LibraryIndex,
    name: str,
    embeddings: list[np.ndarray | None],
    region: float = 200.0,
    embedder: str = "dlib",
    folder: Path | None = None,
    colours: list[tuple[int, int, int]] | None = None,
) -> list[int]:
    """Index a photo holding one face per embedding, side by side; returns the face ids.

    Without ``folder`` the photo is fictitious (``/photos/NAME``); with it, a real PNG is written
    there whose face regions are filled with ``colours`` (one per face), so crops can be checked.
    """
    faces = [scanned_face(e, region, x=20.0 + i * (region + 20), y=20.0) for i, e in enumerate(embeddings)]
    width, height = int(40 + len(faces) * (region + 20)), int(region + 40)
    path = Path("/photos") / name
    if folder is not None:
        from PIL import Image

        pixels = np.full((height, width, 3), 128, dtype=np.uint8)
        for i, colour in enumerate(colours or [(200, 50, 50)] * len(faces)):
            x0 = int(20 + i * (region + 20))
            pixels[20 : 20 + int(region), x0 : x0 + int(region)] = colour
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        Image.fromarray(pixels).save(path)
    _, ids = index.record_photo(
        path,
        faces,
        size=1000,
        mtime_ns=1,
        sha256=name,
        width=width,
        height=height,
        format="PNG" if folder is not None else "JPEG",
        embedder=embedder,
    )
    return ids


def face_identities(index: LibraryIndex) -> dict[int, int | None]:
    return {int(r[0]): r[1] for r in index.conn.execute("SELECT id, identity_id FROM faces ORDER BY id")}


def assigned_by(index: LibraryIndex) -> dict[int, str]:
    return {int(r[0]): r[1] for r in index.conn.execute("SELECT id, assigned_by FROM faces ORDER BY id")}
