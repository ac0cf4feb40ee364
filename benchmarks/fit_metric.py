"""Fit a linear metric for dlib face embeddings on celeba-wild/train (never dev, never LFW).

The vectors are the ones a scan stores: the flip-averaged dlib descriptor at unit length. Each
train photo gives its largest MTCNN face (``benchmarks/face_features.py``, cached outside the
repository); the first ``PER_IDENTITY`` (10) photos of each identity folder (sorted names; 243
folders, 2,185 photos, 2,176 with a face), symlinked into two shards of alternate folders under
``/tmp/hime_train_k10`` so two processes can detect them side by side (``--shards`` makes them and
prints their paths; about 16 minutes each on a busy 2-core machine):

    .venv/bin/python benchmarks/fit_metric.py --shards
    .venv/bin/python benchmarks/face_features.py /tmp/hime_train_k10/s0 &
    .venv/bin/python benchmarks/face_features.py /tmp/hime_train_k10/s1

The fits (all closed form, no randomness):

- **WCCN** (within-class covariance normalisation, Hatch et al. 2006): ``W = (Sw + a I)^-1/2``,
  ``Sw`` the within-identity covariance of the unit vectors, ``a = alpha * trace(Sw) / d`` (a
  ridge relative to the average within-identity variance); applied as ``unit(unit(x) @ W)``.
- **LDA to k dims**: the same ``(Sw + a I)^-1/2``, then the top ``k`` principal directions of the
  identity means in that space (between-identity scatter): ``W`` is 128 x k.

    .venv/bin/python benchmarks/fit_metric.py [--train DIR] [--alpha 0.1] [--k 0] [--out FILE]

It prints the matrix's shape and the sha256 of its float32 ``.npy``; ``--out`` writes that file.
``benchmarks/dev_f1_variants.py --only learned`` scores these fits (and 2-fold cross-validation on
train); none met both targets, so no map ships (docs/clustering.md, "Fourth round").
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from face_features import DEFAULT_CACHE, Features, cached  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO.parent / "shared" / "data" / "celeba-wild" / "train"
PER_IDENTITY = 10
SHARDS = 2
SUBSET_ROOT = Path("/tmp/hime_train_k10")


def subset_folders(train: Path, per_identity: int = PER_IDENTITY, root: Path = SUBSET_ROOT) -> list[Path]:
    """Symlink the first ``per_identity`` photos of every identity folder into ``SHARDS`` folders
    (alternate identities), so the features are cached per shard. Returns the shard folders."""
    folders = sorted(p for p in train.iterdir() if p.is_dir())
    shards = [root / f"s{k}" for k in range(SHARDS)]
    for k, folder in enumerate(folders):
        photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        target = shards[k % SHARDS] / folder.name
        target.mkdir(parents=True, exist_ok=True)
        for photo in photos[:per_identity]:
            link = target / photo.name
            if not link.is_symlink():
                link.symlink_to(photo.resolve())
    return shards


def train_features(train: Path = TRAIN, cache: Path = DEFAULT_CACHE) -> Features:
    """The train subset's cached features, shards concatenated (identity names are distinct)."""
    parts = [cached(shard, cache) for shard in subset_folders(train)]
    return Features(
        [t for p in parts for t in p.truth],
        [f"{t}/{Path(q).name}" for p in parts for t, q in zip(p.truth, p.paths, strict=True)],
        sum(p.missing for p in parts),
        *(
            np.concatenate([getattr(p, name) for p in parts])
            for name in ("emb", "emb_flip", "score", "size", "sharpness", "landmarks", "boxes", "image_hw")
        ),
    )


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def within_between(x: np.ndarray, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Within-identity covariance (pooled, every face weighs the same) and the identity means."""
    names = sorted(set(labels))
    y = np.array([names.index(t) for t in labels])
    means = np.stack([x[y == k].mean(0) for k in range(len(names))])
    centred = x - means[y]
    return centred.T @ centred / len(x), means


def inverse_sqrt(s: np.ndarray, alpha: float) -> np.ndarray:
    """``(s + alpha * mean eigenvalue * I)^-1/2`` (symmetric)."""
    values, vectors = np.linalg.eigh(s)
    values = values + alpha * values.mean()
    return (vectors / np.sqrt(values)) @ vectors.T


def fit(x: np.ndarray, labels: list[str], alpha: float, k: int = 0) -> np.ndarray:
    """WCCN (``k`` 0: 128 x 128) or LDA to ``k`` dims (128 x k) of unit vectors ``x``."""
    within, means = within_between(x, labels)
    w = inverse_sqrt(within, alpha)
    if k <= 0:
        return w
    projected = (means - means.mean(0)) @ w
    _, _, vt = np.linalg.svd(projected, full_matrices=False)  # rows: between-identity directions
    return w @ vt[:k].T


def fit_train(train: Path = TRAIN, alpha: float = 0.1, k: int = 0) -> np.ndarray:
    f = train_features(train)
    return fit(unit(f.flip_mean()), f.truth, alpha, k).astype(np.float32)


def npy_bytes(matrix: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(matrix, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, default=TRAIN)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--k", type=int, default=0, help="LDA dimensions (0: WCCN, 128 x 128)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--shards", action="store_true", help="make the shard folders, print them, stop")
    args = parser.parse_args(argv)
    if args.shards:
        print("\n".join(str(p) for p in subset_folders(args.train)))
        return 0
    f = train_features(args.train)
    matrix = fit(unit(f.flip_mean()), f.truth, args.alpha, args.k).astype(np.float32)
    data = npy_bytes(matrix)
    print(
        f"{len(f.truth)} train faces of {len(set(f.truth))} identities ({f.missing} photos without a face);"
        f" matrix {matrix.shape[0]} x {matrix.shape[1]}, npy sha256 {hashlib.sha256(data).hexdigest()}"
    )
    if args.out:
        args.out.write_bytes(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
