"""`hime enhance` / `hime compare` through the real CLI (typer's CliRunner, and subprocesses for the kill test).

Photos are made from skimage's astronaut at test time; the tiny random ``hime_test_x4`` weights
stand in for trained ones (the plumbing is under test here, not the SR quality).
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageCms
from typer.testing import CliRunner

from hime_cli.cli.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from safetensors.torch import save_file

    from hime_cli.sr.registry import create_model

    torch.manual_seed(0)
    model = create_model("hime_test_x4")
    path = tmp_path_factory.mktemp("weights") / "hime_test_x4.rand.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def astronaut(size: int = 128) -> np.ndarray:
    from skimage import data

    return cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)


def portrait(width: int = 96, height: int = 128) -> np.ndarray:
    """An upright portrait (face in the upper half), width < height."""
    from skimage import data

    crop = data.astronaut()[0:400, 40:340]
    return cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA)


def full_exif(orientation: int = 1) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "HimeCam"  # Make
    exif[0x0110] = "Model 7"  # Model
    exif[0x0112] = orientation
    exif[0x0132] = "2009:06:07 10:11:12"
    ifd = exif.get_ifd(0x8769)
    ifd[0x9003] = "2009:06:07 10:11:12"  # DateTimeOriginal
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = (48.0, 51.0, 30.0)
    gps[3] = "E"
    gps[4] = (2.0, 17.0, 40.2)
    return exif


XMP = (
    b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">'
    b"<dc:title><rdf:Alt><rdf:li xml:lang='x-default'>hime test</rdf:li></rdf:Alt></dc:title>"
    b'</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
)


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _invoke(args: list[str]):
    result = runner.invoke(app, args)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def _base(weights: Path) -> list[str]:
    return ["--weights", str(weights), "--device", "cpu", "--max-refs", "0"]


def test_help_is_there() -> None:
    result = _invoke(["enhance", "--help"])
    assert result.exit_code == 0
    for option in (
        "--scale",
        "--out",
        "--in-place",
        "--refs",
        "--max-face",
        "--dry-run",
        "--compare",
        "--json",
    ):
        assert option in result.stdout
    assert _invoke(["compare", "--help"]).exit_code == 0


def test_max_face_and_scale_help_name_what_they_measure() -> None:
    from hime_cli.cli.options import MaxFaceOpt, ScaleOpt
    from hime_cli.pipeline import default_max_face

    max_face = MaxFaceOpt.__metadata__[0].help
    assert "crop region side" in max_face and "detection box" not in max_face
    for scale in (1, 2, 4, 8):  # the help states the defaults the code uses
        assert f"{default_max_face(scale):g} at" in max_face
    scale = ScaleOpt.__metadata__[0].help
    assert "1, 2, 4 or 8" in scale and "keep the size" in scale


def test_usage_errors_exit_2(tmp_path: Path, weights: Path) -> None:
    Image.fromarray(astronaut()).save(tmp_path / "a.jpg")
    result = _invoke(["enhance", str(tmp_path / "a.jpg"), "--scale", "3", *_base(weights)])
    assert result.exit_code == 2 and "scale" in result.stderr
    result = _invoke(["enhance", str(tmp_path / "nope.jpg"), *_base(weights)])
    assert result.exit_code == 2 and "no such file" in result.stderr


def test_enhance_json_summary_and_metadata_round_trip(tmp_path: Path, weights: Path) -> None:
    src = tmp_path / "in" / "a.jpg"
    src.parent.mkdir()
    icc = srgb_icc()  # (carries its creation time: make it once)
    Image.fromarray(astronaut()).save(src, quality=92, exif=full_exif(), icc_profile=icc, xmp=XMP)
    out = tmp_path / "out"
    result = _invoke(["enhance", str(src), "--out", str(out), "--json", *_base(weights)])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["summary"]["done"] == 1 and report["summary"]["faces_enhanced"] == 1
    assert report["summary"]["faces_without_refs"] == 1

    im = Image.open(out / "a.jpg")
    assert im.format == "JPEG" and im.size == (512, 512)
    exif = im.getexif()
    assert exif[0x010F] == "HimeCam" and exif[0x0110] == "Model 7"
    assert exif.get_ifd(0x8769)[0x9003] == "2009:06:07 10:11:12"
    gps = exif.get_ifd(0x8825)
    assert gps[1] == "N" and [float(v) for v in gps[2]] == [48.0, 51.0, 30.0]
    assert im.info.get("icc_profile") == icc
    assert b"hime test" in (im.info.get("xmp") or b"")

    # The human summary on a re-run: skipped, exit 0.
    again = _invoke(["enhance", str(src), "--out", str(out), *_base(weights)])
    assert again.exit_code == 0
    assert "skipped" in again.stdout


def test_orientation_6_portrait_comes_out_upright(tmp_path: Path, weights: Path) -> None:
    upright = portrait()
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # viewer rotates it back
    src = tmp_path / "p.jpg"
    stored.save(src, quality=95, exif=full_exif(orientation=6))
    out = tmp_path / "out"
    result = _invoke(["enhance", str(src), "--out", str(out), *_base(weights)])
    assert result.exit_code == 0, result.stderr
    im = Image.open(out / "p.jpg")
    assert im.size == (upright.shape[1] * 4, upright.shape[0] * 4)  # portrait, 4x
    assert im.getexif().get(0x0112, 1) == 1
    # Upright: the output looks like the upright original, not a rotated one.
    small = cv2.resize(
        np.asarray(im.convert("RGB")), (upright.shape[1], upright.shape[0]), interpolation=cv2.INTER_AREA
    )
    assert np.abs(small.astype(float) - upright).mean() < 8


def test_heic_stays_heic(tmp_path: Path, weights: Path) -> None:
    import pillow_heif

    pillow_heif.register_heif_opener()
    src = tmp_path / "h.heic"
    Image.fromarray(astronaut()).save(src, format="HEIF", quality=90, exif=full_exif())
    out = tmp_path / "out"
    result = _invoke(["enhance", str(src), "--out", str(out), *_base(weights)])
    assert result.exit_code == 0, result.stderr
    im = Image.open(out / "h.heic")
    assert im.format == "HEIF" and im.size == (512, 512)
    assert im.getexif()[0x010F] == "HimeCam"


@pytest.mark.slow
def test_rgba_16bit_and_grey_png_round_trip(tmp_path: Path, weights: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    rgb = astronaut()
    alpha = np.zeros((128, 128), np.uint8)
    alpha[:, 64:] = 255
    Image.fromarray(np.dstack([rgb, alpha])).save(folder / "rgba.png")
    rgb16 = (rgb.astype(np.uint16) * 257)[..., ::-1]  # BGR for OpenCV
    cv2.imwrite(str(folder / "deep.png"), rgb16)
    Image.fromarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)).save(folder / "grey.png")
    out = tmp_path / "out"
    result = _invoke(["enhance", str(folder), "--out", str(out), *_base(weights)])
    assert result.exit_code == 0, result.stdout + result.stderr

    im = Image.open(out / "rgba.png")
    assert im.mode == "RGBA" and im.size == (512, 512)
    a = np.asarray(im)[..., 3]
    assert a[:, :240].max() == 0 and a[:, 272:].min() == 255  # alpha upscaled on its own
    deep = cv2.imread(str(out / "deep.png"), cv2.IMREAD_UNCHANGED)
    assert deep.dtype == np.uint16 and deep.shape == (512, 512, 3)
    assert len(np.unique(deep[..., 1])) > 256  # really 16 bits, not 8 bits scaled up
    grey = Image.open(out / "grey.png")
    assert grey.mode == "L" and grey.size == (512, 512)


def test_cmyk_round_trips(tmp_path: Path, weights: Path) -> None:
    """The writer supports CMYK (through the ICC profile or the inverse of Pillow's formula): a CMYK
    photo comes out CMYK, ×4, without a colour shift."""
    src = tmp_path / "c.jpg"
    Image.fromarray(astronaut()).convert("CMYK").save(src, quality=95)
    out = tmp_path / "out"
    result = _invoke(["enhance", str(src), "--out", str(out), "--json", *_base(weights)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["photos"][0]["status"] == "done"
    im = Image.open(out / "c.jpg")
    assert im.mode == "CMYK" and im.size == (512, 512)
    shown = np.asarray(im.convert("RGB").resize((128, 128), Image.Resampling.BOX), dtype=float)
    original = np.asarray(Image.open(src).convert("RGB"), dtype=float)
    assert np.abs(shown - original).mean() < 6  # no colour shift


def test_failed_photo_exits_1_with_reason_in_table(tmp_path: Path, weights: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(astronaut()).save(folder / "ok.jpg")
    (folder / "bad.jpg").write_bytes(b"not an image at all")
    result = _invoke(["enhance", str(folder), "--out", str(tmp_path / "out"), *_base(weights)])
    assert result.exit_code == 1
    assert "Failed" in result.stdout and "bad.jpg" in result.stdout
    assert (tmp_path / "out" / "ok.jpg").is_file()


def test_dry_run_lists_and_writes_nothing(tmp_path: Path, weights: Path) -> None:
    Image.fromarray(astronaut()).save(tmp_path / "a.jpg")
    result = _invoke(["enhance", str(tmp_path / "a.jpg"), "--dry-run", *_base(weights)])
    assert result.exit_code == 0
    assert "Would enhance" in result.stdout and "a.jpg" in result.stdout
    assert not (tmp_path / "hime-enhanced").exists()


def test_face_size_is_the_crop_region_side_in_json_and_for_max_face(tmp_path: Path, weights: Path) -> None:
    """--json's face size and --max-face are the canonical crop region side (faces.align.region_size),
    not the detection box side (issue #10 item 9): a limit between the two decides by the region."""
    from hime_cli.faces.align import region_size
    from hime_cli.faces.detect import get_detector

    src = tmp_path / "a.jpg"
    Image.fromarray(astronaut()).save(src, quality=92)
    (det,) = get_detector().detect(np.asarray(Image.open(src), np.float32) / 255)
    region, box = region_size(det.landmarks), det.box.size
    assert abs(region - box) > 4  # the two sizes differ enough for a limit between them

    def dry_run(max_face: float) -> dict:
        result = _invoke(
            ["enhance", str(src), "--dry-run", "--json", "--max-face", str(max_face), *_base(weights)]
        )
        assert result.exit_code == 0, result.stderr
        (face,) = json.loads(result.stdout)["photos"][0]["faces"]
        assert face["size"] == round(region, 1)
        return face

    # a limit between the two sizes: the box side rule would decide the other way
    between = round((region + box) / 2, 1)
    assert dry_run(between)["status"] == ("would-enhance" if region < box else "too-large")
    assert dry_run(max(region, box) + 1)["status"] == "would-enhance"
    assert dry_run(min(region, box) - 1)["status"] == "too-large"


def test_compare_command_writes_png_and_html(tmp_path: Path, weights: Path) -> None:
    Image.fromarray(astronaut()).save(tmp_path / "a.jpg")
    sheets = tmp_path / "sheets"
    result = _invoke(["compare", str(tmp_path / "a.jpg"), "--out", str(sheets), *_base(weights)])
    assert result.exit_code == 0, result.stderr
    assert (sheets / "a.jpg.png").is_file() and (sheets / "index.html").is_file()
    assert "index.html" in result.stdout
    assert not (tmp_path / "hime-enhanced").exists()


# ---------------------------------------------------------------------------------- kill test


def _hime(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "from hime_cli.cli.app import main; main()", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _check_invariants(work: Path, originals: dict[str, bytes]) -> tuple[int, int]:
    """Every photo is the untouched original, or a complete 4x replacement whose backup exists."""
    from hime_cli.library.backup import find_backups

    untouched = replaced = 0
    for name, data in originals.items():
        path = work / name
        assert path.is_file(), f"{name} is missing"
        current = path.read_bytes()
        if current == data:
            untouched += 1
            continue
        with Image.open(io.BytesIO(current)) as im:
            im.load()  # a torn file would not decode
            original_size = Image.open(io.BytesIO(data)).size
            assert im.size == (original_size[0] * 4, original_size[1] * 4), f"{name} has size {im.size}"
        backups = find_backups(path)
        assert backups and Path(backups[0].backup_path).read_bytes() == data, f"{name} has no valid backup"
        replaced += 1
    return untouched, replaced


@pytest.mark.slow
def test_photo_enhanced_in_place_is_enhanced_again_from_its_original(tmp_path: Path, weights: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(astronaut()).save(folder / "a.jpg", quality=95)
    result = _invoke(["enhance", str(folder), "--in-place", *_base(weights)])
    assert result.exit_code == 0, result.stdout + result.stderr
    assert Image.open(folder / "a.jpg").size == (512, 512)
    # Another run to another folder works from the original (the index describes it), not from
    # the ×4 file: the output is ×4 of the original, with its face found where the index says.
    out = tmp_path / "out"
    result = _invoke(["enhance", str(folder), "--out", str(out), "--json", *_base(weights)])
    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["summary"]["faces_enhanced"] == 1
    assert Image.open(out / "a.jpg").size == (512, 512)


@pytest.mark.slow
def test_sigkill_in_place_never_loses_or_tears_a_photo(tmp_path: Path, weights: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    for k in range(6):
        size = 112 + 8 * k
        Image.fromarray(astronaut(size)).save(work / f"p{k}.jpg", quality=90, exif=full_exif())
    originals = {p.name: p.read_bytes() for p in work.iterdir()}
    env = dict(os.environ, HIME_NO_PROGRESS="1")
    args = ["enhance", str(work), "--in-place", *_base(weights)]

    from hime_cli.library.backup import restore

    # A first run scans the photos into the index and replaces them all; then, from the restored
    # originals, time a whole run: the kills are spread over that duration.
    assert _hime(args, env).wait(timeout=600) == 0
    assert _check_invariants(work, originals) == (0, len(originals))
    assert restore([work]).ok
    started = time.monotonic()
    assert _hime(args, env).wait(timeout=600) == 0
    full = time.monotonic() - started

    rng = random.Random(1234)
    kills = runs = 0
    states: list[int] = []  # photos replaced after each killed run
    while kills < 6 and runs < 15:
        _, replaced = _check_invariants(work, originals)
        if replaced == len(originals):  # all done: start over from the originals
            assert restore([work]).ok
        proc = _hime(args, env)
        runs += 1
        try:
            proc.wait(timeout=rng.uniform(0.45, 0.98) * full)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            states.append(_check_invariants(work, originals)[1])
        _check_invariants(work, originals)
    print("photos replaced when killed:", states)
    assert kills >= 6

    # The last runs need no process of their own (nothing kills them): in this one.
    final = _invoke([*args, "--json"])
    assert final.exit_code == 0, final.output
    untouched, replaced = _check_invariants(work, originals)
    assert (untouched, replaced) == (0, len(originals))
    # And nothing is enhanced twice: one more run skips everything.
    again = _invoke([*args, "--json"])
    assert again.exit_code == 0
    assert json.loads(again.stdout)["summary"]["skipped"] == len(originals)


def test_json_report_is_valid_utf8_for_non_utf8_file_names(tmp_path: Path, weights: Path) -> None:
    """#11 D12: `enhance --json` wrote invalid UTF-8 for a file name that is not UTF-8."""
    folder = tmp_path / "in"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9 [bold].jpg")  # Latin-1 bytes, and rich markup in the name
    (folder / name).write_bytes(b"not an image, fails fast")
    result = _invoke(["enhance", str(folder), "--out", str(tmp_path / "out"), "--json", *_base(weights)])
    assert result.exit_code == 1
    text = result.stdout_bytes.decode("utf-8")  # raises on invalid UTF-8
    report = json.loads(text)
    (photo,) = report["photos"]
    assert os.fsencode(photo["source"]) == os.fsencode(folder / name)  # the exact bytes come back
    assert photo["status"] == "failed"
    plain = _invoke(["enhance", str(folder), "--out", str(tmp_path / "out"), *_base(weights)])
    assert "caf\\xe9[bold].jpg" in "".join(plain.stdout.split())  # readable, markup not interpreted


def test_damaged_index_stops_enhance_with_one_line(tmp_path: Path, weights: Path) -> None:
    """#11 D7: `hime enhance` on a damaged index: one Error line with a hint, no sqlite3 traceback."""
    from hime_cli.paths import get_paths

    Image.fromarray(astronaut()).save(tmp_path / "a.jpg")
    index = get_paths().index_path
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_bytes(b"\x00not sqlite\x00" * 500)
    result = _invoke(["enhance", str(tmp_path / "a.jpg"), "--out", str(tmp_path / "out"), *_base(weights)])
    assert result.exit_code == 1
    assert "Error:" in result.stderr and "damaged" in result.stderr and "hime doctor" in result.stderr
    assert not (tmp_path / "out").exists()
