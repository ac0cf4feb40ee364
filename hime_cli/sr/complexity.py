"""Parameter and multiply-accumulate (MAC) counts of a network, via forward hooks.

Counted: ``nn.Conv2d`` and ``nn.Linear`` (one MAC per weight per output position) and
:class:`~hime_cli.sr.dconv.DeformConv2d` (its im2col matmul, counted like a conv of the same
shape, which is how the paper's table counts DCN). The bilinear sampling of the deformable conv and
of the flow warp (``grid_sample``, about 4 MACs per sampled value) is reported separately as
``sampling_macs`` and not included in ``macs``; element-wise ops, PixelShuffle and the bicubic skip
are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hime_cli.sr.dconv import DeformConv2d

__all__ = ["Complexity", "count_complexity", "count_parameters"]


@dataclass(frozen=True)
class Complexity:
    """Per-sample counts of one forward pass."""

    params: int
    macs: int
    sampling_macs: int

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_complexity(model: nn.Module, *inputs: Tensor, **kwargs) -> Complexity:
    """Run ``model(*inputs, **kwargs)`` once without gradients and count MACs per batch item."""
    batch = inputs[0].shape[0]
    totals = {"macs": 0, "sampling": 0}

    def conv_hook(module: nn.Conv2d, args: tuple, output: Tensor) -> None:
        kh, kw = module.kernel_size
        per_position = module.in_channels // module.groups * kh * kw * module.out_channels
        totals["macs"] += per_position * output.shape[-2] * output.shape[-1] * output.shape[0]

    def linear_hook(module: nn.Linear, args: tuple, output: Tensor) -> None:
        totals["macs"] += module.in_features * output.numel()

    def dconv_hook(module: DeformConv2d, args: tuple, output: Tensor) -> None:
        positions = output.shape[0] * output.shape[-2] * output.shape[-1]
        totals["macs"] += module.in_channels * module.taps * module.out_channels * positions
        totals["sampling"] += 4 * module.in_channels * module.taps * positions

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
        elif isinstance(module, DeformConv2d):
            handles.append(module.register_forward_hook(dconv_hook))
    try:
        with torch.no_grad():
            model(*inputs, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return Complexity(count_parameters(model), totals["macs"] // batch, totals["sampling"] // batch)
