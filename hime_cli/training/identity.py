"""An identity loss for training: dlib's face-recognition ResNet, run by torch, as a frozen critic.

The identity distance every hime figure reports is the Euclidean distance between dlib's
128-d descriptors of the output and of the original face (``training.evaluate.IdentityDistance``,
``benchmarks/compare_peers.py``). :class:`IdentityLoss` makes that distance differentiable: the
network of :mod:`hime_cli.faces.dlib_resnet` (dlib's weights, the same vectors to ~1e-6), frozen,
fed with 150 px chips cut from the output and the target by ``grid_sample``.

Where the chip lies: dlib cuts it from its own 5 landmarks (``get_face_chip_details``, padding
0.25). :func:`chip_affines` finds those landmarks on the uint8 *target* (dlib's HOG box and shape
predictor, as the evaluation does) and reads the chip's pixel → image mapping back exactly, by
letting dlib cut chips from two images that hold their own x and y coordinates (bilinear sampling
of a linear ramp is exact). The same mapping is applied to output and target, so the loss
compares the two faces at dlib's framing of the truth.

Caveat, written where the loss is used (docs/training.md): training against the network that
scores identity makes that score a less independent measure; PSNR and a look at the faces stay
the checks that it is not learnt as an adversarial pattern.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hime_cli.faces.dlib_resnet import CHIP_SIZE

CHIP_PADDING = 0.25  # what DlibEmbedder passes to get_face_chips


class ChipLocator:
    """Per-face 2×3 maps from dlib chip pixels (u, v, 1) to crop pixels (x, y), from dlib's landmarks."""

    def __init__(self, size: int) -> None:
        from hime_cli.faces.embed import DlibEmbedder
        from hime_cli.training.evaluate import canonical_face

        self.face = canonical_face(size)  # the face IdentityDistance hands dlib
        self.size = size
        self._embedder = DlibEmbedder(flip=False, unit=False, backend="dlib")
        import dlib

        self._dlib = dlib
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        self._xx, self._yy = xx, yy
        v, u = np.mgrid[0:CHIP_SIZE, 0:CHIP_SIZE].astype(np.float64)
        self._design = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], axis=1)

    def affine(self, image: np.ndarray) -> np.ndarray:
        """(2, 3) map chip pixel → image pixel for one (size, size, 3) uint8 face crop."""
        shape = self._embedder._shape(np.ascontiguousarray(image), self.face)
        details = self._dlib.get_face_chip_details(shape, CHIP_SIZE, CHIP_PADDING)
        cx = self._dlib.extract_image_chip(self._xx, details)
        cy = self._dlib.extract_image_chip(self._yy, details)
        inside = (cx > 0) | (cy > 0)  # dlib fills pixels outside the image with 0
        if inside.sum() < 16:
            raise ValueError("dlib's chip lies outside the crop")
        keep = inside.ravel()
        sol, *_ = np.linalg.lstsq(
            self._design[keep], np.stack([cx.ravel()[keep], cy.ravel()[keep]], axis=1), rcond=None
        )
        return sol.T.astype(np.float32)

    def affines(self, images: Tensor) -> Tensor:
        """(N, 2, 3) maps for (N, 3, size, size) images in [0, 1]."""
        arr = (images.detach().clamp(0, 1) * 255.0).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        return torch.from_numpy(np.stack([self.affine(a) for a in arr])).to(images.device)


def cut_chips(images: Tensor, affines: Tensor) -> Tensor:
    """(N, 150, 150, 3) chips on dlib's 0–255 scale from (N, 3, H, W) images in [0, 1] (differentiable)."""
    n, _, h, w = images.shape
    coords = torch.arange(CHIP_SIZE, dtype=images.dtype, device=images.device)
    v, u = torch.meshgrid(coords, coords, indexing="ij")
    uv1 = torch.stack([u, v, torch.ones_like(u)], dim=-1).view(1, -1, 3)  # (1, P, 3)
    xy = uv1 @ affines.to(images.dtype).transpose(1, 2)  # (N, P, 2) image pixel coordinates
    grid = torch.stack([(2 * xy[..., 0] + 1) / w - 1, (2 * xy[..., 1] + 1) / h - 1], dim=-1)
    chips = F.grid_sample(
        images,
        grid.view(n, CHIP_SIZE, CHIP_SIZE, 2),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    return (chips.clamp(0, 1) * 255.0).permute(0, 2, 3, 1)


class IdentityLoss(torch.nn.Module):
    """Mean dlib descriptor distance between outputs and targets (targets' landmarks frame both)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        from hime_cli.faces.dlib_resnet import build_network
        from hime_cli.faces.embed import _model_file

        self.net = build_network(_model_file("dlib_face_recognition_resnet_model_v1.dat"))
        for param in self.net.parameters():
            param.requires_grad_(False)
        self.locator = ChipLocator(size)

    def train(self, mode: bool = True) -> IdentityLoss:
        super().train(mode)
        self.net.eval()  # a frozen critic: never in training mode
        return self

    def distances(self, output: Tensor, target: Tensor, affines: Tensor | None = None) -> Tensor:
        """(N,) descriptor distances; gradients flow to ``output`` only."""
        if affines is None:
            affines = self.locator.affines(target)
        with torch.no_grad():
            ref = self.net(cut_chips(target, affines))
        emb = self.net(cut_chips(output, affines))
        return torch.linalg.vector_norm(emb - ref, dim=1)

    def forward(self, output: Tensor, target: Tensor, affines: Tensor | None = None) -> Tensor:
        return self.distances(output, target, affines).mean()
