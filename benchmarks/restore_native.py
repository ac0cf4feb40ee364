"""Does `hime enhance --scale 1` (restore faces, keep the size) help? A face-box check on dev photos.

    python benchmarks/restore_native.py                     # 1 photo per dev identity, 2 degradations
    python benchmarks/restore_native.py --identities 12 --json > restore.json

Protocol (in a temporary HIME_HOME; your index is untouched):

1. For every identity of ``--data`` (default ``../shared/data/celeba-wild/dev``, never trained on),
   the first photo whose largest confident face (MTCNN score ≥ 0.9) has a box of ``--min-face`` to
   ``--max-face`` px is the test photo; up to 3 other photos of the person are the rest of the library.
2. Every photo is degraded at its native size as a photo library degrades photos, one library per
   condition: ``jpeg50`` (re-saved as JPEG quality 50) and ``blur+jpeg70`` (a Gaussian blur of
   σ 1 px, as from a soft lens or a resize, then JPEG quality 70).
3. Each library is scanned (``hime scan``: faces, identities), then the test photos are run through
   ``hime enhance --scale 1 --max-face MAX`` (exemplars from the person's other, equally degraded
   photos, as in a real library).
4. Scores on the test face's box (found on the undegraded original): PSNR against the original of
   the **degraded input** itself (what the user has) and of the **restored** output, and the
   identity distance (dlib 128-d, raw descriptor, at the original's landmarks; lower is better).
   Rows are grouped by the face's size (``faces.align.region_size``, the crop region side).

``--variants``: instead, which input the ×4 network should get, on the aligned face crop alone (no
paste, no references, PSNR of the whole L px crop against the original's): **native** (what
``--scale 1`` does: the face's native L px crop is the network's LR input, its 4L output is
area-resampled back to L) vs **shrink** (the crop area-shrunk ÷4 to L/4, as the network was
trained, its L output used as is) vs the degraded crop itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "celeba-wild" / "dev"
CONDITIONS = {"jpeg50": (0.0, 50), "blur+jpeg70": (1.0, 70)}  # (blur sigma px, JPEG quality)
SIZE_BINS = ((0, 48), (48, 96), (96, 160), (160, 10_000))  # face size: crop region side, px


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / max(float(np.mean((a - b) ** 2)), 1e-12)))


def pick(
    data: Path, identities: int | None, min_face: float, max_face: float
) -> list[tuple[Path, list[Path], object]]:
    """(test photo, the person's other photos, its largest confident face) per identity."""
    from hime_cli.faces.detect import get_detector
    from hime_cli.library.reader import load_image

    detector = get_detector()
    picked = []
    for person in sorted(p for p in data.iterdir() if p.is_dir())[:identities]:
        shots = sorted(person.glob("*.jpg"))
        for shot in shots:
            try:
                faces = [f for f in detector.detect(load_image(shot).rgb) if f.score >= 0.9]
            except Exception:  # noqa: BLE001 - an unreadable dev photo is simply not picked
                continue
            if not faces:
                continue
            face = max(faces, key=lambda f: f.size)
            if min_face <= face.size <= max_face:
                picked.append((shot, [s for s in shots if s != shot][:3], face))
                break
    return picked


def degrade(src: Path, dest: Path, sigma: float, quality: int) -> None:
    with Image.open(src) as im:
        im = im.convert("RGB")
        if sigma > 0:
            im = im.filter(ImageFilter.GaussianBlur(sigma))
        im.save(dest, quality=quality)


def crop_variants(model, truth: np.ndarray, degraded: np.ndarray, face) -> dict[str, float]:
    """PSNR of the degraded crop, and of the native and shrink variants, against the original crop."""
    from hime_cli.faces.align import crop_image, face_crop, resize_crop
    from hime_cli.sr.inference import SRJob

    matrix, size = face_crop(face.landmarks, 4)  # the crop --scale 1 takes
    want, lr = crop_image(truth, matrix, size), crop_image(degraded, matrix, size)
    small = resize_crop(lr, max(8, size // 4))
    native, shrunk = model.run([SRJob(lr)]), model.run([SRJob(small)])
    return {
        "input": psnr(lr, want),
        "native": psnr(np.clip(resize_crop(native[0], size), 0, 1), want),
        "shrink": psnr(np.clip(resize_crop(shrunk[0], size), 0, 1), want),
    }


def run_variants(picked: list, conditions: list[str], weights: str | None, work: Path) -> dict:
    from hime_cli.faces.align import region_size
    from hime_cli.library.reader import load_image
    from hime_cli.sr.inference import load_super_resolver

    model = load_super_resolver(weights, 4, "cpu")
    rows = []
    for condition in conditions:
        sigma, quality = CONDITIONS[condition]
        for photo, _, face in picked:
            dest = work / f"{condition}-{photo.parent.name}-{photo.name}"
            degrade(photo, dest, sigma, quality)
            scores = crop_variants(model, load_image(photo).rgb, load_image(dest).rgb, face)
            rows.append({"photo": f"{photo.parent.name}/{photo.name}", "condition": condition,
                         "face_px": round(region_size(face.landmarks), 1), **{k: round(v, 3) for k, v in scores.items()}})  # fmt: skip
    summary = {}
    for condition in conditions:
        sub = [r for r in rows if r["condition"] == condition]
        summary[condition] = {"faces": len(sub), **{k: round(float(np.mean([r[k] for r in sub])), 3) for k in ("input", "native", "shrink")},
                              "native_wins": sum(r["native"] > r["input"] for r in sub), "shrink_wins": sum(r["shrink"] > r["input"] for r in sub)}  # fmt: skip
    return {"summary": summary, "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--identities", type=int, default=None, help="only the first N identities")
    parser.add_argument("--min-face", type=float, default=24.0, help="test faces' box side at least (px)")
    parser.add_argument(
        "--max-face", type=float, default=160.0, help="... at most; also enhance's --max-face"
    )
    parser.add_argument(
        "--conditions", default=",".join(CONDITIONS), help="comma-separated, of: " + ", ".join(CONDITIONS)
    )
    parser.add_argument("--weights", default=None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="work folder (default: a new temp one); an earlier run's is reused",
    )
    parser.add_argument(
        "--variants", action="store_true", help="compare the network's inputs on the crop (see above)"
    )
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"no data at {args.data}: nothing to measure", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="hime-restore-"))  # reused: its outputs are skipped
    os.environ["HIME_HOME"] = str(work / "home")
    from hime_cli.faces.align import region_size
    from hime_cli.faces.embed import DlibEmbedder
    from hime_cli.identities.store import update_identities
    from hime_cli.library.index import LibraryIndex
    from hime_cli.library.reader import load_image
    from hime_cli.library.scan import scan_paths
    from hime_cli.pipeline import EnhanceOptions, enhance

    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    picked = pick(args.data, args.identities, args.min_face, args.max_face)
    log(f"{len(picked)} test photos, faces {min(region_size(f.landmarks) for *_, f in picked):.0f}–"
        f"{max(region_size(f.landmarks) for *_, f in picked):.0f} px (crop region side)")  # fmt: skip
    if args.variants:
        variants = run_variants(picked, args.conditions.split(","), args.weights, work)
        if args.json:
            print(json.dumps(variants, indent=2))
        else:
            print(f"{'':14} {'faces':>5} {'input dB':>9} {'native':>8} {'shrink':>8}")
            for condition, e in variants["summary"].items():
                print(
                    f"{condition:14} {e['faces']:5d} {e['input']:9.2f} {e['native']:8.2f} {e['shrink']:8.2f}"
                )
        return 0
    embedder = DlibEmbedder(flip=False, unit=False)
    rows: list[dict] = []
    seconds: dict[str, float] = {}
    for condition in args.conditions.split(","):
        sigma, quality = CONDITIONS[condition]
        library = work / condition / "library"
        tests: list[tuple[Path, Path, object]] = []
        for photo, others, face in picked:
            folder = library / photo.parent.name
            folder.mkdir(parents=True, exist_ok=True)
            for shot in [photo, *others]:
                if not (folder / shot.name).exists():  # a reused work folder keeps its library
                    degrade(shot, folder / shot.name, sigma, quality)
            tests.append((photo, folder / photo.name, face))
        t = time.perf_counter()
        with LibraryIndex.open() as index:
            scan_paths([library], index, parallel=False)
            update_identities(index)
        t_scan = time.perf_counter() - t
        t = time.perf_counter()
        report = enhance(
            [degraded for _, degraded, _ in tests],
            EnhanceOptions(
                scale=1, out_dir=work / condition / "out", max_face=args.max_face, weights=args.weights
            ),
        )
        seconds[condition] = round(time.perf_counter() - t, 1)
        log(f"{condition}: scanned in {t_scan:.0f} s, restored in {seconds[condition]:.0f} s")
        by_source = {Path(p.source): p for p in report.photos}
        for photo, degraded, face in tests:
            result = by_source[degraded]
            truth_u8 = load_image(photo).rgb_uint8()
            truth = truth_u8.astype(np.float32) / 255
            deg_u8 = load_image(degraded).rgb_uint8()
            if result.status not in ("done", "skipped") or result.dest is None or not result.dest.exists():
                log(f"{degraded}: {result.status} ({result.reason}); scored as not restored")
                out_u8 = deg_u8
            else:
                out_u8 = load_image(result.dest).rgb_uint8()
            h, w = truth.shape[:2]
            x0, y0, x1, y1 = (int(round(v)) for v in (face.box.x0, face.box.y0, face.box.x1, face.box.y1))
            box = (slice(max(0, y0), min(h, y1)), slice(max(0, x0), min(w, x1)))
            restored = [f for f in result.faces if f.status == "enhanced"]
            row = {
                "photo": f"{photo.parent.name}/{photo.name}",
                "condition": condition,
                "face_px": round(region_size(face.landmarks), 1),
                "restored": result.status == "skipped" or (result.status == "done" and bool(restored)),
                # a reused run's skipped photos carry no face reports: references unknown (None)
                "refs": None if result.status == "skipped" else max((len(f.refs) for f in restored), default=0),
                "input_psnr": round(psnr(deg_u8[box] / 255.0, truth[box]), 3),
                "restored_psnr": round(psnr(out_u8[box] / 255.0, truth[box]), 3),
                "input_id": round(float(np.linalg.norm(embedder.embed(truth_u8, [face])[0] - embedder.embed(deg_u8, [face])[0])), 4),
                "restored_id": round(float(np.linalg.norm(embedder.embed(truth_u8, [face])[0] - embedder.embed(out_u8, [face])[0])), 4),
            }  # fmt: skip
            rows.append(row)
    summary: dict[str, dict] = {}
    for condition in args.conditions.split(","):
        for lo, hi in ((0, 10_000), *SIZE_BINS):
            sub = [r for r in rows if r["condition"] == condition and lo <= r["face_px"] < hi]
            if not sub:
                continue
            key = f"{condition} {'all' if hi == 10_000 and lo == 0 else f'{lo}-{hi} px'}"
            summary[key] = {
                "faces": len(sub),
                "restored": sum(r["restored"] for r in sub),
                "with_refs": sum((r["refs"] or 0) > 0 for r in sub),
                "input_psnr": round(float(np.mean([r["input_psnr"] for r in sub])), 3),
                "restored_psnr": round(float(np.mean([r["restored_psnr"] for r in sub])), 3),
                "gain_db": round(float(np.mean([r["restored_psnr"] - r["input_psnr"] for r in sub])), 3),
                "wins": sum(r["restored_psnr"] > r["input_psnr"] for r in sub),
                "input_id": round(float(np.mean([r["input_id"] for r in sub])), 4),
                "restored_id": round(float(np.mean([r["restored_id"] for r in sub])), 4),
            }
    result = {"data": str(args.data), "weights": args.weights or "default", "max_face": args.max_face,
              "photos": len(picked), "summary": summary, "seconds": seconds, "cpu_count": os.cpu_count(),
              "load_average": os.getloadavg()[0], "rows": rows}  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{'':24} {'faces':>5} {'input dB':>9} {'restored':>9} {'gain':>6} {'wins':>5} {'id in':>6} {'id out':>6}"
        )
        for key, e in summary.items():
            print(f"{key:24} {e['faces']:5d} {e['input_psnr']:9.2f} {e['restored_psnr']:9.2f} {e['gain_db']:+6.2f} "
                  f"{e['wins']:5d} {e['input_id']:6.3f} {e['restored_id']:6.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
