"""Entry point shared by ``hime train`` and ``python -m hime_cli.training.run`` (GPU hosts).

Resolves the data (identity folders → cached crop set, or a prepared ``.npz``), builds the
config, trains with checkpoints, and exports the final weights next to the run.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from hime_cli.training.prepare import CropSet


def load_or_prepare(
    data: Path, log: Callable[[str], None] = print, limit_identities: int | None = None
) -> CropSet:
    """A crop set from a prepared ``.npz`` or from identity folders (prepared once, then cached).

    ``limit_identities`` prepares only the first N identity folders (sorted), e.g. for a quick eval.
    """
    data = Path(data)
    if data.suffix == ".npz":
        return CropSet.load(data)
    if not data.is_dir():
        from hime_cli.errors import UsageError

        raise UsageError(f"{data} is neither a folder of identity folders nor a prepared .npz crop set")
    from hime_cli.paths import get_paths
    from hime_cli.training.prepare import prepare_crops

    key = hashlib.sha256(f"{data.resolve()}|{limit_identities}".encode()).hexdigest()[:16]
    cache = get_paths().crops_dir / f"{data.name}-{key}.npz"
    if cache.exists():
        log(f"using cached crops {cache}")
        return CropSet.load(cache)
    log(f"preparing face crops from {data} (cached in {cache})")
    crops, stats = prepare_crops(data, limit_identities=limit_identities)
    log(json.dumps(stats))
    crops.save(cache)
    # The cache stores crops as JPEG (q97): return what it holds, so the first run and every
    # later one measure the same pixels (the in-memory crops differ by the JPEG round trip,
    # enough to move bicubic PSNR on dev by 0.04 dB).
    return CropSet.load(cache)


def arch_name(variant: str, scale: int) -> str:
    return f"hime_{variant}_x{scale}"


def run_training(
    *,
    data: Path,
    run_dir: Path,
    arch: str,
    val_data: Path | None = None,
    time_budget_s: float | None = None,
    steps: int | None = None,
    batch: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    resume: bool = False,
    init_weights: Path | None = None,
    p_self: float | None = None,
    p_similar: float | None = None,
    patch: int | None = None,
    face_scale: int | None = None,
    warmup_steps: int | None = None,
    val_every: int | None = None,
    checkpoint_minutes: float = 10.0,
    lambda_cor: float | None = None,
    lambda_id: float | None = None,
    id_batch: int | None = None,
    degradation: str = "bicubic",
    self_geometry: dict[str, float] | None = None,
    train_only: tuple[str, ...] = (),
    ema_decay: float | None = None,
    clean_prob: float | None = None,
    log: Callable[[str], None] = print,
    on_step=None,
):
    import torch

    from hime_cli.training.train import TrainConfig, export_weights, train

    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    cfg = TrainConfig(
        arch=arch, seed=seed, checkpoint_minutes=checkpoint_minutes, time_budget_s=time_budget_s
    )
    overrides = {
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "lambda_cor": lambda_cor,
        "lambda_id": lambda_id,
        "id_batch": id_batch,
        "warmup_steps": warmup_steps,
        "val_every": val_every,
        "ema_decay": ema_decay,
    }
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    if train_only:
        cfg = replace(cfg, train_only=tuple(train_only))
    if p_self is not None:
        cfg = replace(cfg, sampler=replace(cfg.sampler, p_self=p_self))
    if p_similar is not None:
        cfg = replace(cfg, sampler=replace(cfg.sampler, p_similar=p_similar))
    if patch is not None:
        cfg = replace(cfg, sampler=replace(cfg.sampler, patch=patch))
    if face_scale is not None:
        cfg = replace(cfg, sampler=replace(cfg.sampler, face_scale=face_scale))
    geometry = {k: v for k, v in (self_geometry or {}).items() if v is not None}
    unknown = set(geometry) - {"self_rot_deg", "self_shift", "self_scale", "self_warp"}
    if unknown:
        raise ValueError(f"unknown self-reference geometry settings: {sorted(unknown)}")
    if geometry:
        cfg = replace(cfg, sampler=replace(cfg.sampler, **geometry))
    if degradation not in ("bicubic", "real"):
        from hime_cli.errors import UsageError

        raise UsageError(f"--degradation must be bicubic or real, got {degradation!r}")
    if degradation == "real":
        from hime_cli.training.degradation import DegradationConfig

        cfg = replace(cfg, sampler=replace(cfg.sampler, degradation=DegradationConfig()))
    if clean_prob is not None:
        if degradation != "real":
            from hime_cli.errors import UsageError

            raise UsageError(
                "--clean-prob sets the clean share of the real degradation: add --degradation real"
            )
        if not 0.0 <= clean_prob <= 1.0:
            from hime_cli.errors import UsageError

            raise UsageError(f"--clean-prob must lie in [0, 1], got {clean_prob}")
        cfg = replace(
            cfg,
            sampler=replace(cfg.sampler, degradation=replace(cfg.sampler.degradation, clean_prob=clean_prob)),
        )
    train_crops = load_or_prepare(data, log)
    val_crops = load_or_prepare(val_data, log) if val_data else None
    log(
        f"training {arch} on {len(train_crops)} crops of {len(train_crops.identities)} identities, device {device}"
    )
    model, state = train(
        cfg,
        train_crops,
        run_dir,
        device=device,
        resume=resume,
        init_weights=init_weights,
        val_crops=val_crops,
        log=log,
        on_step=on_step,
    )
    sha = export_weights(model, run_dir / f"{arch}.safetensors", {"arch": arch, "step": str(state.step)})
    summary = {
        "arch": arch,
        "steps": state.step,
        "elapsed_s": round(state.elapsed_s, 1),
        "sha256": sha,
        "final": state.history[-1] if state.history else None,
        # what trained it (as train() wrote it): the model card's recipe (training.export)
        "config": json.loads((run_dir / "config.json").read_text()),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    log(json.dumps(summary))
    return model, state


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="Train HIME (headless entry point; see `hime train`).")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--val-data", type=Path)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--arch", default="hime_small_x4")
    p.add_argument("--time-budget", type=float, help="seconds")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--lambda-cor", type=float)
    p.add_argument(
        "--lambda-id",
        type=float,
        help="weight of the identity loss (dlib descriptor distance on whole faces; default 0: off)",
    )
    p.add_argument("--id-batch", type=int, help="whole faces per step for the identity loss (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--init", type=Path, help="start from these weights (fine-tune), fresh optimiser")
    p.add_argument("--p-self", type=float)
    p.add_argument("--p-similar", type=float, help="share of true references picked by appearance")
    p.add_argument("--patch", type=int, help="train on random HR patches of this size")
    p.add_argument(
        "--face-scale",
        type=int,
        help="train the network for this larger zoom: whole faces shrunk by it, output resampled (×4 network at 8)",
    )
    p.add_argument("--self-rot", type=float, help="self-reference rotation jitter, degrees (default 1.5)")
    p.add_argument("--self-shift", type=float, help="self-reference shift, fraction of the half-size (0.02)")
    p.add_argument("--self-scale", type=float, help="self-reference scale jitter (default 0)")
    p.add_argument("--self-warp", type=float, help="self-reference smooth warp amplitude (default 0)")
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--val-every", type=int)
    p.add_argument("--checkpoint-minutes", type=float, default=10.0)
    p.add_argument(
        "--train-only",
        action="append",
        default=[],
        metavar="PREFIX",
        help="train only parameters whose name starts with PREFIX (repeatable), e.g. fine.",
    )
    p.add_argument(
        "--degradation", default="bicubic", choices=("bicubic", "real"), help="LR degradation of the samples"
    )
    p.add_argument(
        "--ema",
        type=float,
        metavar="DECAY",
        help="keep an exponential moving average of the weights (e.g. 0.999); exported instead of the last weights",
    )
    p.add_argument(
        "--clean-prob",
        type=float,
        help="share of plain bicubic shrinks in the real degradation (default 0.3)",
    )
    a = p.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    run_training(
        data=a.data,
        val_data=a.val_data,
        run_dir=a.run,
        arch=a.arch,
        time_budget_s=a.time_budget,
        steps=a.steps,
        batch=a.batch,
        lr=a.lr,
        lambda_cor=a.lambda_cor,
        lambda_id=a.lambda_id,
        id_batch=a.id_batch,
        seed=a.seed,
        device=a.device,
        resume=a.resume,
        checkpoint_minutes=a.checkpoint_minutes,
        init_weights=a.init,
        p_self=a.p_self,
        p_similar=a.p_similar,
        patch=a.patch,
        face_scale=a.face_scale,
        warmup_steps=a.warmup_steps,
        val_every=a.val_every,
        degradation=a.degradation,
        self_geometry={
            "self_rot_deg": a.self_rot,
            "self_shift": a.self_shift,
            "self_scale": a.self_scale,
            "self_warp": a.self_warp,
        },
        train_only=tuple(a.train_only),
        ema_decay=a.ema,
        clean_prob=a.clean_prob,
        log=lambda s: print(s, file=sys.stderr, flush=True),
    )


if __name__ == "__main__":
    main()
