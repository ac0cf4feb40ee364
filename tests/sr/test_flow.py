"""DIS flow follows HIME's flow convention: ref(p + flow(p)) matches lr(p)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from skimage import data
from skimage.transform import resize

from hime_cli.sr.blocks import flow_warp
from hime_cli.sr.flow import dis_flows


def _face_and_shifted_ref():
    image = resize(data.astronaut()[0:256, 100:356], (160, 160), anti_aliasing=True).astype(np.float32)
    image = torch.from_numpy(image).permute(2, 0, 1)
    hr = image[:, 16:144, 16:144]
    shifted = image[:, 24:152, 28:156]  # ref(q) = hr(q + (12, 8)) HR px = (3, 2) LR px
    return F.avg_pool2d(hr[None], 4), torch.stack((hr, shifted, shifted))[None]


def test_dis_recovers_a_shift_in_lr_pixels():
    lr, refs = _face_and_shifted_ref()
    flows = dis_flows(lr, refs, scale=4, ref_mask=torch.tensor([[True, True, False]]))
    assert flows.shape == (1, 3, 2, 32, 32)
    assert flows[0, 0].abs().mean() < 0.2  # identical image: no motion
    centre = flows[0, 1, :, 8:24, 8:24].mean(dim=(1, 2))
    torch.testing.assert_close(centre, torch.tensor([-3.0, -2.0]), atol=0.3, rtol=0)
    assert flows[0, 2].abs().max() == 0  # absent reference


def test_warping_by_the_flow_aligns_the_reference():
    lr, refs = _face_and_shifted_ref()
    flows = dis_flows(lr, refs, scale=4)
    ref_lr = F.avg_pool2d(refs[0, 1:2], 4)
    warped = flow_warp(ref_lr, flows[0, 1:2])
    inner = (slice(None), slice(None), slice(6, 26), slice(6, 26))
    before = (ref_lr - lr)[inner].abs().mean()
    after = (warped - lr)[inner].abs().mean()
    assert after < 0.3 * before
