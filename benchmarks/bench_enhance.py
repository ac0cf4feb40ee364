"""Benchmark ``hime enhance`` on real photos: time per photo and per face, SR ms per face, PSNR gain.

    python benchmarks/bench_enhance.py                       # 20 celeba-wild dev photos, ×4
    python benchmarks/bench_enhance.py --sweep               # + gain vs face size (picks --max-face)
    python benchmarks/bench_enhance.py --sweep-only          # only the sweep (quality, not timing)
    python benchmarks/bench_enhance.py --json > result.json

What it does (in a temporary HIME_HOME, so your index is untouched):

1. picks ``--photos`` photos (``--per-identity`` from each of the first identities, sorted) of
   ``--data`` (default ``../shared/data/celeba-wild/dev``), each with at least one detected face;
2. scans those identities' folders into the temporary index (timed apart: that is ``hime scan``);
3. downscales the picked photos ×4 (antialiased bicubic) and times ``enhance`` on them (model
   loading, detection of the new photos, exemplar crops, SR, paste-back, writing: everything);
4. times the SR network alone on a batch of 32 px faces with 3 references on ``--threads`` cores;
5. reports, per enhanced face, the PSNR of the face box against the original, hime vs Lanczos.

``--sweep`` measures the gain over Lanczos as a function of the input face size (detection box
side): faces of at least s × t px in the original (searched in all of ``--data``'s photos) are
shrunk so that the face is t px, enhanced ×s (``--sweep-scale``: 4, or 8) with the other photos of
the person as ``--refs`` (``--max-face`` lifted), and compared on the face box with the original
shrunk to s t px.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "celeba-wild" / "dev"
SWEEP_SIZES = (16, 24, 32, 40, 48, 64, 80, 96, 128)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / max(float(np.mean((a - b) ** 2)), 1e-12)))


def pick_photos(data: Path, n_photos: int, per_identity: int) -> list[tuple[Path, list]]:
    """(photo, faces) for the first photos with a face, ``per_identity`` per identity."""
    from hime_cli.faces.detect import get_detector
    from hime_cli.library.reader import load_image

    detector = get_detector()
    picked: list[tuple[Path, list]] = []
    for identity in sorted(p for p in data.iterdir() if p.is_dir()):
        photos = sorted(identity.glob("*.jpg"))
        if len(photos) < per_identity + 3:
            continue
        taken = 0
        for photo in photos:
            faces = [f for f in detector.detect(load_image(photo).rgb) if f.score >= 0.9]
            if faces:
                picked.append((photo, faces))
                taken += 1
            if taken == per_identity or len(picked) == n_photos:
                break
        if len(picked) == n_photos:
            break
    return picked


def downscale(photo: Path, dest: Path, factor: float, quality: int = 95) -> tuple[np.ndarray, np.ndarray]:
    """Save ``photo`` shrunk by ``factor`` (antialiased bicubic, JPEG ``quality``); (small, its float pixels)."""
    from hime_cli.library.reader import load_image

    rgb = load_image(photo).rgb_uint8()
    w, h = max(1, round(rgb.shape[1] / factor)), max(1, round(rgb.shape[0] / factor))
    Image.fromarray(rgb).resize((w, h), Image.Resampling.BICUBIC).save(dest, quality=quality)
    return rgb, np.asarray(Image.open(dest).convert("RGB"), np.float32) / 255


def face_psnrs(
    original: np.ndarray, small: np.ndarray, enhanced: Path, box_small, scale: int
) -> tuple[float, float]:
    """(hime, lanczos) PSNR on the face box; the original is resized to the output size (area)."""
    from hime_cli.sr.pasteback import upscale_photo

    out = np.asarray(Image.open(enhanced).convert("RGB"), np.float32) / 255
    return box_psnr(out, original, box_small, scale), box_psnr(
        upscale_photo(small, scale), original, box_small, scale
    )


def box_psnr(out: np.ndarray, original: np.ndarray, box_small, scale: int) -> float:
    """PSNR of ``out`` (the small photo ×scale) on the face box, against the original resized to it (area)."""
    import cv2

    h, w = out.shape[:2]
    truth = original.astype(np.float32) / 255
    if truth.shape[:2] != (h, w):
        truth = cv2.resize(truth, (w, h), interpolation=cv2.INTER_AREA)
    x0, y0, x1, y1 = (int(round(v * scale)) for v in box_small)
    region = (slice(max(0, y0), y1), slice(max(0, x0), x1))
    return psnr(out[region], truth[region])


def bench_sr(
    weights: str | None, device: str, threads: int, batch: int = 16, refs: int = 3, mirror: bool = True
) -> dict:
    import torch

    from hime_cli.sr.inference import SRJob, load_super_resolver

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        sr = load_super_resolver(weights, 4, device, mirror=mirror)
        rng = np.random.default_rng(0)
        jobs = [
            SRJob(
                rng.random((32, 32, 3), dtype=np.float32),
                tuple(rng.random((128, 128, 3), dtype=np.float32) for _ in range(refs)),
            )
            for _ in range(batch)
        ]
        sr.run(jobs)  # warm-up
        times = []
        for _ in range(3):
            start = time.perf_counter()
            sr.run(jobs)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return {"model": sr.name, "device": sr.device, "threads": threads, "batch": batch, "refs": refs,
            "ms_per_face": 1000 * statistics.median(times) / batch}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--photos", type=int, default=20)
    parser.add_argument("--per-identity", type=int, default=4)
    parser.add_argument("--weights", default=None)
    parser.add_argument(
        "--no-mirror", action="store_true", help="run the network once per face (no mirror self-ensemble)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the SR-only timing")
    parser.add_argument("--sweep", action="store_true", help="also measure the gain vs face size")
    parser.add_argument("--sweep-faces", type=int, default=12, help="faces per size in the sweep")
    parser.add_argument("--sweep-photos", type=int, default=None, help="photos searched for sweep faces")
    parser.add_argument("--sweep-only", action="store_true", help="skip the timing runs, only sweep")
    parser.add_argument(
        "--sweep-scale", type=int, default=4, choices=(4, 8), help="output scale of the sweep"
    )
    parser.add_argument("--sweep-quality", type=int, default=95, help="JPEG quality of the shrunk photos")
    parser.add_argument(
        "--sweep-sizes", type=int, nargs="+", help=f"input face sizes (default {SWEEP_SIZES})"
    )
    parser.add_argument(
        "--sweep-via-x4",
        action="store_true",
        help="with --sweep-scale 8: also score enhance ×4 followed by a ×2 Lanczos resize",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"no data at {args.data}", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="hime-bench-enhance-"))
    os.environ["HIME_HOME"] = str(work / "home")
    from hime_cli.identities.scan import scan_and_place
    from hime_cli.library.index import LibraryIndex
    from hime_cli.pipeline import EnhanceOptions, enhance

    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else print
    if args.sweep_only:
        rows = sweep(work, args)
        print(json.dumps({"sweep": rows}, indent=2) if args.json else "\n".join(map(str, rows)))
        return 0
    log(f"picking {args.photos} photos from {args.data} …")
    picked = pick_photos(args.data, args.photos, args.per_identity)
    identities = sorted({p.parent for p, _ in picked})
    library = work / "library"
    library.mkdir()
    for identity in identities:
        (library / identity.name).symlink_to(identity, target_is_directory=True)
    log(f"scanning {len(identities)} identity folders into a temporary index …")
    start = time.perf_counter()
    with LibraryIndex.open() as index:
        scan = scan_and_place([library], index).scan
    scan_s = time.perf_counter() - start

    inputs = work / "inputs"
    inputs.mkdir()
    truth = {}
    for photo, _ in picked:
        name = f"{photo.parent.name}_{photo.stem}.jpg"
        truth[name] = downscale(photo, inputs / name, 4)
    log(f"enhancing {len(picked)} photos ×4 …")
    out = work / "out"
    start = time.perf_counter()
    report = enhance(
        [inputs],
        EnhanceOptions(
            scale=4, out_dir=out, weights=args.weights, device=args.device, mirror=not args.no_mirror
        ),
    )
    total_s = time.perf_counter() - start
    gains = []
    for p in report.photos:
        if p.status != "done":
            continue
        original, small = truth[p.source.name]
        for f in p.faces:
            if f.status == "enhanced":
                ours, lanczos = face_psnrs(original, small, out / p.source.name, f.box, 4)
                gains.append({"photo": p.source.name, "size": round(f.size, 1), "refs": len(f.refs),
                              "hime": round(ours, 2), "lanczos": round(lanczos, 2)})  # fmt: skip
    n_faces = report.faces_enhanced
    result = {
        "photos": len(report.photos),
        "failed": report.count("failed"),
        "faces_enhanced": n_faces,
        "faces_without_refs": report.faces_without_refs,
        "scan_s": round(scan_s, 2),
        "scan_photos": scan.photos,
        "enhance_total_s": round(total_s, 2),
        "s_per_photo": round(total_s / max(1, len(report.photos)), 3),
        "s_per_face": round(total_s / max(1, n_faces), 3),
        "sr_s": round(report.sr_seconds, 3),
        "sr_ms_per_face_in_run": round(1000 * report.sr_seconds / max(1, n_faces), 1),
        "model": report.model,
        "device": report.device,
        "mean_gain_db": round(float(np.mean([g["hime"] - g["lanczos"] for g in gains])), 3)
        if gains
        else None,
        "faces": gains,
        "sr_only": bench_sr(args.weights, args.device, args.threads, mirror=not args.no_mirror),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    if args.sweep:
        result["sweep"] = sweep(work, args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            if key not in ("faces", "sweep"):
                print(f"{key:24} {value}")
        for row in result.get("sweep", []):
            print(f"face {row['size']:>4} px: gain {row['mean_gain_db']:+.2f} dB over {row['faces']} faces")
    return 0


def sweep_candidates(data: Path, limit: int | None) -> list[tuple[Path, object]]:
    """(photo, its largest confident face) for the photos of every identity of ``data``, largest first.

    The sweep needs faces of at least 4 × t px in the original for an input face of t px, and the
    20 timing photos rarely have faces above 200 px: this looks at (up to ``limit``) photos of all
    identities.
    """
    from hime_cli.faces.detect import get_detector
    from hime_cli.library.reader import load_image

    detector = get_detector()
    found = []
    photos = sorted(
        p for identity in sorted(data.iterdir()) if identity.is_dir() for p in identity.glob("*.jpg")
    )
    for photo in photos[:limit]:
        try:
            faces = [f for f in detector.detect(load_image(photo).rgb) if f.score >= 0.9]
        except Exception:  # a bad photo only shrinks the sweep
            continue
        if faces:
            found.append((photo, max(faces, key=lambda f: f.size)))
    found.sort(key=lambda pf: -pf[1].size)
    return found


def sweep(work: Path, args: argparse.Namespace) -> list[dict]:
    """Mean PSNR gain over Lanczos on the face box vs input face size (``--refs`` = other photos).

    For each size t, up to ``--sweep-faces`` faces of at least s·t px (s = ``--sweep-scale``, 4 or
    8), one per identity first (then more per identity), so a few people with many large faces do
    not dominate.
    """
    from hime_cli.pipeline import EnhanceOptions, enhance

    scale = args.sweep_scale
    via_x4 = bool(getattr(args, "sweep_via_x4", False)) and scale == 8
    candidates = sweep_candidates(args.data, args.sweep_photos)
    print(f"sweep: {len(candidates)} photos with a face; largest {candidates[0][1].size:.0f} px" if candidates
          else "sweep: no faces", file=sys.stderr, flush=True)  # fmt: skip
    rows = []
    for size in args.sweep_sizes or SWEEP_SIZES:
        eligible = [(photo, face) for photo, face in candidates if face.size >= scale * size]
        seen: set[str] = set()
        firsts, rest = [], []
        for photo, face in eligible:
            (rest if photo.parent.name in seen else firsts).append((photo, face))
            seen.add(photo.parent.name)
        ordered = firsts + rest
        gains: list[float] = []
        per_face: list[dict] = []
        via_x4_gains: list[float] = []
        for k, (photo, face) in enumerate(ordered):
            if len(gains) >= args.sweep_faces:
                break
            refs = work / "sweep_refs" / photo.parent.name
            if not refs.exists():
                refs.mkdir(parents=True)
                for other in sorted(photo.parent.glob("*.jpg")):
                    if other != photo:
                        (refs / other.name).symlink_to(other.resolve())  # a relative --data too
            folder = work / "sweep" / f"{size}_{k}"
            folder.mkdir(parents=True)
            original, small = downscale(photo, folder / "small.jpg", face.size / size, args.sweep_quality)
            report = enhance(
                [folder / "small.jpg"],
                EnhanceOptions(
                    scale=scale,
                    refs_dir=refs,
                    out_dir=folder / "out",
                    max_face=1e9,
                    min_score=0.0,
                    weights=args.weights,
                    device=args.device,
                    mirror=not args.no_mirror,
                ),  # fmt: skip
            )
            (p,) = report.photos
            enhanced = [f for f in p.faces if f.status == "enhanced"]
            if p.status != "done" or not enhanced:
                continue
            ours, lanczos = face_psnrs(original, small, folder / "out" / "small.jpg", enhanced[0].box, scale)
            gains.append(ours - lanczos)
            # the region side decides the crop and, with the default weights, the network
            per_face.append({"photo": photo.name, "region": round(enhanced[0].size, 1),
                             "lr_size": enhanced[0].lr_size, "gain_db": round(ours - lanczos, 3)})  # fmt: skip
            if via_x4:
                via_x4_gains.append(_via_x4_gain(folder, refs, original, enhanced[0].box, args) - lanczos)
        if gains:
            rows.append({"size": size, "faces": len(gains), "mean_gain_db": round(float(np.mean(gains)), 3),
                         "min_gain_db": round(float(np.min(gains)), 3), "per_face": per_face})  # fmt: skip
            if via_x4_gains:
                rows[-1]["via_x4_mean_gain_db"] = round(float(np.mean(via_x4_gains)), 3)
                rows[-1]["via_x4_min_gain_db"] = round(float(np.min(via_x4_gains)), 3)
            summary = {k: v for k, v in rows[-1].items() if k != "per_face"}
            print(f"sweep: {size} px → {summary}", file=sys.stderr, flush=True)
    return rows


def _via_x4_gain(folder: Path, refs: Path, original: np.ndarray, box, args) -> float:
    """PSNR on the face box of ``enhance --scale 4`` then a ×2 Lanczos resize (a ×8 output)."""
    from hime_cli.pipeline import EnhanceOptions, enhance
    from hime_cli.sr.pasteback import upscale_photo

    out_dir = folder / "out_x4"
    enhance(
        [folder / "small.jpg"],
        EnhanceOptions(scale=4, refs_dir=refs, out_dir=out_dir, max_face=1e9, min_score=0.0,
                       weights=None, device=args.device, mirror=not args.no_mirror),
    )  # fmt: skip
    x4 = np.asarray(Image.open(out_dir / "small.jpg").convert("RGB"), np.float32) / 255
    return box_psnr(upscale_photo(x4, 2), original, box, 8)


if __name__ == "__main__":
    raise SystemExit(main())
