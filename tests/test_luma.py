from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from hime_cli.luma import LUMA_WEIGHTS, luma
from hime_cli.sr.blocks import rgb_to_luma


def test_luma_matches_pillow_and_the_network() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    ours = luma(rgb)
    assert ours.shape == (9, 11) and ours.dtype == np.float32
    pillow = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32)
    assert np.abs(ours - pillow).max() <= 0.5 + 1e-3  # Pillow rounds to integers
    net = rgb_to_luma(torch.from_numpy(rgb).float().permute(2, 0, 1)).squeeze(0).numpy()
    np.testing.assert_allclose(net, ours, rtol=1e-5, atol=1e-3)
    flat = np.full((2, 2, 3), 77, np.uint8)
    np.testing.assert_allclose(luma(flat), 77.0, rtol=1e-6)  # exact for R = G = B
    assert abs(sum(LUMA_WEIGHTS) - 1.0) < 1e-9
