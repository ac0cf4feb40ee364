"""Tune the identity clustering on ``celeba-wild/dev`` (folder names are the truth).

Detects faces in every dev photo (MTCNN), keeps the largest, embeds it (dlib), caches the
embeddings as .npy under the hime cache dir (never in git), then sweeps algorithms and
thresholds and prints pairwise and BCubed precision / recall / F1 for each.

    .venv/bin/python benchmarks/tune_clustering.py [--data ../shared/data/celeba-wild/dev]
        [--embedder dlib] [--identities N] [--json out.json]

Photos with no detected face are left out of the scores (their count is printed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from hime_cli.identities.cluster import cluster_embeddings
from hime_cli.identities.metrics import bcubed_prf, pairwise_prf

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "celeba-wild" / "dev"

# Thresholds for the unit-length, flip-averaged dlib vectors faces.embed gives (raw vectors, before
# that, were ~1.35 long and were swept over 0.45-0.75).
SWEEPS: dict[str, tuple[str, str, list[float]]] = {
    "agglomerative-average": ("agglomerative", "average", [round(0.32 + 0.005 * i, 3) for i in range(31)]),
    "agglomerative-complete": ("agglomerative", "complete", [round(0.40 + 0.02 * i, 3) for i in range(10)]),
    "agglomerative-single": ("agglomerative", "single", [round(0.26 + 0.01 * i, 3) for i in range(11)]),
    "dbscan (min_samples=1)": ("dbscan", "", [round(0.26 + 0.01 * i, 3) for i in range(11)]),
}
# HDBSCAN has no distance threshold (and sklearn 1.9's cluster_selection_epsilon crashes on these
# embeddings): sweep its density parameters instead; noise points become singletons.
HDBSCAN_GRID = [(mcs, ms) for mcs in (2, 3, 5, 8) for ms in (1, 2, 5)]


def load_rgb(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def largest_face_embeddings(
    data: Path, embedder_name: str = "dlib", identities: int = 0
) -> tuple[np.ndarray, list[str], list[str], int]:
    """(embeddings (N, D), truth labels, photo paths, photos without a face) for ``data``
    (only the first ``identities`` folders when > 0)."""
    from hime_cli.faces.detect import get_detector
    from hime_cli.faces.embed import get_embedder

    detector = get_detector()
    embedder = get_embedder(embedder_name)
    folders = sorted(p for p in data.iterdir() if p.is_dir())
    if identities:
        folders = folders[:identities]
    photos = sorted(p for f in folders for p in f.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    embs, truth, paths, missing = [], [], [], 0
    start = time.perf_counter()
    for k, path in enumerate(photos, 1):
        rgb = load_rgb(path)
        faces = detector.detect(rgb)
        if not faces:
            missing += 1
            continue
        largest = max(faces, key=lambda f: f.size)
        embs.append(embedder.embed(rgb, [largest])[0])
        truth.append(path.parent.name)
        paths.append(str(path.relative_to(data)))
        if k % 100 == 0:
            print(f"  {k}/{len(photos)} photos, {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return np.asarray(embs, dtype=np.float32), truth, paths, missing


def cached_embeddings(
    data: Path, embedder_name: str, identities: int = 0
) -> tuple[np.ndarray, list[str], list[str], int]:
    from hime_cli.paths import get_paths

    subset = f"_first{identities}" if identities else ""
    # "_v2": flip-averaged, unit-length dlib vectors (faces.embed); older caches hold raw ones.
    cache = (
        get_paths().cache_dir / "benchmarks" / f"{data.parent.name}_{data.name}{subset}_{embedder_name}_v2"
    )
    emb_file, meta_file = cache / "embeddings.npy", cache / "meta.json"
    if emb_file.is_file() and meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        print(f"using cached embeddings in {cache}", file=sys.stderr)
        return np.load(emb_file), meta["truth"], meta["paths"], meta["missing"]
    print(f"detecting and embedding {data} (cached in {cache})", file=sys.stderr)
    emb, truth, paths, missing = largest_face_embeddings(data, embedder_name, identities)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(emb_file, emb)
    meta_file.write_text(json.dumps({"truth": truth, "paths": paths, "missing": missing}))
    return emb, truth, paths, missing


def evaluate(emb: np.ndarray, truth: list[str], algorithm: str, linkage: str, threshold: float) -> dict:
    labels = cluster_embeddings(emb, threshold, linkage=linkage or "average", algorithm=algorithm)
    pw, bc = pairwise_prf(truth, labels.tolist()), bcubed_prf(truth, labels.tolist())
    return {
        "threshold": threshold,
        "clusters": int(labels.max() + 1) if len(labels) else 0,
        "pairwise": pw.as_dict(),
        "bcubed": bc.as_dict(),
    }


def evaluate_hdbscan(emb: np.ndarray, truth: list[str], min_cluster_size: int, min_samples: int) -> dict:
    from sklearn.cluster import HDBSCAN

    from hime_cli.identities.cluster import canonical_labels

    model = HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples, copy=True)
    labels = canonical_labels(model.fit_predict(emb.astype(np.float64)))
    pw, bc = pairwise_prf(truth, labels.tolist()), bcubed_prf(truth, labels.tolist())
    return {
        "min_cluster_size": min_cluster_size,
        "min_samples": min_samples,
        "clusters": int(labels.max() + 1) if len(labels) else 0,
        "pairwise": pw.as_dict(),
        "bcubed": bc.as_dict(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--embedder", default="dlib")
    parser.add_argument(
        "--identities", type=int, default=0, help="only the first N identity folders (0: all)"
    )
    parser.add_argument("--json", type=Path, help="also write every result here")
    args = parser.parse_args(argv)

    emb, truth, paths, missing = cached_embeddings(args.data, args.embedder, args.identities)
    print(
        f"{len(truth)} faces of {len(set(truth))} identities ({missing} photos without a detected face left out)"
    )
    results: dict[str, list[dict]] = {}
    best: tuple[float, str, float] = (-1.0, "", 0.0)
    for name, (algorithm, linkage, thresholds) in SWEEPS.items():
        print(f"\n{name}")
        print(
            f"  {'thr':>6} {'clusters':>8}  {'pw P':>6} {'pw R':>6} {'pw F1':>6}  {'B3 P':>6} {'B3 R':>6} {'B3 F1':>6}"
        )
        results[name] = []
        for t in thresholds:
            r = evaluate(emb, truth, algorithm, linkage, t)
            results[name].append(r)
            pw, bc = r["pairwise"], r["bcubed"]
            print(
                f"  {t:6.3f} {r['clusters']:8d}  {pw['precision']:6.3f} {pw['recall']:6.3f} {pw['f1']:6.3f}"
                f"  {bc['precision']:6.3f} {bc['recall']:6.3f} {bc['f1']:6.3f}"
            )
            if pw["f1"] > best[0]:
                best = (pw["f1"], name, t)
    print("\nhdbscan (min_cluster_size, min_samples)")
    results["hdbscan"] = []
    for mcs, ms in HDBSCAN_GRID:
        r = evaluate_hdbscan(emb, truth, mcs, ms)
        results["hdbscan"].append(r)
        pw, bc = r["pairwise"], r["bcubed"]
        print(
            f"  {mcs:3d},{ms:2d} {r['clusters']:8d}  {pw['precision']:6.3f} {pw['recall']:6.3f} {pw['f1']:6.3f}"
            f"  {bc['precision']:6.3f} {bc['recall']:6.3f} {bc['f1']:6.3f}"
        )
    print(f"\nbest pairwise F1 {best[0]:.4f}: {best[1]} at threshold {best[2]}")
    if args.json:
        args.json.write_text(
            json.dumps({"faces": len(truth), "missing": missing, "results": results}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
