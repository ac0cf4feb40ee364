from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from hime_cli.errors import ImageReadError, UsageError
from hime_cli.library.reader import (
    EXIF_PREFIX,
    apply_orientation,
    iter_photos,
    load_image,
    metadata_from_exif,
    parse_exif_datetime,
    read_metadata,
)
from tests.library.corpus import (
    PARIS,
    asymmetric_rgb,
    broken_files,
    exif_full,
    save_oriented,
    write_png16,
)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_loads_upright(tmp_path: Path, orientation: int) -> None:
    upright = asymmetric_rgb(48, 32)
    path = save_oriented(tmp_path / f"o{orientation}.png", upright, orientation)
    # The stored pixels really differ from upright (except orientation 1).
    stored = np.asarray(Image.open(path))
    assert (orientation == 1) == (stored.shape == upright.shape and np.array_equal(stored, upright))
    image = load_image(path)
    assert image.orientation == orientation
    assert (image.width, image.height) == (48, 32)
    np.testing.assert_array_equal(image.rgb_uint8(), upright)
    # Independent check against Pillow's own implementation of the EXIF rules.
    np.testing.assert_array_equal(image.rgb_uint8(), np.asarray(ImageOps.exif_transpose(Image.open(path))))


def test_orientation_in_jpeg(tmp_path: Path) -> None:
    upright = np.zeros((40, 64, 3), np.uint8)
    upright[:, :16] = 255  # white band on the left
    path = save_oriented(tmp_path / "o6.jpg", upright, 6, fmt="JPEG")
    image = load_image(path)
    assert image.format == "JPEG" and image.orientation == 6
    assert image.rgb.shape == (40, 64, 3)
    assert image.rgb[:, :12].mean() > 0.95 and image.rgb[:, 20:].mean() < 0.05
    assert image.exif is not None and image.exif.startswith(EXIF_PREFIX)


def test_apply_orientation_is_inverted_by_the_store_rule() -> None:
    a = np.arange(6 * 4).reshape(6, 4)
    assert apply_orientation(a, 6).shape == (4, 6)
    np.testing.assert_array_equal(apply_orientation(a, 6), np.rot90(a, -1))
    np.testing.assert_array_equal(apply_orientation(apply_orientation(a, 5), 5), a)
    np.testing.assert_array_equal(apply_orientation(apply_orientation(a, 7), 7), a)
    np.testing.assert_array_equal(apply_orientation(a, 0), a)  # invalid → untouched


def test_cmyk_jpeg(tmp_path: Path) -> None:
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[:, :16] = (200, 30, 30)
    rgb[:, 16:32] = (30, 200, 30)
    rgb[:, 32:] = (30, 30, 200)
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    image = load_image(path)
    assert image.mode == "CMYK" and image.bit_depth == 8
    assert image.rgb.shape == (32, 48, 3)
    for x, colour in ((8, (200, 30, 30)), (24, (30, 200, 30)), (40, (30, 30, 200))):
        np.testing.assert_allclose(image.rgb_uint8()[16, x], colour, atol=12)


def test_16bit_rgb_png_keeps_16_bits(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb16 = rng.integers(0, 65536, size=(20, 30, 3), dtype=np.uint16)
    path = write_png16(tmp_path / "deep.png", rgb16)
    assert Image.open(path).mode == "RGB"  # what Pillow alone would give: 8 bits
    image = load_image(path)
    assert image.bit_depth == 16
    np.testing.assert_allclose(image.rgb, rgb16.astype(np.float32) / 65535.0, atol=1e-6)


def test_16bit_rgba_png_and_tiff(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rgba16 = rng.integers(0, 65536, size=(10, 12, 4), dtype=np.uint16)
    image = load_image(write_png16(tmp_path / "deep_alpha.png", rgba16))
    assert image.bit_depth == 16 and image.alpha is not None
    np.testing.assert_allclose(image.rgb, rgba16[:, :, :3] / 65535.0, atol=1e-6)
    np.testing.assert_allclose(image.alpha, rgba16[:, :, 3] / 65535.0, atol=1e-6)
    tiff = load_image(write_png16(tmp_path / "deep.tif", rgba16[:, :, :3].copy()))
    assert tiff.format == "TIFF" and tiff.bit_depth == 16
    np.testing.assert_allclose(tiff.rgb, rgba16[:, :, :3] / 65535.0, atol=1e-6)


def test_16bit_greyscale_png(tmp_path: Path) -> None:
    grey = (np.arange(20 * 30, dtype=np.uint32).reshape(20, 30) * 97 % 65536).astype(np.uint16)
    image = load_image(write_png16(tmp_path / "grey16.png", grey))
    assert image.bit_depth == 16
    np.testing.assert_allclose(image.rgb[:, :, 0], grey / 65535.0, atol=1e-6)
    np.testing.assert_array_equal(image.rgb[:, :, 0], image.rgb[:, :, 2])


def test_greyscale_and_grey_alpha(tmp_path: Path) -> None:
    grey = asymmetric_rgb()[:, :, 0]
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    image = load_image(tmp_path / "g.png")
    assert image.mode == "L" and image.alpha is None
    np.testing.assert_array_equal(image.rgb_uint8()[:, :, 1], grey)
    la = np.stack([grey, 255 - grey], axis=2)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    image = load_image(tmp_path / "la.png")
    assert image.mode == "LA" and image.alpha is not None
    np.testing.assert_array_equal((image.alpha * 255 + 0.5).astype(np.uint8), 255 - grey)


def test_rgba_keeps_alpha_apart(tmp_path: Path) -> None:
    rgb = asymmetric_rgb()
    alpha = np.linspace(0, 255, rgb.shape[1]).astype(np.uint8)[None, :].repeat(rgb.shape[0], 0)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    assert image.mode == "RGBA" and image.rgb.shape == rgb.shape
    np.testing.assert_array_equal(image.rgb_uint8(), rgb)
    assert image.alpha is not None
    np.testing.assert_array_equal((image.alpha * 255 + 0.5).astype(np.uint8), alpha)


def test_palette_with_transparency(tmp_path: Path) -> None:
    im = Image.new("P", (10, 10), 0)
    im.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    im.paste(1, (5, 0, 10, 10))
    im.info["transparency"] = 0
    im.save(tmp_path / "p.png", transparency=0)
    image = load_image(tmp_path / "p.png")
    assert image.mode == "P" and image.alpha is not None
    assert image.alpha[0, 0] == 0 and image.alpha[0, 9] == 1
    np.testing.assert_array_equal(image.rgb_uint8()[0, 9], (0, 255, 0))


@pytest.mark.parametrize("fmt,suffix", [("GIF", ".gif"), ("WEBP", ".webp")])
def test_animated_first_frame(tmp_path: Path, fmt: str, suffix: str) -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [Image.new("RGB", (24, 16), c) for c in colours]
    path = tmp_path / f"anim{suffix}"
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **kwargs)
    image = load_image(path)
    assert image.n_frames == 3
    assert image.format == fmt
    np.testing.assert_allclose(image.rgb_uint8()[8, 12], (255, 0, 0), atol=2)


def test_webp_tiff_heic(tmp_path: Path) -> None:
    rgb = asymmetric_rgb(64, 48)
    Image.fromarray(rgb).save(tmp_path / "a.webp", lossless=True)
    np.testing.assert_array_equal(load_image(tmp_path / "a.webp").rgb_uint8(), rgb)
    Image.fromarray(rgb).save(tmp_path / "a.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "a.tif").rgb_uint8(), rgb)
    import pillow_heif

    pillow_heif.register_heif_opener()
    smooth = np.zeros((64, 96, 3), np.uint8)
    smooth[:, :48] = (220, 40, 40)
    Image.fromarray(smooth).save(tmp_path / "a.heic", quality=95, exif=exif_full())
    image = load_image(tmp_path / "a.heic")
    assert image.format == "HEIF" and image.rgb.shape == (64, 96, 3)
    np.testing.assert_allclose(image.rgb_uint8()[32, 10], (220, 40, 40), atol=12)
    meta = read_metadata(tmp_path / "a.heic")
    assert meta.camera_make == "TestMake"
    assert metadata_from_exif(image.exif).camera_model == "TestCam 1"


def test_unicode_and_non_utf8_file_names(tmp_path: Path) -> None:
    rgb = asymmetric_rgb()
    names = ["Ōsaka 写真 ü.png", os.fsdecode(b"caf\xe9 \xff.png")]
    for name in names:
        Image.fromarray(rgb).save(tmp_path / name)
        image = load_image(tmp_path / name)
        assert image.path == tmp_path / name
        np.testing.assert_array_equal(image.rgb_uint8(), rgb)
    assert sorted(os.fsencode(p.name) for p in iter_photos([tmp_path])) == sorted(
        os.fsencode(n) for n in names
    )


def test_metadata_from_jpeg_exif(tmp_path: Path) -> None:
    path = tmp_path / "m.jpg"
    Image.fromarray(asymmetric_rgb()).save(path, exif=exif_full())
    for meta in (read_metadata(path), metadata_from_exif(load_image(path).exif)):
        assert meta.taken_at == "2019-05-04T12:34:56+02:00"
        assert (meta.camera_make, meta.camera_model) == ("TestMake", "TestCam 1")
        assert meta.gps_lat == pytest.approx(PARIS[0], abs=1e-6)
        assert meta.gps_lon == pytest.approx(PARIS[1], abs=1e-6)


def test_metadata_absent_and_dates() -> None:
    assert metadata_from_exif(None).taken_at is None
    assert parse_exif_datetime("0000:00:00 00:00:00") is None
    assert parse_exif_datetime("2001:02:03 04:05:06") == "2001-02-03T04:05:06"
    assert parse_exif_datetime("2001:02:03 04:05:06", "-05:00") == "2001-02-03T04:05:06-05:00"


@pytest.mark.parametrize(
    "kind,message",
    [
        ("empty", "empty file"),
        ("truncated", "truncated"),
        ("random", "not an image"),
        ("text", "not an image"),
        ("bomb", "decompression bomb"),
    ],
)
def test_broken_files_raise_clear_errors(tmp_path: Path, kind: str, message: str) -> None:
    path = broken_files(tmp_path)[kind]
    with pytest.raises(ImageReadError, match=message):
        load_image(path)


def test_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    path = broken_files(tmp_path)["bomb"]
    assert path.stat().st_size < 500_000
    with pytest.raises(ImageReadError, match="900 MP exceeds"):
        load_image(path, max_pixels=10**12)  # past our limit, Pillow's own guard still refuses
    Image.fromarray(asymmetric_rgb(100, 100)).save(tmp_path / "small.png")
    with pytest.raises(ImageReadError, match="exceeds"):
        load_image(tmp_path / "small.png", max_pixels=5_000)


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.png"
    Image.fromarray(asymmetric_rgb()).save(path)
    if os.geteuid() == 0:  # root reads anything: simulate the permission error
        real_open = os.open

        def fake_open(file, *args, **kwargs):  # type: ignore[no-untyped-def]
            if os.fspath(file) == os.fspath(path):
                raise PermissionError(13, "Permission denied", os.fspath(path))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(os, "open", fake_open)
    else:
        path.chmod(0)
    with pytest.raises(ImageReadError, match="permission denied"):
        load_image(path)


def _returns_within(fn, seconds: float = 10.0):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) when it blocks."""
    import threading

    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return thread.is_alive(), box


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """#11 D2: a FIFO named like a photo must not hang a scan or an enhance run."""
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    hung, box = _returns_within(lambda: load_image(fifo))
    if hung:  # unblock the reader so the thread ends, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a FIFO blocked")
    assert isinstance(box.get("error"), ImageReadError)
    assert "named pipe" in str(box["error"])
    hung, box = _returns_within(lambda: read_metadata(fifo))
    if hung:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a FIFO's metadata blocked")
    assert box.get("value") is not None


def test_symlink_loop_and_folder_are_clear_read_errors(tmp_path: Path) -> None:
    loop = tmp_path / "self.jpg"
    loop.symlink_to(loop)
    with pytest.raises(ImageReadError, match="symlink loop"):
        load_image(loop)
    with pytest.raises(ImageReadError, match="folder"):
        load_image(tmp_path)


def test_iter_photos_walks_recursively_without_loops(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    (root / "a" / "b").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "hime-enhanced").mkdir()
    for rel in [
        "1.jpg",
        "a/2.JPG",
        "a/b/3.png",
        "a/b/4.heic",
        "a/notes.txt",
        ".hidden/5.jpg",
        "hime-enhanced/6.jpg",
    ]:
        (root / rel).write_bytes(b"x")
    (root / "a" / ".7.jpg").write_bytes(b"x")
    (root / "a" / "b" / "loop").symlink_to(root, target_is_directory=True)  # a symlink loop
    (root / "alias").symlink_to(root / "a", target_is_directory=True)  # the same folder twice
    found = [p.relative_to(root).as_posix() for p in iter_photos([root])]
    assert sorted(found) == ["1.jpg", "a/2.JPG", "a/b/3.png", "a/b/4.heic"]
    # An explicit file is taken whatever its name; a missing path is a usage error.
    assert list(iter_photos([root / "a" / "notes.txt"])) == [root / "a" / "notes.txt"]
    with pytest.raises(UsageError, match="no such file"):
        list(iter_photos([root / "nope"]))
