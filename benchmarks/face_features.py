"""Detect, gate and embed the largest face of every photo of an identity-folder library, cached.

Shared by ``tune_clustering.py --generalization``: per photo, the largest MTCNN face's box,
landmarks, score, sharpness, and two dlib embeddings (the aligned chip and its mirror image), so
every clustering variant (plain, flip-averaged, quality-aware) is scored from one pass. Cached as
``<cache>/<name>.npz`` (default ``/tmp/hime_face_features``), never in git.

    .venv/bin/python benchmarks/face_features.py DATA_DIR [--cache DIR] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_CACHE = Path("/tmp/hime_face_features")
# Part of every cache file's name: bumped when the embedding changes, so old caches are not read.
# v2: dlib's shape predictor runs in dlib's HOG box of each face (faces.embed.reframe_box); v3: a 2x crop; v4: 3x crop, face at 100 px.
FEATURES_VERSION = "v4"


@dataclass
class Features:
    truth: list[str]
    paths: list[str]
    missing: int
    emb: np.ndarray  # (N, 128) plain
    emb_flip: np.ndarray  # (N, 128) mirror-image chip
    score: np.ndarray  # (N,)
    size: np.ndarray
    sharpness: np.ndarray
    landmarks: np.ndarray  # (N, 5, 2)
    boxes: np.ndarray  # (N, 4)
    image_hw: np.ndarray  # (N, 2)

    def flip_mean(self) -> np.ndarray:
        return (self.emb + self.emb_flip) / 2.0


def _photos(data: Path) -> list[Path]:
    folders = sorted(p for p in data.iterdir() if p.is_dir())
    return sorted(p for f in folders for p in f.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})


def compute(data: Path, limit: int = 0) -> Features:
    from hime_cli.faces.detect import get_detector
    from hime_cli.faces.embed import DlibEmbedder
    from hime_cli.faces.quality import sharpness
    from hime_cli.library.reader import load_image

    detector, embedder = get_detector(), DlibEmbedder()
    photos = _photos(data)
    if limit:
        photos = photos[:limit]
    rows: dict[str, list] = {
        k: [] for k in ("truth", "paths", "emb", "flip", "score", "size", "sharp", "lm", "box", "hw")
    }
    missing, start = 0, time.perf_counter()
    for k, path in enumerate(photos, 1):
        rgb = load_image(path).rgb_uint8()
        faces = detector.detect(rgb)
        if not faces:
            missing += 1
            continue
        face = max(faces, key=lambda f: f.size)
        plain, mirrored = embedder.embed_views(rgb, [face])
        rows["truth"].append(path.parent.name)
        rows["paths"].append(str(path.relative_to(data)))
        rows["emb"].append(plain[0])
        rows["flip"].append(mirrored[0])
        rows["score"].append(face.score)
        rows["size"].append(face.size)
        rows["sharp"].append(sharpness(rgb, face))
        rows["lm"].append(face.landmarks)
        rows["box"].append(face.box.as_list())
        rows["hw"].append(rgb.shape[:2])
        if k % 100 == 0:
            print(f"  {k}/{len(photos)} photos, {time.perf_counter() - start:.0f} s", file=sys.stderr)
    f32 = lambda key, shape=None: np.asarray(rows[key], dtype=np.float32)  # noqa: E731
    return Features(
        rows["truth"],
        rows["paths"],
        missing,
        f32("emb"),
        f32("flip"),
        f32("score"),
        f32("size"),
        f32("sharp"),
        f32("lm").reshape(-1, 5, 2),
        f32("box").reshape(-1, 4),
        np.asarray(rows["hw"]).reshape(-1, 2),
    )


def cached(data: Path, cache: Path = DEFAULT_CACHE, limit: int = 0) -> Features:
    name = f"{data.parent.name}_{data.name}.{FEATURES_VERSION}" + (f"_first{limit}" if limit else "")
    npz, meta = cache / f"{name}.npz", cache / f"{name}.json"
    if npz.is_file() and meta.is_file():
        m = json.loads(meta.read_text())
        a = np.load(npz)
        return Features(
            m["truth"],
            m["paths"],
            m["missing"],
            a["emb"],
            a["emb_flip"],
            a["score"],
            a["size"],
            a["sharpness"],
            a["landmarks"],
            a["boxes"],
            a["image_hw"],
        )
    print(f"detecting and embedding {data} (cached in {npz})", file=sys.stderr)
    f = compute(data, limit)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(
        npz,
        emb=f.emb,
        emb_flip=f.emb_flip,
        score=f.score,
        size=f.size,
        sharpness=f.sharpness,
        landmarks=f.landmarks,
        boxes=f.boxes,
        image_hw=f.image_hw,
    )
    meta.write_text(json.dumps({"truth": f.truth, "paths": f.paths, "missing": f.missing}))
    return f


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--limit", type=int, default=0)
    args = parser.parse_args(argv)
    f = cached(args.data, args.cache, args.limit)
    print(f"{len(f.truth)} faces of {len(set(f.truth))} identities, {f.missing} photos without a face")
    return 0


if __name__ == "__main__":
    sys.exit(main())
