"""The grid_sample deformable conv must match torchvision.ops.deform_conv2d (values and gradients)."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import deform_conv2d as tv_deform_conv2d

from hime_cli.sr.dconv import DeformConv2d, deform_conv2d

CASES = [
    # batch, channels, H, W, out, kernel, stride, padding, dilation, offset groups, modulated
    (2, 4, 7, 9, 5, (3, 3), 1, 1, 1, 2, True),
    (1, 6, 5, 6, 3, (3, 3), 2, 0, 2, 3, False),
    (2, 3, 6, 6, 4, (3, 2), (1, 2), (1, 0), 1, 1, True),
    (2, 2, 1, 1, 2, (1, 1), 1, 0, 1, 1, True),
]


def _inputs(case, dtype):
    batch, channels, height, width, out, (kh, kw), stride, padding, dilation, groups, modulated = case
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    out_h = (height + 2 * ph - dilation * (kh - 1) - 1) // sh + 1
    out_w = (width + 2 * pw - dilation * (kw - 1) - 1) // sw + 1
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, height, width, generator=gen, dtype=dtype)
    weight = torch.randn(out, channels, kh, kw, generator=gen, dtype=dtype)
    bias = torch.randn(out, generator=gen, dtype=dtype)
    # Offsets up to +-4 pixels: many taps land between pixels and some fall outside the image.
    offset = 2 * torch.randn(batch, 2 * groups * kh * kw, out_h, out_w, generator=gen, dtype=dtype)
    mask = (
        torch.rand(batch, groups * kh * kw, out_h, out_w, generator=gen, dtype=dtype) if modulated else None
    )
    tensors = [t.requires_grad_() for t in (x, offset, weight, bias, mask) if t is not None]
    kwargs = {"stride": stride, "padding": padding, "dilation": dilation}
    return tensors, kwargs


@pytest.mark.parametrize("case", CASES)
def test_matches_torchvision_values_and_gradients_fp64(case):
    tensors, kwargs = _inputs(case, torch.float64)
    x, offset, weight, bias, *mask = tensors
    mask = mask[0] if mask else None
    expected = tv_deform_conv2d(x, offset, weight, bias, mask=mask, **kwargs)
    actual = deform_conv2d(x, offset, weight, bias, mask=mask, **kwargs)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)
    grad_out = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, tensors, grad_out)
    actual_grads = torch.autograd.grad(actual, tensors, grad_out)
    names = ["x", "offset", "weight", "bias", "mask"][: len(tensors)]
    for name, got, want in zip(names, actual_grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=f"gradient of {name}")


def test_matches_torchvision_fp32():
    tensors, kwargs = _inputs(CASES[0], torch.float32)
    x, offset, weight, bias, mask = tensors
    expected = tv_deform_conv2d(x, offset, weight, bias, mask=mask, **kwargs)
    actual = deform_conv2d(x, offset, weight, bias, mask=mask, **kwargs)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_zero_offsets_equal_plain_convolution():
    layer = DeformConv2d(4, 6, 3, padding=1, offset_groups=2)
    x = torch.randn(2, 4, 5, 7)
    offset = torch.zeros(2, 2 * 2 * 9, 5, 7)
    expected = torch.nn.functional.conv2d(x, layer.weight, layer.bias, padding=1)
    torch.testing.assert_close(layer(x, offset), expected, rtol=1e-5, atol=1e-5)


def test_integer_offset_shifts_the_input():
    layer = DeformConv2d(1, 1, 1, padding=0, bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    x = torch.arange(16.0).view(1, 1, 4, 4)
    offset = torch.zeros(1, 2, 4, 4)
    offset[:, 1] = 1.0  # dx = +1: every output reads its right neighbour, 0 past the border
    expected = torch.cat((x[..., 1:], torch.zeros(1, 1, 4, 1)), dim=-1)
    torch.testing.assert_close(layer(x, offset), expected)


def test_bad_shapes_raise():
    layer = DeformConv2d(4, 4, 3, padding=1, offset_groups=2)
    with pytest.raises(ValueError, match="offset shape"):
        layer(torch.randn(1, 4, 5, 5), torch.zeros(1, 36, 4, 5))
    with pytest.raises(ValueError, match="offset_groups"):
        DeformConv2d(5, 4, 3, offset_groups=2)
