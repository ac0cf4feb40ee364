"""Loss values pinned on tiny inputs computed by hand."""

from __future__ import annotations

import pytest
import torch

from hime_cli.sr.losses import charbonnier, correlation_loss, correlation_map

# 1x1x2x2 image [[1, 2], [3, 4]]: mean 2.5, centred a=-1.5, b=-0.5 (top row), c=0.5, d=1.5.
IMAGE = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64)
ZEROS = torch.zeros_like(IMAGE)


def test_charbonnier_values():
    pred = torch.tensor([0.0, 3e-3], dtype=torch.float64)
    # sqrt(0 + 16e-6) = 4e-3, sqrt(9e-6 + 16e-6) = 5e-3 -> mean 4.5e-3
    assert charbonnier(pred, torch.zeros(2, dtype=torch.float64), eps=4e-3).item() == pytest.approx(4.5e-3)
    assert charbonnier(pred, pred).item() == pytest.approx(1e-3)  # default eps


def test_correlation_k1_is_l1_of_squared_centred_values():
    # k=1: map = centred^2 = [[2.25, 0.25], [0.25, 2.25]]; against a flat target the loss is their mean.
    assert correlation_loss(IMAGE, ZEROS, k=1).item() == pytest.approx(1.25)
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.rand(2, 3, 5, 4, generator=gen), torch.rand(2, 3, 5, 4, generator=gen)
    centred = [t - t.mean(dim=(-2, -1), keepdim=True) for t in (pred, target)]
    expected = ((centred[0] ** 2).sum(1) - (centred[1] ** 2).sum(1)).abs().mean()
    torch.testing.assert_close(correlation_loss(pred, target, k=1), expected)


def test_correlation_k3_hand_computed():
    # |products| over the 9 displacements (zero outside): (0,0) a2+b2+c2+d2 = 5; the four axis
    # neighbours 0.75+0.75 each = 6; the diagonals a*d twice = 4.5, b*c twice = 0.5 -> 16.
    # Each map is scaled by 1/k^2 = 1/9 and the mean runs over 9 maps x 4 pixels.
    assert correlation_loss(IMAGE, ZEROS, k=3).item() == pytest.approx(16 / 9 / 36)
    maps = correlation_map(IMAGE, k=3)
    assert maps.shape == (1, 9, 2, 2)
    # centre displacement (index 4) holds the squared values / 9
    torch.testing.assert_close(
        maps[0, 4], torch.tensor([[2.25, 0.25], [0.25, 2.25]], dtype=torch.float64) / 9
    )
    # displacement (i, j) = (0, 1) reads I(y, x - 1): b*a at (0, 1), d*c at (1, 1)
    torch.testing.assert_close(maps[0, 5], torch.tensor([[0.0, 0.75], [0.0, 0.75]], dtype=torch.float64) / 9)
    # displacement (1, 1) reads I(y - 1, x - 1): only d*a at (1, 1)
    torch.testing.assert_close(maps[0, 8], torch.tensor([[0.0, 0.0], [0.0, -2.25]], dtype=torch.float64) / 9)


def test_correlation_dilation_reaches_further():
    # With d=2 every non-centre neighbour of a 2x2 image is outside: only the centre map remains.
    assert correlation_loss(IMAGE, ZEROS, k=3, dilation=2).item() == pytest.approx(5 / 9 / 36)


def test_correlation_invariant_to_brightness_and_zero_for_identical():
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 6, 6, generator=gen)
    assert correlation_loss(image, image + 0.3).item() == pytest.approx(0.0, abs=1e-6)


def test_correlation_rejects_even_window():
    with pytest.raises(ValueError):
        correlation_loss(IMAGE, IMAGE, k=2)
