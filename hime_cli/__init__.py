"""hime: sharpen the small faces in a photo library with reference-based super-resolution (HIME)."""

from __future__ import annotations

__version__ = "0.1.0"
