"""``hime paths``: where the index, caches and weights live."""

from __future__ import annotations

import typer

from hime_cli.cli.common import out, print_json, safe
from hime_cli.cli.options import JsonOpt


def register(app: typer.Typer) -> None:
    """Register ``hime paths`` on the root app."""
    app.command("paths")(paths_cmd)


def paths_cmd(json_out: JsonOpt = False) -> None:
    """Print where hime keeps its index, caches and weights (HIME_HOME overrides all)."""
    from hime_cli.paths import get_paths

    p = get_paths()
    rows = {
        "home": str(p.home) if p.home else None,
        "index": str(p.index_path),
        "data": str(p.data_dir),
        "cache": str(p.cache_dir),
        "crops": str(p.crops_dir),
        "weights": str(p.weights_dir),
        "hf_cache": str(p.hf_cache_dir),
        "backups": str(p.backups_dir),
        "ledger": str(p.data_dir / "enhance-ledger.sqlite3"),
    }
    if json_out:
        print_json(rows)
        return
    for key, value in rows.items():
        out.print(f"[bold]{key:9}[/] {safe(value)}", highlight=False)
