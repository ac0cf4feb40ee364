"""The quality gate on a photo folder: what it rejects, what stays, and the people left.

Scans DIR into a fresh temporary index (every detection is stored, rejected ones included),
clusters, and prints the detections by level, the identities before the gate would have held
them (every detection with an embedding placed), and the people view after. With
``--sheet PNG`` it also draws every rejected and poor detection with its reason, to check by eye.

    .venv/bin/python benchmarks/gate_counts.py ../shared/data/photos [--sheet /tmp/rejected.png]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--sheet", type=Path)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    os.environ["HIME_HOME"] = tempfile.mkdtemp(prefix="hime_gate_")

    from hime_cli.identities.scan import scan_and_place
    from hime_cli.identities.store import DEFAULT_MIN_FACES, people_view
    from hime_cli.library.index import LibraryIndex

    with LibraryIndex.open() as index:
        report = scan_and_place([args.folder], index, workers=args.workers).scan
        everything = list(index.iter_faces(include_rejected=True, with_embeddings=False))
        levels = Counter(f.quality for f in everything)
        with_identity = sum(1 for f in everything if f.identity_id is not None)
        view = people_view(index, hr_size=128, min_faces=DEFAULT_MIN_FACES)
        identities = len({f.identity_id for f in everything if f.identity_id is not None})
        reasons = dict(index.conn.execute("SELECT id, quality_reason FROM faces"))
        print(f"{report.photos} photos, {len(everything)} detections: {dict(levels)}")
        print(f"faces with an identity: {with_identity}; identities: {identities}")
        print(
            f"people (>= {DEFAULT_MIN_FACES} faces or named): {len(view.people)}; smaller: {view.fewer_faces}; "
            f"unsorted faces: {view.unsorted_faces}"
        )
        odd = [f for f in everything if f.quality != "good"]
        for f in odd:
            print(
                f"  face {f.id} {f.photo_path.name} score {f.score:.3f} size {f.size:.0f}: {f.quality}, {reasons[f.id]}"
            )
        if args.sheet:
            from hime_cli.faces.align import alignment_matrix, warp_to_crop
            from hime_cli.identities.review import _PhotoCache, render_contact_sheet

            photos = _PhotoCache()
            tiles = []
            for f in odd:
                rgb = photos.get(f.photo_path)
                crop = None if rgb is None else warp_to_crop(rgb, alignment_matrix(f.landmarks, 96), 96)
                tiles.append((crop, f"#{f.id} {f.quality} {f.score:.2f}\n{f.photo_path.name[:14]}", False))
            render_contact_sheet(tiles, "not good", thumb=96).save(args.sheet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
