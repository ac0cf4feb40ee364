"""Scan benchmark: photos/s and ms per face on a folder, and the re-scan time of an unchanged index.

    .venv/bin/python benchmarks/bench_scan.py                       # celeba-wild/dev, 875 photos
    .venv/bin/python benchmarks/bench_scan.py DIR --limit 100 --compare --json out.json

Same measurement as ``hime bench scan``; ``--compare`` also runs the in-process scan (no worker
processes) so the gain of the workers is measured on the same machine in the same run. Every face is
embedded; the index is a fresh temporary one. Report the machine's load average with the numbers
(it is printed): on a shared machine the rate mostly measures the neighbours.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO.parent / "shared" / "data" / "celeba-wild" / "dev"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--limit", type=int, default=None, help="only the first N photos")
    parser.add_argument("--embedder", default="dlib")
    parser.add_argument("--rescan-photos", type=int, default=5000, help="0 to skip the re-scan measurement")
    parser.add_argument("--compare", action="store_true", help="also run the in-process scan")
    parser.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: usable cores, <= 4)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results to this file")
    args = parser.parse_args(argv)

    os.environ.setdefault("HIME_NO_PROGRESS", "1")
    from hime_cli.library.bench import bench_rescan, bench_scan

    if not args.folder.is_dir():
        print(f"not a folder: {args.folder}", file=sys.stderr)
        return 2
    results: dict[str, object] = {}
    runs = [True, False] if args.compare else [True]
    for parallel in runs:
        name = "workers" if parallel else "in-process"
        result = bench_scan(
            args.folder, limit=args.limit, embedder=args.embedder, parallel=parallel, workers=args.workers
        )
        results[name] = result.to_dict()
        print(
            f"{name:10} {result.photos} photos ({result.failed} failed), {result.faces} faces, {result.seconds:.1f} s: "
            f"{result.photos_per_s:.2f} photos/s, {result.ms_per_face} ms/face "
            f"[{result.workers} worker(s), {result.cpu_count} CPUs, load {result.load_average}]",
            flush=True,
        )
    if args.rescan_photos > 0:
        rescan = bench_rescan(args.rescan_photos)
        results["rescan"] = rescan.to_dict()
        print(f"re-scan of an unchanged {rescan.photos}-photo index: {rescan.rescan_s:.3f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
