"""Reading photos: decoding every supported format into the house convention, and their metadata.

:func:`load_image` returns a :class:`~hime_cli.types.LoadedImage`: float32 RGB in [0, 1] with the
EXIF orientation applied exactly once, alpha kept apart, and the raw EXIF/ICC/XMP blocks kept for
the writer. It refuses decompression bombs from the header, before decoding a single pixel.

Colour handling (never silently change colours):

- 8-bit RGB/RGBA/L/LA/P keep their values; the ICC profile is returned untouched, pixels stay in
  the file's colour space.
- 16-bit PNG and TIFF keep 16 bits (Pillow would truncate 16-bit RGB to 8 bits, so those are
  decoded with OpenCV); ``bit_depth`` says 16.
- CMYK is converted to sRGB through its embedded ICC profile when there is one (Pillow's naive
  formula otherwise); ``mode`` stays ``"CMYK"`` so the writer knows the pixels are now sRGB and that
  the kept ``icc_profile`` describes the original CMYK data.
- HEIC/HEIF (pillow-heif) is decoded upright by libheif; ``orientation`` reports the file's original
  EXIF orientation and is not applied a second time.
- Animated GIF/WebP/APNG: the first frame; ``n_frames`` says how many there were.

``exif`` is normalised to start with ``b"Exif\\x00\\x00"`` followed by the TIFF block (the form
Pillow's JPEG reader and writer use).
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import re
import stat
import threading
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hime_cli.errors import ImageReadError, UsageError
from hime_cli.library.metadata import EXIF_PREFIX, normalise_exif
from hime_cli.types import LoadedImage

# Refuse images larger than this many pixels before decoding them (a 30,000 × 30,000 "bomb" is
# 900 MP; the biggest camera sensors are ~150 MP). Pillow's own guard trips just under 179 MP.
MAX_PIXELS = 178_000_000

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".tif", ".tiff", ".heic", ".heif", ".gif", ".avif"}
)

# Folders a scan never enters: hime's own output, besides hidden ones.
SKIPPED_FOLDERS: frozenset[str] = frozenset({"hime-enhanced", "hime-compare"})

_ORIENTATION_TAG = 0x0112

# exifread logs a warning for every odd tag in every photo; a library scan would drown in them.
logging.getLogger("exifread").setLevel(logging.ERROR)

_heif_registered = False


def register_heif() -> None:
    """Let Pillow open HEIF/HEIC/AVIF (pillow-heif), once per process."""
    global _heif_registered
    if not _heif_registered:
        import pillow_heif

        pillow_heif.register_heif_opener()
        _heif_registered = True


# ---------------------------------------------------------------------- walking folders


def is_image_path(path: str | os.PathLike[str]) -> bool:
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def iter_photos(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Every photo under ``paths``, recursively, in sorted order.

    Follows symlinked folders but never enters the same folder twice (no symlink loops, no
    duplicates); skips hidden files and folders and hime's ``hime-enhanced`` output folders. A path
    given explicitly is yielded as is when it is a file, whatever its extension. Raises
    :class:`UsageError` for a path that does not exist (before yielding anything).
    """
    roots = [Path(p) for p in paths]
    for root in roots:
        if not os.path.lexists(root):
            raise UsageError(
                f"no such file or folder: {root}", hint="check the path you passed to `hime scan`."
            )
    seen_dirs: set[tuple[int, int]] = set()
    for root in roots:
        if root.is_dir():
            yield from _walk(root, seen_dirs)
        else:
            yield root


def _walk(folder: Path, seen_dirs: set[tuple[int, int]]) -> Iterator[Path]:
    try:
        st = os.stat(folder)
    except OSError:
        return
    key = (st.st_dev, st.st_ino)
    if key in seen_dirs:
        return
    seen_dirs.add(key)
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return  # an unreadable folder holds nothing we can index
    subfolders: list[Path] = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            is_dir = entry.is_dir()  # follows symlinks
        except OSError:
            is_dir = False
        if is_dir:
            if entry.name not in SKIPPED_FOLDERS:
                subfolders.append(Path(entry.path))
        elif is_image_path(entry.name):
            yield Path(entry.path)
    for sub in subfolders:
        yield from _walk(sub, seen_dirs)


# ---------------------------------------------------------------------- orientation


def apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an (H, W, ...) array stored with EXIF ``orientation`` (1..8) upright."""
    if orientation == 2:
        out = array[:, ::-1]
    elif orientation == 3:
        out = array[::-1, ::-1]
    elif orientation == 4:
        out = array[::-1]
    elif orientation == 5:  # transpose (mirror about the main diagonal)
        out = np.swapaxes(array, 0, 1)
    elif orientation == 6:  # stored rotated 90° counter-clockwise: rotate 90° clockwise
        out = np.rot90(array, k=-1)
    elif orientation == 7:  # transverse (mirror about the anti-diagonal)
        out = np.swapaxes(array[::-1, ::-1], 0, 1)
    elif orientation == 8:
        out = np.rot90(array, k=1)
    else:
        out = array
    return np.ascontiguousarray(out)


# ---------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class DecodedImage:
    """An oriented image in its native integer range (what the scanner works on)."""

    pixels: np.ndarray  # (H, W, 3) uint8 or uint16, oriented
    alpha: np.ndarray | None  # (H, W) same dtype, or None
    format: str
    mode: str
    bit_depth: int
    orientation: int
    exif: bytes | None
    icc_profile: bytes | None
    xmp: bytes | None
    n_frames: int

    def rgb_uint8(self) -> np.ndarray:
        if self.pixels.dtype == np.uint8:
            return self.pixels
        return ((self.pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)

    def to_float(self) -> tuple[np.ndarray, np.ndarray | None]:
        scale = np.float32(1.0 / (255.0 if self.pixels.dtype == np.uint8 else 65535.0))
        rgb = self.pixels.astype(np.float32) * scale
        alpha = self.alpha.astype(np.float32) * scale if self.alpha is not None else None
        return rgb, alpha


def read_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a photo file, with I/O problems turned into :class:`ImageReadError`.

    Opened non-blocking and checked to be a regular file before reading: a FIFO named
    ``pipe.jpg`` (or a device) is refused at once instead of blocking a scan forever.
    """
    flags = (
        os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    )
    try:
        fd = os.open(path, flags)
        with open(fd, "rb", closefd=True) as f:
            mode = os.fstat(f.fileno()).st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(path)
            if not stat.S_ISREG(mode):
                raise ImageReadError(f"not a regular file ({_file_kind(mode)}).")
            return f.read()
    except PermissionError:
        raise ImageReadError("permission denied.", hint="make the file readable (chmod +r).") from None
    except FileNotFoundError:
        raise ImageReadError("file not found (deleted, or a broken symlink).") from None
    except IsADirectoryError:
        raise ImageReadError("is a folder, not a file.") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageReadError("a symlink loop (the link points back at itself).") from None
        raise ImageReadError(f"cannot read the file: {exc.strerror or exc}.") from None


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a plain file"


def is_regular_file(path: str | os.PathLike[str]) -> bool:
    """True for a regular file (symlinks followed); False for FIFOs, devices, folders, loops, missing."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def load_image(
    path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS, *, data: bytes | None = None
) -> LoadedImage:
    """Decode a photo into float32 RGB [0, 1], orientation applied, metadata kept (see module doc).

    ``data``: the photo's bytes when the caller already has them (``path`` is then only its name).
    """
    decoded = decode_image(read_file(path) if data is None else data, max_pixels=max_pixels)
    rgb, alpha = decoded.to_float()
    return LoadedImage(
        path=Path(path),
        rgb=rgb,
        alpha=alpha,
        format=decoded.format,
        mode=decoded.mode,
        bit_depth=decoded.bit_depth,
        orientation=decoded.orientation,
        exif=decoded.exif,
        icc_profile=decoded.icc_profile,
        xmp=decoded.xmp,
        n_frames=decoded.n_frames,
    )


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> DecodedImage:
    """Decode photo bytes (any supported format) into an oriented :class:`DecodedImage`."""
    from PIL import Image, UnidentifiedImageError

    register_heif()
    if not data:
        raise ImageReadError("empty file (0 bytes).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        # Pillow's own guard (just under 179 MP) tripped first: same message as ours below.
        numbers = re.findall(r"\d+", str(exc))
        size = f"{int(numbers[0]) / 1e6:.0f} MP" if numbers else "too many pixels"
        raise ImageReadError(
            f"refused: {size} exceeds the {min(max_pixels, Image.MAX_IMAGE_PIXELS * 2) / 1e6:.0f} MP limit "
            "(possible decompression bomb)."
        ) from None
    except UnidentifiedImageError:
        raise ImageReadError("not an image, or an unsupported format.") from None
    except Exception as exc:  # Pillow's plugins raise many types on malformed headers
        raise ImageReadError(f"corrupt image header ({type(exc).__name__}: {exc}).") from None

    with im:
        width, height = im.size
        if width <= 0 or height <= 0:
            raise ImageReadError(f"invalid image size {width}×{height}.")
        if width * height > max_pixels:
            raise ImageReadError(
                f"refused: {width}×{height} = {width * height / 1e6:.0f} MP exceeds the "
                f"{max_pixels / 1e6:.0f} MP limit (possible decompression bomb)."
            )
        fmt = im.format or "UNKNOWN"
        info = dict(im.info)
        n_frames = int(getattr(im, "n_frames", 1) or 1)
        exif_bytes, orientation = _exif_and_orientation(im, info)
        if fmt in ("HEIF", "AVIF") and "original_orientation" in info:
            # libheif already turned the pixels upright and reset the tag.
            orientation = _valid_orientation(info.get("original_orientation"))
            to_apply = 1
        else:
            to_apply = orientation
        icc = info.get("icc_profile") or None
        xmp = _xmp(im, info)
        try:
            if _needs_16bit_decoder(im, data):
                pixels, alpha, mode, bit_depth = _decode_16bit_opencv(data, im.mode)
            else:
                pixels, alpha, mode, bit_depth = _decode_pillow(im, icc)
        except ImageReadError:
            raise
        except MemoryError:
            raise ImageReadError(f"not enough memory to decode a {width}×{height} image.") from None
        except Exception as exc:
            raise ImageReadError(f"truncated or corrupt image data ({type(exc).__name__}: {exc}).") from None

    pixels = apply_orientation(pixels, to_apply)
    if alpha is not None:
        alpha = apply_orientation(alpha, to_apply)
    return DecodedImage(
        pixels=pixels,
        alpha=alpha,
        format=fmt,
        mode=mode,
        bit_depth=bit_depth,
        orientation=orientation,
        exif=exif_bytes,
        icc_profile=icc,
        xmp=xmp,
        n_frames=n_frames,
    )


def _decode_pillow(im: Any, icc: bytes | None) -> tuple[np.ndarray, np.ndarray | None, str, int]:
    """First frame of a Pillow image → (pixels (H, W, 3), alpha, original mode, bit depth)."""
    im.seek(0)
    im.load()
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        grey = np.asarray(im)
        if mode == "I" and grey.size and (grey.min() < 0 or grey.max() > 65535):
            raise ImageReadError("unsupported 32-bit integer image.")
        grey16 = grey.astype(np.uint16)
        return np.repeat(grey16[:, :, None], 3, axis=2), None, mode, 16
    if mode == "F":
        raise ImageReadError("unsupported 32-bit floating-point image.")
    if mode == "CMYK":
        return np.asarray(_cmyk_to_srgb(im, icc)), None, mode, 8
    if mode == "P":
        has_alpha = "transparency" in im.info or im.palette is not None and im.palette.mode == "RGBA"
        im = im.convert("RGBA" if has_alpha else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode in ("1",):
        im = im.convert("L")
    elif mode == "La":
        im = im.convert("LA")
    elif mode == "RGBa":
        im = im.convert("RGBA")
    elif mode not in ("RGB", "RGBA", "L", "LA"):
        im = im.convert("RGB")  # YCbCr, LAB, HSV, RGBX …
    array = np.asarray(im)
    if im.mode == "L":
        return np.repeat(array[:, :, None], 3, axis=2), None, mode, 8
    if im.mode == "LA":
        return np.repeat(array[:, :, :1], 3, axis=2), np.ascontiguousarray(array[:, :, 1]), mode, 8
    if im.mode == "RGBA":
        return np.ascontiguousarray(array[:, :, :3]), np.ascontiguousarray(array[:, :, 3]), mode, 8
    return array, None, mode, 8


def _cmyk_to_srgb(im: Any, icc: bytes | None) -> Any:
    if icc:
        try:
            from PIL import ImageCms

            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:  # a broken profile: fall back to the plain formula below
            pass
    return im.convert("RGB")


def _needs_16bit_decoder(im: Any, data: bytes) -> bool:
    """True for 16-bit colour PNG/TIFF, which Pillow would silently truncate to 8 bits."""
    if im.mode not in ("RGB", "RGBA", "LA"):
        return False
    if im.format == "PNG":
        return len(data) > 25 and data[12:16] == b"IHDR" and data[24] == 16
    if im.format == "TIFF":
        bits = getattr(im, "tag_v2", {}).get(258)
        bits = bits if isinstance(bits, tuple) else (bits,)
        return any(isinstance(b, int) and b > 8 for b in bits)
    return False


def _decode_16bit_opencv(data: bytes, pil_mode: str) -> tuple[np.ndarray, np.ndarray | None, str, int]:
    import cv2

    array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ImageReadError("truncated or corrupt 16-bit image data.")
    if array.dtype != np.uint16:
        array = array.astype(np.uint16) * 257 if array.dtype == np.uint8 else array
    if array.dtype != np.uint16:
        raise ImageReadError(f"unsupported sample type {array.dtype}.")
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2), None, pil_mode, 16
    channels = array.shape[2]
    if channels == 2:  # grey + alpha
        return np.repeat(array[:, :, :1], 3, axis=2), np.ascontiguousarray(array[:, :, 1]), pil_mode, 16
    rgb = np.ascontiguousarray(array[:, :, 2::-1])  # BGR(A) → RGB
    alpha = np.ascontiguousarray(array[:, :, 3]) if channels == 4 else None
    return rgb, alpha, pil_mode, 16


def _valid_orientation(value: Any) -> int:
    try:
        value = int(value)
    except (TypeError, ValueError):
        return 1
    return value if 1 <= value <= 8 else 1


def _exif_and_orientation(im: Any, info: dict[str, Any]) -> tuple[bytes | None, int]:
    raw = info.get("exif")
    try:
        exif = im.getexif()
    except Exception:
        exif = None
    orientation = _valid_orientation(exif.get(_ORIENTATION_TAG)) if exif else 1
    if isinstance(raw, (bytes, bytearray)) and raw:
        return normalise_exif(bytes(raw)), orientation
    if exif:
        try:
            return normalise_exif(exif.tobytes()), orientation
        except Exception:
            return None, orientation
    return None, orientation


def _xmp(im: Any, info: dict[str, Any]) -> bytes | None:
    for key in ("xmp", "XML:com.adobe.xmp"):
        value = info.get(key)
        if value:
            return value.encode("utf-8") if isinstance(value, str) else bytes(value)
    tags = getattr(im, "tag_v2", None)
    if tags is not None and 700 in tags:
        value = tags[700]
        return value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return None


# ---------------------------------------------------------------------- metadata


@dataclass(frozen=True)
class PhotoMetadata:
    """What the index keeps from a photo's EXIF."""

    taken_at: str | None = None  # ISO 8601 ("2019-05-04T12:34:56", "+02:00" when the offset is known)
    camera_make: str | None = None
    camera_model: str | None = None
    gps_lat: float | None = None  # degrees, north positive
    gps_lon: float | None = None  # degrees, east positive
    orientation: int = 1


def read_metadata(path: str | os.PathLike[str]) -> PhotoMetadata:
    """EXIF metadata of a photo file: exifread first, Pillow where exifread finds nothing (e.g. HEIC)."""
    if not is_regular_file(path):  # opening a FIFO would block
        return PhotoMetadata()
    try:
        import exifread

        with open(path, "rb") as f:
            tags = exifread.process_file(f, details=False)
    except Exception:
        tags = {}
    if tags:
        return _metadata_from_exifread(tags)
    return _metadata_from_pillow_file(path)


def metadata_from_exif(exif: bytes | None) -> PhotoMetadata:
    """Metadata from a raw EXIF block (as in :attr:`LoadedImage.exif`), without reopening the file."""
    if not exif:
        return PhotoMetadata()
    tiff = exif[len(EXIF_PREFIX) :] if exif.startswith(EXIF_PREFIX) else exif
    try:
        import exifread

        tags = exifread.process_file(io.BytesIO(tiff), details=False)
    except Exception:
        tags = {}
    if tags:
        return _metadata_from_exifread(tags)
    try:
        from PIL import Image

        parsed = Image.Exif()
        parsed.load(tiff)
        return _metadata_from_pillow_exif(parsed)
    except Exception:
        return PhotoMetadata()


def _metadata_from_exifread(tags: dict[str, Any]) -> PhotoMetadata:
    def text(name: str) -> str | None:
        tag = tags.get(name)
        if tag is None:
            return None
        value = str(tag.printable if hasattr(tag, "printable") else tag).strip().strip("\x00").strip()
        return value or None

    def numbers(name: str) -> list[float] | None:
        tag = tags.get(name)
        if tag is None:
            return None
        try:
            return [float(v) for v in tag.values]
        except (TypeError, ValueError, ZeroDivisionError, AttributeError):
            return None

    orientation_tag = tags.get("Image Orientation")
    orientation = 1
    if orientation_tag is not None:
        try:
            orientation = _valid_orientation(orientation_tag.values[0])
        except (AttributeError, IndexError, TypeError):
            orientation = 1
    return _build_metadata(
        date_original=text("EXIF DateTimeOriginal"),
        date_digitized=text("EXIF DateTimeDigitized"),
        date_modified=text("Image DateTime"),
        offset=text("EXIF OffsetTimeOriginal") or text("EXIF OffsetTime"),
        make=text("Image Make"),
        model=text("Image Model"),
        lat=numbers("GPS GPSLatitude"),
        lat_ref=text("GPS GPSLatitudeRef"),
        lon=numbers("GPS GPSLongitude"),
        lon_ref=text("GPS GPSLongitudeRef"),
        gps_date=text("GPS GPSDate"),
        gps_time=numbers("GPS GPSTimeStamp"),
        orientation=orientation,
    )


def _metadata_from_pillow_file(path: str | os.PathLike[str]) -> PhotoMetadata:
    try:
        from PIL import Image

        register_heif()
        with Image.open(path) as im:
            return _metadata_from_pillow_exif(im.getexif())
    except Exception:
        return PhotoMetadata()


def _metadata_from_pillow_exif(exif: Any) -> PhotoMetadata:
    try:
        sub = exif.get_ifd(0x8769)
    except Exception:
        sub = {}
    try:
        gps = exif.get_ifd(0x8825)
    except Exception:
        gps = {}

    def text(value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        value = str(value).strip().strip("\x00").strip()
        return value or None

    def numbers(value: Any) -> list[float] | None:
        if value is None:
            return None
        try:
            return [float(v) for v in (value if isinstance(value, (tuple, list)) else [value])]
        except (TypeError, ValueError, ZeroDivisionError):
            return None

    return _build_metadata(
        date_original=text(sub.get(0x9003)),
        date_digitized=text(sub.get(0x9004)),
        date_modified=text(exif.get(0x0132)),
        offset=text(sub.get(0x9011)) or text(sub.get(0x9010)),
        make=text(exif.get(0x010F)),
        model=text(exif.get(0x0110)),
        lat=numbers(gps.get(2)),
        lat_ref=text(gps.get(1)),
        lon=numbers(gps.get(4)),
        lon_ref=text(gps.get(3)),
        gps_date=text(gps.get(29)),
        gps_time=numbers(gps.get(7)),
        orientation=_valid_orientation(exif.get(_ORIENTATION_TAG)),
    )


def _build_metadata(
    *,
    date_original: str | None,
    date_digitized: str | None,
    date_modified: str | None,
    offset: str | None,
    make: str | None,
    model: str | None,
    lat: list[float] | None,
    lat_ref: str | None,
    lon: list[float] | None,
    lon_ref: str | None,
    gps_date: str | None,
    gps_time: list[float] | None,
    orientation: int,
) -> PhotoMetadata:
    taken_at = None
    for candidate in (date_original, date_digitized, date_modified):
        taken_at = parse_exif_datetime(candidate, offset)
        if taken_at:
            break
    if taken_at is None and gps_date and gps_time and len(gps_time) == 3:
        # Last resort: the GPS fix time, which EXIF defines as UTC.
        h, m, s = (int(v) for v in gps_time)
        taken_at = parse_exif_datetime(f"{gps_date} {h:02d}:{m:02d}:{s:02d}", "+00:00")
    return PhotoMetadata(
        taken_at=taken_at,
        camera_make=make,
        camera_model=model,
        gps_lat=_gps_degrees(lat, lat_ref, "S"),
        gps_lon=_gps_degrees(lon, lon_ref, "W"),
        orientation=orientation,
    )


def parse_exif_datetime(value: str | None, offset: str | None = None) -> str | None:
    """``"2019:05:04 12:34:56"`` (+ ``"+02:00"``) → ``"2019-05-04T12:34:56+02:00"``; None if invalid."""
    from datetime import datetime

    if not value:
        return None
    text = value.strip().replace("\x00", "")[:19]
    for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y:%m:%d %H:%M", "%Y-%m-%dT%H:%M:%S"):
        try:
            parsed = datetime.strptime(text, fmt)
            break
        except ValueError:
            continue
    else:
        return None
    iso = parsed.isoformat()
    if offset:
        offset = offset.strip()
        if len(offset) == 6 and offset[0] in "+-" and offset[3] == ":" and offset[1:3].isdigit():
            iso += offset
    return iso


def _gps_degrees(parts: list[float] | None, ref: str | None, negative_ref: str) -> float | None:
    if not parts:
        return None
    degrees = (
        parts[0]
        + (parts[1] / 60.0 if len(parts) > 1 else 0.0)
        + (parts[2] / 3600.0 if len(parts) > 2 else 0.0)
    )
    if not np.isfinite(degrees):
        return None
    if ref and ref.strip().upper().startswith(negative_ref):
        degrees = -degrees
    return float(degrees)


@dataclass(frozen=True)
class ImageHeader:
    """What a photo's header says, read without decoding its pixels."""

    format: str
    width: int  # as stored (before EXIF orientation)
    height: int
    has_alpha: bool
    mode: str = ""  # Pillow's mode as stored (RGB, L, CMYK, I;16, ...)


def probe_image(path: str | os.PathLike[str]) -> ImageHeader | None:
    """Format and size of ``path`` from its header (cheap: no pixels decoded); None when unreadable."""
    from PIL import Image

    if not is_regular_file(path):  # a FIFO would block the open; the real read reports it
        return None
    register_heif()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _bomb_guard_lifted(), Image.open(path) as im:
                fmt = "JPEG" if im.format == "MPO" else (im.format or "UNKNOWN")
                alpha = im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info
                return ImageHeader(fmt, int(im.size[0]), int(im.size[1]), alpha, im.mode)
    except Exception:  # noqa: BLE001 - the real read reports why
        return None


_guard_lock = threading.Lock()


@contextlib.contextmanager
def _bomb_guard_lifted(max_pixels: int | None = None) -> Iterator[None]:
    """Pillow's decompression-bomb guard set to ``max_pixels`` (off: None) for one trusted open."""
    from PIL import Image

    with _guard_lock:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels  # None: off; above it Pillow warns (an error here)
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def verify_written(path: str | os.PathLike[str], width: int, height: int) -> None:
    """Decode a file hime just wrote to its end, in bounded memory; raise :class:`ImageReadError` if
    it does not decode or is not ``width`` × ``height``.

    The size is known (hime wrote it), so the bomb guard is lifted to exactly that size: an
    output larger than :data:`MAX_PIXELS` (a 12 MP photo ×4 is 190 MP) is checked, not refused.
    A JPEG is decoded at 1/8 scale (libjpeg's DCT scaling): every entropy-coded block is still
    read, so a truncated or corrupt file fails, for 1/64 of the memory. Other formats decode at
    full size (8-bit: ~4 bytes per pixel); 16-bit layouts Pillow cannot read go through
    :func:`decode_image` as before.
    """
    from PIL import Image

    register_heif()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _bomb_guard_lifted(width * height + 1), Image.open(path) as im:
                size = im.size
                if size == (width, height):
                    if im.format == "JPEG":
                        im.draft(im.mode, (max(1, width // 8), max(1, height // 8)))
                    im.load()
    except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise many types
        if width * height > MAX_PIXELS:
            raise ImageReadError(f"truncated or corrupt image data ({type(exc).__name__}: {exc}).") from None
        decoded = decode_image(read_file(path), max_pixels=width * height + 1)
        size = (decoded.pixels.shape[1], decoded.pixels.shape[0])
    if size != (width, height):
        raise ImageReadError(f"the file is {size[0]}x{size[1]}, expected {width}x{height}.")
