"""Would aligning the references help? Warp each chosen reference onto the target with OpenCV's DIS
optical flow before the network sees it, with the flow computed in ways inference could and could not.

    python benchmarks/ref_warp_diagnostics.py dev_crops.npz hime_small_x8.celeba_wild_real_v2 \\
        runs/x8_fine/hime_small_fine_x8.safetensors

On the training validator's 64 dev faces (`hime_cli.training.train.Validator`: references picked by
appearance, as `hime enhance` picks them; the `real` protocol's seeded degradation), PSNR (dB) of:

- ``none`` / ``chosen``: no references / the chosen references as they are (what inference does);
- ``oracle``: references warped by the flow between the HR *target* and the reference (inference
  never has the target: a ceiling, and one that leaks the answer's shape into the reference);
- ``oracle_blur{2,4}``: the same with both images Gaussian-blurred first (only the coarse flow);
- ``sr_flow``: flow between the network's own output (with the unwarped references) and the reference;
- ``sr_blur{2,4}``: the same, both blurred;
- ``lr_flow``: flow between the bicubic-enlarged LR input and the reference;
- ``lr_match``: the same, the reference shrunk and re-enlarged like the input.

Weights: registered names or ``.safetensors`` paths (the architecture from their metadata).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import torch


def grey_u8(image: torch.Tensor) -> np.ndarray:
    y = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]).numpy()
    return np.clip(y * 255 + 0.5, 0, 255).astype(np.uint8)


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    out = [cv2.GaussianBlur(x.permute(1, 2, 0).numpy(), (0, 0), sigma) for x in images]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


def warp_refs(
    targets: torch.Tensor, refs: torch.Tensor, mask: torch.Tensor, flow_refs: torch.Tensor | None = None
) -> tuple[torch.Tensor, float]:
    """Each present ``refs[b, n]`` warped so that it matches ``targets[b]``; the flow is computed between
    ``targets[b]`` and ``flow_refs[b, n]`` (default: the reference itself). Returns (warped, mean |flow|)."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    out = refs.clone()
    height, width = targets.shape[-2:]
    gx, gy = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    magnitudes = []
    for b in range(refs.shape[0]):
        target = grey_u8(targets[b])
        for n in range(refs.shape[1]):
            if not mask[b, n]:
                continue
            source = refs[b, n] if flow_refs is None else flow_refs[b, n]
            flow = dis.calc(target, grey_u8(source), None)
            magnitudes.append(float(np.sqrt((flow**2).sum(-1)).mean()))
            image = refs[b, n].permute(1, 2, 0).numpy().astype(np.float32)
            warped = cv2.remap(
                image, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
            )
            out[b, n] = torch.from_numpy(warped).permute(2, 0, 1)
    return out, float(np.mean(magnitudes)) if magnitudes else 0.0


def score(
    model: torch.nn.Module, hr: torch.Tensor, mask: torch.Tensor, lr: torch.Tensor, refs: torch.Tensor | None
) -> float:
    from hime_cli.training.metrics import psnr

    out = model(lr) if refs is None else model(lr, refs, mask)
    return round(float(psnr(out, hr).mean()), 3)


def load(spec: str) -> torch.nn.Module:
    from hime_cli.sr.inference import _build
    from hime_cli.sr.registry import create_model

    model, _ = _build(spec, create_model)
    return model.eval()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("crops", type=Path, help="a prepared crop set (.npz) or identity folders")
    parser.add_argument("weights", nargs="+")
    parser.add_argument("--faces", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from hime_cli.training.run import load_or_prepare
    from hime_cli.training.train import Validator

    crops = load_or_prepare(args.crops, lambda s: None)
    results = {}
    validators: dict[int, Validator] = {}
    for spec in args.weights:
        model = load(spec)
        scale = int(model.scale)
        if scale not in validators:
            validators[scale] = Validator(crops, scale, torch.device("cpu"), n=args.faces)
        v = validators[scale]
        hr, refs, mask = v.hr.cpu(), v.chosen.cpu(), v.chosen_mask.cpu()
        flat = refs.flatten(0, 1)
        oracle, displacement = warp_refs(hr, refs, mask)
        row: dict[str, float] = {"mean_flow_hr_px": round(displacement, 2)}
        with torch.no_grad():
            for label, lr in (("clean", v.lr), ("real", v.lr_real)):
                row[f"{label}_none"] = score(model, hr, mask, lr, None)
                row[f"{label}_chosen"] = score(model, hr, mask, lr, refs)
                row[f"{label}_oracle"] = score(model, hr, mask, lr, oracle)
                first = model(lr, refs, mask).clamp(0, 1)
                row[f"{label}_sr_flow"] = score(model, hr, mask, lr, warp_refs(first, refs, mask)[0])
                up = torch.nn.functional.interpolate(
                    lr, scale_factor=scale, mode="bicubic", align_corners=False
                )
                up = up.clamp(0, 1)
                row[f"{label}_lr_flow"] = score(model, hr, mask, lr, warp_refs(up, refs, mask)[0])
                down = torch.nn.functional.interpolate(
                    flat, scale_factor=1 / scale, mode="bicubic", antialias=True
                )
                again = torch.nn.functional.interpolate(
                    down, scale_factor=scale, mode="bicubic", align_corners=False
                )
                row[f"{label}_lr_match"] = score(
                    model, hr, mask, lr, warp_refs(up, refs, mask, again.clamp(0, 1).view_as(refs))[0]
                )
                for sigma in (2.0, 4.0):
                    blurred = blur(flat, sigma).view_as(refs)
                    row[f"{label}_oracle_blur{sigma:g}"] = score(
                        model, hr, mask, lr, warp_refs(blur(hr, sigma), refs, mask, blurred)[0]
                    )
                    row[f"{label}_sr_blur{sigma:g}"] = score(
                        model, hr, mask, lr, warp_refs(blur(first, sigma), refs, mask, blurred)[0]
                    )
        results[spec] = row
        if not args.json:
            print(spec, json.dumps(row), flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
