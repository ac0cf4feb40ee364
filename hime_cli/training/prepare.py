"""Build face-crop datasets from identity folders (``<root>/<identity>/*.jpg``).

For each photo: detect faces with the project's detector, embed the large ones, keep the face
that belongs to the folder's identity (the one closest to the identity's medoid embedding: some
photos show several people, and sometimes the labelled person is not the largest face), and
crop it with the shared alignment policy (:mod:`hime_cli.faces.align`).

Crops are stored at ``store_size`` px covering ``margin`` × the canonical region (so training can
jitter the framing), JPEG-encoded at high quality in one ``.npz``: they are derived data, cached
under the hime cache folder, never committed. A face is kept only when its native region is at
least ``min_region`` px, so a 128 px HR target is never an upsampled small face.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hime_cli.faces.align import alignment_matrix, region_size, scale_affine, warp_to_crop

HR_SIZE = 128
STORE_MARGIN = 1.125  # stored crop covers 1.125 × the canonical region
STORE_SIZE = 144  # = HR_SIZE * STORE_MARGIN
MIN_REGION = 112.0  # ≤ 1.14× upsampling of the HR target
SAME_IDENTITY_MAX_DIST = 0.6  # dlib distance to the identity medoid
EMBED_MIN_REGION = 100.0  # faces smaller than this cannot be kept (MIN_REGION): not embedded
DETECT_MAX_SIDE = 512  # detect on a downscaled copy: kept faces are large, this is 3-4x faster


@dataclass(frozen=True)
class CropSet:
    """Aligned face crops of a set of identities."""

    crops: np.ndarray  # (N, S, S, 3) uint8, S = STORE_SIZE, covering STORE_MARGIN × region
    identity: np.ndarray  # (N,) int32 index into ``identities``
    identities: tuple[str, ...]
    region: np.ndarray  # (N,) float32 native region size (px) in the source photo
    sources: tuple[str, ...]  # relative photo path per crop

    def __len__(self) -> int:
        return int(self.crops.shape[0])

    def save(self, path: Path) -> None:
        from PIL import Image

        blobs = []
        for crop in self.crops:
            buf = io.BytesIO()
            Image.fromarray(crop).save(buf, format="JPEG", quality=97, subsampling=0)
            blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
        offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            jpeg=np.concatenate(blobs) if blobs else np.zeros(0, np.uint8),
            offsets=offsets,
            identity=self.identity,
            region=self.region,
            meta=np.frombuffer(
                json.dumps(
                    {"identities": self.identities, "sources": self.sources, "size": STORE_SIZE}
                ).encode(),
                dtype=np.uint8,
            ),
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> CropSet:
        from PIL import Image

        with np.load(path) as z:
            jpeg, offsets = z["jpeg"], z["offsets"]
            meta = json.loads(bytes(z["meta"]).decode())
            crops = (
                np.stack(
                    [
                        np.asarray(
                            Image.open(io.BytesIO(jpeg[offsets[i] : offsets[i + 1]].tobytes())).convert("RGB")
                        )
                        for i in range(len(offsets) - 1)
                    ]
                )
                if len(offsets) > 1
                else np.zeros((0, STORE_SIZE, STORE_SIZE, 3), np.uint8)
            )
            return cls(
                crops=crops,
                identity=z["identity"].astype(np.int32),
                identities=tuple(meta["identities"]),
                region=z["region"].astype(np.float32),
                sources=tuple(meta["sources"]),
            )


def merge_crop_sets(parts: list[CropSet]) -> CropSet:
    """Concatenate crop sets of disjoint identities (e.g. shards prepared in parallel)."""
    names: list[str] = []
    ids = []
    for part in parts:
        ids.append(part.identity + len(names))
        names.extend(part.identities)
    if len(set(names)) != len(names):
        raise ValueError("crop sets to merge share identities")
    return CropSet(
        crops=np.concatenate([p.crops for p in parts]),
        identity=np.concatenate(ids).astype(np.int32),
        identities=tuple(names),
        region=np.concatenate([p.region for p in parts]),
        sources=tuple(s for p in parts for s in p.sources),
    )


def store_matrix(landmarks: np.ndarray) -> np.ndarray:
    """Photo → stored-crop affine: the canonical HR crop, widened by STORE_MARGIN about its centre."""
    m = alignment_matrix(landmarks, HR_SIZE)
    # crop' = (crop - c) / margin * margin... i.e. scale about the HR crop centre then shift.
    c = HR_SIZE / 2.0
    out = m.copy()
    out[:, :2] /= STORE_MARGIN
    out[:, 2] = (m[:, 2] - c) / STORE_MARGIN + STORE_SIZE / 2.0
    return out


def _load_rgb(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        return np.asarray(im.convert("RGB"))


def _detect_downscaled(detector, rgb: np.ndarray) -> list:
    """Detect on a copy whose longest side is at most DETECT_MAX_SIDE; map faces back to full size."""
    import cv2

    from hime_cli.types import Box, DetectedFace

    h, w = rgb.shape[:2]
    f = min(1.0, DETECT_MAX_SIDE / max(h, w))
    if f >= 1.0:
        return detector.detect(rgb)
    small = cv2.resize(rgb, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
    out = []
    for face in detector.detect(small):
        b = face.box
        out.append(
            DetectedFace(
                box=Box(b.x0 / f, b.y0 / f, b.x1 / f, b.y1 / f),
                landmarks=face.landmarks / f,
                score=face.score,
            )
        )
    return out


def prepare_crops(
    root: Path,
    *,
    min_region: float = MIN_REGION,
    limit_identities: int | None = None,
    shard: tuple[int, int] = (0, 1),
    progress: Callable[[int, int], None] | None = None,
) -> tuple[CropSet, dict]:
    """Detect, verify identity and crop every photo under ``root/<identity>/``."""
    from hime_cli.faces.detect import FaceDetector
    from hime_cli.faces.embed import DlibEmbedder

    detector = FaceDetector(min_face_size=24)  # on the ≤512 px copy; kept faces are ≥ 112 px regions
    embedder = DlibEmbedder(flip=False, unit=False)  # raw descriptors: SAME_IDENTITY_MAX_DIST is set for them
    identity_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if limit_identities:
        identity_dirs = identity_dirs[:limit_identities]
    identity_dirs = identity_dirs[shard[0] :: shard[1]]  # shards split by identity: each is self-contained
    photos = [
        (d.name, p)
        for d in identity_dirs
        for p in sorted(d.iterdir())
        if p.suffix.lower() in {".jpg", ".jpeg", ".png"}
    ]
    t0 = time.time()
    # Pass 1: detect + embed every large-enough face.
    found: dict[str, list[tuple[Path, np.ndarray, list]]] = {}
    stats = {"photos": len(photos), "unreadable": 0, "no_face": 0}
    for i, (ident, path) in enumerate(photos):
        if progress:
            progress(i, len(photos))
        try:
            rgb = _load_rgb(path)
        except Exception:
            stats["unreadable"] += 1
            continue
        faces = [f for f in _detect_downscaled(detector, rgb) if region_size(f.landmarks) >= EMBED_MIN_REGION]
        if not faces:
            stats["no_face"] += 1
            continue
        emb = embedder.embed(rgb, faces)
        found.setdefault(ident, []).append((path, rgb, list(zip(faces, emb, strict=True))))
    # Pass 2: per identity, the medoid of each photo's largest face; keep each photo's face nearest to it.
    crops, ids, regions, sources = [], [], [], []
    names = sorted(found)
    stats.update({"wrong_identity": 0, "too_small": 0})
    for k, ident in enumerate(names):
        entries = found[ident]
        largest = np.stack([faces[0][1] for _, _, faces in entries])
        d = np.linalg.norm(largest[:, None] - largest[None], axis=-1)
        medoid = largest[int(np.argmin(d.sum(1)))]
        for path, rgb, faces in entries:
            dists = [float(np.linalg.norm(e - medoid)) for _, e in faces]
            j = int(np.argmin(dists))
            if dists[j] > SAME_IDENTITY_MAX_DIST:
                stats["wrong_identity"] += 1
                continue
            face = faces[j][0]
            r = region_size(face.landmarks)
            if r < min_region:
                stats["too_small"] += 1
                continue
            crop = warp_to_crop(rgb, store_matrix(face.landmarks), STORE_SIZE)
            crops.append((crop * 255.0 + 0.5).astype(np.uint8))
            ids.append(k)
            regions.append(r)
            sources.append(f"{ident}/{path.name}")
    stats["kept"] = len(crops)
    stats["identities"] = len(set(ids))
    stats["seconds"] = round(time.time() - t0, 1)
    cs = CropSet(
        crops=np.stack(crops) if crops else np.zeros((0, STORE_SIZE, STORE_SIZE, 3), np.uint8),
        identity=np.asarray(ids, dtype=np.int32),
        identities=tuple(names),
        region=np.asarray(regions, dtype=np.float32),
        sources=tuple(sources),
    )
    return cs, stats


__all__ = ["CropSet", "prepare_crops", "store_matrix", "scale_affine", "HR_SIZE", "STORE_SIZE"]


def main(argv: list[str] | None = None) -> None:
    """``python -m hime_cli.training.prepare ROOT OUT.npz [--limit N]``: build and save a crop set."""
    import argparse
    import sys

    import torch

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("root", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--limit", type=int, default=None, help="only the first N identities")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shard", default="0/1", help="i/n: only identities i, i+n, i+2n, ...")
    parser.add_argument(
        "--merge", nargs="*", type=Path, default=None, help="merge these crop sets into OUT instead"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)  # MTCNN's small convs thrash with more threads on a busy CPU

    def report(i: int, n: int) -> None:
        if i % 200 == 0:
            print(f"{i}/{n} photos", file=sys.stderr, flush=True)

    if args.merge:
        merged = merge_crop_sets([CropSet.load(p) for p in args.merge])
        merged.save(args.out)
        print(json.dumps({"kept": len(merged), "identities": len(merged.identities)}))
        return
    i, n = (int(v) for v in args.shard.split("/"))
    cs, stats = prepare_crops(args.root, limit_identities=args.limit, shard=(i, n), progress=report)
    cs.save(args.out)
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
