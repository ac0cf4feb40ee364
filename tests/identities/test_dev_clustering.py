"""Clustering quality on real faces: celeba-wild/dev (folder names are the truth).

By default the first ten identities (about 220 faces: a minute or two on a quiet CPU);
``HIME_DEV_IDENTITIES=0`` runs all 36 (issue 12 asks pairwise F1 >= 0.96 there: 0.963 with the
re-framed embeddings, see docs/clustering.md and ``benchmarks/generalization.py``). The first ten
score 0.965 at the shipped threshold (0.954 before re-framing, 0.938 with raw vectors); subsets of
ten vary by several hundredths, so the bar here is 0.95.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from hime_cli.identities.cluster import cluster_embeddings
from hime_cli.identities.metrics import bcubed_prf, pairwise_prf
from hime_cli.identities.store import update_identities
from hime_cli.library.index import LibraryIndex, ScannedFace

N_IDENTITIES = int(os.environ.get("HIME_DEV_IDENTITIES", "10"))  # 0: all


@pytest.fixture(scope="module")
def dev_faces(shared_data: Path, face_memo) -> list[tuple[Path, str, ScannedFace]]:
    """(photo, truth, largest face) for the first N_IDENTITIES dev identities (MTCNN and dlib
    through the session's FaceMemo: tests/test_pipeline.py looks at many of the same photos)."""
    from PIL import Image, ImageOps

    from hime_cli.faces.quality import sharpness

    dev = shared_data / "celeba-wild" / "dev"
    if not dev.is_dir():
        pytest.skip(f"{dev} is absent")
    detector, embedder = face_memo.detector(), face_memo.embedder()
    result = []
    folders = sorted(p for p in dev.iterdir() if p.is_dir())
    for folder in folders[:N_IDENTITIES] if N_IDENTITIES > 0 else folders:
        for photo in sorted(folder.glob("*.jpg")):
            with Image.open(photo) as im:
                rgb = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
            faces = detector.detect(rgb)
            if not faces:
                continue
            face = max(faces, key=lambda f: f.size)
            result.append(
                (photo, folder.name, ScannedFace(face, sharpness(rgb, face), embedder.embed(rgb, [face])[0]))
            )
    return result


@pytest.mark.data
@pytest.mark.slow
def test_dev_pairwise_f1_from_scratch(dev_faces) -> None:
    truth = [t for _, t, _ in dev_faces]
    emb = np.stack([f.embedding for _, _, f in dev_faces])
    labels = cluster_embeddings(emb).tolist()
    pw = pairwise_prf(truth, labels)
    print(f"pairwise {pw}, bcubed {bcubed_prf(truth, labels)}")
    assert len(truth) > 20 * min(N_IDENTITIES or 36, 36)
    assert pw.f1 >= 0.95


@pytest.mark.data
@pytest.mark.slow
def test_dev_incremental_scans_stay_accurate(dev_faces, tmp_path: Path) -> None:
    """Index the photos in two scans (every other photo first): new faces join the identities of
    the first scan, and the result is as good as clustering everything at once."""
    first, second = dev_faces[::2], dev_faces[1::2]
    face_truth: dict[int, str] = {}
    with LibraryIndex.open(tmp_path / "index.sqlite3") as index:
        for batch in (first, second):
            for photo, truth, face in batch:
                _, (face_id,) = index.record_photo(
                    photo, [face], size=1, mtime_ns=1, sha256=None, embedder="dlib"
                )
                face_truth[face_id] = truth
            before = {int(r[0]): r[1] for r in index.conn.execute("SELECT id, identity_id FROM faces")}
            update_identities(index)
        after = {int(r[0]): r[1] for r in index.conn.execute("SELECT id, identity_id FROM faces")}
    # Faces of the first scan kept their identities in the second.
    assert all(after[f] == i for f, i in before.items() if i is not None)
    ids = sorted(face_truth)
    pw = pairwise_prf([face_truth[f] for f in ids], [after[f] for f in ids])
    print(f"incremental pairwise {pw}")
    assert pw.f1 >= 0.95
