"""Exceptions raised by hime's library code.

Every error carries a short message and, where possible, a fix-it hint. The CLI maps them to a
single line ``Error: ... Hint: ...`` (``HIME_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations


class HimeError(Exception):
    """Base class of every error hime raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} Hint: {self.hint}"


class UsageError(HimeError):
    """The user asked for something that cannot work (bad option combination, missing path)."""

    exit_code = 2


class ImageReadError(HimeError):
    """A photo could not be decoded (empty, truncated, corrupt, not an image, too large)."""


class ImageWriteError(HimeError):
    """An output photo could not be written safely."""


class IndexError_(HimeError):
    """The library index is missing, locked or inconsistent."""


class IndexLockedError(IndexError_):
    """Another hime process holds the index lock."""


class ModelError(HimeError):
    """Model weights are missing, tampered with, or do not match the architecture."""


class IntegrityError(ModelError):
    """A weight file's sha256 does not match the registry."""


class DependencyError(HimeError):
    """An optional dependency or downloadable resource is unavailable (e.g. offline)."""


class StoreDamagedError(HimeError):
    """One of hime's own databases (index, backup manifest, enhance ledger) is corrupt or truncated."""

    def __init__(self, message: str, hint: str | None = None, *, path: object = None) -> None:
        super().__init__(message, hint)
        self.path = path
