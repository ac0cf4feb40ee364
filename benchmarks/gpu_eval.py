"""Evaluate trained weights on a prepared dev crop set (PSNR/SSIM of every method; no dlib needed).

Used at the end of benchmarks/gpu_train.sh on a GPU host; the identity distance is measured
afterwards with `hime eval` on a machine that has dlib.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from hime_cli.sr.registry import create_model
from hime_cli.training.evaluate import evaluate
from hime_cli.training.prepare import CropSet


def main() -> None:
    crops = CropSet.load(Path(sys.argv[1]))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for weights in sys.argv[2:]:
        path = Path(weights)
        if not path.exists():
            continue
        arch = path.stem
        model = create_model(arch, checkpoint_path=path).to(device).eval()
        result = evaluate(model, crops, scale=int(model.scale), n_refs=3, batch=64, with_identity=False)
        print(json.dumps({"arch": arch, **result}), flush=True)


if __name__ == "__main__":
    main()
