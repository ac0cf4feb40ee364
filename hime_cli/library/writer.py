"""Writing photos back faithfully and atomically.

:func:`save_image` writes an edited :class:`~hime_cli.types.LoadedImage` in the original's format,
with its metadata, so the enhanced file can replace the original:

- **Format**: the original's (``loaded.format``), whatever ``dest``'s extension says.
  JPEG, PNG, WebP, TIFF, HEIF (pillow-heif), AVIF and single-frame GIF are written.
  Multi-frame files (animated GIF/WebP/PNG, multi-page TIFF, HEIF sequences) are refused with
  :class:`ImageWriteError`: writing the first frame only would destroy the others.
  GIF stays GIF (palette re-quantised, median cut + Floyd-Steinberg, transparency kept); a
  palette PNG is written as RGB(A) PNG, lossless instead of re-quantised.
- **Metadata**: the original EXIF block is kept byte for byte (maker notes and offsets intact)
  except that Orientation becomes 1 (the pixels were turned upright at load), the pixel
  dimensions (ExifImageWidth/Height, ImageWidth/Length) are updated, and the EXIF thumbnail is
  dropped when the orientation changed (it would show sideways). XMP is kept with the same
  edits to ``tiff:Orientation`` and ``exif:PixelX/YDimension``. ICC profiles, DPI, JPEG comments,
  JPEG APP13 (IPTC) and PNG text chunks are kept.
- **Pixels**: 16-bit PNG/TIFF stay 16-bit, greyscale stays greyscale, alpha stays (the caller
  passes the alpha it upscaled; the original alpha is reused when the size did not change),
  CMYK goes back to CMYK through the embedded ICC profile (the inverse of the reader's
  conversion), else through the inverse of Pillow's naive formula (K = 1 − max(R, G, B)),
  which reproduces the same RGB the reader showed.
- **JPEG quality**: by default the original's quantisation tables and chroma subsampling are
  reused, so the untouched parts of the photo re-encode almost losslessly; ``quality=N`` forces
  libjpeg's quality scale (95 when the original's tables cannot be read).
- **Atomicity**: everything is written to a temp file next to ``dest`` (``.<name>.hime-tmp-…``),
  fsynced, decoded again as a check, then ``os.replace``-d onto ``dest`` and the folder fsynced.
  A crash, SIGKILL or full disk leaves either the old file or the new one, never a torn one; the
  temp files of killed runs are removed by the next write to the same folder.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from hime_cli.errors import ImageWriteError
from hime_cli.files import TEMP_MARKER, atomic_write, cleanup_stale_temps, fsync_dir, temp_path_for
from hime_cli.library.encoders import (
    _WRITERS,
    DEFAULT_QUALITY,
    _is_grey,
    _Metadata,
    _resolve_alpha,
    _SourceInfo,
    _tiff_strip_intact,
    _to_uint8,
)
from hime_cli.library.metadata import orient_point, patch_exif, patch_xmp
from hime_cli.luma import luma
from hime_cli.types import LoadedImage

__all__ = [
    "DEFAULT_QUALITY",
    "check_written",
    "orient_point",
    "TEMP_MARKER",
    "atomic_write",
    "cleanup_stale_temps",
    "encode_image",
    "encode_image_to",
    "fallback_format",
    "format_limit",
    "output_canvas",
    "fsync_dir",
    "patch_exif",
    "patch_xmp",
    "save_image",
    "temp_path_for",
]

logger = logging.getLogger(__name__)

_SUPPORTED = {"JPEG", "PNG", "WEBP", "TIFF", "HEIF", "AVIF", "GIF", "MPO"}


# ======================================================================= public entry points


def save_image(
    loaded: LoadedImage,
    rgb: np.ndarray,
    alpha: np.ndarray | None,
    dest: str | os.PathLike[str],
    *,
    quality: int | None = None,
    verify: bool = True,
) -> None:
    """Write ``rgb`` (H, W, 3) float in [0, 1] as ``loaded``'s format, with its metadata, to ``dest``.

    ``alpha`` (H, W) float in [0, 1] is required when the original had alpha and the size changed.
    ``quality`` forces a lossy quality (JPEG/WebP/HEIF/AVIF); by default JPEG reuses the original's
    quantisation tables and the other lossy formats use :data:`DEFAULT_QUALITY`.
    ``verify`` decodes the temp file before it replaces ``dest``. Atomic: see :func:`atomic_write`.
    """
    dest = Path(dest)
    data = encode_image(loaded, rgb, alpha, quality=quality)

    check = written_check(rgb.shape[1], rgb.shape[0]) if verify else None
    atomic_write(dest, lambda fh: fh.write(data), check=check)


def check_written(path: str | os.PathLike[str], width: int, height: int) -> None:
    """The one check of a file hime wrote, before it replaces anything: it decodes to its end, at
    ``width`` × ``height`` (:func:`hime_cli.library.reader.verify_written`); else ImageWriteError."""
    from hime_cli.errors import HimeError
    from hime_cli.library.reader import verify_written

    try:  # the bomb guard is set to the size hime wrote: a 190 MP output is checked, not refused
        verify_written(path, width, height)
    except HimeError as exc:
        if _tiff_strip_intact(Path(path), width, height):
            return  # 16-bit grey+alpha TIFF: a layout no decoder here reads, checked structurally
        raise ImageWriteError(f"the written file does not decode: {exc.message}") from exc


def written_check(width: int, height: int) -> Callable[[Path], None]:
    """:func:`check_written` for ``atomic_write``'s ``check``."""
    return lambda tmp: check_written(tmp, width, height)


def encode_image(
    loaded: LoadedImage,
    rgb: np.ndarray | Any,
    alpha: np.ndarray | None,
    *,
    quality: int | None = None,
    source: bytes | None = None,
    out_format: str | None = None,
) -> bytes:
    """The bytes :func:`save_image` would write (no file touched); see :func:`encode_image_to`."""
    buf = io.BytesIO()
    encode_image_to(buf, loaded, rgb, alpha, quality=quality, source=source, out_format=out_format)
    return buf.getvalue()


def encode_image_to(
    fh: BinaryIO,
    loaded: LoadedImage,
    rgb: np.ndarray | Any,
    alpha: np.ndarray | None,
    *,
    quality: int | None = None,
    source: bytes | None = None,
    out_format: str | None = None,
) -> None:
    """Encode ``rgb`` as ``loaded``'s format (or ``out_format``), with its metadata, into ``fh``.

    ``rgb``: (H, W, 3) float in [0, 1], or the 8-bit Pillow image a :class:`StripCanvas` built
    (the output's final pixels, made strip by strip; no float copy of the photo). Written to a
    real file, Pillow's JPEG and PNG encoders stream from that image.
    ``source``: the bytes ``loaded`` was decoded from, when the file at ``loaded.path`` may not
    hold them any more (a photo hime enhanced in place is loaded from its backup): the encoder
    settings (JPEG tables, DPI, comments) are read from them instead of from that file.
    ``out_format``: another format for the output (the fallback when the original's cannot hold
    it, see :func:`format_limit`); the metadata (EXIF, ICC, XMP) goes along.
    """
    if isinstance(rgb, np.ndarray) or not hasattr(rgb, "size"):
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
            raise ImageWriteError(f"expected an (H, W, 3) image, got shape {rgb.shape}")
        if not np.all(np.isfinite(rgb)):
            raise ImageWriteError("the image to write contains NaN or infinite values")
        height, width = rgb.shape[:2]
    else:
        width, height = rgb.size
    fmt = out_format or ("JPEG" if loaded.format == "MPO" else loaded.format)
    if fmt not in _SUPPORTED:
        raise ImageWriteError(
            f"writing {loaded.format} files is not supported", hint="write the result as PNG or JPEG instead"
        )
    if loaded.n_frames > 1:
        raise ImageWriteError(
            f"{loaded.path.name} has {loaded.n_frames} frames; writing it back would keep only the first",
            hint="convert it to a single-frame image first, or write the result to another format",
        )
    if quality is not None and not 1 <= int(quality) <= 100:
        raise ImageWriteError(f"quality must be within 1..100, got {quality}")
    too_big = format_limit(fmt, width, height)
    if too_big:
        raise ImageWriteError(too_big, hint="use a smaller --scale")
    alpha = _resolve_alpha(loaded, alpha, height, width)
    source_info = _SourceInfo.read(loaded.path, fmt, data=source)
    if source_info.dpi:
        # Keep the physical print size: an upscaled photo gets proportionally more dots per inch.
        # (DPI is stored for the file's own axes; turned 90°, x and y swap.)
        dpi_x, dpi_y = source_info.dpi if loaded.orientation < 5 else source_info.dpi[::-1]
        scaled = (dpi_x * width / loaded.width, dpi_y * height / loaded.height)
        source_info = dataclasses.replace(source_info, dpi=scaled)
    meta = _Metadata(
        exif=patch_exif(loaded.exif, width, height, drop_thumbnail=loaded.orientation != 1),
        icc=loaded.icc_profile,
        xmp=patch_xmp(loaded.xmp, width, height, loaded.orientation),
    )
    writer = _WRITERS[fmt]
    try:
        writer(fh, loaded, rgb, alpha, meta, source_info, quality)
    except ImageWriteError:
        raise
    except OSError:
        raise  # a full disk or a lost file: atomic_write words it
    except Exception as exc:  # Pillow/pillow-heif/ImageCms raise many types
        raise ImageWriteError(f"could not encode {fmt}: {type(exc).__name__}: {exc}") from exc


# ======================================================================= format limits

# What each format can hold (output width × height). x265 (libheif's HEIC encoder) refuses more than
# 142,606,336 luma samples (HEVC level 7.2; its message says so); the coded picture is padded to
# whole 64-px CTUs, so the padded size is what counts. WebP stores 14-bit sides; JPEG and GIF 16-bit.
X265_MAX_SAMPLES = 142_606_336
_MAX_SIDE = {"JPEG": 65_535, "WEBP": 16_383, "GIF": 65_535, "AVIF": 65_536, "HEIF": 65_536}


def format_limit(fmt: str, width: int, height: int) -> str | None:
    """Why ``fmt`` cannot hold a ``width`` × ``height`` image, or None when it can."""
    side = _MAX_SIDE.get(fmt)
    if side is not None and max(width, height) > side:
        return f"{fmt} cannot hold {width}×{height} (at most {side} px a side)"
    if fmt == "HEIF":
        padded = (-(-width // 64) * 64) * (-(-height // 64) * 64)
        if padded > X265_MAX_SAMPLES:
            return (
                f"HEIF (x265) cannot hold {width}×{height} = {width * height / 1e6:.0f} MP "
                f"(at most {X265_MAX_SAMPLES / 1e6:.1f} MP, HEVC level 7.2)"
            )
    return None


def fallback_format(fmt: str, has_alpha: bool) -> str:
    """The format a photo is written in when its own cannot hold the output: JPEG (PNG with alpha)."""
    return "PNG" if has_alpha else "JPEG"


# ======================================================================= output canvases

# Formats whose 8-bit output is built strip by strip (:class:`StripCanvas`); the others (16-bit,
# alpha, CMYK, TIFF, GIF) get a float canvas of the whole photo, as before.
_STRIPPED = {"JPEG", "PNG", "WEBP", "HEIF", "AVIF"}


class StripCanvas:
    """The output's final 8-bit pixels (a Pillow L or RGB image), filled block by block.

    Each float block becomes 8-bit exactly as the writers convert a whole float photo
    (``round(clip(v) · 255)``, grey through :func:`hime_cli.luma.luma`), so the file is the same as
    from a float canvas, at 4 bytes per output pixel (Pillow's RGB) instead of 12 + 4.
    """

    def __init__(self, width: int, height: int, grey: bool) -> None:
        from PIL import Image

        self.grey = grey
        self.image: Any = Image.new("L" if grey else "RGB", (width, height))

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    def put(self, x: int, y: int, block: np.ndarray) -> None:
        from PIL import Image

        pixels = _to_uint8(luma(block)) if self.grey else _to_uint8(block)
        self.image.paste(Image.fromarray(np.ascontiguousarray(pixels), "L" if self.grey else "RGB"), (x, y))

    @property
    def pixels(self) -> Any:
        return self.image

    def release(self) -> None:
        self.image = None


class FloatCanvas:
    """The whole output as float32 (16-bit, alpha, CMYK, TIFF and GIF outputs)."""

    def __init__(self, width: int, height: int) -> None:
        self.array: np.ndarray | None = np.zeros((height, width, 3), np.float32)

    @property
    def size(self) -> tuple[int, int]:
        assert self.array is not None
        return self.array.shape[1], self.array.shape[0]

    def put(self, x: int, y: int, block: np.ndarray) -> None:
        assert self.array is not None
        self.array[y : y + block.shape[0], x : x + block.shape[1]] = block

    @property
    def pixels(self) -> np.ndarray:
        assert self.array is not None
        return self.array

    def release(self) -> None:
        self.array = None


def output_canvas(
    loaded: LoadedImage, width: int, height: int, out_format: str | None = None
) -> StripCanvas | FloatCanvas:
    """Where the output of ``loaded`` is assembled: 8-bit strips when the format allows."""
    fmt = out_format or ("JPEG" if loaded.format == "MPO" else loaded.format)
    if fmt in _STRIPPED and loaded.bit_depth <= 8 and loaded.alpha is None and loaded.mode != "CMYK":
        return StripCanvas(width, height, grey=_is_grey(loaded) and fmt in ("JPEG", "PNG"))
    return FloatCanvas(width, height)
