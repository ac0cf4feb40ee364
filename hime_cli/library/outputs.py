"""What hime wrote: never a photo of the library (issue #10, item 5).

A scan (and ``hime enhance`` walking a folder) skips three kinds of path:

- folders named ``hime-enhanced`` and ``hime-compare``, hime's default output folders
  (:data:`hime_cli.library.reader.SKIPPED_FOLDERS`);
- folders hime *created* for an ``--out`` or a ``--compare-dir``: the enhance ledger lists them
  (a folder that existed before is the user's, and only the files hime wrote in it are skipped);
- files hime wrote with ``--out``, wherever they are: the ledger lists every one.

Photos replaced in place are the user's own and stay indexed (the scan reads their originals,
``library.backup``). The ledger belongs to the pipeline (``pipeline.ledger``, which writes it);
this module only reads it, by file name, so the library never imports the pipeline.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from hime_cli.library.index import path_key
from hime_cli.paths import get_paths

log = logging.getLogger(__name__)

LEDGER_NAME = "enhance-ledger.sqlite3"


def ledger_path() -> Path:
    """Where the enhance ledger lives (``HIME_HOME``'s data folder)."""
    return get_paths().data_dir / LEDGER_NAME


@dataclass(frozen=True)
class HimeOutputs:
    """Files hime wrote (``--out``) and folders it created for its output, as absolute path bytes."""

    files: frozenset[bytes] = frozenset()
    folders: frozenset[bytes] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.files or self.folders)

    def contains(self, path: str | os.PathLike[str]) -> bool:
        """Is ``path`` (as given, or with its symlinks resolved) a file hime wrote, or inside a
        folder hime created for its output?"""
        if not self:
            return False
        for key in {path_key(path), path_key(os.path.realpath(path))}:
            if key in self.files:
                return True
            if self.folders:
                parent = os.path.dirname(key)
                while True:
                    if parent in self.folders:
                        return True
                    up = os.path.dirname(parent)
                    if up == parent:
                        break
                    parent = up
        return False


def read_outputs(path: Path | None = None) -> HimeOutputs:
    """What the enhance ledger at ``path`` (default: :func:`ledger_path`) says hime wrote.

    Read-only; an absent, older or unreadable ledger gives what it can (nothing at worst: the
    scan then indexes as it did before the ledger existed) and never raises.
    """
    path = path or ledger_path()
    if not path.is_file():
        return HimeOutputs()
    files: frozenset[bytes] = frozenset()
    folders: frozenset[bytes] = frozenset()
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0)
    except sqlite3.Error as exc:
        log.warning("cannot read the enhance ledger %s (%s): files hime wrote may be indexed", path, exc)
        return HimeOutputs()
    try:
        try:
            rows = conn.execute("SELECT dest FROM outputs WHERE in_place = 0").fetchall()
        except sqlite3.Error:  # a ledger from before version 2: all its rows were --out
            rows = conn.execute("SELECT dest FROM outputs").fetchall()
        files = frozenset(_as_bytes(r[0]) for r in rows)
        try:
            folders = frozenset(_as_bytes(r[0]) for r in conn.execute("SELECT path FROM output_folders"))
        except sqlite3.Error:  # before version 3
            pass
    except sqlite3.Error as exc:
        log.warning("cannot read the enhance ledger %s (%s): files hime wrote may be indexed", path, exc)
    finally:
        conn.close()
    return HimeOutputs(files, folders)


def _as_bytes(value: object) -> bytes:
    if isinstance(value, (bytes, memoryview)):
        return bytes(value)
    return os.fsencode(str(value))
