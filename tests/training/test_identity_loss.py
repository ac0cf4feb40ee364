"""The identity loss: dlib's chips and descriptors, differentiable, on canonical 128 px crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hime_cli.faces.align import crop_face
from hime_cli.faces.detect import get_detector
from hime_cli.training.identity import ChipLocator, IdentityLoss, cut_chips

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def face() -> torch.Tensor:
    """The astronaut's face as a canonical 128 px crop, (1, 3, 128, 128) in [0, 1]."""
    photo = skimage_data.astronaut()
    (det,) = get_detector().detect(photo)
    crop, _ = crop_face(photo, det.landmarks, 128)
    return torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float()  # float32 in [0, 1]


@pytest.fixture(scope="module")
def loss() -> IdentityLoss:
    return IdentityLoss(128)


def _blur(x: torch.Tensor, factor: int) -> torch.Tensor:
    small = torch.nn.functional.interpolate(x, scale_factor=1 / factor, mode="bicubic", antialias=True)
    return torch.nn.functional.interpolate(small, size=x.shape[-1], mode="bicubic").clamp(0, 1)


def test_chips_are_dlibs_own(face: torch.Tensor) -> None:
    import dlib

    locator = ChipLocator(128)
    image = (face[0].permute(1, 2, 0) * 255).round().byte().numpy()
    shape = locator._embedder._shape(image, locator.face)
    want = dlib.get_face_chip(image, shape, size=150, padding=0.25).astype(np.float32)
    got = cut_chips(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0, locator.affines(face))
    got = got[0].numpy()
    assert got.shape == want.shape == (150, 150, 3)
    # same bilinear sampling of the same points: a few grey levels apart at most (rounding)
    assert np.abs(got - want).mean() < 1.0


def test_distances_follow_the_evaluations(face: torch.Tensor, loss: IdentityLoss) -> None:
    from hime_cli.training.evaluate import IdentityDistance

    batch = torch.cat([face, _blur(face, 2), _blur(face, 4), _blur(face, 8)])
    target = face.expand_as(batch)
    got = loss.distances(batch, target).detach().numpy()
    idd = IdentityDistance()
    want = np.linalg.norm(idd.embed(batch) - idd.embed(target), axis=1)
    assert got[0] == pytest.approx(0.0, abs=1e-5)
    assert got[1] < got[2] < got[3]  # the more detail is lost, the farther from the person
    # the evaluation re-finds the landmarks on each output; the loss keeps the target's
    assert np.abs(got - want).max() < 0.06


def test_gradient_reaches_the_output_and_descent_lowers_the_distance(
    face: torch.Tensor, loss: IdentityLoss
) -> None:
    blurred = _blur(face, 8)
    affines = loss.locator.affines(face)
    x = blurred.clone().requires_grad_(True)
    start = float(loss(x, face, affines).detach())
    opt = torch.optim.Adam([x], lr=2e-3)
    for _ in range(10):
        opt.zero_grad()
        value = loss(x, face, affines)
        value.backward()
        opt.step()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is None for p in loss.net.parameters())  # the critic stays frozen
    assert float(loss(x, face, affines).detach()) < 0.8 * start
