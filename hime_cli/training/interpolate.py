"""Interpolate two weights of one architecture: ``(1 - alpha) * A + alpha * B``.

``python -m hime_cli.training.interpolate A B --alpha 0.5 --arch hime_small_x4 --out W`` writes
the blend as fp32 safetensors. Both files must load strictly into ``--arch`` and hold the same
tensors (names and shapes), so the blend fits ``--arch`` as they do. Meant for two fine-tunes of
one lineage (a clean-trained weight and its fine-tune on the `real` degradation: weight-space
ensembling, WiSE-FT), where the straight line between them stays in the same basin; between
unrelated trainings it gives noise. The output's metadata records both inputs (name, sha256)
and alpha.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from hime_cli.errors import ModelError
from hime_cli.files import atomic_write_bytes, sha256_file


class InterpolateError(ValueError):
    """The two weights cannot be blended (different tensors, or alpha out of range)."""


def interpolate_state(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * a + alpha * b`` per floating-point tensor; other tensors must be equal."""
    if not 0.0 <= alpha <= 1.0:
        raise InterpolateError(f"alpha must be in [0, 1], got {alpha}")
    if a.keys() != b.keys():
        only_a = sorted(set(a) - set(b))[:3]
        only_b = sorted(set(b) - set(a))[:3]
        raise InterpolateError(
            f"the weights hold different tensors (only in A: {only_a}, only in B: {only_b})"
        )
    out: dict[str, torch.Tensor] = {}
    for k in a:
        ta, tb = a[k], b[k]
        if ta.shape != tb.shape:
            raise InterpolateError(f"{k}: shape {tuple(ta.shape)} vs {tuple(tb.shape)}")
        if ta.is_floating_point():
            out[k] = torch.lerp(ta.float(), tb.float(), alpha).contiguous()
        elif torch.equal(ta, tb):
            out[k] = ta.clone()
        else:
            raise InterpolateError(f"{k}: integer tensors differ, cannot blend them")
    return out


def interpolate_files(a: Path, b: Path, alpha: float, out: Path, *, arch: str) -> Path:
    """Blend ``a`` and ``b`` into ``out`` (written atomically); both must load strictly into ``arch``."""
    from hime_cli.sr.registry import create_model

    for p in (a, b):
        create_model(arch, checkpoint_path=p)  # refuse anything that is not a strict fit
    state = interpolate_state(load_file(str(a)), load_file(str(b)), alpha)
    meta = {
        "interpolated": json.dumps(
            {"a": a.name, "a_sha256": sha256_file(a), "b": b.name, "b_sha256": sha256_file(b), "alpha": alpha}
        )
    }
    atomic_write_bytes(out, save(state, metadata=meta), error=ModelError)
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", type=Path, help="weights at alpha 0")
    p.add_argument("b", type=Path, help="weights at alpha 1")
    p.add_argument("--alpha", type=float, required=True, help="share of B, in [0, 1]")
    p.add_argument("--arch", required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        print(interpolate_files(args.a, args.b, args.alpha, args.out, arch=args.arch))
    except (InterpolateError, FileNotFoundError) as e:
        p.error(str(e))


if __name__ == "__main__":
    main()
