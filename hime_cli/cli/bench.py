"""``hime bench ...``: reproducible performance measurements (one function per subcommand)."""

from __future__ import annotations

from pathlib import Path

import typer

from hime_cli.cli.common import err, out, print_json
from hime_cli.cli.options import JsonOpt

bench_app = typer.Typer(help="Measure how fast hime runs on this machine.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")


@bench_app.command("scan")
def scan_cmd(
    folder: Path = typer.Argument(..., help="A folder of photos to scan (into a temporary index)."),
    limit: int | None = typer.Option(None, "--limit", "-n", help="Scan only the first N photos."),
    embedder: str = typer.Option("dlib", "--embedder", "-e", help="Face embedder: dlib or facenet."),
    rescan_photos: int = typer.Option(
        5000,
        "--rescan-photos",
        help="Size of the synthetic unchanged index whose re-scan is timed (0: skip).",
    ),
    sequential: bool = typer.Option(
        False, "--sequential", help="Analyse in this process (no worker processes)."
    ),
    workers: int | None = typer.Option(
        None, "--workers", "-w", help="Worker processes (default: the usable cores, at most 4)."
    ),
    json_out: JsonOpt = False,
) -> None:
    """Scan throughput (photos/s, ms per face, every face embedded) and the re-scan time of an unchanged index."""
    from hime_cli.errors import UsageError
    from hime_cli.library.bench import bench_rescan, bench_scan

    if not folder.is_dir():
        raise UsageError(f"not a folder: {folder}")
    err.print(f"Scanning {folder} into a temporary index …", highlight=False)
    result = bench_scan(folder, limit=limit, embedder=embedder, parallel=not sequential, workers=workers)
    rescan = None
    if rescan_photos > 0:
        err.print(f"Timing the re-scan of an unchanged {rescan_photos}-photo index …", highlight=False)
        rescan = bench_rescan(rescan_photos)
    if json_out:
        print_json({"scan": result.to_dict(), "rescan": rescan.to_dict() if rescan else None})
        return
    out.print(
        f"scan: {result.photos} photos, {result.faces} faces in {result.seconds:.1f} s → "
        f"[bold]{result.photos_per_s:.2f} photos/s[/], "
        + (f"{result.ms_per_face:.0f} ms per face" if result.ms_per_face else "no faces")
        + f" ({result.embedder}, {result.workers} worker(s), {result.cpu_count} CPUs, "
        f"load {result.load_average}; models loaded in {result.model_load_s:.1f} s)",
        highlight=False,
    )
    if result.failed:
        out.print(f"  {result.failed} photos failed to read", highlight=False)
    if rescan:
        out.print(
            f"re-scan of an unchanged {rescan.photos}-photo index: [bold]{rescan.rescan_s:.2f} s[/]",
            highlight=False,
        )


@bench_app.command("sr")
def sr_cmd(
    model: str = typer.Option(
        "hime_small_x4", "--model", "-m", help="Architecture to time (random weights)."
    ),
    batch: int = typer.Option(16, "--batch", help="Faces per forward pass."),
    refs: int = typer.Option(3, "--refs", help="References per face."),
    threads: int = typer.Option(2, "--threads", help="CPU threads."),
    repeats: int = typer.Option(5, "--repeats", help="Timed repetitions (the median is reported)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    json_out: JsonOpt = False,
) -> None:
    """SR speed: ms per face for a batch of faces with references (paper budget: ≤ 50 ms on 2 cores)."""
    from hime_cli.sr.bench import benchmark_sr

    err.print(f"Timing {model}: batch {batch}, {refs} refs, {threads} threads on {device} …", highlight=False)
    result = benchmark_sr(model, batch=batch, refs=refs, threads=threads, repeats=repeats, device=device)
    if json_out:
        print_json(result)
        return
    out.print(
        f"{model}: {result['ms_per_face']:.1f} ms per face (batch {batch}, {refs} refs, {threads} threads, {device}); "
        f"{result['params'] / 1e6:.3f} M params, {result['gmacs']:.2f} GMACs per face",
        highlight=False,
    )
