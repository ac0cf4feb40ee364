"""``hime eval``: PSNR / SSIM / identity distance of HIME vs bicubic on identity folders."""

from __future__ import annotations

from pathlib import Path

import typer

from hime_cli.cli.common import err, out, print_json, progress_enabled
from hime_cli.cli.options import JsonOpt, WeightsOpt


def register(app: typer.Typer) -> None:
    """Register ``hime eval`` on the root app."""
    app.command("eval")(eval_cmd)


def eval_cmd(
    data: Path = typer.Argument(
        ..., help="Identity folders (<DIR>/<person>/*.jpg) or a prepared crops .npz."
    ),
    scale: int = typer.Option(4, "--scale", help="4 (32→128) or 8 (16→128)."),
    refs: int = typer.Option(3, "--refs", help="References per face (other photos of the same person)."),
    weights: WeightsOpt = None,
    limit: int | None = typer.Option(
        None, "--limit", help="Evaluate at most N faces (spread over identities)."
    ),
    batch: int = typer.Option(16, "--batch"),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads (default: torch's)."),
    no_identity: bool = typer.Option(
        False, "--no-identity", help="Skip the dlib identity distance (faster)."
    ),
    degradation: str = typer.Option(
        "bicubic",
        "--degradation",
        help="bicubic (the paper's protocol) or real (blur, noise, JPEG q30-95; seeded per face).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the real degradation and of the reference draws."),
    mirror: bool = typer.Option(
        False,
        "--mirror",
        help="Score the network as `hime enhance` runs it by default: on each face and its mirror "
        "image, averaged (off: the network alone, as every model card measures it).",
    ),
    lr_crop: str = typer.Option(
        "auto",
        "--lr-crop",
        help="For a ×4 network at --scale 8: native (the 16 px face, references halved, output "
        "resampled), upsampled (the face Lanczos-enlarged to 32 px, full references), or auto: "
        "as `hime enhance` crops for these weights (native for weights registered at ×8).",
    ),
    json_out: JsonOpt = False,
) -> None:
    """Evaluate bicubic, hime, hime_blank (no refs) and hime_wrong_refs (another person's refs)."""
    import torch
    from rich.progress import Progress
    from rich.table import Table

    from hime_cli.errors import UsageError
    from hime_cli.training.degradation import PROTOCOLS
    from hime_cli.training.evaluate import LR_CROPS, evaluate, load_model_for_eval, params_and_gmacs
    from hime_cli.training.run import load_or_prepare

    if scale not in (4, 8):
        raise UsageError(f"--scale must be 4 or 8, got {scale}")
    if degradation not in PROTOCOLS:
        raise UsageError(f"--degradation must be one of {', '.join(PROTOCOLS)}, got {degradation!r}")
    if lr_crop not in (*LR_CROPS, "auto"):
        raise UsageError(f"--lr-crop must be auto, {' or '.join(LR_CROPS)}; got {lr_crop!r}")
    if threads:
        torch.set_num_threads(threads)
    model, label = load_model_for_eval(weights, scale)
    if lr_crop == "auto":
        lr_crop = _enhance_lr_crop(label, scale, int(model.scale))
    if mirror:
        from hime_cli.sr.ensemble import MirrorEnsemble

        model = MirrorEnsemble(model)  # "mirror" in the result says so; "weights" stays the weights
    # A quick --limit run only prepares enough identity folders for that many faces.
    limit_ids = max(2, -(-limit // 4)) if limit else None
    crops = load_or_prepare(
        data, log=lambda s: err.print(s, highlight=False, markup=False), limit_identities=limit_ids
    )
    if len(crops) == 0:
        raise UsageError(f"no usable faces found in {data}")
    with Progress(console=err, disable=not progress_enabled()) as bar:
        task = bar.add_task("evaluating", total=None)
        result = evaluate(
            model,
            crops,
            scale=scale,
            n_refs=refs,
            limit=limit,
            batch=batch,
            with_identity=not no_identity,
            degradation=degradation,
            seed=seed,
            lr_crop=lr_crop,
            progress=lambda done, n: bar.update(task, completed=done, total=n),
        )
    params, gmacs = params_and_gmacs(model, scale, refs, result["net_input"])
    result = {**result, "weights": label, "mirror": mirror, "params": params, "gmacs": gmacs}
    order = [
        "scale",
        "model_scale",
        "lr_size",
        "lr_crop",
        "net_input",
        "degradation",
        "seed",
        "faces",
        "identities",
        "refs",
        "weights",
        "mirror",
        "params",
        "gmacs",
        "methods",
    ]
    result = {k: result[k] for k in order if k in result}
    if json_out:
        print_json(result)
        return
    via = ""
    if result.get("model_scale", scale) != scale:
        via = (
            f", ×{result['model_scale']} network on the face enlarged to {result['net_input']} px"
            if result["lr_crop"] == "upsampled"
            else f", ×{result['model_scale']} network resampled"
        )
    via += ", mirror ensemble" if mirror else ""
    table = Table(
        title=f"×{scale}{via} ({degradation}) on {result['faces']} faces of {result['identities']} people ({label})"
    )
    for col in ("method", "PSNR (dB)", "SSIM", "id dist", "ms/face"):
        table.add_column(col, justify="right" if col != "method" else "left")
    for name, m in result["methods"].items():
        table.add_row(
            name,
            f"{m['psnr']:.2f}",
            f"{m['ssim']:.4f}",
            f"{m.get('id_dist', float('nan')):.3f}",
            f"{m['ms_per_face']:.1f}" if "ms_per_face" in m else "-",
        )
    out.print(table)
    out.print(
        f"params {params / 1e6:.3f} M, {gmacs} GMACs at {result['net_input']}→{result['net_input'] * int(model.scale)} with {refs} refs"
    )


def _enhance_lr_crop(label: str, scale: int, model_scale: int) -> str:
    """The LR crop ``hime enhance --scale`` gives these weights: their own zoom's input ("native")
    for weights registered at ``scale`` (or used at their network's zoom), else the small face
    enlarged to the network's input ("upsampled")."""
    if model_scale == scale:
        return "native"
    from hime_cli.sr.inference import weights_input_scale

    return "native" if weights_input_scale(label) == scale else "upsampled"
