from __future__ import annotations

import math

import torch

from hime_cli.training.metrics import psnr, ssim


def test_psnr_known_value() -> None:
    a = torch.zeros(1, 3, 8, 8)
    b = torch.full((1, 3, 8, 8), 10.0 / 255.0)  # every pixel off by 10 levels → MSE 100
    assert float(psnr(a, b)) == __import__("pytest").approx(10 * math.log10(255**2 / 100), abs=1e-4)


def test_ssim_identity_and_order() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)
    noisy = (x + 0.05 * torch.randn(2, 3, 32, 32, generator=g)).clamp(0, 1)
    noisier = (x + 0.2 * torch.randn(2, 3, 32, 32, generator=g)).clamp(0, 1)
    assert (ssim(noisy, x) > ssim(noisier, x)).all()
    assert (ssim(noisier, x) < 0.9).all()


def test_ssim_matches_skimage() -> None:
    metrics = __import__("pytest").importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 40, 40, generator=g)
    y = (x + 0.1 * torch.randn(1, 3, 40, 40, generator=g)).clamp(0, 1)
    xa = (x[0].permute(1, 2, 0) * 255).round().double().numpy()
    ya = (y[0].permute(1, 2, 0) * 255).round().double().numpy()
    ref = metrics.structural_similarity(
        xa, ya, channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert float(ssim(y, x)) == __import__("pytest").approx(ref, abs=2e-3)
