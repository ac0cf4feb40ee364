"""Mirror self-ensemble: a HIME model run on a face and on its mirror image, outputs averaged.

The network is trained on faces mirrored at random (``training.dataset``), so it has no preferred
side, yet its two outputs for a face and for the same face mirrored differ in their errors, not
only in their detail: averaging them (the "self-ensemble" of EDSR, Lim et al. 2017, on the one
geometric transform a face admits) lowers the error at twice the network's cost. The references
are mirrored with the face, so the alignment sees the pair as the network was trained on it.

``hime enhance`` and ``hime eval`` wrap the model in :class:`MirrorEnsemble` by default (``--no-mirror``
runs it once); docs/enhance.md ("Mirror self-ensemble") has the measurement.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["MirrorEnsemble", "unwrap"]


class MirrorEnsemble(nn.Module):
    """``forward(lr, refs, ref_mask)`` = mean of ``model`` on the input and on its mirror (unmirrored)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.scale = int(model.scale)

    def forward(self, lr: Tensor, refs: Tensor | None = None, ref_mask: Tensor | None = None) -> Tensor:
        direct = self.model(lr, refs, ref_mask)
        mirrored = self.model(
            torch.flip(lr, dims=(-1,)), None if refs is None else torch.flip(refs, dims=(-1,)), ref_mask
        )
        return 0.5 * (direct + torch.flip(mirrored, dims=(-1,)))


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a :class:`MirrorEnsemble` (itself otherwise)."""
    return model.model if isinstance(model, MirrorEnsemble) else model
