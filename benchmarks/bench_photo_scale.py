"""Time and peak memory of `hime enhance` on phone-size photos (issue #10: 12 MP at ×4 in ≤ 3 GB).

For each photo, two child processes are measured (wall time, peak RSS from ``getrusage``):

- **baseline**: a plain Pillow Lanczos ×scale resize of the same photo saved as JPEG (what a
  user's "just upscale it" costs on this machine, measured in the same run, so the ratio holds
  on a loaded or slower machine too);
- **hime**: ``hime enhance PHOTO --scale S --out TMP --json`` with a fresh ``HIME_HOME`` (so the
  photo is scanned, its faces detected and placed, then enhanced and written; default weights).

Photos: ``--photo PATH`` (repeatable), else a synthetic 12 MP JPEG (4000 × 3000, EXIF, six
~55 px faces from ``skimage.data.astronaut()`` on a textured background), built in a temp folder.
To measure another checkout (e.g. the code before a change): ``PYTHONPATH=/that/checkout python
benchmarks/bench_photo_scale.py`` (the children inherit it).

    python benchmarks/bench_photo_scale.py                       # synthetic 12 MP, ×4
    python benchmarks/bench_photo_scale.py --photo a.heic --scale 2 --json
    python benchmarks/bench_photo_scale.py --photo big.jpg --all-photos   # written even with no small face

A photo with no face small enough to enhance is skipped by default (status ``no-face``), so
nothing is upscaled or written and the figures say little: ``--all-photos`` passes the flag on,
and the photo is upscaled and written like any other.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_MEASURE = r"""
import resource, subprocess, sys, time
t = time.perf_counter()
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
seconds = time.perf_counter() - t
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB, largest descendant
import json
print(json.dumps({"rc": proc.returncode, "seconds": seconds, "peak_mb": peak_kb / 1024,
                  "stdout": proc.stdout[-20000:], "stderr": proc.stderr[-2000:]}))
"""

_BASELINE = r"""
import sys
from PIL import Image
Image.MAX_IMAGE_PIXELS = None
import pillow_heif
pillow_heif.register_heif_opener()
src, dest, scale = sys.argv[1], sys.argv[2], int(sys.argv[3])
with Image.open(src) as im:
    im = im.convert("RGB")
    im.resize((im.width * scale, im.height * scale), Image.LANCZOS).save(dest, "JPEG", quality=95)
"""

_HIME = "import sys; from hime_cli.cli.app import main; sys.argv[0] = 'hime'; main()"


def measure(cmd: list[str], env: dict[str, str], cwd: Path) -> dict:
    """Run ``cmd`` under a small wrapper that reports its wall time and its peak RSS.

    ``cwd`` outside the repository: ``python -c`` puts the working folder first on ``sys.path``,
    which would shadow a ``PYTHONPATH`` pointing at another checkout.
    """
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True, env=env, check=True, cwd=cwd
    )
    return json.loads(out.stdout)


def synthetic_photo(dest: Path, width: int = 4000, height: int = 3000) -> Path:
    """A 12 MP JPEG with EXIF and six small faces (deterministic)."""
    import cv2
    import numpy as np
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(0)
    texture = cv2.resize(data.coffee(), (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    texture += rng.normal(0, 4, texture.shape).astype(np.float32)  # sensor-like grain
    face = cv2.resize(data.astronaut(), (240, 240), interpolation=cv2.INTER_AREA)
    for k in range(6):
        x, y = 300 + k * 600, 600 + (k % 2) * 1200
        texture[y : y + 240, x : x + 240] = face
    image = Image.fromarray(np.clip(texture, 0, 255).astype(np.uint8))
    exif = Image.Exif()
    exif[0x010F] = "hime-bench"  # Make
    exif[0x0112] = 1
    image.save(dest, "JPEG", quality=90, exif=exif.tobytes())
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", action="append", type=Path, default=[])
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--all-photos",
        action="store_true",
        help="pass --all-photos: photos with no small face are written too",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        # Absolute: the child processes run in a temporary folder, where a relative path means nothing.
        photos = [p.resolve() for p in args.photo] or [synthetic_photo(tmp / "synthetic-12mp.jpg")]
        env = dict(os.environ, HIME_NO_PROGRESS="1", HF_HUB_OFFLINE="1")
        rows = []
        for i, photo in enumerate(photos):
            from PIL import Image

            try:
                import pillow_heif

                pillow_heif.register_heif_opener()
            except ImportError:
                pass
            with Image.open(photo) as im:
                size = im.size
            base = measure([sys.executable, "-c", _BASELINE, str(photo), str(tmp / f"lanczos-{i}.jpg"), str(args.scale)], env, tmp)  # fmt: skip
            home = tmp / f"home-{i}"
            hime_env = dict(env, HIME_HOME=str(home))
            cmd = [sys.executable, "-c", _HIME, "enhance", str(photo), "--scale", str(args.scale),
                   "--out", str(tmp / f"out-{i}"), "--json"] + (["--all-photos"] if args.all_photos else [])  # fmt: skip
            run = measure(cmd, hime_env, tmp)
            report = {}
            try:
                report = json.loads(run["stdout"])
            except json.JSONDecodeError:
                pass
            photo_report = (report.get("photos") or [{}])[0]
            rows.append(
                {
                    "photo": str(photo),
                    "megapixels": round(size[0] * size[1] / 1e6, 1),
                    "scale": args.scale,
                    "baseline_seconds": round(base["seconds"], 1),
                    "baseline_peak_mb": round(base["peak_mb"]),
                    "hime_rc": run["rc"],
                    "hime_status": photo_report.get("status"),
                    "hime_reason": photo_report.get("reason"),
                    "hime_note": photo_report.get("note"),
                    "faces_enhanced": (report.get("summary") or {}).get("faces_enhanced"),
                    "hime_seconds": round(run["seconds"], 1),
                    "hime_peak_mb": round(run["peak_mb"]),
                    "time_vs_baseline": round(run["seconds"] / max(base["seconds"], 1e-9), 2),
                    "stderr_tail": run["stderr"][-400:] if run["rc"] else "",
                }
            )
            time.sleep(0.1)
    import hime_cli

    machine = {
        "code": str(Path(hime_cli.__file__).parent),
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": os.getloadavg()[0],
    }
    if args.json:
        print(json.dumps({"machine": machine, "results": rows}, indent=2))
        return
    print(f"machine: {machine}")
    for r in rows:
        print(
            f"{r['photo']} ({r['megapixels']} MP ×{r['scale']}): hime {r['hime_status']} in {r['hime_seconds']} s, "
            f"peak {r['hime_peak_mb']} MB; Lanczos baseline {r['baseline_seconds']} s, "
            f"{r['baseline_peak_mb']} MB; hime/baseline time {r['time_vs_baseline']}×"
            + (f"; {r['hime_reason']}" if r["hime_reason"] else "")
            + (f"; {r['hime_note']}" if r["hime_note"] else "")
        )


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
