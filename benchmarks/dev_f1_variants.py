"""Variants tried for dev pairwise F1 >= 0.96 without losing the second library (issue 12).

Reads the cached largest-face features of ``benchmarks/face_features.py`` (dev and the LFW
library), and for the view variants re-cuts each face's chip at other paddings (dlib's
``get_face_chip``, the same 5-point shape) and embeds it with the torch ResNet (cached next to the
features, ``<cache>/<name>.views.npy``). Every threshold is chosen on dev: the largest with dev
pairwise precision >= 0.98 (the shipped rule), and the dev-best F1; LFW is scored at exactly it.

    .venv/bin/python benchmarks/dev_f1_variants.py [--dev DIR] [--second /tmp/lfw_library]

Variants: more test-time views (chips at padding 0.15 / 0.25 / 0.35, each with its mirror image),
embeddings centred on the average face before unit length (``unit(e - a * mean)``), and a
quality rule that treats faces embedding within ``g0`` of the average face as ``poor``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from face_features import DEFAULT_CACHE, Features  # noqa: E402
from generalization import gated_labels, library_args, score, unit  # noqa: E402

from hime_cli.faces.quality import MEAN_DLIB_EMBEDDING, assess, generic_distance  # noqa: E402
from hime_cli.identities.cluster import attach_to_clusters, canonical_labels, cluster_embeddings  # noqa: E402
from hime_cli.identities.store import POOR_TIGHTEN  # noqa: E402

PADDINGS = (0.25, 0.15, 0.35)  # 0.25 is what faces.embed uses


def views(data: Path, f: Features, cache: Path = DEFAULT_CACHE) -> np.ndarray:
    """(N, len(PADDINGS), 2, 128): each padding's chip and its mirror image, embedded."""
    path = cache / (str(data.resolve()).strip("/").replace("/", "_").split("data_")[-1] + ".views.npy")
    if path.exists():
        return np.load(path)
    import dlib

    from hime_cli.faces.embed import DlibEmbedder
    from hime_cli.library.reader import load_image

    embedder = DlibEmbedder()
    out = np.zeros((len(f.truth), len(PADDINGS), 2, 128), np.float32)
    for i, rel in enumerate(f.paths):
        rgb = load_image(data / rel).rgb_uint8()
        x0, y0, x1, y1 = f.boxes[i]
        shape = embedder._pose(rgb, dlib.rectangle(int(x0), int(y0), int(round(x1)), int(round(y1))))
        chips = []
        for padding in PADDINGS:
            chip = dlib.get_face_chip(rgb, shape, size=150, padding=padding)
            chips += [chip, np.ascontiguousarray(chip[:, ::-1])]
        out[i] = embedder._descriptors_torch(chips).reshape(len(PADDINGS), 2, 128)
    np.save(path, out)
    return out


def generic_poor_labels(f: Features, emb: np.ndarray, t: float, g0: float) -> np.ndarray:
    """The scan's gate, plus: a good face within ``g0`` of the average face counts as poor."""
    levels = []
    for i in range(len(f.truth)):
        level = assess(float(f.score[i]), float(f.sharpness[i]), float(f.size[i]), emb[i]).level
        if level == "good" and (generic_distance(emb[i]) or 1.0) < g0:
            level = "poor"
        levels.append(level)
    good = np.array([lv == "good" for lv in levels])
    poor = np.array([lv == "poor" for lv in levels])
    labels = np.full(len(levels), -1, dtype=np.int64)
    labels[good] = cluster_embeddings(emb[good], t)
    if poor.any():
        labels = attach_to_clusters(emb, np.where(poor, -1, labels), t * POOR_TIGHTEN)
        labels[~good & ~poor] = -1
    return canonical_labels(labels)


def report(name: str, dev: Features, second: Features, labeller, thresholds) -> None:  # type: ignore[no-untyped-def]
    sweep = [(t, score(dev, labeller(dev, t))) for t in thresholds]
    best = max(sweep, key=lambda x: (round(x[1]["F1"], 4), -x[0]))
    precise = [x for x in sweep if x[1]["P"] >= 0.98]
    first = max(precise, key=lambda x: x[0]) if precise else best
    for rule, (t, d) in (("P >= 0.98", first), ("best dev F1", best)):
        s = score(second, labeller(second, t))
        print(
            f"| {name} | {rule} | {t:.3f} | {d['P']:.3f} | {d['R']:.3f} | {d['F1']:.4f}"
            f" | {s['P']:.3f} | {s['R']:.3f} | {s['F1']:.4f} |",
            flush=True,
        )
        if rule == "P >= 0.98" and first == best:
            break


def main(argv: list[str] | None = None) -> int:
    args, dev, second = library_args(argv, __doc__.splitlines()[0])
    view = {id(dev): views(args.dev, dev), id(second): views(args.second, second)}
    unit_ts = [round(0.34 + 0.005 * i, 3) for i in range(25)]
    print(
        "| variant | threshold rule | threshold | dev P | dev R | **dev F1** | LFW P | LFW R | **LFW F1** |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    combos = {
        "padding 0.25 + mirror (now)": lambda v: v[:, 0].mean(1),
        "padding 0.35 + mirror": lambda v: v[:, 2].mean(1),
        "paddings 0.25, 0.35 + mirrors": lambda v: v[:, [0, 2]].mean((1, 2)),
        "paddings 0.15, 0.25, 0.35 + mirrors": lambda v: v.mean((1, 2)),
    }
    for name, combine in combos.items():
        report(name, dev, second, lambda f, t, c=combine: gated_labels(f, unit(c(view[id(f)])), t), unit_ts)
    wide = [round(0.30 + 0.01 * i, 3) for i in range(111)]
    for a in (0.5, 0.75, 1.0):
        report(
            f"centred on the average face, a = {a}",
            dev,
            second,
            lambda f, t, a=a: gated_labels(f, unit(unit(f.flip_mean()) - a * MEAN_DLIB_EMBEDDING), t),
            wide,
        )
    for g0 in (0.30, 0.32):
        report(
            f"within {g0} of the average face = poor",
            dev,
            second,
            lambda f, t, g0=g0: generic_poor_labels(f, unit(f.flip_mean()), t, g0),
            unit_ts,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
