"""Builders for the synthetic test corpus: unusual-but-valid photos and broken files.

Everything is generated at test time into tmp_path; no binary fixture is committed.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

# How to store an upright image so that a viewer applying EXIF orientation o shows it upright
# (the inverse of the transform the reader applies).
STORE_FOR_ORIENTATION = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,  # viewer rotates 90° clockwise, so store it 90° counter-clockwise
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def asymmetric_rgb(width: int = 48, height: int = 32, seed: int = 0) -> np.ndarray:
    """An (H, W, 3) uint8 image with no symmetry: any flip or rotation changes it."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    image[: height // 4, : width // 4] = (255, 0, 0)  # a red top-left corner block
    return image


def exif_with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def save_oriented(path: Path, upright: np.ndarray, orientation: int, fmt: str = "PNG") -> Path:
    """Save ``upright`` stored so that applying EXIF ``orientation`` makes it upright again."""
    im = Image.fromarray(upright)
    op = STORE_FOR_ORIENTATION[orientation]
    if op is not None:
        im = im.transpose(op)
    kwargs = {"quality": 100, "subsampling": 0} if fmt == "JPEG" else {}
    im.save(path, format=fmt, exif=exif_with_orientation(orientation), **kwargs)
    return path


def exif_full() -> Image.Exif:
    """EXIF with camera, date (+offset) and GPS 48°51'30"N 2°17'40.2"E (Paris)."""
    exif = Image.Exif()
    exif[0x010F] = "TestMake"
    exif[0x0110] = "TestCam 1"
    exif[0x0132] = "2020:01:01 00:00:00"
    sub = exif.get_ifd(0x8769)
    sub[0x9003] = "2019:05:04 12:34:56"
    sub[0x9011] = "+02:00"
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = (48.0, 51.0, 30.0)
    gps[3] = "E"
    gps[4] = (2.0, 17.0, 40.2)
    return exif


PARIS = (48 + 51 / 60 + 30 / 3600, 2 + 17 / 60 + 40.2 / 3600)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def decompression_bomb_png(path: Path, side: int = 30_000) -> Path:
    """A valid 1-bit greyscale PNG of side × side black pixels: ~110 kB on disk, 900 MP decoded."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    block = row * 1000
    parts = [compressor.compress(block) for _ in range(side // 1000)]
    parts.append(compressor.compress(row * (side % 1000)))
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"".join(parts))
    path.write_bytes(data + png_chunk(b"IEND", b""))
    return path


def jpeg_bytes(image: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_png16(path: Path, rgb16: np.ndarray) -> Path:
    """16-bit PNG (RGB, RGBA or grey) via OpenCV (which, unlike Pillow, writes 16-bit colour)."""
    array = rgb16
    if array.ndim == 3 and array.shape[2] == 3:
        array = array[:, :, ::-1]
    elif array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, [2, 1, 0, 3]]
    ok, buffer = cv2.imencode(os.path.splitext(str(path))[1] or ".png", np.ascontiguousarray(array))
    assert ok
    path.write_bytes(buffer.tobytes())
    return path


def broken_files(folder: Path) -> dict[str, Path]:
    """Every kind of broken input a scan must survive; name → path."""
    folder.mkdir(parents=True, exist_ok=True)
    good = jpeg_bytes(asymmetric_rgb(64, 64))
    files = {
        "empty": folder / "empty.jpg",
        "truncated": folder / "truncated.jpg",
        "random": folder / "random.jpg",
        "text": folder / "notes.png",
        "bomb": folder / "bomb.png",
    }
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(good[: len(good) // 2])
    files["random"].write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    files["text"].write_text("this is not a picture\n" * 20)
    decompression_bomb_png(files["bomb"])
    return files
