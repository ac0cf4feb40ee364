"""``hime doctor``: check hime's own files (index, backup manifest and objects, enhance ledger).

Each check says what is wrong and what ``repair=True`` would do; with it, it does that. Nothing
is ever deleted: a damaged database is moved aside (``<name>.damaged-<time>``), and backups are
never removed. Library code: returns findings, prints nothing.
"""

from __future__ import annotations

from hime_cli.library.backup import Finding, check_store
from hime_cli.library.outputs import ledger_path
from hime_cli.library.sqlite_store import check_database, move_aside
from hime_cli.paths import get_paths

__all__ = ["Finding", "check_all", "ledger_path"]


def _check_index(repair: bool) -> Finding:
    from hime_cli.library.migrations import LATEST_VERSION, current_version

    path = get_paths().index_path
    if not path.exists():
        return Finding("library index", "ok", f"none yet ({path}); `hime scan` creates it")
    problem = check_database(path)
    if problem is None:
        import sqlite3

        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            version = current_version(conn)
        finally:
            conn.close()
        if version > LATEST_VERSION:
            return Finding(
                "library index", "problem", f"schema version {version}, newer than this hime", "upgrade hime"
            )
        note = (
            ""
            if version == LATEST_VERSION
            else f"; schema {version} → {LATEST_VERSION} at the next `hime scan`"
        )
        return Finding("library index", "ok", f"{path}{note}")
    action = (
        "move it aside (kept: identity names and your face assignments are in it) and re-scan "
        "with `hime scan PATH`"
    )
    if repair:
        aside = move_aside(path)
        return Finding(
            "library index", "repaired", f"was damaged ({problem})", f"moved to {aside.name}; now re-scan"
        )
    return Finding("library index", "problem", f"damaged ({problem})", action)


def _check_ledger(repair: bool) -> Finding:
    path = ledger_path()
    if not path.exists():
        return Finding("enhance ledger", "ok", "none yet")
    problem = check_database(path)
    if problem is None:
        return Finding("enhance ledger", "ok", str(path))
    action = "move it aside: photos it listed are enhanced again (in place: from their originals)"
    if repair:
        aside = move_aside(path)
        return Finding("enhance ledger", "repaired", f"was damaged ({problem})", f"moved to {aside.name}")
    return Finding("enhance ledger", "problem", f"damaged ({problem})", action)


def check_all(*, repair: bool = False) -> list[Finding]:
    """Every check, in order: index, backup store (manifest, records, objects, temps), ledger."""
    return [_check_index(repair), *check_store(repair=repair), _check_ledger(repair)]
