"""HIME: Efficient Headshot Image Super-Resolution with Multiple Exemplars.

Architecture after the HIME paper (Sections 3-5): an LR and an HR feature extractor, reference
feature alignment (RFA, deformable convolution, flow-guided in the large variant), content-
conditioned feature aggregation (CoFA) over any number of references, and a PixelShuffle
reconstructor with a bicubic skip. Written from the paper's description; no code was copied.

Differences from the paper: the large variant uses a small learned flow estimator trained end to
end (or an externally computed flow, e.g. OpenCV DIS) instead of a pretrained SPyNet, and channel
widths are chosen for this project's CPU budget (see docs/network.md).

Weights: hime's released weights are Apache-2.0 unless their model card says otherwise; every
weight file records its training data and licence in ``models/``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hime_cli.sr.blocks import (
    FeatureAggregation,
    FineReferenceFusion,
    HRFeatureExtractor,
    LRFeatureExtractor,
    Reconstructor,
    ReferenceFeatureAlignment,
    rgb_to_luma,
)
from hime_cli.sr.registry import register_model

__all__ = ["HIME", "HIMEConfig", "checkpoint_filter"]


@dataclass(frozen=True)
class HIMEConfig:
    """Hyper-parameters of one HIME architecture."""

    scale: int = 4  # 2, 4 or 8
    channels: int = 36  # C of every feature map
    k_l: int = 5  # residual blocks in the LR extractor
    k_h: int = 3  # residual blocks in the HR extractor
    k_r: int = 20  # residual blocks in the reconstructor
    align: str = "dconv"  # "conv" | "dconv" (small) | "dconv_flow" (large)
    aggregate: str = "cofa"  # "average" | "max" | "cofa"
    deform_groups: int = 4  # offset groups of the deformable conv
    embed_channels: int = 16  # CoFA embedding width of g1, g2
    flow_channels: int = 16  # width of the learned flow estimator ("dconv_flow")
    fine: bool = False  # reference detail fused again at HR/2 (blocks.FineReferenceFusion)
    fine_channels: int = 16  # width of that branch's reference features

    def __post_init__(self) -> None:
        if self.scale not in (2, 4, 8):
            raise ValueError(f"scale must be 2, 4 or 8, got {self.scale}")
        if self.align not in ("conv", "dconv", "dconv_flow"):
            raise ValueError(f"align must be conv, dconv or dconv_flow, got {self.align!r}")
        if self.aggregate not in ("average", "max", "cofa"):
            raise ValueError(f"aggregate must be average, max or cofa, got {self.aggregate!r}")
        if self.channels % self.deform_groups:
            raise ValueError(f"channels={self.channels} not divisible by deform_groups={self.deform_groups}")
        if self.fine and self.scale < 4:
            raise ValueError("the fine reference fusion needs scale 4 or 8 (it fuses at HR/2)")


class HIME(nn.Module):
    """HIME network. ``forward(lr, refs, ref_mask, flows)`` -> SR image, not clamped."""

    def __init__(self, config: HIMEConfig) -> None:
        super().__init__()
        self.config = config
        self.scale = config.scale
        c = config.channels
        self.lr_extractor = LRFeatureExtractor(c, config.k_l)
        self.hr_extractor = HRFeatureExtractor(c, config.k_h, config.scale)
        self.alignment = ReferenceFeatureAlignment(
            c, config.align, config.deform_groups, config.flow_channels
        )
        self.aggregation = FeatureAggregation(c, config.aggregate, config.embed_channels)
        self.reconstructor = Reconstructor(c, config.k_r, config.scale)
        self.fine = (
            FineReferenceFusion(c, config.fine_channels, config.scale, config.deform_groups)
            if config.fine
            else None
        )

    def forward(
        self,
        lr: Tensor,
        refs: Tensor | None = None,
        ref_mask: Tensor | None = None,
        flows: Tensor | None = None,
        return_aux: bool = False,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Super-resolve ``lr`` (B, 3, h, w) in [0, 1] with references ``refs`` (B, N, 3, h*s, w*s).

        ``ref_mask`` (B, N) bool marks present references (absent ones are never computed and cannot
        affect the output); ``flows`` (B, N, 2, h, w) of (dx, dy) LR pixels replaces the learned flow
        of the large variant. Returns (B, 3, h*s, w*s), or (out, aux) with aux["weights"]
        (B, N, 1, h, w) CoFA weights, aux["offsets"] (B, N, 2*G*9, h, w) and aux["flows"].
        """
        batch, _, height, width = lr.shape
        f_lr = self.lr_extractor(lr)  # F^L (B, C, h, w)
        n_refs = 0 if refs is None else refs.shape[1]
        aux: dict[str, Tensor] = {}
        inject = None
        if n_refs:
            index_b, index_n = self._pairs(refs, ref_mask, batch, height, width)
        if n_refs == 0 or index_b.numel() == 0:
            fused = f_lr  # no reference: the model runs on F^L alone
            aux["weights"] = lr.new_zeros(batch, n_refs, 1, height, width)
        else:
            # only present references, folded into the batch: (M, 3, H, W), M = number present
            ref_rows = refs.flatten(0, 1) if ref_mask is None else refs[index_b, index_n]
            flow_rows = None
            if flows is not None:
                if tuple(flows.shape) != (batch, n_refs, 2, height, width):
                    raise ValueError(
                        f"flows must have shape {(batch, n_refs, 2, height, width)}, got {tuple(flows.shape)}"
                    )
                flow_rows = flows.flatten(0, 1) if ref_mask is None else flows[index_b, index_n]
            f_ref, ref_luma = self.hr_extractor(ref_rows)
            f_lr_rows = f_lr[index_b]
            lr_luma = rgb_to_luma(lr)[index_b]
            aligned, align_aux = self.alignment(f_ref, f_lr_rows, lr_luma, ref_luma, flow_rows)
            f_a, aux["weights"] = self.aggregation(aligned, f_lr, index_b, index_n, n_refs)
            fused = f_a + f_lr  # F_f = F_a + F^L (Sec. 3.3)
            if self.fine is not None:
                fine, present = self.fine.features(
                    ref_rows,
                    aligned,
                    f_lr_rows,
                    align_aux.get("offsets"),
                    aux["weights"][index_b, index_n],
                    index_b,
                    batch,
                )
                fine_fusion = self.fine

                def inject(x: Tensor) -> Tensor:
                    return fine_fusion(x, fine, present)

            for key, rows in align_aux.items():
                dense = rows.new_zeros(batch, n_refs, *rows.shape[1:])
                aux[key] = dense.index_put((index_b, index_n), rows)
        # I^SR = bicubic(I^L) + R(F_f) (Sec. 3.4)
        out = F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False)
        out = out + self.reconstructor(fused, inject)
        return (out, aux) if return_aux else out

    def _pairs(
        self, refs: Tensor, ref_mask: Tensor | None, batch: int, height: int, width: int
    ) -> tuple[Tensor, Tensor]:
        """Validate shapes; (batch index, slot index) of every present reference."""
        n_refs = refs.shape[1]
        expected = (batch, n_refs, 3, height * self.scale, width * self.scale)
        if tuple(refs.shape) != expected:
            raise ValueError(
                f"refs must have shape {expected} for this LR input and scale, got {tuple(refs.shape)}"
            )
        if ref_mask is None:
            index_b = torch.arange(batch, device=refs.device).repeat_interleave(n_refs)
            return index_b, torch.arange(n_refs, device=refs.device).repeat(batch)
        if tuple(ref_mask.shape) != (batch, n_refs):
            raise ValueError(f"ref_mask must have shape {(batch, n_refs)}, got {tuple(ref_mask.shape)}")
        index_b, index_n = ref_mask.bool().nonzero(as_tuple=True)
        return index_b, index_n


def checkpoint_filter(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Strip wrapper prefixes (DDP ``module.``, torch.compile ``_orig_mod.``) from checkpoint keys."""
    prefixes = ("module.", "_orig_mod.")
    cleaned: dict[str, Tensor] = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in prefixes:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        cleaned[key] = value
    return cleaned


# Configs. small: paper's k_l=5, k_h=3, k_r=20 at a width that keeps <= 1.0 M params and
# <= 2.0 GMACs (32 -> 128, 3 refs). large: wider, flow-guided RFA. test: tiny, for fast tests.
SMALL = HIMEConfig(channels=36, deform_groups=4, align="dconv")
SMALL_FINE = replace(SMALL, fine=True)  # small + reference detail at HR/2 (docs/network.md)
LARGE = HIMEConfig(channels=64, deform_groups=8, align="dconv_flow", embed_channels=32, flow_channels=24)
TEST = HIMEConfig(
    channels=8, k_l=1, k_h=1, k_r=2, deform_groups=2, embed_channels=4, flow_channels=4, align="dconv"
)


def _build(config: HIMEConfig, name: str, **overrides) -> HIME:
    config = replace(config, **overrides)
    model = HIME(config)
    model.name = name
    model.pretrained_cfg = asdict(config)
    return model


@register_model(checkpoint_filter=checkpoint_filter)
def hime_small_x4(**overrides) -> HIME:
    return _build(SMALL, "hime_small_x4", **{"scale": 4, **overrides})


@register_model(checkpoint_filter=checkpoint_filter)
def hime_small_x8(**overrides) -> HIME:
    return _build(SMALL, "hime_small_x8", **{"scale": 8, **overrides})


@register_model(checkpoint_filter=checkpoint_filter)
def hime_small_fine_x4(**overrides) -> HIME:
    return _build(SMALL_FINE, "hime_small_fine_x4", **{"scale": 4, **overrides})


@register_model(checkpoint_filter=checkpoint_filter)
def hime_small_fine_x8(**overrides) -> HIME:
    return _build(SMALL_FINE, "hime_small_fine_x8", **{"scale": 8, **overrides})


@register_model(checkpoint_filter=checkpoint_filter)
def hime_large_x4(**overrides) -> HIME:
    return _build(LARGE, "hime_large_x4", **{"scale": 4, **overrides})


@register_model(checkpoint_filter=checkpoint_filter)
def hime_large_x8(**overrides) -> HIME:
    return _build(LARGE, "hime_large_x8", **{"scale": 8, **overrides})


@register_model(checkpoint_filter=checkpoint_filter)
def hime_test_x4(**overrides) -> HIME:
    return _build(TEST, "hime_test_x4", **{"scale": 4, **overrides})


@register_model(checkpoint_filter=checkpoint_filter)
def hime_test_x8(**overrides) -> HIME:
    return _build(TEST, "hime_test_x8", **{"scale": 8, **overrides})


@register_model(checkpoint_filter=checkpoint_filter)
def hime_test_fine_x4(**overrides) -> HIME:
    return _build(TEST, "hime_test_fine_x4", **{"scale": 4, "fine": True, **overrides})
