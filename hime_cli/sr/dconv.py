"""Deformable 2D convolution (DCNv1 / modulated DCNv2) built on ``F.grid_sample``.

Same semantics and tensor layouts as :func:`torchvision.ops.deform_conv2d`:

* ``offset`` is (B, 2*G*kh*kw, Ho, Wo); for offset group g and kernel tap k = i*kw + j the channels
  ``g*2*K + 2*k`` and ``g*2*K + 2*k + 1`` hold (dy, dx) in input pixels;
* ``mask`` (optional, modulated DCN) is (B, G*kh*kw, Ho, Wo), channel ``g*K + k``;
* input channel c belongs to offset group ``c // (C / G)``;
* sampling is bilinear with zeros outside the image (a tap at y <= -1 or y >= H reads 0).

Why not torchvision: on CPU its kernel is about 7x slower than this. Here every kernel tap of
every output pixel is sampled in ONE ``grid_sample`` call over a (B*G, C/G, K*Ho, Wo) grid (taps
stacked along the height axis, so the result is already laid out as im2col columns), then a single
matmul with the (Cout, C*K) weight produces the output. ``grid_sample`` is differentiable in both the
input and the grid, so gradients to input, offsets, mask, weight and bias come for free.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DeformConv2d", "deform_conv2d"]


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    mask: Tensor | None = None,
) -> Tensor:
    """Deformable convolution; drop-in numerical equivalent of ``torchvision.ops.deform_conv2d``.

    Only ``groups=1`` weights are supported (weight is (Cout, C, kh, kw)).
    """
    batch, channels, height, width = input.shape
    out_channels, weight_in, kh, kw = weight.shape
    if weight_in != channels:
        raise ValueError(f"weight expects {weight_in} input channels, input has {channels} (groups=1 only)")
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    taps = kh * kw
    out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if offset.shape[0] != batch or offset.shape[2:] != (out_h, out_w) or offset.shape[1] % (2 * taps):
        raise ValueError(
            f"offset shape {tuple(offset.shape)} does not fit output ({batch}, *, {out_h}, {out_w})"
        )
    groups = offset.shape[1] // (2 * taps)
    if channels % groups:
        raise ValueError(f"{channels} input channels are not divisible by {groups} offset groups")

    # Sampling positions need float32 at least: in bf16 a coordinate near 32 is only good to 1/8 px,
    # so under autocast the input is sampled in float32 too (grid_sample wants equal dtypes).
    dtype = torch.promote_types(torch.promote_types(input.dtype, offset.dtype), torch.float32)
    # Base (undeformed) sampling positions, (K, Ho, Wo) each, in input pixel coordinates.
    kwargs = {"device": input.device, "dtype": dtype}
    tap_y = (torch.arange(kh, **kwargs) * dh).repeat_interleave(kw)  # (K,)
    tap_x = (torch.arange(kw, **kwargs) * dw).repeat(kh)  # (K,)
    base_y = tap_y.view(taps, 1, 1) + (torch.arange(out_h, **kwargs) * sh - ph).view(1, out_h, 1)
    base_x = tap_x.view(taps, 1, 1) + (torch.arange(out_w, **kwargs) * sw - pw).view(1, 1, out_w)

    offset = offset.view(batch, groups, taps, 2, out_h, out_w).to(dtype)
    pos_y = base_y + offset[:, :, :, 0]  # (B, G, K, Ho, Wo)
    pos_x = base_x + offset[:, :, :, 1]
    # Pixel p -> normalised coordinate for align_corners=False: (2p + 1) / size - 1 (works for size 1).
    grid = torch.stack(((2 * pos_x + 1) / width - 1, (2 * pos_y + 1) / height - 1), dim=-1)
    grid = grid.view(batch * groups, taps * out_h, out_w, 2)

    sampled = F.grid_sample(
        input.reshape(batch * groups, channels // groups, height, width).to(dtype),
        grid,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )  # (B*G, C/G, K*Ho, Wo)
    sampled = sampled.view(batch, groups, channels // groups, taps, out_h, out_w)
    if mask is not None:
        mask = mask.view(batch, groups, 1, taps, out_h, out_w)
        # In place when no graph is recorded: saves a full copy of the (largest) sampled tensor.
        sampled = sampled * mask if torch.is_grad_enabled() else sampled.mul_(mask)
    columns = sampled.reshape(batch, channels * taps, out_h * out_w)  # im2col: index c*K + k
    out = torch.matmul(weight.reshape(out_channels, channels * taps).to(columns.dtype), columns)
    out = out.view(batch, out_channels, out_h, out_w)
    if bias is not None:
        out = out + bias.view(1, out_channels, 1, 1)
    return out


class DeformConv2d(nn.Module):
    """Deformable convolution layer; offsets (and an optional mask) are passed to ``forward``.

    ``offset_groups`` splits the input channels into groups that each get their own offsets.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 1,
        dilation: int | tuple[int, int] = 1,
        offset_groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if in_channels % offset_groups:
            raise ValueError(f"in_channels={in_channels} not divisible by offset_groups={offset_groups}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.offset_groups = offset_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    @property
    def taps(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    def reset_parameters(self) -> None:
        """Same initialisation as ``nn.Conv2d``."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_channels * self.taps)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor | None = None) -> Tensor:
        return deform_conv2d(
            x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, offset_groups={self.offset_groups}"
        )
