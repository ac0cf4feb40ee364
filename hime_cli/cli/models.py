"""``hime models list|download|info|verify``: the registered weights and where they resolve."""

from __future__ import annotations

from typing import Any

import typer

from hime_cli.cli.common import err, fail, out, print_json, safe
from hime_cli.cli.options import JsonOpt

models_app = typer.Typer(
    name="models",
    help="List, download, inspect and verify model weights.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Register this group's commands on the root app."""
    app.add_typer(models_app, name="models")


def _where(entry: Any) -> tuple[str, str | None]:
    """("cache" | "bundled" | "missing", path) without downloading or hashing."""
    from hime_cli.hub import locate_weights

    locations = locate_weights(entry)
    if not locations:
        return "missing", None
    return locations[0].source, str(locations[0].path)


def _params(entry: Any, path: str | None) -> int | None:
    from hime_cli.hub import count_parameters

    if entry.params is not None:
        return int(entry.params)
    return count_parameters(path) if path else None


def _row(entry: Any) -> dict[str, Any]:
    from hime_cli.hub import hub_repo_for

    where, path = _where(entry)
    return {
        "name": entry.name,
        "arch": entry.arch,
        "default": entry.default,
        "scale": entry.scale,
        "variant": entry.variant,
        "params": _params(entry, path),
        "dev_psnr": entry.dev_metrics.get("psnr"),
        "where": where,
        "path": path,
        "hub_repo": hub_repo_for(entry),
    }


def _fmt_params(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 100_000 else f"{n / 1e3:.1f}K"


@models_app.command("list")
def list_cmd(json_out: JsonOpt = False) -> None:
    """List the registered weights: scale, variant, size, dev PSNR and where each resolves."""
    from hime_cli.hub import load_registry, registry_path

    rows = [_row(e) for e in sorted(load_registry().values(), key=lambda e: e.name)]
    if json_out:
        print_json(rows)
        return
    if not rows:
        err.print(f"No weights registered (registry: {registry_path()}).", highlight=False)
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in ("name", "scale", "variant", "params", "dev PSNR", "where"):
        table.add_column(col, justify="right" if col in ("scale", "params", "dev PSNR") else "left")
    for r in rows:
        name = r["name"] + (" (default)" if r["default"] else "")
        psnr = f"{r['dev_psnr']:.2f}" if isinstance(r["dev_psnr"], (int, float)) else "-"
        table.add_row(name, f"x{r['scale']}", r["variant"] or "-", _fmt_params(r["params"]), psnr, r["where"])
    out.print(table)


@models_app.command("info")
def info_cmd(
    name: str = typer.Argument(..., help="Weight name (arch.tag) or architecture name."),
    json_out: JsonOpt = False,
) -> None:
    """Show everything the registry records about one weight, and where it resolves."""
    from hime_cli.hub import bundled_dirs, find_entry

    entry = find_entry(name)
    info = entry.to_json()
    where, path = _where(entry)
    info.update(where=where, path=path, params=_params(entry, path))
    card = next((d / entry.card for d in bundled_dirs() if entry.card and (d / entry.card).is_file()), None)
    info["card_path"] = str(card) if card else None
    if json_out:
        print_json(info)
        return
    for key, value in info.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        out.print(f"[bold]{key:14}[/] {safe(value if value not in (None, '') else '-')}", highlight=False)


@models_app.command("download")
def download_cmd(
    name: str = typer.Argument(..., help="Weight name (arch.tag) or architecture name."),
    force: bool = typer.Option(False, "--force", help="Download again even if an intact copy is cached."),
) -> None:
    """Download a weight from the hub (HIME_HUB_REPO) into the cache and verify its sha256."""
    from hime_cli.hub import download_weights

    err.print(f"Fetching {name} …", highlight=False)
    resolved = download_weights(name, force=force)
    out.print(safe(resolved.path), highlight=False)
    err.print(f"{resolved.entry.name if resolved.entry else name}: ok ({resolved.source})", highlight=False)


@models_app.command("verify")
def verify_cmd(json_out: JsonOpt = False) -> None:
    """Check the sha256 of every local copy of every registered weight. Exit 1 on a mismatch."""
    from hime_cli.hub import load_registry, locate_weights, sha256_file

    results: list[dict[str, Any]] = []
    for entry in sorted(load_registry().values(), key=lambda e: e.name):
        locations = locate_weights(entry)
        if not locations:
            results.append({"name": entry.name, "source": None, "path": None, "status": "missing"})
        for loc in locations:
            ok = sha256_file(loc.path) == entry.sha256
            results.append(
                {
                    "name": entry.name,
                    "source": loc.source,
                    "path": str(loc.path),
                    "status": "ok" if ok else "MISMATCH",
                }
            )
    bad = [r for r in results if r["status"] == "MISMATCH"]
    registry = load_registry()
    if json_out:
        print_json(results)
    else:
        for r in results:
            style = {"ok": "green", "missing": "yellow"}.get(r["status"], "bold red")
            where = f"{r['source']}: {r['path']}" if r["path"] else "no local copy"
            out.print(f"[{style}]{r['status']:8}[/] {safe(r['name'])}  {safe(where)}", highlight=False)
    if bad:
        from pathlib import Path

        from hime_cli.hub import repair_hint

        first = bad[0]
        raise fail(
            f"{len(bad)} damaged weight file(s).", repair_hint(registry[first["name"]], Path(first["path"]))
        )
