"""Do references count? Diagnostics of HIME's reference path on a prepared crop set (issue 3).

    python benchmarks/ref_diagnostics.py CROPS.npz --weights W [--scale 4] [--limit N]
        [--degradation {bicubic,real} --seed S] [--json]

For the eval plan's faces (the same as ``hime eval``) it reports PSNR for:

* ``blank``      — no reference;
* ``random``     — 3 random other photos of the same person (``hime eval``'s ``hime_random_refs``);
* ``chosen``     — 3 other photos picked like ``hime enhance`` picks them: of up to 32 candidates, those most
  like the LR input (grey, at LR size) (``hime eval``'s ``hime``);
* ``wrong``      — 3 photos of another person, picked the same way;
* ``self``       — the target's own HR crop as the only reference (an oracle: it holds exactly the
  missing detail, perfectly aligned). If this barely beats ``blank``, the network ignores its
  reference path; if it gains a lot, the path works and the limit is what real references hold;
* ``self_relit`` — the same, re-lit (gain 0.8, gamma 1.2) and shifted by 1 HR pixel;
* ``self_shift2`` / ``self_shift4`` / ``self_rot5`` / ``self_warp3`` — the target's own face moved
  by 2 or 4 HR pixels, rotated by 5 degrees, or under a smooth random warp of up to ±3 HR pixels:
  how far the alignment reaches (another photo of the person is never aligned better than this);

and the mean CoFA weight and offset magnitude for each case. Finally a
network-free probe of how much of the blank output's remaining error the references could
explain at the canonical position: the best single coefficient ``a`` in
``HR - SR ≈ a · highpass(mean luma of the references)`` over all faces, and the PSNR gain that
this would give (an honest measure of how much aligned detail the references share with the
target at this scale).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hime_cli.sr.blocks import rgb_to_luma as _luma
from hime_cli.training.dataset import canonical_view
from hime_cli.training.evaluate import degraded_inputs, load_model_for_eval, lr_appearance_vectors, make_plan
from hime_cli.training.metrics import psnr
from hime_cli.training.prepare import CropSet


def _highpass(y: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    k = (k[:, None] * k[None, :]) / 256.0
    blur = F.conv2d(F.pad(y, (2, 2, 2, 2), mode="replicate"), k.view(1, 1, 5, 5))
    return y - blur


def _displaced(
    hr: torch.Tensor, rot_deg: float, dx: float, dy: float, warp_px: float, seed: int
) -> torch.Tensor:
    """``hr`` (B, 3, H, W) rotated by ``rot_deg`` about the centre, moved by (dx, dy) HR px and
    under a smooth random warp (a 4 x 4 grid of offsets up to ±``warp_px``, seeded)."""
    b, _, h, w = hr.shape
    angle = np.deg2rad(rot_deg)
    theta = torch.tensor(
        [[np.cos(angle), -np.sin(angle), -2.0 * dx / w], [np.sin(angle), np.cos(angle), -2.0 * dy / h]],
        dtype=torch.float32,
    ).expand(b, 2, 3)
    grid = F.affine_grid(theta, [b, 3, h, w], align_corners=False)
    if warp_px > 0:
        gen = torch.Generator().manual_seed(seed)
        coarse = (torch.rand(b, 2, 4, 4, generator=gen) * 2 - 1) * (2.0 * warp_px / w)
        grid = grid + F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True).permute(
            0, 2, 3, 1
        )
    return F.grid_sample(hr, grid, mode="bicubic", padding_mode="border", align_corners=False).clamp(0, 1)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("crops", type=Path)
    p.add_argument("--weights", default=None)
    p.add_argument("--checkpoint", type=Path, help="a training checkpoint (RUN/checkpoint.safetensors)")
    p.add_argument("--arch", default="hime_small_x4", help="architecture of --checkpoint")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--degradation", default="bicubic", choices=("bicubic", "real"), help="LR protocol")
    p.add_argument("--seed", type=int, default=0, help="seed of the real protocol (as hime eval)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    crops = CropSet.load(a.crops)
    if a.checkpoint:
        from hime_cli.sr.registry import create_model
        from hime_cli.training.train import load_checkpoint

        model = create_model(a.arch)
        load_checkpoint(a.checkpoint, model, None)
        model.eval()
        label = str(a.checkpoint)
    else:
        model, label = load_model_for_eval(a.weights, a.scale)
    hr_all = canonical_view(crops)
    lr_all = degraded_inputs(hr_all, a.scale, a.degradation, a.seed)
    queries = lr_appearance_vectors(lr_all) if a.degradation != "bicubic" else None
    plan = make_plan(crops, 3, a.limit, seed=a.seed, scale=a.scale, hr=hr_all, query_vectors=queries)
    sums: dict[str, float] = {}
    stats: dict[str, list[float]] = {}
    probe = {"ee": 0.0, "er": 0.0, "rr": 0.0, "pixels": 0, "mse_blank": 0.0}

    def add(key: str, value: float) -> None:
        sums[key] = sums.get(key, 0.0) + value

    def refs_of(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        mask = rows >= 0
        refs = hr_all[np.where(mask, rows, 0)] * torch.from_numpy(mask)[..., None, None, None]
        return refs, torch.from_numpy(mask)

    n = len(plan.targets)
    for start in range(0, n, a.batch):
        sl = slice(start, min(n, start + a.batch))
        hr = hr_all[plan.targets[sl]]
        lr = lr_all[plan.targets[sl]]
        relit = (hr * 0.8).clamp(0, 1) ** 1.2
        relit = torch.roll(relit, shifts=(1, 1), dims=(-2, -1))
        cases = {
            "blank": (None, None),
            "random": refs_of(plan.random_refs[sl]),
            "chosen": refs_of(plan.refs[sl]),
            "wrong": refs_of(plan.wrong_refs[sl]),
            "self": (hr[:, None], torch.ones(len(hr), 1, dtype=torch.bool)),
            "self_relit": (relit[:, None], torch.ones(len(hr), 1, dtype=torch.bool)),
        }
        one = torch.ones(len(hr), 1, dtype=torch.bool)
        for key, (rot, dx, dy, warp) in {
            "self_shift2": (0.0, 2.0, 1.0, 0.0),
            "self_shift4": (0.0, 4.0, -2.0, 0.0),
            "self_rot5": (5.0, 0.0, 0.0, 0.0),
            "self_warp3": (0.0, 0.0, 0.0, 3.0),
        }.items():
            cases[key] = (_displaced(hr, rot, dx, dy, warp, seed=start)[:, None], one)
        outs = {}
        with torch.inference_mode():
            for key, (refs, mask) in cases.items():
                out, aux = model(lr, refs, mask, return_aux=True)
                out = out.clamp(0, 1)
                outs[key] = out
                add(key, float(psnr(out, hr).sum()))
                if refs is not None:
                    m = mask[:, :, None, None, None].float()
                    w = (aux["weights"] * m).sum() / (m.sum() * lr.shape[-1] * lr.shape[-2])
                    stats.setdefault(f"cofa_weight_{key}", []).append(float(w))
                    if "offsets" in aux:
                        off = aux["offsets"].abs().mean(dim=2, keepdim=True)
                        o = (off * m).sum() / (m.sum() * lr.shape[-1] * lr.shape[-2])
                        stats.setdefault(f"offset_abs_{key}", []).append(float(o))
        # Network-free probe on luma: residual error of the blank output vs references' high-pass.
        refs, mask = cases["chosen"]
        present = mask.float()[:, :, None, None, None]
        ref_mean = (_luma(refs.flatten(0, 1)).view(*refs.shape[:2], 1, *refs.shape[-2:]) * present).sum(1)
        ref_mean = ref_mean / present.sum(1).clamp_min(1)
        has = present.sum(dim=(1, 2, 3, 4)) > 0
        e = (_luma(hr) - _luma(outs["blank"]))[has]
        r = _highpass(ref_mean)[has]
        probe["ee"] += float((e * e).sum())
        probe["er"] += float((e * r).sum())
        probe["rr"] += float((r * r).sum())
        probe["pixels"] += int(e.numel())
    result = {
        "weights": label,
        "scale": a.scale,
        "faces": n,
        "psnr": {k: round(v / n, 3) for k, v in sums.items()},
        **{k: round(float(np.mean(v)), 4) for k, v in stats.items()},
    }
    coef = probe["er"] / max(probe["rr"], 1e-12)
    explained = probe["er"] ** 2 / max(probe["rr"] * probe["ee"], 1e-12)
    result["probe"] = {
        "coef": round(coef, 4),
        "explained_fraction": round(explained, 5),
        "luma_gain_db": round(float(-10 * np.log10(max(1 - explained, 1e-12))), 4),
    }
    gaps = {k: round(result["psnr"][k] - result["psnr"]["blank"], 3) for k in result["psnr"]}
    result["gain_over_blank"] = gaps
    print(json.dumps(result, indent=None if a.json else 2))
    return result


if __name__ == "__main__":
    main()
