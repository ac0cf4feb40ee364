"""Training losses of HIME (Sections 4 and 5.1 of the paper)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["charbonnier", "correlation_loss", "correlation_map"]


def charbonnier(pred: Tensor, target: Tensor, eps: float = 1e-3) -> Tensor:
    """Charbonnier penalty: mean of sqrt((pred - target)^2 + eps^2) over every element (Sec. 5.1)."""
    return torch.sqrt((pred - target) ** 2 + eps * eps).mean()


def correlation_map(image: Tensor, k: int = 3, dilation: int = 1) -> Tensor:
    """Local correlation map M_cor of eq. 8: (B, C, H, W) -> (B, k*k, H, W).

    Each channel is centred on its spatial mean per image; map (i, j) at (y, x) is
    (1/k^2) <I(y, x), I(y - i*d, x - j*d)> over channels, with zeros outside the image, for
    i, j in -(k//2) .. k//2 (row-major order of the displacements).
    """
    if k < 1 or k % 2 == 0:
        raise ValueError(f"correlation window k must be a positive odd number, got {k}")
    if dilation < 1:
        raise ValueError(f"dilation must be >= 1, got {dilation}")
    _, _, height, width = image.shape
    centred = image - image.mean(dim=(-2, -1), keepdim=True)
    radius = (k // 2) * dilation
    padded = F.pad(centred, (radius, radius, radius, radius))
    maps = []
    for i in range(-(k // 2), k // 2 + 1):
        for j in range(-(k // 2), k // 2 + 1):
            top, left = radius - i * dilation, radius - j * dilation
            neighbour = padded[:, :, top : top + height, left : left + width]  # I(y - i*d, x - j*d)
            maps.append((centred * neighbour).sum(dim=1))
    return torch.stack(maps, dim=1) / (k * k)


def correlation_loss(pred: Tensor, target: Tensor, k: int = 3, dilation: int = 1) -> Tensor:
    """Correlation loss (eq. 9): mean L1 distance between the correlation maps of pred and target.

    ``k = 1`` reduces to the L1 distance of the squared centred values (summed over channels).
    """
    return (correlation_map(pred, k, dilation) - correlation_map(target, k, dilation)).abs().mean()
