"""Writing photos back: format, metadata (EXIF/ICC/XMP), bit depth, modes, atomicity."""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageCms, PngImagePlugin

from hime_cli.errors import ImageWriteError
from hime_cli.library import writer
from hime_cli.library.reader import load_image
from hime_cli.library.writer import TEMP_MARKER, encode_image, patch_exif, patch_xmp, save_image

IFD_EXIF, IFD_GPS = 0x8769, 0x8825
XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmlns:exif="http://ns.adobe.com/exif/1.0/"'
    b' xmlns:dc="http://purl.org/dc/elements/1.1/" tiff:Orientation="6" exif:PixelXDimension="64">'
    b"<dc:title>hime test</dc:title></rdf:Description></rdf:RDF></x:xmpmeta>"
)
SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def smooth_rgb(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """A photo-like (smooth + mild noise) uint8 image; pure noise would be unfair to lossy codecs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([0.5 + 0.4 * np.sin(5 * x + 1), 0.5 + 0.4 * np.cos(4 * y), 0.3 + 0.5 * x * y], axis=2)
    return np.clip((base + rng.normal(0, 0.01, base.shape)) * 255, 0, 255).astype(np.uint8)


def camera_exif(orientation: int, width: int, height: int) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make] = "Canon"
    exif[ExifTags.Base.Model] = "EOS 5D"
    sub = exif.get_ifd(IFD_EXIF)
    sub[ExifTags.Base.DateTimeOriginal] = "2019:05:04 12:34:56"
    sub[ExifTags.Base.ExifImageWidth] = width
    sub[ExifTags.Base.ExifImageHeight] = height
    gps = exif.get_ifd(IFD_GPS)
    gps.update({1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)})
    return exif.tobytes()


def write_source(path: Path, fmt: str, pixels: np.ndarray, orientation: int = 6, **extra) -> Path:
    """A synthetic original with camera EXIF, an sRGB ICC profile and XMP."""
    h, w = pixels.shape[:2]
    params = {"exif": camera_exif(orientation, w, h), "icc_profile": SRGB_ICC, **extra}
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", XMP.decode())
        info.add_text("Author", "Ada")
        params["pnginfo"] = info
    elif fmt == "TIFF":
        params["exif"] = Image.Exif()  # uncompressed: Pillow's libtiff path cannot write EXIF sub-IFDs
        params["exif"].load(camera_exif(orientation, w, h))
        params["exif"][700] = XMP
    else:
        params["xmp"] = XMP
    if fmt == "HEIF":
        import pillow_heif

        pillow_heif.register_heif_opener()
    Image.fromarray(pixels).save(path, format=fmt, **params)
    return path


def exif_of(path: Path) -> Image.Exif:
    import pillow_heif

    pillow_heif.register_heif_opener()
    with Image.open(path) as im:
        exif = im.getexif()
        exif.get_ifd(IFD_EXIF)  # sub-IFDs load lazily: read them while the file is open
        exif.get_ifd(IFD_GPS)
        return exif


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


# Pillow 13 turns TIFF pixels upright itself and the reader then applies the orientation again
# (reported to the reader's owner), so the TIFF case uses an upright original.
FORMATS = [
    ("JPEG", "jpg", 6, {"quality": 90}, 30.0),
    ("PNG", "png", 6, {}, float("inf")),
    ("WEBP", "webp", 6, {"quality": 90}, 30.0),
    ("TIFF", "tif", 1, {}, float("inf")),
    ("HEIF", "heic", 6, {"quality": 90}, 30.0),
    ("AVIF", "avif", 6, {"quality": 90}, 28.0),
]


@pytest.mark.parametrize(
    ("fmt", "ext", "orientation", "extra", "min_psnr"), FORMATS, ids=[f[0] for f in FORMATS]
)
def test_round_trip_keeps_format_and_metadata(tmp_path, fmt, ext, orientation, extra, min_psnr) -> None:
    src = write_source(tmp_path / f"src.{ext}", fmt, smooth_rgb(), orientation, **extra)
    loaded = load_image(src)
    assert loaded.orientation == orientation
    h, w = loaded.height, loaded.width
    assert (h, w) == ((64, 48) if orientation == 6 else (48, 64))
    dest = tmp_path / f"out.{ext}"
    save_image(loaded, loaded.rgb, None, dest)

    again = load_image(dest)
    assert again.format == fmt and (again.height, again.width) == (h, w)
    assert again.orientation == 1
    assert psnr(again.rgb, loaded.rgb) >= min_psnr
    exif = exif_of(dest)
    assert exif.get(ExifTags.Base.Orientation, 1) == 1
    assert (exif[ExifTags.Base.Make], exif[ExifTags.Base.Model]) == ("Canon", "EOS 5D")
    sub = exif.get_ifd(IFD_EXIF)
    assert sub[ExifTags.Base.DateTimeOriginal] == "2019:05:04 12:34:56"
    assert (sub[ExifTags.Base.ExifImageWidth], sub[ExifTags.Base.ExifImageHeight]) == (w, h)
    gps = exif.get_ifd(IFD_GPS)
    assert gps[1] == "N" and tuple(float(v) for v in gps[2]) == (48.0, 51.0, 24.0)
    assert again.icc_profile == SRGB_ICC
    assert again.xmp is not None and b"<dc:title>hime test</dc:title>" in again.xmp
    assert b'tiff:Orientation="6"' not in again.xmp  # 1, or dropped by the HEIF muxer
    if fmt == "PNG":
        with Image.open(dest) as im:
            assert im.text["Author"] == "Ada"


def test_jpeg_reuses_source_tables_and_subsampling(tmp_path) -> None:
    from PIL import JpegImagePlugin

    pixels = smooth_rgb(96, 128)
    src = tmp_path / "q80.jpg"
    Image.fromarray(pixels).save(src, quality=80, subsampling="4:2:0")
    loaded = load_image(src)
    kept, forced = tmp_path / "kept.jpg", tmp_path / "forced.jpg"
    save_image(loaded, loaded.rgb, None, kept)
    save_image(loaded, loaded.rgb, None, forced, quality=60)
    with Image.open(src) as a, Image.open(kept) as b, Image.open(forced) as c:
        assert b.quantization == a.quantization
        assert c.quantization != a.quantization
        assert JpegImagePlugin.get_sampling(b) == JpegImagePlugin.get_sampling(a) == 2
    # re-encoding an unchanged photo with its own tables loses almost nothing
    assert psnr(load_image(kept).rgb, loaded.rgb) > 40.0


def test_progressive_jpeg_stays_progressive_and_greyscale_stays_grey(tmp_path) -> None:
    src = tmp_path / "grey.jpg"
    Image.fromarray(smooth_rgb()[..., 1], "L").save(src, quality=85, progressive=True)
    loaded = load_image(src)
    assert loaded.mode == "L"
    tinted = loaded.rgb.copy()
    tinted[..., 0] += 0.02  # an enhancer may leave tiny colour casts: still written as grey
    save_image(loaded, tinted, None, tmp_path / "out.jpg")
    with Image.open(tmp_path / "out.jpg") as im:
        assert im.mode == "L" and im.info.get("progressive")


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_stays_16bit_exactly(tmp_path, fmt, channels) -> None:
    tifffile = pytest.importorskip("tifffile")
    import cv2

    from hime_cli.types import LoadedImage

    rng = np.random.default_rng(channels)
    data = rng.integers(0, 65536, (20, 30, channels), dtype=np.uint16)
    path = tmp_path / f"src.{fmt.lower()}"
    if channels == 2:  # grey + alpha: neither Pillow nor OpenCV reads these, so build the input by hand
        grey = data[..., 0].astype(np.float32) / 65535
        loaded = LoadedImage(
            path=path, rgb=np.repeat(grey[..., None], 3, 2), alpha=data[..., 1].astype(np.float32) / 65535,
            format=fmt, mode="LA", bit_depth=16, orientation=1,
        )  # fmt: skip
    else:
        if fmt == "TIFF":
            tifffile.imwrite(path, data if channels > 1 else data[..., 0], photometric="minisblack" if channels == 1 else "rgb",
                             extrasamples=["unassalpha"] if channels == 4 else None)  # fmt: skip
        else:
            order = [2, 1, 0, 3][:channels] if channels >= 3 else [0]
            cv2.imwrite(str(path), data[..., order] if channels > 1 else data[..., 0])
        loaded = load_image(path)
        assert loaded.bit_depth == 16
    loaded = dataclasses.replace(loaded, exif=camera_exif(1, 30, 20), icc_profile=SRGB_ICC, xmp=XMP)
    dest = tmp_path / f"out.{fmt.lower()}"
    save_image(loaded, loaded.rgb, None, dest)

    if fmt == "TIFF":
        written = tifffile.imread(dest)
    else:
        written = cv2.imread(str(dest), cv2.IMREAD_UNCHANGED)
        written = written[..., [2, 1, 0, 3][: written.shape[2]]] if written.ndim == 3 else written
        if channels == 2:
            written = written[..., [0, 3]]  # OpenCV expands grey+alpha to BGRA
    assert written.dtype == np.uint16
    np.testing.assert_array_equal(written.reshape(data.shape), data)
    if fmt == "TIFF":  # read the directory with tifffile (Pillow cannot open 16-bit grey+alpha)
        with tifffile.TiffFile(dest) as tif:
            tags = tif.pages[0].tags
            assert bytes(tags[34675].value) == SRGB_ICC and b"hime test" in bytes(tags[700].value)
            assert tags[34665].value["DateTimeOriginal"] == "2019:05:04 12:34:56"
            assert tags[34853].value["GPSLatitudeRef"] == "N"
    else:
        with Image.open(dest) as im:
            assert im.info.get("icc_profile") == SRGB_ICC
        assert exif_of(dest).get_ifd(IFD_EXIF)[ExifTags.Base.DateTimeOriginal] == "2019:05:04 12:34:56"
    if channels != 2:
        again = load_image(dest)
        assert again.bit_depth == 16 and again.xmp is not None
        np.testing.assert_array_equal(again.rgb, loaded.rgb)


def test_rgba_keeps_alpha_and_requires_new_alpha_when_resized(tmp_path) -> None:
    rgba = np.dstack([smooth_rgb(), np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1))])
    src = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(src)
    loaded = load_image(src)
    save_image(loaded, loaded.rgb, None, tmp_path / "same.png")  # same size: the original alpha is kept
    with Image.open(tmp_path / "same.png") as im:
        assert im.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(im), rgba)
    big = np.repeat(np.repeat(loaded.rgb, 2, 0), 2, 1)
    with pytest.raises(ImageWriteError, match="alpha"):
        save_image(loaded, big, None, tmp_path / "big.png")
    save_image(loaded, big, np.ones(big.shape[:2], np.float32), tmp_path / "big.png")
    with Image.open(tmp_path / "big.png") as im:
        assert im.size == (128, 96) and im.mode == "RGBA"
        assert np.asarray(im)[..., 3].min() == 255


def test_cmyk_jpeg_round_trips_to_cmyk(tmp_path) -> None:
    rng = np.random.default_rng(3)
    cmyk = np.clip(rng.normal(100, 40, (32, 32, 4)), 0, 255).astype(np.uint8)
    src = tmp_path / "cmyk.jpg"
    Image.fromarray(cmyk, "CMYK").save(src, quality=95)
    loaded = load_image(src)
    assert loaded.mode == "CMYK"
    save_image(loaded, loaded.rgb, None, tmp_path / "out.jpg")
    with Image.open(tmp_path / "out.jpg") as im:
        assert im.mode == "CMYK"
    # what a viewer shows (the same naive conversion the reader used) is unchanged
    assert psnr(load_image(tmp_path / "out.jpg").rgb, loaded.rgb) > 35.0


def test_palette_png_becomes_lossless_rgb_and_gif_stays_gif(tmp_path) -> None:
    pal = Image.fromarray(smooth_rgb()).quantize(64)
    pal.save(tmp_path / "p.png")
    loaded = load_image(tmp_path / "p.png")
    save_image(loaded, loaded.rgb, None, tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as im:
        assert im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), np.asarray(pal.convert("RGB")))
    rgba = pal.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.where(np.arange(64) < 16, 0, 255).astype(np.uint8)[None].repeat(48, 0)))
    rgba.save(tmp_path / "t.gif")
    gif = load_image(tmp_path / "t.gif")
    save_image(gif, gif.rgb, gif.alpha, tmp_path / "out.gif")
    with Image.open(tmp_path / "out.gif") as im:
        assert im.format == "GIF" and "transparency" in im.info
        alpha = np.asarray(im.convert("RGBA"))[..., 3]
    assert (alpha[:, :16] == 0).all() and (alpha[:, 16:] == 255).all()


def test_animated_files_are_refused(tmp_path) -> None:
    frames = [Image.fromarray(smooth_rgb(seed=i)) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    loaded = load_image(tmp_path / "anim.gif")
    with pytest.raises(ImageWriteError, match="3 frames"):
        save_image(loaded, loaded.rgb, None, tmp_path / "anim.gif")


def test_patch_exif_changes_only_the_orientation_and_dimensions() -> None:
    raw = camera_exif(6, 64, 48)  # Pillow's serialiser includes the b"Exif\\0\\0" prefix
    patched = patch_exif(raw, 48, 64)
    assert len(patched) == len(raw)
    changed = [i for i, (a, b) in enumerate(zip(raw, patched, strict=True)) if a != b]
    assert 1 <= len(changed) <= 6  # orientation value + the two dimension values
    parsed = Image.Exif()
    parsed.load(patched[6:])
    assert parsed[ExifTags.Base.Orientation] == 1
    sub = parsed.get_ifd(IFD_EXIF)
    assert (sub[ExifTags.Base.ExifImageWidth], sub[ExifTags.Base.ExifImageHeight]) == (48, 64)
    big = patch_exif(raw, 70000, 64)  # a SHORT that cannot hold the width becomes a LONG
    parsed.load(big[6:])
    assert parsed.get_ifd(IFD_EXIF)[ExifTags.Base.ExifImageWidth] == 70000
    assert patch_exif(None, 1, 1) is None


def test_patch_xmp_attribute_and_element_forms() -> None:
    out = patch_xmp(XMP + b"<tiff:Orientation>8</tiff:Orientation>", 10, 20)
    assert b'tiff:Orientation="1"' in out and b"<tiff:Orientation>1</tiff:Orientation>" in out
    assert b'exif:PixelXDimension="10"' in out


REGIONS_STORED_6 = (  # as portrait-orientation-6.jpg of the immich test assets stores them (700 x 840)
    b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'>"
    b"<rdf:Description rdf:about='' xmlns:mwg-rs='http://www.metadataworkinggroup.com/schemas/regions/'"
    b" xmlns:stArea='http://ns.adobe.com/xmp/sType/Area#' xmlns:stDim='http://ns.adobe.com/xap/1.0/sType/Dimensions#'>"
    b"<mwg-rs:Regions rdf:parseType='Resource'><mwg-rs:AppliedToDimensions rdf:parseType='Resource'>"
    b"<stDim:h>840</stDim:h><stDim:unit>pixel</stDim:unit><stDim:w>700</stDim:w></mwg-rs:AppliedToDimensions>"
    b"<mwg-rs:RegionList><rdf:Bag><rdf:li rdf:parseType='Resource'><mwg-rs:Area rdf:parseType='Resource'>"
    b"<stArea:h>0.113095</stArea:h><stArea:unit>normalized</stArea:unit><stArea:w>0.198571</stArea:w>"
    b"<stArea:x>0.307857</stArea:x><stArea:y>0.631548</stArea:y></mwg-rs:Area>"
    b"<mwg-rs:Name>Marie Curie</mwg-rs:Name></rdf:li>"
    b"<rdf:li><rdf:Description mwg-rs:Name='Pierre Curie'><mwg-rs:Area stArea:x='0.239286' stArea:y='0.3125'"
    b" stArea:w='0.241429' stArea:h='0.0964286' stArea:unit='normalized'/></rdf:Description></rdf:li>"
    b"</rdf:Bag></mwg-rs:RegionList></mwg-rs:Regions></rdf:Description></rdf:RDF></x:xmpmeta>"
)


def _areas(xmp: bytes) -> list[dict[str, float]]:
    import re

    areas = []
    for block in re.findall(rb"<mwg-rs:Area\b(?:[^>]*/>|.*?</mwg-rs:Area>)", xmp, flags=re.S):
        values = {}
        for key in ("x", "y", "w", "h"):
            m = re.search(rb"stArea:" + key.encode() + rb"(?:\s*=\s*['\"]|>)([0-9.]+)", block)
            values[key] = float(m.group(1))
        areas.append(values)
    return areas


def test_mwg_face_regions_follow_the_baked_in_orientation() -> None:
    """#11 D6: XMP face regions were not turned with the pixels; AppliedToDimensions kept the old size."""
    out = patch_xmp(REGIONS_STORED_6, 840 * 4, 700 * 4, 6)
    marie, pierre = _areas(out)
    # what the same portrait stored upright (portrait.jpg) records for Marie Curie
    assert marie == pytest.approx({"x": 0.368452, "y": 0.307857, "w": 0.113095, "h": 0.198571}, abs=1e-6)
    assert pierre == pytest.approx({"x": 0.6875, "y": 0.239286, "w": 0.0964286, "h": 0.241429}, abs=1e-6)
    assert b"<stDim:w>3360</stDim:w>" in out and b"<stDim:h>2800</stDim:h>" in out
    assert b"Marie Curie" in out and b"Pierre Curie" in out
    unturned = patch_xmp(REGIONS_STORED_6, 1400, 1680, 1)  # upright already: only the size changes
    assert _areas(unturned) == _areas(REGIONS_STORED_6) and b"<stDim:w>1400</stDim:w>" in unturned
    for orientation in range(1, 9):  # every orientation maps the region centre like the pixels
        from hime_cli.library.reader import apply_orientation
        from hime_cli.library.writer import orient_point

        grid = np.zeros((4, 6), np.uint8)
        grid[1, 4] = 1  # the pixel centred at x = 4.5 / 6, y = 1.5 / 4
        upright = apply_orientation(grid, orientation)
        row, col = (int(v[0]) for v in np.nonzero(upright))
        expected = ((col + 0.5) / upright.shape[1], (row + 0.5) / upright.shape[0])
        assert orient_point(4.5 / 6, 1.5 / 4, orientation) == pytest.approx(expected)


def test_writer_turns_the_regions_of_an_oriented_jpeg(tmp_path) -> None:
    src = tmp_path / "o6.jpg"
    Image.fromarray(smooth_rgb(40, 30)).save(src, exif=camera_exif(6, 30, 40), xmp=REGIONS_STORED_6)
    loaded = load_image(src)
    assert (loaded.width, loaded.height) == (40, 30)
    out = load_image_bytes(encode_image(loaded, loaded.rgb, None), tmp_path)
    assert _areas(out.xmp)[0] == pytest.approx({"x": 0.368452, "y": 0.307857, "w": 0.113095, "h": 0.198571})
    assert b"<stDim:w>40</stDim:w>" in out.xmp


def load_image_bytes(data: bytes, tmp_path: Path):
    path = tmp_path / "written.jpg"
    path.write_bytes(data)
    return load_image(path)


@pytest.mark.data
def test_real_mwg_regions_match_the_upright_copy(shared_data, tmp_path) -> None:
    faces = shared_data / "photos" / "immich_test_assets" / "metadata" / "faces"
    loaded = load_image(faces / "portrait-orientation-6.jpg")
    save_image(loaded, loaded.rgb, None, tmp_path / "p.jpg")
    written = _areas(load_image(tmp_path / "p.jpg").xmp)
    reference = _areas(load_image(faces / "portrait.jpg").xmp)
    assert written == [pytest.approx(r, abs=1e-5) for r in reference]


# ------------------------------------------------------------------------- atomic writes


def _src_jpeg(tmp_path: Path) -> tuple[Path, bytes]:
    src = tmp_path / "photo.jpg"
    Image.fromarray(smooth_rgb()).save(src, quality=90)
    return src, src.read_bytes()


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if TEMP_MARKER in p.name]


def test_full_disk_leaves_the_original_and_no_temp(tmp_path, monkeypatch) -> None:
    src, before = _src_jpeg(tmp_path)
    loaded = load_image(src)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer.os, "fsync", full)
    with pytest.raises(ImageWriteError) as info:
        save_image(loaded, 1.0 - loaded.rgb, None, src)
    assert "disk space" in (info.value.hint or "")
    assert src.read_bytes() == before and _temps(tmp_path) == []


def test_undecodable_output_never_replaces_the_original(tmp_path, monkeypatch) -> None:
    src, before = _src_jpeg(tmp_path)
    loaded = load_image(src)
    monkeypatch.setattr(writer, "encode_image", lambda *a, **k: b"\xff\xd8 torn")
    with pytest.raises(ImageWriteError, match="does not decode"):
        save_image(loaded, loaded.rgb, None, src)
    assert src.read_bytes() == before and _temps(tmp_path) == []


def test_replace_keeps_permissions_and_sweeps_stale_temps(tmp_path) -> None:
    src, before = _src_jpeg(tmp_path)
    os.chmod(src, 0o640)
    dead = tmp_path / f".photo.jpg{TEMP_MARKER}999999999-deadbeef"  # pid that cannot exist
    dead.write_bytes(b"half a file")
    mine = tmp_path / f".photo.jpg{TEMP_MARKER}{os.getpid()}-cafecafe"  # a live writer's temp stays
    mine.write_bytes(b"in progress")
    loaded = load_image(src)
    save_image(loaded, 1.0 - loaded.rgb, None, src)
    assert src.read_bytes() != before
    assert stat.S_IMODE(src.stat().st_mode) == 0o640
    assert not dead.exists() and mine.exists()


def test_missing_folder_and_bad_input_raise(tmp_path) -> None:
    src, _ = _src_jpeg(tmp_path)
    loaded = load_image(src)
    with pytest.raises(ImageWriteError, match="does not exist"):
        save_image(loaded, loaded.rgb, None, tmp_path / "nope" / "x.jpg")
    with pytest.raises(ImageWriteError, match="NaN"):
        encode_image(loaded, np.full_like(loaded.rgb, np.nan), None)
    with pytest.raises(ImageWriteError, match="shape"):
        encode_image(loaded, loaded.rgb[..., 0], None)


# ------------------------------------------------------------------------- real photos (read in place)

REAL_EXIF = [
    "deepface_tests/img1.jpg",  # Canon, GPS
    "deepface_tests/img26.jpg",  # Nikon, GPS
    "immich_test_assets/albums/nature/prairie_falcon.jpg",  # Canon, GPS, XMP
    "immich_test_assets/formats/webp/denali.webp",  # WebP with EXIF, ICC, XMP
    pytest.param(  # iPhone HEIC: EXIF, GPS, ICC; 12 MP through x265 takes ~20 s here
        "immich_test_assets/formats/heic/IMG_2682.heic", marks=pytest.mark.slow
    ),
]


@pytest.mark.data
@pytest.mark.parametrize("rel", REAL_EXIF)
def test_real_photos_keep_date_camera_gps(shared_data, tmp_path, rel) -> None:
    src = shared_data / "photos" / rel
    loaded = load_image(src)
    before = exif_of(src)
    dest = tmp_path / src.name
    save_image(loaded, loaded.rgb, None, dest)
    after = exif_of(dest)
    again = load_image(dest)
    assert again.format == loaded.format and (again.width, again.height) == (loaded.width, loaded.height)
    assert after.get(ExifTags.Base.Orientation, 1) == 1 and again.orientation == 1
    for tag in (ExifTags.Base.Make, ExifTags.Base.Model, ExifTags.Base.DateTime):
        assert after.get(tag) == before.get(tag)
    assert after.get_ifd(IFD_EXIF).get(ExifTags.Base.DateTimeOriginal) == before.get_ifd(IFD_EXIF).get(
        ExifTags.Base.DateTimeOriginal
    )
    assert after.get_ifd(IFD_GPS) == before.get_ifd(IFD_GPS)
    assert again.icc_profile == loaded.icc_profile
    assert (again.xmp is not None) == (loaded.xmp is not None)
    min_psnr = 45.0 if loaded.format == "JPEG" else 30.0  # JPEG: the original tables are reused
    assert psnr(again.rgb, loaded.rgb) > min_psnr


@pytest.mark.data
def test_real_orientation6_portrait_comes_out_upright(shared_data, tmp_path) -> None:
    src = shared_data / "photos" / "immich_test_assets" / "metadata" / "faces" / "portrait-orientation-6.jpg"
    upright = shared_data / "photos" / "immich_test_assets" / "metadata" / "faces" / "portrait.jpg"
    loaded = load_image(src)
    assert loaded.orientation == 6 and loaded.mode == "L"
    dest = tmp_path / "portrait.jpg"
    save_image(loaded, loaded.rgb, None, dest)
    with Image.open(dest) as im:
        assert im.mode == "L" and im.getexif().get(ExifTags.Base.Orientation, 1) == 1
        pixels = np.asarray(im, np.float32) / 255
    reference = load_image(upright)  # the same portrait stored upright
    assert pixels.shape == reference.rgb.shape[:2]
    assert np.corrcoef(pixels.ravel(), reference.rgb.mean(axis=2).ravel())[0, 1] > 0.9
    assert b'tiff:Orientation="6"' not in (load_image(dest).xmp or b"")


def test_upscaled_photo_keeps_its_print_size(tmp_path) -> None:
    src = tmp_path / "dpi.jpg"
    Image.fromarray(smooth_rgb()).save(src, quality=90, dpi=(300, 300))
    loaded = load_image(src)
    big = np.repeat(np.repeat(loaded.rgb, 2, 0), 2, 1)
    save_image(loaded, big, None, tmp_path / "big.jpg")
    with Image.open(tmp_path / "big.jpg") as im:
        assert im.size == (128, 96) and tuple(round(v) for v in im.info["dpi"]) == (600, 600)


def _jfif(data: bytes) -> tuple[int, tuple[int, int]]:
    """(unit, density) of a JPEG's JFIF header."""
    i = data.index(b"JFIF\x00")
    return data[i + 7], (
        int.from_bytes(data[i + 8 : i + 10], "big"),
        int.from_bytes(data[i + 10 : i + 12], "big"),
    )


@pytest.mark.parametrize("exif_resolution", [None, (1, 1)], ids=["no-exif-resolution", "exif-no-unit"])
def test_jfif_density_without_a_unit_gets_no_invented_dpi(tmp_path, exif_resolution) -> None:
    """#11 D17: a JFIF density with no unit (an aspect ratio) became "4 dpi" (or 288) at x4."""
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Scanner"
    if exif_resolution is not None:
        exif[ExifTags.Base.ResolutionUnit] = exif_resolution[0]  # 1: no absolute unit
        exif[ExifTags.Base.XResolution] = exif_resolution[1]
        exif[ExifTags.Base.YResolution] = exif_resolution[1]
    src = tmp_path / "aspect.jpg"
    Image.fromarray(smooth_rgb()).save(src, quality=90, exif=exif.tobytes())  # JFIF unit 0, 1:1
    assert _jfif(src.read_bytes()) == (0, (1, 1))
    loaded = load_image(src)
    big = np.repeat(np.repeat(loaded.rgb, 4, 0), 4, 1)
    unit, _ = _jfif(encode_image(loaded, big, None))
    assert unit == 0  # still no physical resolution claimed


def test_dpi_comes_from_the_original_bytes_not_the_file_now_at_the_path(tmp_path) -> None:
    """#11 D11: DPI was scaled twice when the file at the path was already an enhanced version."""
    src = tmp_path / "p.jpg"
    Image.fromarray(smooth_rgb()).save(src, quality=90, dpi=(300, 300))
    original = src.read_bytes()
    loaded = load_image(src)
    Image.fromarray(smooth_rgb(96, 128)).save(src, quality=90, dpi=(600, 600))  # enhanced in place since
    big = np.repeat(np.repeat(loaded.rgb, 2, 0), 2, 1)
    out = tmp_path / "out.jpg"
    out.write_bytes(encode_image(loaded, big, None, source=original))
    with Image.open(out) as im:
        assert tuple(round(v) for v in im.info["dpi"]) == (600, 600)  # 300 x 2, not 600 x 2


@pytest.mark.parametrize(
    ("fmt", "mode"), [("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGB"), ("PNG", "L"), ("WEBP", "RGB")]
)
def test_strip_canvas_writes_the_file_a_float_canvas_writes(tmp_path, fmt: str, mode: str) -> None:
    """The 8-bit canvas filled block by block (issue #10) encodes to the same bytes as the float photo."""
    from hime_cli.library.writer import StripCanvas, output_canvas

    pixels = smooth_rgb(40, 56)
    if mode == "L":
        pixels = pixels[..., 1]
    src = tmp_path / f"src.{fmt.lower()}"
    Image.fromarray(pixels).save(src, format=fmt, exif=camera_exif(1, 56, 40), icc_profile=SRGB_ICC)
    loaded = load_image(src)
    rng = np.random.default_rng(3)
    big = np.clip(np.repeat(np.repeat(loaded.rgb, 2, 0), 2, 1) + rng.normal(0, 0.02, (80, 112, 3)), 0, 1)
    big = big.astype(np.float32)
    canvas = output_canvas(loaded, 112, 80)
    assert isinstance(canvas, StripCanvas)
    for y in range(0, 80, 24):  # strips, then a "face window" written over them
        canvas.put(0, y, big[y : y + 24])
    canvas.put(30, 10, big[10:50, 30:70])
    assert encode_image(loaded, canvas.pixels, None) == encode_image(loaded, big, None)


def test_float_canvas_for_16_bit_and_alpha(tmp_path) -> None:
    from hime_cli.library.writer import FloatCanvas, output_canvas

    rgba = np.dstack([smooth_rgb(20, 20), np.full((20, 20), 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert isinstance(output_canvas(load_image(tmp_path / "a.png"), 40, 40), FloatCanvas)


def test_format_limits_and_the_fallback(tmp_path) -> None:
    from hime_cli.library.writer import fallback_format, format_limit

    assert format_limit("HEIF", 4032 * 2, 3024 * 2) is None  # 12 MP ×2: 49 MP
    why = format_limit("HEIF", 4032 * 4, 3024 * 4)  # 12 MP ×4: 195 MP > x265's 142.6 MP
    assert why is not None and "x265" in why and "142.6 MP" in why
    assert format_limit("WEBP", 16_383, 100) is None and format_limit("WEBP", 16_384, 100)
    assert format_limit("JPEG", 65_535, 60_000) is None and format_limit("JPEG", 69_504, 46_336)
    assert format_limit("PNG", 100_000, 100_000) is None
    assert fallback_format("HEIF", has_alpha=False) == "JPEG"
    assert fallback_format("WEBP", has_alpha=True) == "PNG"
    # the encoder refuses what the format cannot hold, with one clear message
    Image.fromarray(smooth_rgb(8, 8)).save(tmp_path / "s.webp")
    with pytest.raises(ImageWriteError, match="16383 px a side"):
        encode_image(load_image(tmp_path / "s.webp"), np.zeros((2, 16_384, 3), np.float32), None)


def test_fallback_jpeg_keeps_the_metadata(tmp_path) -> None:
    pytest.importorskip("pillow_heif")
    import pillow_heif

    pillow_heif.register_heif_opener()
    src = tmp_path / "p.heic"
    Image.fromarray(smooth_rgb(32, 48)).save(src, format="HEIF", exif=camera_exif(1, 48, 32), xmp=XMP)
    loaded = load_image(src)
    data = encode_image(loaded, np.repeat(np.repeat(loaded.rgb, 2, 0), 2, 1), None, out_format="JPEG")
    out = load_image_bytes(data, tmp_path)
    assert out.format == "JPEG" and (out.width, out.height) == (2 * loaded.width, 2 * loaded.height)
    exif = Image.Exif()
    exif.load(out.exif[6:] if out.exif.startswith(b"Exif\x00\x00") else out.exif)
    assert exif[ExifTags.Base.Make] == "Canon"
    assert exif.get_ifd(IFD_EXIF)[ExifTags.Base.ExifImageWidth] == 2 * loaded.width
    assert b"hime test" in out.xmp
