"""Rebuild a small LFW library folder (a second, never-tuned-on identity set) from a git mirror.

LFW (deep-funnelled) ships inside the public repository braun-steven/dfi-tensorflow under
``data/lfw-deepfunneled/<Person_Name>/<Person_Name>_NNNN.jpg``. Bring it onto the machine as a
bare git directory (e.g. the ``fetch`` tool → ``/work/.mirror/braun-steven+dfi-tensorflow/repo``),
then:

    .venv/bin/python benchmarks/make_lfw_library.py --git-dir DIR --out /tmp/lfw_library

The subset is deterministic (names sorted, every k-th taken): ``--people`` identities with at
least ``--min-photos`` photos, at most ``--max-photos`` each (first by file name), plus
``--distractors`` people with a single photo (they can only hurt precision). The folder layout is
the one ``benchmarks/tune_clustering.py`` reads: ``<out>/<identity>/<photo>.jpg``. Data never goes
into the repository; write it outside (``/tmp``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

PREFIX = "data/lfw-deepfunneled/"


def _git(git_dir: Path, *args: str) -> bytes:
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], check=True, capture_output=True).stdout


def choose(files: dict[str, list[str]], people: int, min_photos: int, max_photos: int, distractors: int):
    """(identity → chosen files) for the labelled people, and the distractor files."""
    many = sorted(n for n, f in files.items() if len(f) >= min_photos)
    single = sorted(n for n, f in files.items() if len(f) == 1)
    step = max(1, len(many) // max(people, 1))
    chosen = {n: sorted(files[n])[:max_photos] for n in many[::step][:people]}
    dstep = max(1, len(single) // max(distractors, 1))
    extra = {n: files[n] for n in single[::dstep][:distractors]} if distractors else {}
    return chosen, extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--git-dir", type=Path, default=Path("/work/.mirror/braun-steven+dfi-tensorflow/repo")
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/lfw_library"))
    parser.add_argument("--people", type=int, default=55)
    parser.add_argument("--min-photos", type=int, default=6)
    parser.add_argument("--max-photos", type=int, default=10)
    parser.add_argument("--distractors", type=int, default=60)
    args = parser.parse_args(argv)

    listing = _git(args.git_dir, "ls-tree", "-r", "--name-only", "HEAD", PREFIX).decode().splitlines()
    files: dict[str, list[str]] = defaultdict(list)
    for path in listing:
        parts = path[len(PREFIX) :].split("/")
        if len(parts) == 2 and parts[1].lower().endswith(".jpg"):
            files[parts[0]].append(path)
    chosen, extra = choose(files, args.people, args.min_photos, args.max_photos, args.distractors)
    n = 0
    for name, paths in {**chosen, **extra}.items():
        folder = args.out / name
        folder.mkdir(parents=True, exist_ok=True)
        for path in paths:
            target = folder / Path(path).name
            if not target.exists():
                target.write_bytes(_git(args.git_dir, "show", f"HEAD:{path}"))
            n += 1
    print(
        f"{n} photos: {len(chosen)} people with >= {args.min_photos} photos, {len(extra)} distractors → {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
