"""Release a trained weight: ``models/<arch>.<tag>.safetensors`` + model card + registry entry.

``python -m hime_cli.training.export WEIGHTS --arch hime_small_x4 --tag celeba_wild_v1
--eval eval.json --train-log log.jsonl --hardware "..."`` copies the weights (fp32 safetensors,
loaded strictly), writes the card (data, recipe, steps, wall time, hardware, dev metrics) and
registers name, sha256, scale, variant and metrics in ``models/registry.json``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from hime_cli.hub import entry_from_file, register_weight, registry_path

TRAINING_DATA = (
    "celeba-wild/train: 243 identities of in-the-wild CelebA photos (research use, CelebA terms), "
    "faces detected with hime's MTCNN, identity-verified with dlib embeddings, cropped with hime's "
    "alignment policy (hime_cli/faces/align.py)"
)
LICENCE = (
    "Apache-2.0 (weights); trained on CelebA photos, whose terms restrict use to non-commercial research"
)


def _table(evaluation: dict) -> str:
    m = evaluation.get("methods", {})

    def row(method: str) -> str:
        r = m.get(method)
        if not r:
            return ""
        ms = f"{r['ms_per_face']:.1f}" if "ms_per_face" in r else "-"
        return f"| {method} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r.get('id_dist', float('nan')):.4f} | {ms} |\n"

    methods = ("bicubic", "hime", "hime_random_refs", "hime_blank", "hime_wrong_refs")
    return "| method | PSNR (dB) | SSIM | id dist | ms/face |\n|---|---|---|---|---|\n" + "".join(
        row(x) for x in methods
    )


def _card(
    name: str,
    arch: str,
    scale: int,
    variant: str,
    train: dict,
    evaluation: dict,
    hardware: str,
    notes: str,
    evaluation_real: dict | None = None,
) -> str:
    cfg = train.get("config", {})
    degradation = cfg.get("sampler", {}).get("degradation")
    lr_text = (
        f"LR = the `real` degradation ↓{scale} (hime_cli/training/degradation.py: blur, bicubic/bilinear/area, "
        f"noise, JPEG q30–95; clean bicubic share {degradation.get('clean_prob')})"
        if degradation
        else f"LR = antialiased bicubic ↓{scale}"
    )
    real_section = ""
    if evaluation_real:
        real_section = f"""
## Dev metrics under the `real` degradation (`hime eval ... --degradation real --seed {evaluation_real.get("seed", 0)}`)

Each face degraded once from (seed, crop index): blur, kernel, noise and JPEG drawn as in
docs/training.md; references picked by the degraded LR face.

{_table(evaluation_real)}"""
    return f"""# {name}

HIME ({variant}) ×{scale}: reference-based face super-resolution, {evaluation.get("lr_size", 128 // scale)} → 128 px
aligned face crops, trained by the hime project (`hime_cli/sr/hime.py`, architecture `{arch}`).

- **Parameters**: {evaluation.get("params", "?")}; **GMACs** at {128 // scale}→128 with 3 refs: {evaluation.get("gmacs", "?")}
- **Licence**: {LICENCE}
- **Training data**: {TRAINING_DATA}. Never trained on `celeba-wild/dev`.
- **Recipe**: Charbonnier (ε=1e-3) + {cfg.get("lambda_cor", "?")} × correlation loss (k={cfg.get("cor_k", 3)}),
  Adam (β=0.9/0.99), peak lr {cfg.get("lr", "?")}, warm-up {cfg.get("warmup_steps", "?")} steps then cosine decay over
  the time budget, batch {cfg.get("batch", "?")}, grad-norm clip {cfg.get("grad_clip", "?")}, seed {cfg.get("seed", "?")}.
  Samples: HR = canonical 128 px crop with framing jitter (±{cfg.get("sampler", {}).get("rot_deg", "?")}°,
  ±{cfg.get("sampler", {}).get("shift", "?")} shift, zoom up to {cfg.get("sampler", {}).get("max_zoom", "?")} with p={cfg.get("sampler", {}).get("p_zoom", "?")}),
  {lr_text}; up to 3 references = other photos of the same identity; p={cfg.get("sampler", {}).get("p_blank", "?")}
  no reference, p={cfg.get("sampler", {}).get("p_wrong", "?")} references of another person, p={cfg.get("sampler", {}).get("p_self", 0)} (of the
  samples with true references) the first reference is the target itself, re-framed and re-lit;
  p={cfg.get("sampler", {}).get("p_similar", 0)} (of those) the true references are the person's most similar-looking photos.
- **Steps**: {train.get("steps", "?")}; **wall time**: {train.get("elapsed_s", 0) / 60:.1f} min; **hardware**: {hardware}

## Dev metrics (`hime eval ../shared/data/celeba-wild/dev --scale {scale} --refs {evaluation.get("refs", 3)}`)

{evaluation.get("faces", "?")} faces of {evaluation.get("identities", "?")} identities; PSNR/SSIM on RGB 0–255 over the whole crop;
id dist = dlib embedding distance to the HR crop (lower is better); ms/face on this project's 2-core CPU.

{_table(evaluation)}{real_section}
{notes}
"""


def export_release(
    weights: Path,
    *,
    arch: str,
    tag: str,
    evaluation: dict,
    train: dict,
    hardware: str,
    notes: str = "",
    default: bool = True,
    evaluation_real: dict | None = None,
    models_dir: Path | None = None,
) -> Path:
    from hime_cli.sr.registry import create_model

    create_model(arch, checkpoint_path=weights)  # refuse anything that does not load strictly
    name = f"{arch}.{tag}"
    models_dir = models_dir or registry_path().parent
    dest = models_dir / f"{name}.safetensors"
    models_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, dest)
    scale = int(evaluation["scale"])
    variant = arch.split("_")[1]
    card = models_dir / f"{name}.md"
    card.write_text(_card(name, arch, scale, variant, train, evaluation, hardware, notes, evaluation_real))
    metrics = {
        f"{m}_{k}": v
        for m, r in evaluation.get("methods", {}).items()
        for k, v in r.items()
        if k in ("psnr", "ssim", "id_dist")
    }
    # Plain keys = the released method (hime with references), what `hime models list` shows.
    metrics.update(
        {
            k: v
            for k, v in evaluation.get("methods", {}).get("hime", {}).items()
            if k in ("psnr", "ssim", "id_dist")
        }
    )
    if evaluation_real:
        metrics.update(
            {
                f"real_{m}_{k}": v
                for m, r in evaluation_real.get("methods", {}).items()
                for k, v in r.items()
                if k in ("psnr", "ssim", "id_dist")
            }
        )
    entry = entry_from_file(
        dest,
        name,
        scale=scale,
        variant=variant,
        training_data="celeba-wild/train",
        licence=LICENCE,
        dev_metrics=metrics,
        default=default,
        card=card.name,
    )
    register_weight(entry, path=models_dir / "registry.json", replace=True)
    return dest


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("weights", type=Path)
    p.add_argument("--arch", required=True)
    p.add_argument("--tag", required=True)
    p.add_argument("--eval", type=Path, required=True, help="hime eval --json output")
    p.add_argument("--eval-real", type=Path, help="hime eval --degradation real --json output")
    p.add_argument("--train-summary", type=Path, required=True, help="JSON: steps, elapsed_s, config")
    p.add_argument("--hardware", required=True)
    p.add_argument("--notes", type=Path)
    p.add_argument("--models-dir", type=Path)
    p.add_argument("--not-default", action="store_true", help="register without making it the default")
    a = p.parse_args(argv)
    dest = export_release(
        a.weights,
        arch=a.arch,
        tag=a.tag,
        evaluation=json.loads(a.eval.read_text()),
        train=json.loads(a.train_summary.read_text()),
        hardware=a.hardware,
        notes=a.notes.read_text() if a.notes else "",
        models_dir=a.models_dir,
        evaluation_real=json.loads(a.eval_real.read_text()) if a.eval_real else None,
        default=not a.not_default,
    )
    print(dest)


if __name__ == "__main__":
    main()
