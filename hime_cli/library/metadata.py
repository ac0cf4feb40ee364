"""EXIF and XMP blocks: normalised on read, patched on write (orientation reset, new size).

The reader normalises the raw EXIF block it keeps (:func:`normalise_exif`); the writer patches it
in place, byte for byte otherwise (:func:`patch_exif`: maker notes and offsets stay intact), and
edits XMP the same way (:func:`patch_xmp`, MWG face regions turned with the pixels).
"""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Iterator

from hime_cli.errors import ImageWriteError

logger = logging.getLogger(__name__)

EXIF_PREFIX = b"Exif\x00\x00"


def normalise_exif(raw: bytes) -> bytes:
    """EXIF as ``b"Exif\\0\\0" + TIFF block``, whatever form the container stored it in."""
    if raw.startswith(EXIF_PREFIX):
        return raw
    if raw[:4] in (b"II*\x00", b"MM\x00*"):
        return EXIF_PREFIX + raw
    return raw


_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}


class _Tiff:
    """Just enough of a TIFF/EXIF block to patch entries in place."""

    def __init__(self, data: bytearray) -> None:
        self.data = data
        order = bytes(data[:2])
        if order == b"II":
            self.e = "<"
        elif order == b"MM":
            self.e = ">"
        else:
            raise ValueError("not a TIFF block")
        if self.u16(2) != 42:
            raise ValueError("bad TIFF magic")

    def u16(self, off: int) -> int:
        return struct.unpack_from(self.e + "H", self.data, off)[0]

    def u32(self, off: int) -> int:
        return struct.unpack_from(self.e + "I", self.data, off)[0]

    def entries(self, ifd: int) -> Iterator[tuple[int, int, int, int]]:
        """(entry offset, tag, type, count) of each entry of the IFD at ``ifd``."""
        if ifd <= 0 or ifd + 2 > len(self.data):
            raise ValueError("IFD offset out of range")
        n = self.u16(ifd)
        if ifd + 2 + 12 * n + 4 > len(self.data):
            raise ValueError("IFD runs past the end")
        for i in range(n):
            off = ifd + 2 + 12 * i
            yield off, self.u16(off), self.u16(off + 2), self.u32(off + 4)

    def next_ifd_offset_pos(self, ifd: int) -> int:
        return ifd + 2 + 12 * self.u16(ifd)

    def find(self, ifd: int, tag: int) -> tuple[int, int, int] | None:
        for off, t, typ, count in self.entries(ifd):
            if t == tag:
                return off, typ, count
        return None

    def set_int(self, ifd: int, tag: int, value: int) -> bool:
        """Overwrite an inline SHORT/LONG scalar; a SHORT that cannot hold ``value`` becomes LONG."""
        found = self.find(ifd, tag)
        if found is None:
            return False
        off, typ, count = found
        if count != 1 or typ not in (3, 4):
            return False
        if typ == 3 and value > 0xFFFF:
            struct.pack_into(self.e + "H", self.data, off + 2, 4)
            typ = 4
        if typ == 3:
            struct.pack_into(self.e + "HH", self.data, off + 8, value, 0)
        else:
            struct.pack_into(self.e + "I", self.data, off + 8, value)
        return True


def patch_exif(exif: bytes | None, width: int, height: int, *, drop_thumbnail: bool = False) -> bytes | None:
    """The EXIF block with Orientation = 1 and the pixel dimensions set, patched in place.

    Everything else stays byte for byte (maker-note offsets stay valid). ``drop_thumbnail``
    unlinks IFD1 (its thumbnail would show the old orientation). Falls back to Pillow's EXIF
    serialiser when the block cannot be walked; raises :class:`ImageWriteError` when neither works.
    Returns ``b"Exif\\0\\0" + TIFF block`` (or None for no EXIF).
    """
    if not exif:
        return None
    tiff_bytes = exif[len(EXIF_PREFIX) :] if exif.startswith(EXIF_PREFIX) else exif
    try:
        tiff = _Tiff(bytearray(tiff_bytes))
        ifd0 = tiff.u32(4)
        list(tiff.entries(ifd0))  # validates
        tiff.set_int(ifd0, 0x0112, 1)
        tiff.set_int(ifd0, 0x0100, width)
        tiff.set_int(ifd0, 0x0101, height)
        exif_ifd = tiff.find(ifd0, 0x8769)
        if exif_ifd is not None:
            sub = tiff.u32(exif_ifd[0] + 8)
            tiff.set_int(sub, 0xA002, width)
            tiff.set_int(sub, 0xA003, height)
        if drop_thumbnail:
            struct.pack_into(tiff.e + "I", tiff.data, tiff.next_ifd_offset_pos(ifd0), 0)
        return EXIF_PREFIX + bytes(tiff.data)
    except (ValueError, struct.error) as exc:
        logger.debug("EXIF block not patchable in place (%s); re-serialising with Pillow", exc)
    try:
        from PIL import Image

        parsed = Image.Exif()
        parsed.load(tiff_bytes)
        parsed[0x0112] = 1
        sub = parsed.get_ifd(0x8769)
        if 0xA002 in sub:
            sub[0xA002] = width
        if 0xA003 in sub:
            sub[0xA003] = height
        out = parsed.tobytes()
        return out if out.startswith(EXIF_PREFIX) else EXIF_PREFIX + out
    except Exception as exc:
        raise ImageWriteError(
            f"the original's EXIF block is unreadable ({exc}); refusing to write the photo without it",
            hint="repair the EXIF (e.g. exiftool -all= -tagsfromfile @ -all:all FILE) and retry",
        ) from exc


def patch_xmp(xmp: bytes | None, width: int, height: int, orientation: int = 1) -> bytes | None:
    """XMP with tiff:Orientation = 1 and exif:PixelX/YDimension, tiff:ImageWidth/Length updated.

    MWG face regions (``mwg-rs``) follow the pixels: their normalised areas are relative to the
    stored image, so when the EXIF ``orientation`` was baked into the pixels they are turned
    the same way, and ``mwg-rs:AppliedToDimensions`` is set to the new size.
    """
    if not xmp:
        return None
    xmp = _patch_mwg_regions(xmp, width, height, orientation)
    values = {
        b"tiff:Orientation": b"1",
        b"exif:PixelXDimension": str(width).encode(),
        b"exif:PixelYDimension": str(height).encode(),
        b"tiff:ImageWidth": str(width).encode(),
        b"tiff:ImageLength": str(height).encode(),
    }
    out = xmp
    for key, value in values.items():
        k = re.escape(key)
        out = re.sub(
            rb"(" + k + rb"\s*=\s*[\"'])\s*\d+\s*([\"'])", lambda m, v=value: m.group(1) + v + m.group(2), out
        )
        out = re.sub(
            rb"(<" + k + rb">)\s*\d+\s*(</" + k + rb">)", lambda m, v=value: m.group(1) + v + m.group(2), out
        )
    return out


def orient_point(x: float, y: float, orientation: int) -> tuple[float, float]:
    """A normalised point of the stored image → the same point of the upright image
    (the mapping :func:`hime_cli.library.reader.apply_orientation` applies to the pixels)."""
    return {
        2: (1.0 - x, y),
        3: (1.0 - x, 1.0 - y),
        4: (x, 1.0 - y),
        5: (y, x),
        6: (1.0 - y, x),
        7: (1.0 - y, 1.0 - x),
        8: (y, 1.0 - x),
    }.get(orientation, (x, y))


_NUMBER = rb"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def _xmp_field(block: bytes, name: bytes) -> tuple[re.Match[bytes] | None, float | None]:
    """The value of ``name`` (e.g. ``stArea:x``) in an XMP block, in attribute or element form."""
    k = re.escape(name)
    for pattern in (
        rb"(" + k + rb"\s*=\s*[\"'])\s*(" + _NUMBER + rb")\s*([\"'])",
        rb"(<" + k + rb">)\s*(" + _NUMBER + rb")\s*(</" + k + rb">)",
    ):
        match = re.search(pattern, block)
        if match:
            try:
                return match, float(match.group(2))
            except ValueError:
                return None, None
    return None, None


def _set_fields(block: bytes, values: dict[bytes, str]) -> bytes:
    for name, value in values.items():
        match, _ = _xmp_field(block, name)
        if match is not None:
            block = block[: match.start(2)] + value.encode() + block[match.end(2) :]
    return block


def _fmt(v: float) -> str:
    return f"{min(max(v, 0.0), 1.0):.6f}".rstrip("0").rstrip(".") or "0"


def _patch_mwg_regions(xmp: bytes, width: int, height: int, orientation: int) -> bytes:
    if b"mwg-rs:" not in xmp:
        return xmp

    def area(match: re.Match[bytes]) -> bytes:
        block = match.group(0)
        if orientation in (1, 0) or b"pixel" in block:  # only normalised areas are relative
            return block
        fields = {n: _xmp_field(block, b"stArea:" + n)[1] for n in (b"x", b"y", b"w", b"h")}
        if fields[b"x"] is None or fields[b"y"] is None:
            return block
        x, y = orient_point(fields[b"x"], fields[b"y"], orientation)
        values = {b"stArea:x": _fmt(x), b"stArea:y": _fmt(y)}
        if orientation >= 5 and fields[b"w"] is not None and fields[b"h"] is not None:
            values[b"stArea:w"], values[b"stArea:h"] = _fmt(fields[b"h"]), _fmt(fields[b"w"])
        return _set_fields(block, values)

    def dims(match: re.Match[bytes]) -> bytes:
        return _set_fields(match.group(0), {b"stDim:w": str(width), b"stDim:h": str(height)})

    element = rb"<mwg-rs:{0}\b(?:[^>]*/>|.*?</mwg-rs:{0}>)"
    out = re.sub(element.replace(b"{0}", b"Area"), area, xmp, flags=re.S)
    return re.sub(element.replace(b"{0}", b"AppliedToDimensions"), dims, out, flags=re.S)
