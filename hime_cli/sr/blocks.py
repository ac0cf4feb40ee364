"""Building blocks of the HIME network: residual blocks, extractors, RFA, CoFA, reconstructor.

Section and equation numbers refer to the HIME paper (see ``hime.py``). Shapes use B = batch,
M = number of (batch item, reference) pairs folded into one batch, C = channels, h x w = LR size.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hime_cli.luma import LUMA_WEIGHTS
from hime_cli.sr.dconv import DeformConv2d


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)


def rgb_to_luma(rgb: Tensor) -> Tensor:
    """(..., 3, H, W) RGB -> (..., 1, H, W) luma."""
    weights = rgb.new_tensor(LUMA_WEIGHTS).view(3, 1, 1)  # the HR extractor sees mono (Sec. 3.1)
    return (rgb * weights).sum(dim=-3, keepdim=True)


def scale_init_(conv: nn.Conv2d, scale: float) -> None:
    """Kaiming-normal init scaled down: keeps a deep stack of residual blocks stable (no BN)."""
    nn.init.kaiming_normal_(conv.weight, a=0.0, mode="fan_in", nonlinearity="relu")
    conv.weight.data.mul_(scale)
    nn.init.zeros_(conv.bias)


def zero_init_(conv: nn.Conv2d) -> None:
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)


def flow_warp(feature: Tensor, flow: Tensor) -> Tensor:
    """Backward-warp (M, C, h, w) by a (M, 2, h, w) flow of (dx, dy) pixels: out(p) = feature(p + flow(p))."""
    _, _, height, width = feature.shape
    flow = flow.float() if flow.dtype in (torch.float16, torch.bfloat16) else flow  # see dconv.py
    ys = torch.arange(height, device=flow.device, dtype=flow.dtype).view(1, height, 1)
    xs = torch.arange(width, device=flow.device, dtype=flow.dtype).view(1, 1, width)
    grid_x = (2 * (xs + flow[:, 0]) + 1) / width - 1  # align_corners=False normalisation
    grid_y = (2 * (ys + flow[:, 1]) + 1) / height - 1
    grid = torch.stack((grid_x, grid_y), dim=-1)
    return F.grid_sample(
        feature.to(grid.dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )


class ResidualBlock(nn.Module):
    """EDSR-style residual block without batch norm: x + conv(relu(conv(x)))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(channels, channels)
        self.conv2 = conv3x3(channels, channels)
        scale_init_(self.conv1, 0.1)
        scale_init_(self.conv2, 0.1)

    def forward(self, x: Tensor) -> Tensor:
        # add_ onto conv2's fresh output (not saved for backward): one fewer allocation per block
        return self.conv2(F.relu(self.conv1(x), inplace=True)).add_(x)


def residual_stack(channels: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(*(ResidualBlock(channels) for _ in range(blocks)))


class LRFeatureExtractor(nn.Module):
    """Sec. 3.1: a conv and k_l residual blocks on the RGB LR image -> F^L (B, C, h, w)."""

    def __init__(self, channels: int, blocks: int) -> None:
        super().__init__()
        self.head = conv3x3(3, channels)
        self.body = residual_stack(channels, blocks)

    def forward(self, lr: Tensor) -> Tensor:
        return self.body(self.head(lr - 0.5))


class HRFeatureExtractor(nn.Module):
    """Sec. 3.1: luma, space-to-depth by the scale, a conv and k_h residual blocks.

    (M, 3, h*s, w*s) references -> features (M, C, h, w) and the area-downsampled luma (M, 1, h, w)
    (the mean over the s*s sub-pixels), which the flow estimator of HIME (large) uses.
    """

    def __init__(self, channels: int, blocks: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.head = conv3x3(scale * scale, channels)
        self.body = residual_stack(channels, blocks)

    def forward(self, refs: Tensor) -> tuple[Tensor, Tensor]:
        depth = F.pixel_unshuffle(rgb_to_luma(refs) - 0.5, self.scale)  # (M, s*s, h, w)
        return self.body(self.head(depth)), depth.mean(dim=1, keepdim=True) + 0.5


class FlowEstimator(nn.Module):
    """Small learned optical flow between the LR luma and a reference's LR luma (stands in for SPyNet).

    A three-level encoder (strides 1, 2, 4) and a decoder with skip connections; the flow head is
    zero-initialised so training starts from the identity. Output (M, 2, h, w): (dx, dy) in LR pixels
    such that the reference at p + flow(p) matches the LR image at p.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        c1, c2, c3 = channels, channels * 2, channels * 2
        self.enc1 = nn.Sequential(
            conv3x3(2, c1), nn.LeakyReLU(0.1, True), conv3x3(c1, c1), nn.LeakyReLU(0.1, True)
        )
        self.enc2 = nn.Sequential(
            conv3x3(c1, c2, 2), nn.LeakyReLU(0.1, True), conv3x3(c2, c2), nn.LeakyReLU(0.1, True)
        )
        self.enc3 = nn.Sequential(
            conv3x3(c2, c3, 2), nn.LeakyReLU(0.1, True), conv3x3(c3, c3), nn.LeakyReLU(0.1, True)
        )
        self.dec2 = nn.Sequential(conv3x3(c3 + c2, c2), nn.LeakyReLU(0.1, True))
        self.dec1 = nn.Sequential(conv3x3(c2 + c1, c1), nn.LeakyReLU(0.1, True))
        self.head = conv3x3(c1, 2)
        zero_init_(self.head)

    @staticmethod
    def _up_cat(x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat((x, skip), dim=1)

    def forward(self, lr_luma: Tensor, ref_luma: Tensor) -> Tensor:
        e1 = self.enc1(torch.cat((lr_luma, ref_luma), dim=1) - 0.5)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(self._up_cat(e3, e2))
        d1 = self.dec1(self._up_cat(d2, e1))
        return self.head(d1)


class ReferenceFeatureAlignment(nn.Module):
    """RFA (Sec. 3.2): align a reference feature map to the LR content, one (item, ref) pair per row.

    * ``"conv"``: a plain conv on F^ref (ablation without alignment);
    * ``"dconv"`` (small): offsets and modulation masks from [F^ref, F^L], then DCConv(F^ref);
    * ``"dconv_flow"`` (large): flow o_i, F^refW = warp(F^ref, o_i) (eq. 2), the residual
      Delta p = g([F^refW, F^L]) (eq. 3), Phi = o_i + Delta p and DCConv(F^ref, Phi) (eq. 4).
    """

    def __init__(self, channels: int, align: str, deform_groups: int, flow_channels: int) -> None:
        super().__init__()
        self.align = align
        self.deform_groups = deform_groups
        self.taps = 9
        if align == "conv":
            self.conv = conv3x3(channels, channels)
            return
        self.offset_net = nn.Sequential(conv3x3(2 * channels, channels), nn.LeakyReLU(0.1, True))
        # 2*G*K offsets + G*K modulation masks; zero init -> identity sampling, masks 0.5 (crops are
        # already roughly aligned by the 5-point landmarks).
        self.offset_head = conv3x3(channels, 3 * deform_groups * self.taps)
        zero_init_(self.offset_head)
        self.dconv = DeformConv2d(channels, channels, 3, padding=1, offset_groups=deform_groups)
        self.flow_net = FlowEstimator(flow_channels) if align == "dconv_flow" else None

    def forward(
        self,
        f_ref: Tensor,
        f_lr: Tensor,
        lr_luma: Tensor,
        ref_luma: Tensor,
        flow: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """All inputs (M, ., h, w); ``flow`` (M, 2, h, w) replaces the learned flow when given."""
        if self.align == "conv":
            return self.conv(f_ref), {}
        aux: dict[str, Tensor] = {}
        guide = f_ref
        if self.flow_net is not None:
            if flow is None:
                flow = self.flow_net(lr_luma, ref_luma)
            aux["flows"] = flow
            guide = flow_warp(f_ref, flow)  # eq. 2
        out = self.offset_head(self.offset_net(torch.cat((guide, f_lr), dim=1)))  # eq. 3
        n_off = 2 * self.deform_groups * self.taps
        offset, mask = out[:, :n_off], torch.sigmoid(out[:, n_off:])
        if flow is not None:
            # Phi = o_i + Delta p: the (dx, dy) flow becomes a (dy, dx) pair for every group and tap.
            offset = offset + flow.flip(1).repeat(1, self.deform_groups * self.taps, 1, 1)
        aux["offsets"] = offset
        return self.dconv(f_ref, offset, mask), aux  # eq. 4


class FeatureAggregation(nn.Module):
    """CoFA (Sec. 3.3): fuse any number of aligned reference features, conditioned on F^L.

    mu_i = sigmoid(<g1(F^refA_i), g2(F^L)> / sqrt(E)) per pixel (eq. 6-7; the 1/sqrt(E) keeps the
    sigmoid out of saturation at init), F_a = sum mu_i F^refA_i / (sum mu_i + eps) (eq. 5).
    ``"average"`` and ``"max"`` are the set-pooling ablations. Absent references weigh 0.
    """

    def __init__(self, channels: int, aggregate: str, embed_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.aggregate = aggregate
        self.eps = eps
        if aggregate == "cofa":
            self.g1 = conv3x3(channels, embed_channels)
            self.g2 = conv3x3(channels, embed_channels)
            self.inv_sqrt_embed = 1.0 / math.sqrt(embed_channels)

    def forward(
        self, aligned: Tensor, f_lr: Tensor, index_b: Tensor, index_n: Tensor, n_refs: int
    ) -> tuple[Tensor, Tensor]:
        """``aligned`` (M, C, h, w) belongs to batch item ``index_b`` and slot ``index_n``.

        Returns F_a (B, C, h, w) and the dense weights (B, N, 1, h, w) (0 for absent references).
        """
        batch, _, height, width = f_lr.shape
        if self.aggregate == "max":
            dense = aligned.new_full((batch, n_refs, *aligned.shape[1:]), float("-inf"))
            dense = dense.index_put((index_b, index_n), aligned)
            fused = dense.amax(dim=1)
            present = torch.zeros(batch, dtype=torch.bool, device=f_lr.device).index_fill(0, index_b, True)
            fused = torch.where(present.view(batch, 1, 1, 1), fused, torch.zeros_like(fused))
            mu = dense.argmax(dim=1, keepdim=True) == torch.arange(n_refs, device=f_lr.device).view(
                1, -1, 1, 1, 1
            )
            weights = mu.float().mean(dim=2, keepdim=True) * present.view(batch, 1, 1, 1, 1)
            return fused, weights.to(aligned.dtype)
        if self.aggregate == "cofa":
            key = self.g1(aligned)  # (M, E, h, w)
            query = self.g2(f_lr)[index_b]
            mu = torch.sigmoid((key * query).sum(dim=1, keepdim=True) * self.inv_sqrt_embed)  # (M, 1, h, w)
        else:  # average
            mu = aligned.new_ones(aligned.shape[0], 1, height, width)
        weighted = mu * aligned
        numerator = weighted.new_zeros(batch, *weighted.shape[1:]).index_add(0, index_b, weighted)
        denominator = mu.new_zeros(batch, 1, height, width).index_add(0, index_b, mu)
        weights = mu.new_zeros(batch, n_refs, 1, height, width).index_put((index_b, index_n), mu)
        if self.aggregate == "average":
            return numerator / denominator.clamp_min(1.0), weights / denominator.clamp_min(1.0).unsqueeze(1)
        return numerator / (denominator + self.eps), weights


def icnr_(conv: nn.Conv2d, upscale: int) -> None:
    """ICNR init: every sub-pixel of a PixelShuffle output starts as a copy (nearest-neighbour upsampling)."""
    out_channels = conv.out_channels // (upscale * upscale)
    base = torch.empty(out_channels, conv.in_channels, *conv.kernel_size)
    nn.init.kaiming_normal_(base, a=0.0, mode="fan_in", nonlinearity="relu")
    with torch.no_grad():
        # PixelShuffle reads output channel c at sub-pixel (i, j) from conv channel c*r*r + i*r + j.
        conv.weight.copy_(base.repeat_interleave(upscale * upscale, dim=0))
        conv.bias.zero_()


class FineReferenceFusion(nn.Module):
    """Reference detail at half the output size (an addition to the paper, ``HIMEConfig.fine``).

    The paper fuses references only on the LR grid: at ×8 a 128 px reference reaches the
    reconstructor as 16 × 16 × C features (64 grey values per LR pixel into C channels), so fine
    texture is lost before aggregation. This branch takes each present reference's luma again at
    HR/2 (space-to-depth by 2, a conv and one residual block), warps it by the displacement the LR
    alignment found (the deformable conv's centre tap, averaged over offset groups, plus a learned
    zero-initialised residual), pools the references with the CoFA weights (bilinearly upsampled)
    and adds ``fuse([x, F_fine])`` to the reconstructor's features after the last-but-one
    PixelShuffle stage (HR/2: 64 px of a 128 px output at ×4 and at ×8).

    ``fuse``'s last conv is zero-initialised, so a model built from weights without this branch
    computes exactly what they computed. Batch items without references get nothing added.
    """

    def __init__(self, channels: int, fine_channels: int, scale: int, deform_groups: int) -> None:
        super().__init__()
        self.factor = scale // 2  # LR grid -> HR/2 grid
        self.deform_groups = deform_groups
        self.head = conv3x3(4, fine_channels)
        self.body = residual_stack(fine_channels, 1)
        self.flow_head = conv3x3(2 * channels, 2)  # residual (dx, dy) in LR pixels
        zero_init_(self.flow_head)
        self.fuse = nn.Sequential(
            conv3x3(channels + fine_channels, channels), nn.LeakyReLU(0.1, True), conv3x3(channels, channels)
        )
        zero_init_(self.fuse[2])

    def features(
        self,
        ref_rows: Tensor,
        aligned: Tensor,
        f_lr_rows: Tensor,
        offsets: Tensor | None,
        mu: Tensor,
        index_b: Tensor,
        batch: int,
    ) -> tuple[Tensor, Tensor]:
        """Pooled HR/2 reference features (B, F, h·f, w·f) and which items have any (B,) bool.

        ``ref_rows`` (M, 3, H, W) present references, ``aligned`` / ``f_lr_rows`` (M, C, h, w),
        ``offsets`` (M, 2·G·9, h, w) of the deformable conv (None for ``align="conv"``), ``mu``
        (M, 1, h, w) their CoFA weights.
        """
        fine = self.body(self.head(F.pixel_unshuffle(rgb_to_luma(ref_rows) - 0.5, 2)))
        flow = self.flow_head(torch.cat((aligned, f_lr_rows), dim=1))
        if offsets is not None:
            groups = offsets.view(offsets.shape[0], self.deform_groups, 9, 2, *offsets.shape[2:])
            flow = flow + groups[:, :, 4].mean(dim=1).flip(1)  # centre tap (dy, dx) -> (dx, dy)
        size = fine.shape[-2:]
        flow = F.interpolate(flow, size=size, mode="bilinear", align_corners=False) * self.factor
        warped = flow_warp(fine, flow)
        weight = F.interpolate(mu, size=size, mode="bilinear", align_corners=False)
        numerator = warped.new_zeros(batch, *warped.shape[1:]).index_add(0, index_b, weight * warped)
        denominator = weight.new_zeros(batch, 1, *size).index_add(0, index_b, weight)
        present = torch.zeros(batch, dtype=torch.bool, device=ref_rows.device).index_fill(0, index_b, True)
        return numerator / (denominator + 1e-6), present

    def forward(self, x: Tensor, fine: Tensor, present: Tensor) -> Tensor:
        """``x`` (B, C, h·f, w·f) reconstructor features + the fused reference detail."""
        delta = self.fuse(torch.cat((x, fine.to(x.dtype)), dim=1))
        return x + delta * present.view(-1, 1, 1, 1).to(x.dtype)


class Reconstructor(nn.Module):
    """Sec. 3.4: k_r residual blocks, ICNR-initialised PixelShuffle x2 stages, output conv -> residual."""

    def __init__(self, channels: int, blocks: int, scale: int) -> None:
        super().__init__()
        stages = int(math.log2(scale))
        if 2**stages != scale:
            raise ValueError(f"scale must be a power of two, got {scale}")
        self.body = residual_stack(channels, blocks)
        self.body_conv = conv3x3(channels, channels)
        upsample: list[nn.Module] = []
        for _ in range(stages):
            conv = conv3x3(channels, 4 * channels)
            icnr_(conv, 2)
            upsample += [conv, nn.PixelShuffle(2), nn.LeakyReLU(0.1, True)]
        self.upsample = nn.Sequential(*upsample)
        self.tail = conv3x3(channels, 3)
        scale_init_(self.tail, 0.1)

    def forward(self, fused: Tensor, inject: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """``inject`` (the fine reference fusion) runs on the features after the last-but-one stage."""
        x = fused + self.body_conv(self.body(fused))
        stages = len(self.upsample) // 3  # conv, PixelShuffle, LeakyReLU per stage
        for stage in range(stages):
            x = self.upsample[3 * stage + 2](self.upsample[3 * stage + 1](self.upsample[3 * stage](x)))
            if inject is not None and stage == stages - 2:
                x = inject(x)
        return self.tail(x)
