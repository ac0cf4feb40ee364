"""CUDA checks of the network and the deformable conv (run on a machine with a GPU)."""

from __future__ import annotations

import pytest
import torch

from hime_cli.sr.dconv import deform_conv2d
from hime_cli.sr.registry import create_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_dconv_matches_torchvision_on_cuda():
    from torchvision.ops import deform_conv2d as tv_deform_conv2d

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 12, 10, generator=gen, dtype=torch.float64)
    weight = torch.randn(6, 8, 3, 3, generator=gen, dtype=torch.float64)
    bias = torch.randn(6, generator=gen, dtype=torch.float64)
    offset = 2 * torch.randn(2, 2 * 4 * 9, 12, 10, generator=gen, dtype=torch.float64)
    mask = torch.rand(2, 4 * 9, 12, 10, generator=gen, dtype=torch.float64)
    tensors = [t.cuda().requires_grad_() for t in (x, offset, weight, bias, mask)]
    x, offset, weight, bias, mask = tensors
    expected = tv_deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    actual = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-9)
    grad_out = torch.randn_like(expected)
    for got, want in zip(
        torch.autograd.grad(actual, tensors, grad_out),
        torch.autograd.grad(expected, tensors, grad_out),
        strict=True,
    ):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("name", ["hime_test_x4", "hime_small_x4", "hime_large_x4", "hime_large_x8"])
def test_cuda_matches_cpu_and_trains(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    scale = model.scale
    gen = torch.Generator().manual_seed(0)
    lr = torch.rand(2, 3, 128 // scale, 128 // scale, generator=gen)
    refs = torch.rand(2, 3, 3, 128, 128, generator=gen)
    mask = torch.tensor([[True, True, False], [True, False, True]])
    with torch.no_grad():
        expected = model(lr, refs, mask)
        model.cuda()
        actual = model(lr.cuda(), refs.cuda(), mask.cuda()).cpu()
    torch.testing.assert_close(actual, expected, rtol=1e-3, atol=1e-3)
    model.train()
    out = model(lr.cuda(), refs.cuda(), mask.cuda())
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
