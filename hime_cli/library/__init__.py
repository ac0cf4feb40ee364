"""The photo library: image reading (EXIF, orientation, ICC, HEIC), the SQLite index, scanning."""
