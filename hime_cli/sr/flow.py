"""External optical flow for HIME (large): OpenCV DIS between the LR face and each reference.

The large variant learns its own flow by default; a caller may instead pass ``flows`` computed here
(``model(lr, refs, ref_mask, flows=dis_flows(lr, refs, scale))``). Use the same flow source at
training and inference time: the offset residual is learned on top of the flow it was trained with.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hime_cli.sr.blocks import rgb_to_luma

__all__ = ["dis_flows"]


def _to_u8(grey: Tensor) -> np.ndarray:
    return (grey.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def dis_flows(lr: Tensor, refs: Tensor, scale: int, ref_mask: Tensor | None = None) -> Tensor:
    """DIS flow from each LR image to its references brought to LR size (area downsampled luma).

    ``lr`` (B, 3, h, w), ``refs`` (B, N, 3, h*s, w*s) in [0, 1] -> (B, N, 2, h, w) of (dx, dy) LR
    pixels with ref(p + flow(p)) ~ lr(p), the convention of ``HIME.forward``. Absent references
    (``ref_mask`` False) get zero flow. Runs on the CPU.
    """
    batch, n_refs = refs.shape[:2]
    height, width = lr.shape[-2:]
    lr_grey = rgb_to_luma(lr.detach().float().cpu())[:, 0]  # (B, h, w)
    ref_grey = F.avg_pool2d(rgb_to_luma(refs.detach().float().cpu().flatten(0, 1)), scale)
    ref_grey = ref_grey.view(batch, n_refs, height, width)
    present = torch.ones(batch, n_refs, dtype=torch.bool) if ref_mask is None else ref_mask.cpu().bool()
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    # Faces are tiny (16-64 px): small patches so that DIS has several patches per axis.
    dis.setPatchSize(4)
    dis.setPatchStride(2)
    flows = torch.zeros(batch, n_refs, 2, height, width)
    for b in range(batch):
        moving = _to_u8(lr_grey[b])
        for n in range(n_refs):
            if present[b, n]:
                flow = dis.calc(moving, _to_u8(ref_grey[b, n]), None)  # (h, w, 2): lr(p) ~ ref(p + flow)
                flows[b, n] = torch.from_numpy(flow).permute(2, 0, 1)
    return flows.to(lr.device)
