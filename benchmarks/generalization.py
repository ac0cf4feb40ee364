"""Clustering that generalizes: tune on celeba-wild/dev, score a second library without re-tuning.

Reads the cached largest-face features of ``benchmarks/face_features.py`` for both libraries
(dev: ``../shared/data/celeba-wild/dev``; second: an LFW folder from
``benchmarks/make_lfw_library.py``), runs each clustering variant over a threshold sweep on dev,
picks each variant's best dev threshold, and scores the second library at exactly that setting.

    .venv/bin/python benchmarks/generalization.py [--dev DIR] [--second /tmp/lfw_library]

Variants: raw dlib vectors with average linkage (before), flip-averaged, unit length, both (what
``faces.embed`` stores now), with the scan's quality gate (rejected faces alone, poor faces
attached within POOR_TIGHTEN x the threshold), complete linkage, and Immich-like DBSCAN
(min_samples 3 = Immich's minFaces; the rest is noise, i.e. singletons). Each variant's setting is
its best dev pairwise F1 (ties: the smaller threshold); the second library is never tuned on.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from face_features import Features, cached  # noqa: E402

from hime_cli.faces.quality import assess  # noqa: E402
from hime_cli.identities.cluster import (  # noqa: E402
    DEFAULT_THRESHOLD,
    attach_to_clusters,
    canonical_labels,
    cluster_embeddings,
)
from hime_cli.identities.metrics import bcubed_prf, pairwise_prf  # noqa: E402
from hime_cli.identities.store import POOR_TIGHTEN  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEV = REPO.parent / "shared" / "data" / "celeba-wild" / "dev"
RAW = [round(0.50 + 0.01 * i, 3) for i in range(21)]  # raw dlib vectors (length ~1.35)
UNIT = [round(0.34 + 0.005 * i, 3) for i in range(25)]  # unit-length vectors


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float64)


def gated_labels(
    f: Features,
    emb: np.ndarray,
    threshold: float,
    poor_factor: float = POOR_TIGHTEN,
    cluster: Callable[[np.ndarray, float], np.ndarray] | None = None,
    poor_threshold: float | None = None,
) -> np.ndarray:
    """The scan's gate (on the flip-averaged unit vectors it sees), then good faces clustered,
    poor faces attached within ``poor_factor`` x the threshold, rejected ones alone.

    ``cluster(good_embeddings, threshold)`` replaces plain average linkage (a variant with its
    own distance, whose threshold is on another scale: then ``poor_threshold`` is the Euclidean
    distance within which poor faces attach)."""
    product = unit(f.flip_mean())
    levels = [
        assess(float(f.score[i]), float(f.sharpness[i]), float(f.size[i]), product[i]).level
        for i in range(len(f.truth))
    ]
    good = np.array([lv == "good" for lv in levels])
    poor = np.array([lv == "poor" for lv in levels])
    labels = np.full(len(levels), -1, dtype=np.int64)
    if good.any():
        labels[good] = (cluster or cluster_embeddings)(emb[good], threshold)
    if poor.any():
        attach = threshold * poor_factor if poor_threshold is None else poor_threshold
        labels = attach_to_clusters(emb, np.where(poor, -1, labels), attach)
        labels[~good & ~poor] = -1
    return canonical_labels(labels)  # every -1 (rejected, unplaced poor) becomes a singleton


def _dbscan(emb: np.ndarray, t: float) -> np.ndarray:
    from sklearn.cluster import DBSCAN

    return canonical_labels(DBSCAN(eps=t, min_samples=3).fit_predict(emb))


# name → (embedding of the features, labels(features, embedding, threshold), thresholds)
VARIANTS = {
    "raw dlib, average linkage (before)": (lambda f: f.emb.astype(np.float64), None, RAW),
    "raw, flip-averaged": (lambda f: f.flip_mean().astype(np.float64), None, RAW),
    "unit length": (lambda f: unit(f.emb), None, UNIT),
    "**flip-averaged, unit length (now)**": (lambda f: unit(f.flip_mean()), None, UNIT),
    "flip + unit + quality gate (the scan)": (lambda f: unit(f.flip_mean()), gated_labels, UNIT),
    "flip + unit, complete linkage": (
        lambda f: unit(f.flip_mean()),
        lambda f, e, t: cluster_embeddings(e, t + 0.08, linkage="complete"),
        UNIT,
    ),
    "flip + unit, DBSCAN min_samples 3 (Immich-like minFaces)": (
        lambda f: unit(f.flip_mean()),
        lambda f, e, t: _dbscan(e, t - 0.06),
        UNIT,
    ),
}
OFFSETS = {
    "flip + unit, complete linkage": 0.08,
    "flip + unit, DBSCAN min_samples 3 (Immich-like minFaces)": -0.06,
}


def score(f: Features, labels: np.ndarray) -> dict[str, float]:
    pw, bc = pairwise_prf(f.truth, labels.tolist()), bcubed_prf(f.truth, labels.tolist())
    return {"P": pw.precision, "R": pw.recall, "F1": pw.f1, "B3": bc.f1, "clusters": int(labels.max() + 1)}


def run(f: Features, variant: str, t: float) -> np.ndarray:
    embed, labeller, _ = VARIANTS[variant]
    emb = embed(f)
    return labeller(f, emb, t) if labeller else cluster_embeddings(emb, t)


def library_args(
    argv: list[str] | None,
    description: str,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> tuple[argparse.Namespace, Features, Features]:
    """--dev and --second (the tuning library and the one never tuned on), with their cached
    features; ``extra`` adds a script's own options to the same parser."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dev", type=Path, default=DEV)
    parser.add_argument("--second", type=Path, default=Path("/tmp/lfw_library"))
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    return args, cached(args.dev), cached(args.second)


def main(argv: list[str] | None = None) -> int:
    _, dev, second = library_args(argv, __doc__.splitlines()[0])
    print(
        f"dev: {len(dev.truth)} faces / {len(set(dev.truth))} ids; second: {len(second.truth)} / {len(set(second.truth))}"
    )
    print(
        "| variant | setting (best dev F1) | dev P | dev R | **dev F1** | dev B3 F1 | LFW P | LFW R | **LFW F1** | LFW B3 F1 |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for variant, (_, _, thresholds) in VARIANTS.items():
        sweep = [(t, score(dev, run(dev, variant, t))) for t in thresholds]
        picks = [max(sweep, key=lambda x: (round(x[1]["F1"], 4), -x[0]))]
        if variant.endswith("(before)"):
            picks.insert(0, (0.6, dict(sweep)[0.6]))  # the shipped setting
        if "(now)" in variant or "gate" in variant:
            # The shipped threshold (0.40: chosen precision first on the embedding before re-framing,
            # not re-tuned since), and for the plain variant the precision rule's pick on these
            # vectors (the largest threshold with dev pairwise precision >= 0.98), which may differ.
            picks.insert(0, (DEFAULT_THRESHOLD, dict(sweep)[DEFAULT_THRESHOLD]))
            if "(now)" in variant:
                precise = max(t for t, d in sweep if d["P"] >= 0.98)
                if precise != DEFAULT_THRESHOLD:
                    picks.insert(1, (precise, dict(sweep)[precise]))
        for t, d in picks:
            s = score(second, run(second, variant, t))
            setting = t + OFFSETS.get(variant, 0.0)
            print(
                f"| {variant} | {setting:.3f} | {d['P']:.3f} | {d['R']:.3f} | {d['F1']:.4f} | {d['B3']:.3f}"
                f" | {s['P']:.3f} | {s['R']:.3f} | {s['F1']:.4f} | {s['B3']:.3f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
