"""The HIME training loop: time-budgeted, seeded, checkpointed, resumable.

Checkpoints are ``.safetensors`` (weights + Adam state as tensors, step/elapsed/config as
metadata), never pickles, written atomically at least every ``checkpoint_minutes``.
Loss: Charbonnier (ε = 1e-3) + λ_cor · correlation loss (k = 3) (paper Sec. 4, 5.1), and with
``lambda_id`` > 0 an identity loss on whole faces (dlib's descriptor distance, training.identity).
With ``ema_decay`` > 0 the loop also keeps an exponential moving average of the weights (checkpointed
as ``ema.*`` tensors, scored by the validator as ``ema_*``); the run then returns and exports the
averaged weights.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from hime_cli.training.dataset import (
    CropSampler,
    SamplerConfig,
    bicubic_downsample,
    canonical_view,
    shrink_refs,
    similar_members,
    to_target_size,
)
from hime_cli.training.metrics import psnr
from hime_cli.training.prepare import HR_SIZE, CropSet

CHECKPOINT_NAME = "checkpoint.safetensors"


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "hime_small_x4"
    batch: int = 32
    steps: int = 200_000  # upper bound; the time budget usually ends the run first
    time_budget_s: float | None = None
    lr: float = 4e-4
    min_lr: float = 1e-6
    warmup_steps: int = 500
    weight_decay: float = 0.0
    lambda_cor: float = 0.1
    cor_k: int = 3
    # identity loss (training.identity): λ_id × dlib descriptor distance between output and target,
    # on a second batch of ``id_batch`` whole faces per step (0: off). Those faces also get the
    # pixel losses, weighted id_batch / batch.
    lambda_id: float = 0.0
    id_batch: int = 8
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_minutes: float = 10.0
    log_every: int = 100
    val_every: int = 1000
    # parameter-name prefixes to train, the rest frozen (empty: all). ("fine.",) trains only the
    # fine reference branch on top of released weights, whose no-reference output stays exact.
    train_only: tuple[str, ...] = ()
    # exponential moving average of the weights (0: off); the decay ramps up as (1 + n) / (10 + n)
    # over the first updates, so an average started on a resumed run follows the weights at first
    ema_decay: float = 0.0
    sampler: SamplerConfig = field(default_factory=SamplerConfig)


@dataclass
class TrainState:
    step: int = 0
    elapsed_s: float = 0.0
    last_loss: float = float("nan")
    history: list[dict] = field(default_factory=list)
    ema_updates: int = 0


class WeightAverage:
    """An exponential moving average of a model's floating-point weights and buffers."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for param in self.model.parameters():
            param.requires_grad_(False)

    def current_decay(self, updates: int) -> float:
        return min(self.decay, (1.0 + updates) / (10.0 + updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module, updates: int) -> None:
        d = self.current_decay(updates)
        src = model.state_dict()
        for name, avg in self.model.state_dict().items():
            value = src[name].detach()
            if avg.is_floating_point():
                avg.mul_(d).add_(value, alpha=1.0 - d)
            else:
                avg.copy_(value)


def _progress_fraction(cfg: TrainConfig, state: TrainState) -> float:
    p = state.step / max(cfg.steps, 1)
    if cfg.time_budget_s:
        p = max(p, state.elapsed_s / cfg.time_budget_s)
    return min(p, 1.0)


def learning_rate(cfg: TrainConfig, state: TrainState) -> float:
    """Linear warm-up then cosine decay over the run's progress (steps or time, whichever is further)."""
    if state.step < cfg.warmup_steps:
        return cfg.lr * (state.step + 1) / cfg.warmup_steps
    p = _progress_fraction(cfg, state)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * p))


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    state: TrainState,
    ema: WeightAverage | None = None,
) -> None:
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.detach().contiguous().cpu() for k, v in ema.model.state_dict().items()})
    opt = optimizer.state_dict()
    for pid, st in opt["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value.detach().contiguous().cpu().reshape(value.shape or (1,))
    meta = {
        "step": str(state.step),
        "elapsed_s": f"{state.elapsed_s:.3f}",
        "config": json.dumps(asdict(cfg)),
        "history": json.dumps(state.history[-200:]),
        "rng_torch": json.dumps(torch.get_rng_state().tolist()),
        "ema_updates": str(state.ema_updates if ema is not None else 0),
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    ema: WeightAverage | None = None,
    *,
    weights: str = "model",
) -> TrainState:
    """Restore ``model`` (and the optimiser and the average, if given) from a checkpoint.

    ``weights="ema"`` loads the checkpoint's averaged weights into ``model`` (for evaluation or
    export); a checkpoint without them is refused. With ``ema`` given and no averaged weights in
    the checkpoint (a run that had none), the average starts from the loaded weights.
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    averaged = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
    if weights == "ema":
        if not averaged:
            raise ValueError(f"{path} holds no averaged (ema) weights: it was trained without --ema")
        model.load_state_dict(averaged, strict=True)
    elif weights == "model":
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    else:
        raise ValueError(f"weights must be 'model' or 'ema', got {weights!r}")
    ema_updates = int(meta.get("ema_updates", "0")) if averaged else 0
    if ema is not None:
        if averaged:
            ema.model.load_state_dict(averaged, strict=True)
        else:
            ema.model.load_state_dict(model.state_dict(), strict=True)
    if optimizer is not None:
        opt = optimizer.state_dict()
        state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, key = k.split(".", 2)
                state.setdefault(int(pid), {})[key] = v.reshape(()) if key == "step" else v
        device = next(model.parameters()).device
        opt["state"] = {pid: {k: v.to(device) for k, v in st.items()} for pid, st in state.items()}
        optimizer.load_state_dict(opt)
    torch.set_rng_state(torch.tensor(json.loads(meta["rng_torch"]), dtype=torch.uint8))
    return TrainState(
        step=int(meta["step"]),
        elapsed_s=float(meta["elapsed_s"]),
        history=json.loads(meta["history"]),
        ema_updates=ema_updates,
    )


class Validator:
    """Fixed validation batch (no jitter): PSNR of bicubic, HIME with random and with appearance-picked true references, blank, and self."""

    def __init__(
        self,
        crops: CropSet,
        scale: int,
        device: torch.device,
        n: int = 64,
        refs: int = 3,
        seed: int = 123,
        face_scale: int | None = None,
        identity: torch.nn.Module | None = None,
    ) -> None:
        """``identity``: an :class:`~hime_cli.training.identity.IdentityLoss`; with it the validator
        also reports the mean identity distance under `real` (``real_id_chosen``, ``real_id_blank``).
        ``face_scale``: the task's zoom when larger than the network's ``scale`` (the ×4 network
        at ×8: LR inputs shrunk by 8, references by 2, outputs resampled to 128 px before scoring)."""
        import numpy as np

        zoom = face_scale or scale
        factor = zoom // scale

        hr = canonical_view(crops)
        rng = np.random.default_rng(seed)
        ids = crops.identity
        eligible = [i for i in range(len(crops)) if (ids == ids[i]).sum() >= 2]
        pick = rng.choice(eligible, size=min(n, len(eligible)), replace=False)
        ref_idx = np.full((len(pick), refs), -1)
        for row, i in enumerate(pick):
            own = [j for j in np.flatnonzero(ids == ids[i]) if j != i]
            k = min(refs, len(own))
            ref_idx[row, :k] = rng.choice(own, k, replace=False)
        mask = torch.from_numpy(ref_idx >= 0)
        self.hr = hr[pick].to(device)
        self.refs = shrink_refs(hr[np.maximum(ref_idx, 0)] * mask[..., None, None, None], factor).to(device)
        # The same faces with references picked by appearance, as enhance and eval pick them.
        similar = similar_members(crops, zoom, hr)
        chosen = np.full((len(pick), refs), -1)
        for row, i in enumerate(pick):
            best = similar[int(i)][:refs]
            chosen[row, : len(best)] = best
        chosen_mask = torch.from_numpy(chosen >= 0)
        self.chosen = shrink_refs(hr[np.maximum(chosen, 0)] * chosen_mask[..., None, None, None], factor).to(
            device
        )
        self.chosen_mask = chosen_mask.to(device)
        self.own = shrink_refs(self.hr[:, None], factor)
        self.lr = bicubic_downsample(self.hr, zoom)
        # The same faces under the `real` degradation (fixed seed), as `hime eval --degradation real`.
        from hime_cli.training.degradation import EVAL_CONFIG, degrade_fixed

        self.lr_real = degrade_fixed(self.hr.cpu(), zoom, pick, seed=seed, cfg=EVAL_CONFIG).to(device)
        self.mask = mask.to(device)
        self.identity = identity
        self.affines = identity.locator.affines(self.hr) if identity is not None else None
        up = torch.nn.functional.interpolate(self.lr, scale_factor=zoom, mode="bicubic", align_corners=False)
        self.bicubic = float(psnr(up, self.hr).mean())

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        size = self.hr.shape[-1]

        def score(*args) -> float:
            return float(psnr(to_target_size(model(*args), size), self.hr).mean())

        with_refs = score(self.lr, self.refs, self.mask)
        chosen = score(self.lr, self.chosen, self.chosen_mask)
        blank = score(self.lr)
        # An oracle: the target itself as the only reference. Far above psnr_blank once the
        # reference path works; equal to it while the network ignores its references.
        own = score(self.lr, self.own, torch.ones_like(self.mask[:, :1]))
        real_chosen = score(self.lr_real, self.chosen, self.chosen_mask)
        real_blank = score(self.lr_real)
        ids: dict[str, float] = {}
        if self.identity is not None:
            for key, args in (
                ("real_id_chosen", (self.lr_real, self.chosen, self.chosen_mask)),
                ("real_id_blank", (self.lr_real,)),
            ):
                out = to_target_size(model(*args), size).clamp(0, 1)
                ids[key] = float(self.identity.distances(out, self.hr, self.affines).mean())
        model.train(was_training)
        return ids | {
            "psnr_bicubic": self.bicubic,
            "psnr_hime": with_refs,
            "psnr_chosen": chosen,
            "psnr_blank": blank,
            "psnr_self": own,
            "real_chosen": real_chosen,
            "real_blank": real_blank,
        }


def train(
    cfg: TrainConfig,
    train_crops: CropSet,
    run_dir: Path,
    *,
    device: str = "cpu",
    resume: bool = False,
    init_weights: Path | None = None,
    val_crops: CropSet | None = None,
    on_step: Callable[[TrainState, float], None] | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> tuple[torch.nn.Module, TrainState]:
    """Train ``cfg.arch`` on ``train_crops``; checkpoints and a jsonl log go to ``run_dir``."""
    from hime_cli.sr.losses import charbonnier, correlation_loss
    from hime_cli.sr.registry import create_model

    torch.manual_seed(cfg.seed)
    dev = torch.device(device)
    # fine-tune from init_weights if given; weights without the zero-initialised fine reference
    # branch (HIMEConfig.fine) start a fine variant that computes what they computed
    model = create_model(cfg.arch, checkpoint_path=init_weights, allow_missing=("fine.",)).to(dev)
    scale = int(model.scale)
    if scale != cfg.sampler.scale:
        cfg = TrainConfig(
            **{**asdict(cfg), "sampler": SamplerConfig(**{**asdict(cfg.sampler), "scale": scale})}
        )
    trainable = [
        param
        for name, param in model.named_parameters()
        if not cfg.train_only or name.startswith(tuple(cfg.train_only))
    ]
    if not trainable:
        raise ValueError(f"train_only={cfg.train_only} matches no parameter of {cfg.arch}")
    if cfg.train_only:
        keep = {id(param) for param in trainable}
        for param in model.parameters():
            param.requires_grad_(id(param) in keep)
        log(
            f"training {sum(p.numel() for p in trainable):,} parameters ({', '.join(cfg.train_only)}), the rest frozen"
        )
    optimizer = torch.optim.Adam(trainable, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = run_dir / CHECKPOINT_NAME
    state = TrainState()
    ema = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay else None
    if resume and ckpt.exists():
        state = load_checkpoint(ckpt, model, optimizer, ema)
        log(f"resumed from {ckpt} at step {state.step} ({state.elapsed_s / 60:.1f} min)")
    sampler = CropSampler(
        train_crops,
        cfg.sampler if isinstance(cfg.sampler, SamplerConfig) else SamplerConfig(**cfg.sampler),
        dev,
        seed=cfg.seed + state.step,
    )
    face_scale = sampler.config.face_scale
    identity = None
    if cfg.lambda_id:
        from hime_cli.training.identity import IdentityLoss

        identity = IdentityLoss(HR_SIZE).to(dev)
    validator = (
        Validator(val_crops, scale, dev, face_scale=face_scale, identity=identity)
        if val_crops is not None and len(val_crops)
        else None
    )
    (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    log_file = (run_dir / "log.jsonl").open("a")
    model.train()
    last_ckpt = time.time()
    t_start = time.time() - state.elapsed_s
    running = 0.0
    while state.step < cfg.steps and not (cfg.time_budget_s and state.elapsed_s >= cfg.time_budget_s):
        lr_now = learning_rate(cfg, state)
        for group in optimizer.param_groups:
            group["lr"] = lr_now
        lr_img, hr, refs, mask = sampler.sample(cfg.batch)
        out = to_target_size(model(lr_img, refs, mask), hr.shape[-1])
        loss = charbonnier(out, hr)
        if cfg.lambda_cor:
            loss = loss + cfg.lambda_cor * correlation_loss(out, hr, k=cfg.cor_k)
        if identity is not None:
            lr_f, hr_f, refs_f, mask_f = sampler.sample(cfg.id_batch, whole=True)
            out_f = to_target_size(model(lr_f, refs_f, mask_f), hr_f.shape[-1])
            pixel = charbonnier(out_f, hr_f)
            if cfg.lambda_cor:
                pixel = pixel + cfg.lambda_cor * correlation_loss(out_f, hr_f, k=cfg.cor_k)
            loss = (
                loss + (cfg.id_batch / cfg.batch) * pixel + cfg.lambda_id * identity(out_f.clamp(0, 1), hr_f)
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update(model, state.ema_updates)
            state.ema_updates += 1
        state.step += 1
        state.elapsed_s = time.time() - t_start
        running += float(loss.detach()) if state.step % 10 == 0 else 0.0
        if state.step % cfg.log_every == 0:
            state.last_loss = running / (cfg.log_every / 10)
            running = 0.0
            rec = {
                "step": state.step,
                "elapsed_s": round(state.elapsed_s, 1),
                "loss": round(state.last_loss, 6),
                "lr": lr_now,
            }
            if validator is not None and state.step % cfg.val_every == 0:
                rec.update(_validate(validator, model, ema))
                log(json.dumps(rec))
            state.history.append(rec)
            log_file.write(json.dumps(rec) + "\n")
            log_file.flush()
        if on_step is not None:
            on_step(state, _progress_fraction(cfg, state))
        if time.time() - last_ckpt >= cfg.checkpoint_minutes * 60:
            save_checkpoint(ckpt, model, optimizer, cfg, state, ema)
            last_ckpt = time.time()
    save_checkpoint(ckpt, model, optimizer, cfg, state, ema)
    if validator is not None:
        final = {"step": state.step, "elapsed_s": round(state.elapsed_s, 1), "final": True}
        final.update(_validate(validator, model, ema))
        state.history.append(final)
        log_file.write(json.dumps(final) + "\n")
        log(json.dumps(final))
    log_file.close()
    if ema is not None:
        log(f"returning the averaged weights (ema {cfg.ema_decay}, {state.ema_updates} updates)")
        return ema.model, state
    return model, state


def _validate(validator: Validator, model: torch.nn.Module, ema: WeightAverage | None) -> dict[str, float]:
    scores = {k: round(v, 3) for k, v in validator(model).items()}
    if ema is not None:
        scores.update(
            {f"ema_{k}": round(v, 3) for k, v in validator(ema.model).items() if k != "psnr_bicubic"}
        )
    return scores


def export_weights(model: torch.nn.Module, path: Path, metadata: dict[str, str] | None = None) -> str:
    """Weights only, fp32 safetensors; returns the file's sha256."""
    import hashlib

    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(
        {k: v.detach().contiguous().cpu().float() for k, v in model.state_dict().items()},
        str(tmp),
        metadata=metadata or {},
    )
    os.replace(tmp, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()
