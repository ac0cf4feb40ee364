"""``hime train``: train HIME on identity folders (checkpointed, resumable, time-budgeted)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from hime_cli.cli.common import err, progress_enabled
from hime_cli.cli.options import DeviceOpt
from hime_cli.pipeline.options import DEFAULT_DEVICE


class Variant(str, Enum):
    small = "small"
    large = "large"
    test = "test"


def register(app: typer.Typer) -> None:
    """Register ``hime train`` on the root app."""
    app.command("train")(train_cmd)


def train_cmd(
    data: Path = typer.Option(
        ..., "--data", help="Identity folders (<DIR>/<person>/*.jpg) or a prepared crops .npz."
    ),
    run: Path = typer.Option(..., "--run", help="Run folder: checkpoints, log.jsonl, exported weights."),
    scale: int = typer.Option(4, "--scale", help="Upscaling factor: 4 (32→128) or 8 (16→128)."),
    variant: Variant = typer.Option(
        Variant.small, "--variant", help="small (dconv RFA), large (flow-guided RFA), test (tiny)."
    ),
    val_data: Path | None = typer.Option(
        None, "--val-data", help="Identity folders to report PSNR on while training."
    ),
    time_budget: float | None = typer.Option(
        None, "--time-budget", help="Minutes of training (the cosine schedule follows it)."
    ),
    steps: int | None = typer.Option(None, "--steps", help="Maximum optimisation steps."),
    batch: int | None = typer.Option(None, "--batch", help="Faces per step (default 32)."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate (default 4e-4)."),
    seed: int = typer.Option(0, "--seed"),
    device: DeviceOpt = DEFAULT_DEVICE,
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN/checkpoint.safetensors."),
    checkpoint_minutes: float = typer.Option(
        10.0, "--checkpoint-minutes", help="Checkpoint at least this often."
    ),
    degradation: str = typer.Option(
        "bicubic",
        "--degradation",
        help="LR degradation: bicubic (the paper's clean shrink) or real (blur, noise, JPEG; docs/training.md).",
    ),
    init: Path | None = typer.Option(None, "--init", help="Start from these weights (fine-tune)."),
) -> None:
    """Train HIME on faces cropped from identity folders, with the crop policy `hime enhance` uses."""
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from hime_cli.errors import UsageError
    from hime_cli.training.run import arch_name, run_training

    if scale not in (4, 8):
        raise UsageError(f"--scale must be 4 or 8, got {scale}")
    if time_budget is None and steps is None:
        raise UsageError("give --time-budget MINUTES or --steps N", hint="e.g. --time-budget 90")
    if resume and not (run / "checkpoint.safetensors").exists():
        raise UsageError(f"nothing to resume: {run / 'checkpoint.safetensors'} does not exist")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    arch = arch_name(variant.value, scale)
    total = steps if steps is not None else 1000
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("step {task.fields[step]} loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not progress_enabled(),
    ) as bar:
        task = bar.add_task(arch, total=total, step=0, loss="-")

        def on_step(state, fraction: float) -> None:
            if state.step % 10 == 0:
                bar.update(task, completed=fraction * total, step=state.step, loss=f"{state.last_loss:.4f}")

        run_training(
            data=data,
            val_data=val_data,
            run_dir=run,
            arch=arch,
            time_budget_s=time_budget * 60 if time_budget else None,
            steps=steps,
            batch=batch,
            lr=lr,
            seed=seed,
            device=device,
            resume=resume,
            checkpoint_minutes=checkpoint_minutes,
            degradation=degradation,
            init_weights=init,
            log=lambda s: err.print(s, highlight=False, markup=False),
            on_step=on_step,
        )
    err.print(f"Weights: {run / (arch + '.safetensors')}  (export with `hime models` / docs/training.md)")
