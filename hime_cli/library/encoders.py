"""Per-format encoders: the pixels, metadata and settings of each format hime writes back.

:func:`hime_cli.library.writer.encode_image_to` picks one from :data:`WRITERS`; each writes into
a binary file object, reusing what the original file used (JPEG tables and subsampling, DPI,
comments, PNG text chunks, WebP losslessness) as read by :class:`SourceInfo`.
"""

from __future__ import annotations

import io
import logging
import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hime_cli.errors import ImageWriteError
from hime_cli.library.metadata import EXIF_PREFIX, _Tiff
from hime_cli.library.reader import register_heif
from hime_cli.luma import luma
from hime_cli.types import LoadedImage

logger = logging.getLogger(__name__)

DEFAULT_QUALITY = 95
_GREY_MODES = {"L", "LA", "1", "I", "I;16", "I;16L", "I;16B", "I;16N", "La"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "La", "RGBa"}


# ======================================================================= pixels


def _to_uint8(a: np.ndarray) -> np.ndarray:
    return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _to_uint16(a: np.ndarray) -> np.ndarray:
    return (np.clip(a, 0.0, 1.0) * 65535.0 + 0.5).astype(np.uint16)


def _resolve_alpha(
    loaded: LoadedImage, alpha: np.ndarray | None, height: int, width: int
) -> np.ndarray | None:
    if alpha is None and loaded.alpha is not None:
        if loaded.alpha.shape == (height, width):
            return loaded.alpha
        raise ImageWriteError(
            "the original has an alpha channel but no alpha of the new size was given",
            hint="upscale the alpha channel too and pass it to save_image",
        )
    if alpha is not None:
        alpha = np.asarray(alpha)
        if alpha.ndim == 3 and alpha.shape[2] == 1:
            alpha = alpha[..., 0]
        if alpha.shape != (height, width):
            raise ImageWriteError(f"alpha shape {alpha.shape} does not match the image ({height}, {width})")
    return alpha


def _is_grey(loaded: LoadedImage) -> bool:
    return loaded.mode in _GREY_MODES


def _pil_image(rgb: np.ndarray, alpha: np.ndarray | None, grey: bool) -> Any:
    """An 8-bit Pillow image: L / LA / RGB / RGBA."""
    from PIL import Image

    if not isinstance(rgb, np.ndarray):  # already the 8-bit image a StripCanvas made
        return rgb
    if grey:
        grey8 = _to_uint8(luma(rgb))
        if alpha is None:
            return Image.fromarray(grey8, "L")
        return Image.fromarray(np.dstack([grey8, _to_uint8(alpha)]), "LA")
    rgb8 = _to_uint8(rgb)
    if alpha is None:
        return Image.fromarray(rgb8, "RGB")
    return Image.fromarray(np.dstack([rgb8, _to_uint8(alpha)]), "RGBA")


def _to_cmyk(rgb: np.ndarray, icc: bytes | None) -> Any:
    """sRGB float → CMYK Pillow image; the inverse of the reader's CMYK → sRGB conversion."""
    from PIL import Image

    rgb_im = Image.fromarray(_to_uint8(rgb), "RGB")
    if icc:
        try:
            from PIL import ImageCms

            target = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            if ImageCms.getProfileColorSpace(target).strip() == "CMYK":
                return ImageCms.profileToProfile(
                    rgb_im, ImageCms.createProfile("sRGB"), target, outputMode="CMYK"
                )
            logger.warning("the embedded ICC profile is not a CMYK profile; using the plain formula")
        except ImageCms.PyCMSError as exc:  # the reader fell back to the plain formula too
            logger.warning("cannot use the embedded CMYK profile (%s); using the plain formula", exc)
    # Inverse of Pillow's CMYK → RGB (R = (1 − C)(1 − K)): K = 1 − max(RGB), C = 1 − R / (1 − K).
    rgb8 = _to_uint8(rgb).astype(np.float32) / 255.0
    white = rgb8.max(axis=2)
    k = 1.0 - white
    safe = np.where(white > 0, white, 1.0)[..., None]
    cmy = np.where(white[..., None] > 0, 1.0 - rgb8 / safe, 0.0)
    cmyk = np.dstack([cmy, k[..., None]])
    return Image.fromarray(_to_uint8(cmyk), "CMYK")


# ======================================================================= metadata patching


@dataclass(frozen=True)
class _Metadata:
    exif: bytes | None  # b"Exif\0\0" + TIFF block, already patched
    icc: bytes | None
    xmp: bytes | None


# ======================================================================= what the source file used


@dataclass(frozen=True)
class _SourceInfo:
    """Encoder settings read from the original file's header (when it is still readable)."""

    quantization: list[list[int]] | None = None
    subsampling: int = -1
    progressive: bool = False
    dpi: tuple[float, float] | None = None
    comment: bytes | None = None
    app13: tuple[bytes, ...] = ()
    png_text: tuple[tuple[str, str], ...] = ()
    webp_lossless: bool = False

    @classmethod
    def read(cls, path: Path, fmt: str, *, data: bytes | None = None) -> _SourceInfo:
        """From ``data`` (the original's bytes) when given, else from the file at ``path``."""
        try:
            if data is None:
                with open(path, "rb") as fh:
                    data = fh.read()
            return cls._read(data, fmt)
        except Exception as exc:  # the original may be gone or unreadable: use defaults
            logger.debug("cannot read encoder settings from %s: %s", path, exc)
            return cls()

    @classmethod
    def _read(cls, data: bytes, fmt: str) -> _SourceInfo:
        from PIL import Image

        if fmt == "WEBP":
            return cls(webp_lossless=_webp_is_lossless(data))
        if fmt not in ("JPEG", "PNG", "TIFF"):
            return cls()
        with Image.open(io.BytesIO(data)) as im:
            dpi = im.info.get("dpi")
            dpi = (float(dpi[0]), float(dpi[1])) if dpi and len(dpi) == 2 and dpi[0] and dpi[1] else None
            if fmt == "JPEG" and im.format in ("JPEG", "MPO"):
                from PIL import JpegImagePlugin

                tables = getattr(im, "quantization", None)
                quant = [list(tables[k]) for k in sorted(tables)] if tables else None
                app13 = tuple(
                    data
                    for marker, data in getattr(im, "applist", [])
                    if marker == "APP13" and data.startswith(b"Photoshop 3.0\x00")
                )
                comment = im.info.get("comment")
                return cls(
                    quantization=quant,
                    subsampling=JpegImagePlugin.get_sampling(im),
                    progressive=bool(im.info.get("progressive") or im.info.get("progression")),
                    dpi=_jpeg_dpi(im),
                    comment=comment if isinstance(comment, bytes) and comment else None,
                    app13=app13,
                )
            if fmt == "PNG":
                text = getattr(im, "text", {}) or {}
                kept = tuple(
                    (k, v) for k, v in text.items() if isinstance(v, str) and k != "XML:com.adobe.xmp"
                )
                return cls(dpi=dpi, png_text=kept)
            if fmt == "TIFF":
                return cls(dpi=dpi)
        return cls()


def _jpeg_dpi(im: Any) -> tuple[float, float] | None:
    """A JPEG's physical resolution, or None when it records none.

    Pillow's ``info["dpi"]`` is not used as is: for a JFIF density without a unit (an aspect
    ratio, usually 1:1) it falls back on EXIF, and on 72 dpi when EXIF has no resolution, so an
    upscaled photo was stamped "4 dpi" or "288 dpi" for a resolution the original never had.
    """
    unit, density = im.info.get("jfif_unit"), im.info.get("jfif_density")
    if unit in (1, 2) and density and len(density) == 2 and density[0] > 0 and density[1] > 0:
        factor = 2.54 if unit == 2 else 1.0
        return float(density[0]) * factor, float(density[1]) * factor
    try:
        exif = im.getexif()
        res_unit = int(exif.get(0x0128, 2))  # TIFF's default unit: inches
        x_res, y_res = exif.get(0x011A), exif.get(0x011B, exif.get(0x011A))
        if res_unit not in (2, 3) or x_res is None or y_res is None:
            return None
        x, y = float(x_res), float(y_res)
    except Exception:
        return None
    if not (math.isfinite(x) and math.isfinite(y)) or x <= 1 or y <= 1:
        return None
    factor = 2.54 if res_unit == 3 else 1.0
    return x * factor, y * factor


def _webp_is_lossless(data: bytes) -> bool:
    """True when the WebP's image chunk is VP8L (lossless)."""
    data = data[: 1 << 20]
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return False
    pos = 12
    while pos + 8 <= len(data):
        fourcc = data[pos : pos + 4]
        size = struct.unpack_from("<I", data, pos + 4)[0]
        if fourcc == b"VP8L":
            return True
        if fourcc == b"VP8 ":
            return False
        pos += 8 + size + (size & 1)
    return False


# ======================================================================= per-format writers


def _write_jpeg(buf, loaded, rgb, alpha, meta, source, quality) -> None:
    if loaded.mode == "CMYK":
        im = _to_cmyk(rgb, meta.icc)
    else:
        im = _pil_image(rgb, None, _is_grey(loaded))  # JPEG has no alpha
    params: dict[str, Any] = {"optimize": False}
    if quality is None and source.quantization and (im.mode != "L" or len(source.quantization) >= 1):
        tables = source.quantization[:1] if im.mode == "L" else source.quantization
        params["qtables"] = tables
        if source.subsampling >= 0 and im.mode == "RGB":
            params["subsampling"] = source.subsampling
    else:
        params["quality"] = int(quality or DEFAULT_QUALITY)
        if im.mode == "RGB":
            params["subsampling"] = source.subsampling if source.subsampling >= 0 else 2
    if source.progressive:
        params["progressive"] = True
    if source.dpi:
        params["dpi"] = source.dpi
    if source.comment:
        params["comment"] = source.comment
    if source.app13:
        params["extra"] = b"".join(
            b"\xff\xed" + struct.pack(">H", len(seg) + 2) + seg
            for seg in source.app13
            if len(seg) + 2 <= 0xFFFF
        )
    _add_meta(params, meta, exif=True, xmp=True)
    im.save(buf, format="JPEG", **params)


def _add_meta(params: dict[str, Any], meta: _Metadata, *, exif: bool, xmp: bool) -> None:
    if meta.icc:
        params["icc_profile"] = meta.icc
    if exif and meta.exif:
        params["exif"] = meta.exif
    if xmp and meta.xmp:
        params["xmp"] = meta.xmp


def _write_png(buf, loaded, rgb, alpha, meta, source, quality) -> None:
    grey = _is_grey(loaded)
    if loaded.bit_depth > 8:
        _write_png16(buf, rgb, alpha, grey, meta, source)
        return
    from PIL import PngImagePlugin

    im = _pil_image(rgb, alpha, grey)
    info = PngImagePlugin.PngInfo()
    for key, value in source.png_text:
        if value.isascii():
            info.add_text(key, value)
        else:
            info.add_itxt(key, value)
    if meta.xmp:
        info.add_itxt("XML:com.adobe.xmp", meta.xmp.decode("utf-8", errors="replace"), zip=False)
    params: dict[str, Any] = {"pnginfo": info, "compress_level": 6}
    if source.dpi:
        params["dpi"] = source.dpi
    _add_meta(params, meta, exif=True, xmp=False)
    im.save(buf, format="PNG", **params)


def _png_chunk(tag: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + tag
        + payload
        + struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF)
    )


def _write_png16(buf, rgb, alpha, grey, meta, source) -> None:
    """16-bit PNG (grey, grey+alpha, RGB, RGBA) with iCCP/eXIf/iTXt/pHYs; Pillow cannot write these."""
    planes = [_to_uint16(luma(rgb))[..., None]] if grey else [_to_uint16(rgb)]
    if alpha is not None:
        planes.append(_to_uint16(alpha)[..., None])
    pixels = np.concatenate(planes, axis=2)
    height, width, channels = pixels.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = pixels.astype(">u2").reshape(height, width * channels).view(np.uint8)
    # PNG "Up" filter on every row: bytes minus the bytes above (mod 256) compresses photos well.
    filtered = rows.copy()
    filtered[1:] = rows[1:] - rows[:-1]
    raw = np.concatenate([np.full((height, 1), 2, np.uint8), filtered], axis=1).tobytes()
    out = [
        b"\x89PNG\r\n\x1a\n",
        _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)),
    ]
    if meta.icc:
        out.append(_png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(meta.icc)))
    if source.dpi:
        ppm = [round(d / 0.0254) for d in source.dpi]
        out.append(_png_chunk(b"pHYs", struct.pack(">IIB", ppm[0], ppm[1], 1)))
    for key, value in source.png_text:
        out.append(
            _png_chunk(
                b"iTXt", key.encode("latin-1", "replace")[:79] + b"\x00\x00\x00\x00\x00" + value.encode()
            )
        )
    if meta.xmp:
        out.append(_png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + meta.xmp))
    if meta.exif:
        out.append(_png_chunk(b"eXIf", meta.exif[len(EXIF_PREFIX) :]))
    out.append(_png_chunk(b"IDAT", zlib.compress(raw, 6)))
    out.append(_png_chunk(b"IEND", b""))
    buf.write(b"".join(out))


def _write_webp(buf, loaded, rgb, alpha, meta, source, quality) -> None:
    im = _pil_image(rgb, alpha, grey=False)  # WebP has no greyscale mode
    params: dict[str, Any] = {"method": 4}
    if source.webp_lossless and quality is None:
        params["lossless"] = True
        params["quality"] = 100
    else:
        params["quality"] = int(quality or DEFAULT_QUALITY)
    _add_meta(params, meta, exif=True, xmp=True)
    im.save(buf, format="WEBP", **params)


def _write_heif(buf, loaded, rgb, alpha, meta, source, quality) -> None:
    register_heif()
    im = _pil_image(rgb, alpha, grey=False)
    # x265's "medium" preset: measured 3.5x faster than libheif's default ("slow") on a 3 MP photo at
    # quality 95, for +1 % file size and the same PSNR.
    params: dict[str, Any] = {"quality": int(quality or DEFAULT_QUALITY), "enc_params": {"preset": "medium"}}
    _add_meta(params, meta, exif=True, xmp=True)
    im.save(buf, format="HEIF", **params)


def _write_avif(buf, loaded, rgb, alpha, meta, source, quality) -> None:
    im = _pil_image(rgb, alpha, grey=False)
    params: dict[str, Any] = {"quality": int(quality or DEFAULT_QUALITY)}
    _add_meta(params, meta, exif=True, xmp=True)
    im.save(buf, format="AVIF", **params)


def _write_gif(buf, loaded, rgb, alpha, meta, source, quality) -> None:
    from PIL import Image

    base = Image.fromarray(_to_uint8(rgb), "RGB")
    colours = 255 if alpha is not None else 256
    pal = base.quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)
    params: dict[str, Any] = {}
    if alpha is not None:
        indices = np.array(pal)
        indices[alpha < 0.5] = 255
        palette = pal.getpalette() or []
        palette = (palette + [0] * 768)[:768]
        pal = Image.fromarray(indices, "P")
        pal.putpalette(palette)
        params["transparency"] = 255
    if meta.xmp:
        params["xmp"] = meta.xmp
    pal.save(buf, format="GIF", **params)


# TIFF tags that describe the pixel layout of the *old* file; never copied to the new one.
_TIFF_STRUCTURAL = {
    254, 255, 256, 257, 258, 259, 262, 263, 266, 269, 273, 277, 278, 279, 280, 281, 282, 283, 284,
    290, 291, 292, 293, 296, 297, 317, 318, 319, 320, 321, 322, 323, 324, 325, 330, 332, 338, 339,
    340, 341, 347, 513, 514, 529, 530, 531, 532, 700, 34675, 32997, 32998,
}  # fmt: skip


def _tiff_exif(meta: _Metadata) -> Any:
    """The EXIF as a Pillow Exif holding only descriptive tags (IFD0 text, Exif and GPS IFDs)."""
    from PIL import Image

    exif = Image.Exif()
    if not meta.exif:
        return exif
    exif.load(meta.exif[len(EXIF_PREFIX) :])
    for tag in list(exif):
        if tag in _TIFF_STRUCTURAL:
            del exif[tag]
    return exif


def _write_tiff(buf, loaded, rgb, alpha, meta, source, quality) -> None:
    """TIFF with the pixel layout of the original (8/16-bit, grey/RGB/CMYK, alpha).

    Written by hand rather than by Pillow: Pillow has no 16-bit colour modes, and its libtiff
    path cannot write EXIF sub-IFDs. One Adobe-deflate strip with the horizontal-differencing
    predictor (lossless, read by every TIFF reader); the directory (EXIF, GPS, ICC, XMP,
    resolution) is serialised by Pillow's TIFF directory writer.
    """
    from PIL import TiffImagePlugin

    grey = _is_grey(loaded)
    to_int = _to_uint16 if loaded.bit_depth > 8 else _to_uint8
    if loaded.mode == "CMYK":
        planes = [np.asarray(_to_cmyk(rgb, meta.icc))]
        photometric = 5  # separated (CMYK)
    elif grey:
        planes = [to_int(luma(rgb))[..., None]]
        photometric = 1  # BlackIsZero
    else:
        planes = [to_int(rgb)]
        photometric = 2
    if alpha is not None and loaded.mode != "CMYK":
        planes.append(to_int(alpha)[..., None])
    pixels = np.concatenate(planes, axis=2)
    height, width, channels = pixels.shape
    bits = pixels.dtype.itemsize * 8
    predicted = pixels.copy()
    predicted[:, 1:] = pixels[:, 1:] - pixels[:, :-1]  # TIFF predictor 2, wrapping arithmetic
    strip = zlib.compress(predicted.astype(f"<u{pixels.dtype.itemsize}").tobytes(), 6)

    ifd = TiffImagePlugin.ImageFileDirectory_v2(prefix=b"II")
    exif = _tiff_exif(meta)
    for tag, value in exif.items():
        ifd[tag] = exif.get_ifd(tag) if tag in (0x8769, 0x8825) else value
    ifd[256] = width
    ifd[257] = height
    ifd[258] = (bits,) * channels
    ifd[259] = 8  # Adobe deflate
    ifd[262] = photometric
    ifd[273] = 0  # StripOffsets: relative to the end of the directory, see below
    ifd[277] = channels
    ifd[278] = height
    ifd[279] = len(strip)
    ifd[284] = 1
    ifd[317] = 2
    if channels in (2, 4) and photometric != 5:
        ifd[338] = 2  # unassociated alpha
    if source.dpi:
        ifd[282], ifd[283], ifd[296] = source.dpi[0], source.dpi[1], 2
    if meta.icc:
        ifd[34675] = meta.icc
    if meta.xmp:
        ifd[700] = meta.xmp
    for tag, typ in ((258, 3), (273, 4), (279, 4), (256, 4), (257, 4), (278, 4), (700, 1), (34675, 7)):
        if tag in ifd:
            ifd.tagtype[tag] = typ
    # Pillow's directory writer adds the end of the directory's data to StripOffsets (0 here), so
    # the strip goes right after it.
    directory = ifd.tobytes(8)
    buf.write(b"II*\x00" + struct.pack("<I", 8) + directory + strip)


_WRITERS: dict[str, Callable[..., None]] = {
    "JPEG": _write_jpeg,
    "PNG": _write_png,
    "WEBP": _write_webp,
    "TIFF": _write_tiff,
    "HEIF": _write_heif,
    "AVIF": _write_avif,
    "GIF": _write_gif,
}


def _tiff_strip_intact(path: Path, width: int, height: int) -> bool:
    """True when a single-strip deflate TIFF (as :func:`_write_tiff` writes) inflates to its full size."""
    try:
        tiff = _Tiff(bytearray(path.read_bytes()))
        ifd0 = tiff.u32(4)
        tags = {tag: (off, typ, count) for off, tag, typ, count in tiff.entries(ifd0)}
        value = lambda tag: tiff.u32(tags[tag][0] + 8) if tags[tag][1] == 4 else tiff.u16(tags[tag][0] + 8)  # noqa: E731
        if (value(256), value(257), value(259)) != (width, height, 8) or tags[258][2] < 1:
            return False
        bits_off = tags[258][0] + 8
        first_bits = tiff.u16(bits_off if tags[258][2] <= 2 else tiff.u32(bits_off))
        start, length = value(273), value(279)
        raw = zlib.decompress(bytes(tiff.data[start : start + length]))
        return len(raw) == width * height * value(277) * first_bits // 8
    except (ValueError, KeyError, struct.error, zlib.error, OSError):
        return False
