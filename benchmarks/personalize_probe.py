"""Would fine-tuning the network on a person's other photos (test-time personalisation) make their
references count for more?

    python benchmarks/personalize_probe.py dev_crops.npz --identities 3 --steps 150 --lr 2e-5

For each of ``--identities`` people of the crop set (spread over the photo counts), the person's
photos are split in two folds. Each fold's faces are the targets; the other fold is what hime would
know of the person: a copy of ``--weights`` is fine-tuned on it for ``--steps`` steps (the training
sampler of ``hime_cli.training`` on those crops alone, the ``real`` degradation, references of the
same fold, patches of 64 px) and each target gets the 3 photos of that fold whose grey LR view looks
most like its input, as ``hime enhance`` picks them. The targets' inputs are the ``--degradation``
protocol of ``hime eval`` (seed 0). PSNR (dB, RGB, whole 128 px crop) of:

- ``base_refs`` / ``base_none``: the weights as released, with / without the references;
- ``pers_refs`` / ``pers_none``: the fine-tuned copy, with / without them;
- ``wrong_pers_delta``: the fine-tuned copy with its own fold's references on 6 faces of the next
  person, minus the released weights without references on them (what a wrong cluster would cost).

Scratch-sized (minutes on one core per person); the answer is in docs/training.md
("Personalisation").
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    from hime_cli.sr.losses import charbonnier
    from hime_cli.sr.registry import create_model
    from hime_cli.training.dataset import (
        CropSampler,
        SamplerConfig,
        appearance_vectors,
        canonical_view,
        lr_appearance_vectors,
        to_target_size,
    )
    from hime_cli.training.degradation import DegradationConfig
    from hime_cli.training.evaluate import degraded_inputs
    from hime_cli.training.metrics import psnr
    from hime_cli.training.prepare import CropSet

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("crops", type=Path)
    ap.add_argument("--weights", default="hime_small_x4.celeba_wild_real_v2")
    ap.add_argument("--identities", type=int, default=3)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--degradation", choices=("bicubic", "real"), default="real")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    crops = CropSet.load(args.crops)
    base = create_model(args.weights, pretrained=True).eval()
    scale = int(base.scale)
    hr_all = canonical_view(crops)
    lr_all = degraded_inputs(hr_all, scale, args.degradation, seed=0)
    vectors, queries = appearance_vectors(hr_all, scale), lr_appearance_vectors(lr_all)
    ids, counts = np.unique(crops.identity, return_counts=True)
    by_count = ids[np.argsort(-counts, kind="stable")]
    people = by_count[:: max(1, len(ids) // args.identities)][: args.identities]

    def run(model, lr, refs):
        mask = None if refs is None else torch.ones(refs.shape[:2], dtype=torch.bool)
        with torch.inference_mode():
            return to_target_size(model(lr, refs, mask), hr_all.shape[-1]).clamp(0, 1)

    def chosen(pool: np.ndarray, faces: np.ndarray) -> np.ndarray:
        return np.stack([pool[np.argsort(-(vectors[pool] @ queries[t]), kind="stable")[:3]] for t in faces])

    scores: dict[str, list[float]] = {k: [] for k in ("base_refs", "base_none", "pers_refs", "pers_none")}
    wrong: list[float] = []
    t0 = time.time()
    for n, person in enumerate(people):
        members = np.flatnonzero(crops.identity == person)
        for fold in (0, 1):
            targets, pool = members[fold::2], members[1 - fold :: 2]
            sub = CropSet(
                crops.crops[pool], crops.identity[pool], crops.identities, crops.region[pool],
                tuple(crops.sources[i] for i in pool),
            )  # fmt: skip
            cfg = SamplerConfig(
                scale=scale, p_wrong=0.0, p_self=0.3, p_similar=0.7, self_rot_deg=6, self_shift=0.08,
                self_scale=0.05, self_warp=0.06, patch=64, degradation=DegradationConfig(),
            )  # fmt: skip
            sampler = CropSampler(sub, cfg, seed=int(person) * 2 + fold)
            model = copy.deepcopy(base).train()
            opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.99))
            for _ in range(args.steps):
                lr_img, hr, refs, mask = sampler.sample(args.batch)
                loss = charbonnier(model(lr_img, refs, mask), hr)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            model.eval()
            lr, hr, refs = lr_all[targets], hr_all[targets], hr_all[chosen(pool, targets)]
            for key, net, rr in (
                ("base_refs", base, refs), ("base_none", base, None),
                ("pers_refs", model, refs), ("pers_none", model, None),
            ):  # fmt: skip
                scores[key] += psnr(run(net, lr, rr), hr).tolist()
            other = people[(n + 1) % len(people)]
            faces = np.flatnonzero(crops.identity == other)[:6]
            delta = psnr(run(model, lr_all[faces], hr_all[chosen(pool, faces)]), hr_all[faces]) - psnr(
                run(base, lr_all[faces], None), hr_all[faces]
            )
            wrong += delta.tolist()
        print(f"person {person} ({len(members)} photos) done, {time.time() - t0:.0f} s", flush=True)
    result = {k: round(float(np.mean(v)), 3) for k, v in scores.items()}
    result["wrong_pers_delta"] = round(float(np.mean(wrong)), 3)
    result.update(
        faces=len(scores["base_refs"]), people=[int(p) for p in people], steps=args.steps, lr=args.lr,
        degradation=args.degradation, weights=args.weights,
    )  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
