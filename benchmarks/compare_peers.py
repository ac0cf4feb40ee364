"""hime against what a user would otherwise run: Lanczos and Real-ESRGAN general-x4v3 (Upscayl's model).

    python benchmarks/compare_peers.py                      # celeba-wild/dev, clean and JPEG q75
    python benchmarks/compare_peers.py --per-identity 1 --json > peers.json
    python benchmarks/compare_peers.py --weights hime_small_x4.celeba_wild_v4   # another hime weight

Protocol (in a temporary HIME_HOME; your index is untouched):

1. For every identity of ``--data`` (default ``../shared/data/celeba-wild/dev``, never trained on),
   up to ``--per-identity`` photos whose largest confident face (MTCNN score ≥ 0.9) is between
   4 × 20 and 4 × 96 px, i.e. 20–96 px after the shrink (the faces ``hime enhance`` works on at ×4).
2. Each photo, cropped to a multiple of 4, is shrunk ×4 (antialiased bicubic) and saved twice:
   ``clean`` (PNG) and ``jpeg75`` (JPEG quality 75, 4:2:0: how library photos arrive).
3. Each small photo is upscaled ×4 by **Lanczos**, by **Real-ESRGAN general-x4v3**
   (``../shared/peers/realesr-general-x4v3.fp16.pth``, a blind model; run on the face's
   neighbourhood, which is exact away from its borders), and by **``hime enhance --refs``** with the
   person's other dev photos (the original of the test photo excluded) as references.
4. Scores on the face box (found on the original, scaled to the output): PSNR against the original,
   and identity distance (dlib 128-d embedding of the output's face vs the original's, at the same
   landmarks; lower is better).

Real-ESRGAN's architecture (SRVGGNetCompact: conv 3→64 + PReLU, 32 × [conv 64→64 + PReLU],
conv 64→48, pixel shuffle ×4, plus a nearest ×4 upsample of the input) is written out below from
its description in ``../shared/peers/README.md``; the weights are checked by sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "celeba-wild" / "dev"
PEER_WEIGHTS = REPO.parent / "shared" / "peers" / "realesr-general-x4v3.fp16.pth"
PEER_SHA256 = "98f2438e853ae970e590e1f1e619b2851cac10b1253225eaa7b4a02e0dd5ed3a"
MIN_FACE, MAX_FACE = 20.0, 96.0  # face side after the ×4 shrink
CONDITIONS = ("clean", "jpeg75")
METHODS = ("lanczos", "realesrgan", "hime")


def build_realesrgan(weights: Path = PEER_WEIGHTS):
    """SRVGGNetCompact ×4 with the peer weights (state dict under "params", keys body.0 … body.66)."""
    import torch
    from torch import nn

    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if digest != PEER_SHA256:
        raise SystemExit(f"{weights}: sha256 {digest} is not the documented {PEER_SHA256}")

    class Compact(nn.Module):
        def __init__(self, feats: int = 64, convs: int = 32, scale: int = 4) -> None:
            super().__init__()
            layers: list[nn.Module] = [nn.Conv2d(3, feats, 3, padding=1), nn.PReLU(feats)]
            for _ in range(convs):
                layers += [nn.Conv2d(feats, feats, 3, padding=1), nn.PReLU(feats)]
            layers.append(nn.Conv2d(feats, 3 * scale * scale, 3, padding=1))
            self.body = nn.ModuleList(layers)
            self.shuffle = nn.PixelShuffle(scale)
            self.scale = scale

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x
            for layer in self.body:
                y = layer(y)
            y = self.shuffle(y) + nn.functional.interpolate(x, scale_factor=self.scale, mode="nearest")
            return y.clamp(0, 1)

    state = torch.load(weights, map_location="cpu", weights_only=True)
    model = Compact()
    model.load_state_dict({k: v.float() for k, v in state.get("params", state).items()}, strict=True)
    return model.eval()


def realesrgan_region(model, small: np.ndarray, box_small, margin: int = 40) -> tuple[np.ndarray, tuple]:
    """Real-ESRGAN ×4 of the face's neighbourhood (box + ``margin`` LR px, beyond the 34 px receptive
    field): (output crop float32, (x0, y0) of the crop in output pixels)."""
    import torch

    h, w = small.shape[:2]
    x0, y0, x1, y1 = box_small
    x0, y0 = max(0, int(x0) - margin), max(0, int(y0) - margin)
    x1, y1 = min(w, int(np.ceil(x1)) + margin), min(h, int(np.ceil(y1)) + margin)
    crop = torch.from_numpy(np.ascontiguousarray(small[y0:y1, x0:x1])).permute(2, 0, 1)[None]
    with torch.inference_mode():
        out = model(crop)[0].permute(1, 2, 0).numpy()
    return out, (x0 * 4, y0 * 4)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / max(float(np.mean((a - b) ** 2)), 1e-12)))


def pick_photos(data: Path, per_identity: int, identities: int | None = None) -> list[tuple[Path, object]]:
    """(photo, its largest confident face) with a face of 4×MIN_FACE … 4×MAX_FACE px, per identity."""
    from hime_cli.faces.detect import get_detector
    from hime_cli.library.reader import load_image

    detector = get_detector()
    picked = []
    for identity in sorted(p for p in data.iterdir() if p.is_dir())[:identities]:
        photos = sorted(identity.glob("*.jpg"))
        if len(photos) < 2:
            continue
        taken = 0
        for photo in photos:
            try:
                faces = [f for f in detector.detect(load_image(photo).rgb) if f.score >= 0.9]
            except Exception:
                continue
            if not faces:
                continue
            face = max(faces, key=lambda f: f.size)
            if 4 * MIN_FACE <= face.size <= 4 * MAX_FACE:
                picked.append((photo, face))
                taken += 1
            if taken == per_identity:
                break
    return picked


def identity_distance(embedder, truth_u8: np.ndarray, out_u8: np.ndarray, face) -> float:
    a = embedder.embed(truth_u8, [face])[0]
    b = embedder.embed(out_u8, [face])[0]
    return float(np.linalg.norm(a - b))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--per-identity", type=int, default=2)
    parser.add_argument("--identities", type=int, default=None, help="only the first N identities")
    parser.add_argument("--weights", default=None, help="hime weights (default: the default ×4 weight)")
    parser.add_argument("--peer", type=Path, default=PEER_WEIGHTS)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--no-mirror", action="store_true", help="hime without its mirror self-ensemble (one pass per face)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"no data at {args.data}: nothing to compare", file=sys.stderr)
        return 2
    if not args.peer.exists():
        print(f"no peer weights at {args.peer}", file=sys.stderr)
        return 2
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="hime-peers-"))
    os.environ["HIME_HOME"] = str(work / "home")
    from hime_cli.faces.embed import DlibEmbedder
    from hime_cli.library.reader import load_image
    from hime_cli.pipeline import EnhanceOptions, enhance
    from hime_cli.sr.pasteback import upscale_photo

    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    picked = pick_photos(args.data, args.per_identity, args.identities)
    log(f"{len(picked)} photos of {len({p.parent for p, _ in picked})} people, faces "
        f"{min(f.size for _, f in picked) / 4:.0f}–{max(f.size for _, f in picked) / 4:.0f} px after the shrink")  # fmt: skip
    peer = build_realesrgan(args.peer)
    embedder = DlibEmbedder(flip=False, unit=False)  # raw dlib distance, as hime eval reports it
    rows: list[dict] = []
    seconds = {m: 0.0 for m in METHODS}
    for k, (photo, face) in enumerate(picked):
        rgb = load_image(photo).rgb_uint8()
        h4, w4 = rgb.shape[0] // 4 * 4, rgb.shape[1] // 4 * 4
        truth_u8 = np.ascontiguousarray(rgb[:h4, :w4])
        truth = truth_u8.astype(np.float32) / 255
        refs = work / "refs" / f"{k}"
        refs.mkdir(parents=True)
        for other in sorted(photo.parent.glob("*.jpg")):
            if other != photo:
                (refs / other.name).symlink_to(other)
        x0, y0, x1, y1 = (int(round(v)) for v in (face.box.x0, face.box.y0, face.box.x1, face.box.y1))
        region = (slice(max(0, y0), min(h4, y1)), slice(max(0, x0), min(w4, x1)))
        small_box = (face.box.x0 / 4, face.box.y0 / 4, face.box.x1 / 4, face.box.y1 / 4)
        for condition in CONDITIONS:
            folder = work / condition / f"{k}"
            folder.mkdir(parents=True)
            shrunk = Image.fromarray(truth_u8).resize((w4 // 4, h4 // 4), Image.Resampling.BICUBIC)
            src = folder / ("small.png" if condition == "clean" else "small.jpg")
            if condition == "clean":
                shrunk.save(src)
            else:
                shrunk.save(src, quality=75)
            small = np.asarray(Image.open(src).convert("RGB"), np.float32) / 255
            outputs: dict[str, np.ndarray] = {}
            t = time.perf_counter()
            outputs["lanczos"] = upscale_photo(small, 4)
            seconds["lanczos"] += time.perf_counter() - t
            t = time.perf_counter()
            crop, (ox, oy) = realesrgan_region(peer, small, small_box)
            esr = outputs["lanczos"].copy()
            esr[oy : oy + crop.shape[0], ox : ox + crop.shape[1]] = crop
            outputs["realesrgan"] = esr
            seconds["realesrgan"] += time.perf_counter() - t
            t = time.perf_counter()
            report = enhance(
                [src],
                EnhanceOptions(
                    scale=4,
                    refs_dir=refs,
                    out_dir=folder / "out",
                    weights=args.weights,
                    mirror=not args.no_mirror,
                ),
            )
            seconds["hime"] += time.perf_counter() - t
            (p,) = report.photos
            enhanced = [f for f in p.faces if f.status == "enhanced"]
            if p.status != "done":
                log(f"{photo}: hime failed ({p.error}); skipped")
                continue
            outputs["hime"] = (
                np.asarray(Image.open(folder / "out" / src.name).convert("RGB"), np.float32) / 255
            )
            row = {"photo": f"{photo.parent.name}/{photo.name}", "condition": condition,
                   "face_px": round(face.size / 4, 1), "hime_enhanced": bool(enhanced),
                   "hime_refs": len(enhanced[0].refs) if enhanced else 0}  # fmt: skip
            for method, image in outputs.items():
                out_u8 = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
                row[f"{method}_psnr"] = round(psnr(image[region], truth[region]), 3)
                row[f"{method}_id"] = round(identity_distance(embedder, truth_u8, out_u8, face), 4)
            rows.append(row)
        log(f"{k + 1}/{len(picked)} {photo.parent.name}/{photo.name}: "
            + ", ".join(f"{r['condition']} hime {r['hime_psnr']:.2f} lanczos {r['lanczos_psnr']:.2f} esr {r['realesrgan_psnr']:.2f}"
                        for r in rows[-2:]))  # fmt: skip
    summary: dict[str, dict] = {}
    for condition in CONDITIONS:
        sub = [r for r in rows if r["condition"] == condition]
        if not sub:
            continue
        entry: dict[str, object] = {"faces": len(sub), "hime_enhanced": sum(r["hime_enhanced"] for r in sub)}
        for method in METHODS:
            entry[method] = {
                "psnr": round(float(np.mean([r[f"{method}_psnr"] for r in sub])), 3),
                "id_dist": round(float(np.mean([r[f"{method}_id"] for r in sub])), 4),
            }
        lz = entry["lanczos"]
        entry["hime_minus_lanczos_db"] = round(entry["hime"]["psnr"] - lz["psnr"], 3)  # type: ignore[index]
        entry["hime_id_ratio"] = round(entry["hime"]["id_dist"] / max(lz["id_dist"], 1e-9), 3)  # type: ignore[index]
        entry["hime_wins_vs_lanczos"] = sum(r["hime_psnr"] > r["lanczos_psnr"] for r in sub)
        summary[condition] = entry
    result = {
        "data": str(args.data),
        "weights": args.weights or "default",
        "photos": len(picked),
        "summary": summary,
        "seconds": {m: round(s, 1) for m, s in seconds.items()},
        "cpu_count": os.cpu_count(),
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for condition, entry in summary.items():
            print(f"{condition}: {entry['faces']} faces ({entry['hime_enhanced']} enhanced by hime)")
            for method in METHODS:
                m = entry[method]
                print(f"  {method:11} PSNR {m['psnr']:6.2f} dB   id dist {m['id_dist']:.3f}")
            print(
                f"  hime − Lanczos {entry['hime_minus_lanczos_db']:+.2f} dB, id ratio {entry['hime_id_ratio']:.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
