"""Grey (luma) from RGB with the ITU-R BT.601 weights, the one conversion the project uses.

Pillow's ``convert("L")`` uses the same weights, so a grey photo written by hime matches one
written by Pillow, and the network's mono reference path (``sr.blocks.rgb_to_luma``) sees the
same grey as face quality, appearance matching and same-shot detection.
"""

from __future__ import annotations

import numpy as np

LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def luma(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) RGB in any range → (...) float32 grey in the same range (exact for R = G = B)."""
    rgb = np.asarray(rgb, dtype=np.float32)
    return rgb[..., :3] @ np.asarray(LUMA_WEIGHTS, dtype=np.float32)
