"""hime demo: offline, a minute or two on a laptop CPU, from a fresh clone.

    python examples/demo.py [--workdir hime-demo] [--scale 4]

1. Builds a tiny library from the public-domain portrait that ships inside scikit-image
   (``skimage.data.astronaut``: Eileen Collins, NASA, public domain): a small, blurry copy of the
   photo (the one to enhance) and three reference photos of the same person.
2. Runs ``hime enhance small.jpg --refs refs/ --scale 4 --out enhanced/ --compare`` through the real CLI.
3. Writes ``before_after.png`` (Lanczos ×4 | hime ×4 | the original) and prints where everything is,
   with the PSNR of the face against the original.

scikit-image ships only one portrait, so the "reference photos" are re-framed copies of that one
shot (mirrored, rotated, re-lit), never the original itself: the demo shows the mechanics, and its
numbers are more flattering than on a real library, where the references are other photos.
Use your own: ``hime enhance --refs photos_of_grandma/ old_scan.jpg --compare``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def build_library(root: Path, scale: int) -> tuple[Path, Path, np.ndarray]:
    """small/small.jpg (the photo to enhance), refs/ (three other views), and the original pixels."""
    from skimage import data

    original = data.astronaut()  # 512 × 512 RGB
    small_dir, refs = root / "small", root / "refs"
    small_dir.mkdir(parents=True, exist_ok=True)
    refs.mkdir(parents=True, exist_ok=True)
    size = original.shape[0] // scale
    small = Image.fromarray(original).resize((size, size), Image.Resampling.BICUBIC)
    exif = Image.Exif()
    exif[0x010F] = "hime demo"
    exif[0x0132] = "1999:07:23 12:31:00"
    small.save(small_dir / "small.jpg", quality=95, exif=exif)

    im = Image.fromarray(original)
    im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(refs / "mirrored.jpg", quality=92)
    im.rotate(8, resample=Image.Resampling.BICUBIC, fillcolor=(20, 20, 20)).save(
        refs / "tilted.jpg", quality=92
    )
    warm = np.clip(original.astype(np.float32) * [1.08, 1.0, 0.88] + [6, 0, -4], 0, 255).astype(np.uint8)
    Image.fromarray(warm).crop((40, 0, 472, 512)).save(refs / "warm_crop.jpg", quality=92)
    return small_dir / "small.jpg", refs, original


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(
        10 * np.log10(255.0**2 / max(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2), 1e-9))
    )


def side_by_side(panels: list[tuple[str, np.ndarray]], dest: Path) -> None:
    height = max(p.shape[0] for _, p in panels)
    width = sum(p.shape[1] for _, p in panels) + 8 * (len(panels) + 1)
    sheet = Image.new("RGB", (width, height + 30), (30, 30, 30))
    draw = ImageDraw.Draw(sheet)
    x = 8
    for label, pixels in panels:
        sheet.paste(Image.fromarray(pixels), (x, 26))
        draw.text((x, 6), label, fill=(235, 235, 235))
        x += pixels.shape[1] + 8
    sheet.save(dest)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=Path("hime-demo"), help="where to build the demo")
    parser.add_argument("--scale", type=int, default=4, choices=(2, 4, 8))
    parser.add_argument("--weights", default=None, help="weights NAME or PATH (default: the bundled model)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    root = args.workdir.resolve()
    small, refs, original = build_library(root, args.scale)
    out = root / "enhanced"
    command = [
        sys.executable, "-m", "hime_cli.cli.app", "enhance", str(small),
        "--refs", str(refs), "--scale", str(args.scale), "--out", str(out),
        "--compare", "--compare-dir", str(root / "compare"), "--device", args.device, "--force", "--json",
    ]  # fmt: skip
    if args.weights:
        command += ["--weights", args.weights]
    print("$ hime " + " ".join(command[3:]), flush=True)
    started = time.perf_counter()
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        print(proc.stdout, f"hime enhance exited with {proc.returncode}", file=sys.stderr)
        return proc.returncode
    seconds = time.perf_counter() - started
    report = json.loads(proc.stdout)
    faces = [f for p in report["photos"] for f in p["faces"] if f["status"] == "enhanced"]
    if not faces:
        print("no face was enhanced (see the report above)", file=sys.stderr)
        return 1

    from hime_cli.sr.pasteback import upscale_photo

    small_px = np.asarray(Image.open(small).convert("RGB"))
    lanczos = (upscale_photo(small_px.astype(np.float32) / 255, args.scale) * 255 + 0.5).astype(np.uint8)
    enhanced = np.asarray(Image.open(out / "small.jpg").convert("RGB"))
    side = small_px.shape[0] * args.scale
    truth = original[:side, :side]
    x0, y0, x1, y1 = (int(round(v * args.scale)) for v in faces[0]["box"])
    face = (slice(y0, y1), slice(x0, x1))  # the detected face box, in output pixels
    before_after = root / "before_after.png"
    side_by_side(
        [(f"Lanczos x{args.scale}", lanczos), (f"hime x{args.scale}", enhanced), ("original", truth)],
        before_after,
    )
    print(f"enhance took {seconds:.1f} s (including start-up; SR {report['sr_seconds']:.2f} s) "
          f"with {report['model']} on {report['device']}, {len(faces[0]['refs'])} references")  # fmt: skip
    print(f"face PSNR vs the original: hime {psnr(enhanced[face], truth[face]):.2f} dB, "
          f"Lanczos {psnr(lanczos[face], truth[face]):.2f} dB "
          "(references are copies of the same shot here: see the docstring)")  # fmt: skip
    print(f"input:          {small}")
    print(f"enhanced photo: {out / 'small.jpg'}")
    print(f"before/after:   {before_after}")
    print(f"face sheets:    {root / 'compare' / 'index.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
