"""Scan speed of several checkouts, side by side: ``hime bench scan`` with the same arguments, alternated.

    git worktree add /work/wt-base ef928d7          # before issue 12
    git worktree add /work/wt-fd4 fd4caa8           # another checkout to compare
    .venv/bin/python benchmarks/scan_side_by_side.py /work/wt-base /work/wt-fd4 . --limit 300 --rounds 2

Each checkout runs ``hime bench scan FOLDER --limit N --rescan-photos 0 --json`` from this venv with
``PYTHONPATH`` pointing at the checkout (its ``hime_cli`` wins over the installed one; the worker
processes inherit it), round-robin ``--rounds`` times (every other round in reverse order), so machine load falls on
all of them alike.
Prints photos/s and ms per face of every run, the load average (``uptime``) before each, and each
checkout's median photos/s as a ratio of the first checkout's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO.parent / "shared" / "data" / "celeba-wild" / "dev"


def run_once(checkout: Path, folder: Path, limit: int, extra: list[str]) -> dict[str, object]:
    env = dict(os.environ, PYTHONPATH=str(checkout.resolve()), HIME_NO_PROGRESS="1", HF_HUB_OFFLINE="1")
    hime = Path(sys.executable).with_name("hime")
    cmd = [
        str(hime),
        "bench",
        "scan",
        str(folder),
        "--limit",
        str(limit),
        "--rescan-photos",
        "0",
        "--json",
        *extra,
    ]
    out = subprocess.run(cmd, env=env, cwd=checkout, check=True, capture_output=True, text=True).stdout
    return json.loads(out)["scan"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkouts", nargs="+", type=Path, help="the first one is the baseline")
    parser.add_argument("--folder", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write every run to this file")
    args = parser.parse_args(argv)
    extra = ["--workers", str(args.workers)] if args.workers else []
    runs: dict[str, list[dict[str, object]]] = {str(c): [] for c in args.checkouts}
    for round_no in range(args.rounds):
        # Every other round in reverse order, so no checkout always runs first or last.
        order = args.checkouts if round_no % 2 == 0 else args.checkouts[::-1]
        for checkout in order:
            load = os.getloadavg()
            result = run_once(checkout, args.folder, args.limit, extra)
            result["load_before"] = [round(v, 2) for v in load]
            runs[str(checkout)].append(result)
            print(
                f"round {round_no + 1} {checkout}: {result['photos']} photos, {result['faces']} faces, "
                f"{result['photos_per_s']:.3f} photos/s, {result['ms_per_face']} ms/face "
                f"[load before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, workers {result['workers']}]",
                flush=True,
            )
    base = statistics.median(float(r["photos_per_s"]) for r in runs[str(args.checkouts[0])])
    print(f"median photos/s as a ratio of {args.checkouts[0]}:")
    for checkout, results in runs.items():
        rate = statistics.median(float(r["photos_per_s"]) for r in results)
        ms = statistics.median(float(r["ms_per_face"] or 0) for r in results)
        print(f"  {checkout}: {rate:.3f} photos/s ({rate / base:.2f}x), {ms:.1f} ms/face")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
