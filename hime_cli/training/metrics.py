"""Image-quality metrics on RGB 0–255: PSNR and SSIM over the whole crop (paper Sec. 5.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _to_255(x: Tensor) -> Tensor:
    return (x.clamp(0, 1) * 255.0).round()  # what a saved 8-bit image would hold


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image PSNR (dB) on RGB 0–255 of (B, 3, H, W) tensors in [0, 1]."""
    mse = ((_to_255(pred) - _to_255(target)) ** 2).flatten(1).mean(1)
    return 10.0 * torch.log10(255.0**2 / mse.clamp_min(1e-10))


def _gaussian_window(size: int = 11, sigma: float = 1.5, device: torch.device | None = None) -> Tensor:
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()


def ssim(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image SSIM (Wang et al. 2004: 11×11 Gaussian σ=1.5, K1=0.01, K2=0.03) on RGB 0–255,
    computed per channel over the valid region and averaged over channels."""
    x, y = _to_255(pred).double(), _to_255(target).double()
    c = x.shape[1]
    w = _gaussian_window(device=x.device).double()[None, None].repeat(c, 1, 1, 1)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def filt(t: Tensor) -> Tensor:
        return F.conv2d(t, w, groups=c)

    mx, my = filt(x), filt(y)
    sxx = filt(x * x) - mx**2
    syy = filt(y * y) - my**2
    sxy = filt(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1).float()
