"""Training batches built on the fly from a :class:`CropSet`, entirely on the training device.

A sample is (LR, HR, references, mask):
- HR: the canonical 128 px crop, with a small random similarity jitter of the framing (rotation,
  shift, optionally zoom) so the network sees the landmark noise that small faces really have;
- LR: bicubic (antialiased) downsampling of HR by ``scale`` — the degradation `hime eval` measures;
- references: up to ``max_refs`` crops of OTHER photos of the same identity (almost aligned, the
  same zoom as the target), grey-scaled inside the network.
To teach the network to use references only when they help, a fraction of samples gets no
reference (``p_blank``) or references of another identity (``p_wrong``).

``p_self``: with this probability a sample's first reference is the target's own HR face under an
independent framing jitter and a random brightness/contrast/gamma change. Real references (other
photos) share only part of the target's detail, so early in training the gradient that teaches
alignment and transfer is weak and the network learns to ignore them; a reference that does hold
the missing detail (misaligned and re-lit, so it cannot be copied blindly) teaches RFA to align and
CoFA to weight by content similarity, which then transfers to other photos of the person.
Evaluation never uses it: references there are always other photos.

``p_similar``: with this probability a sample's true references are the photos of the person that
look most like the target (grey correlation at LR size, the rule `hime enhance` and `hime eval` use
to pick references) instead of random ones, so training sees the references inference will give it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hime_cli.training.degradation import DegradationConfig, degrade
from hime_cli.training.prepare import HR_SIZE, STORE_MARGIN, CropSet


def bicubic_downsample(hr: Tensor, scale: int) -> Tensor:
    """The LR degradation used everywhere (training, eval): antialiased bicubic ↓scale."""
    h, w = hr.shape[-2:]
    return F.interpolate(
        hr, size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False
    ).clamp(0, 1)


def shrink_refs(refs: Tensor, factor: int) -> Tensor:
    """(B, N, 3, H, W) references → (B, N, 3, H/factor, W/factor), antialiased bicubic (absent ones stay zero)."""
    if factor == 1:
        return refs
    b, n = refs.shape[:2]
    small = bicubic_downsample(refs.flatten(0, 1), factor)
    return small.view(b, n, *small.shape[1:])


def to_target_size(out: Tensor, size: int) -> Tensor:
    """A network output resampled to the ``size`` px target (bicubic), when the network's zoom is
    smaller than the task's (the ×4 network at ×8); unchanged when it already has that size."""
    if out.shape[-1] == size and out.shape[-2] == size:
        return out
    return F.interpolate(out, size=(size, size), mode="bicubic", align_corners=False)


@dataclass(frozen=True)
class SamplerConfig:
    scale: int = 4
    max_refs: int = 3
    p_blank: float = 0.1  # no reference at all
    p_wrong: float = 0.1  # references of another identity
    p_fewer: float = 0.2  # 1 or 2 references instead of max_refs
    rot_deg: float = 6.0  # target framing jitter
    shift: float = 0.04  # fraction of the crop half-size
    scale_jitter: float = 0.04
    p_zoom: float = 0.25  # zoom in (bigger face in the crop), shared by target and references
    max_zoom: float = 1.25
    p_self: float = 0.0  # one reference is the target's own HR face, re-framed and re-lit (see below)
    self_rot_deg: float = 1.5  # extra framing jitter of a self reference relative to the target
    self_shift: float = 0.02  # (fraction of the crop half-size: 0.02 = 1.3 HR px)
    self_scale: float = 0.0  # extra scale jitter of a self reference (0.05 = ±5 %)
    # A smooth random displacement of a self reference (expression, pose, lens): a 4 x 4 grid of
    # offsets drawn up to ±u * self_warp (u uniform in 0-1 per sample, fraction of the crop
    # half-size: 0.06 = 3.8 HR px), bicubically upsampled. 0 = none (the default; see the docs).
    self_warp: float = 0.0
    p_similar: float = 0.0  # true references are the most similar-looking photos (see above)
    ref_rot_deg: float = 2.0
    ref_shift: float = 0.015
    flip: bool = True
    patch: int | None = None  # train on random HR patches of this size (multiple of 8; refs cropped alike)
    # LR degradation: None = the paper's clean bicubic shrink; a DegradationConfig = the `real`
    # model of :mod:`hime_cli.training.degradation` (blur, kernels, noise, JPEG).
    degradation: DegradationConfig | None = None
    # Train the ×``scale`` network for a larger zoom (``hime enhance --scale 8`` runs the ×4
    # network and resamples its output ×2): the LR input is the whole face shrunk by
    # ``face_scale`` (16 px at 8), the references are shrunk by ``face_scale / scale`` (64 px,
    # what enhance crops them at), and the target stays the 128 px HR face, which the trainer
    # compares with the output resampled to its size (:func:`to_target_size`). None = ``scale``.
    face_scale: int | None = None

    def __post_init__(self) -> None:
        # A config read back from a checkpoint's JSON holds the degradation as a dict.
        if isinstance(self.degradation, dict):
            object.__setattr__(self, "degradation", DegradationConfig(**self.degradation))
        if self.face_scale is not None and self.face_scale != self.scale:
            if self.face_scale % self.scale or HR_SIZE % self.face_scale:
                raise ValueError(f"face_scale {self.face_scale} must be a multiple of scale {self.scale}")
            if self.patch and self.patch < HR_SIZE:
                raise ValueError("face_scale trains on whole faces: leave patch unset")

    @property
    def input_scale(self) -> int:
        """How much smaller than the HR target the LR input is."""
        return self.face_scale or self.scale


class CropSampler:
    """Draws random training batches from a crop set on ``device``."""

    def __init__(
        self, crops: CropSet, config: SamplerConfig, device: str | torch.device = "cpu", seed: int = 0
    ) -> None:
        if len(crops) == 0:
            raise ValueError("empty crop set")
        self.config = config
        self.device = torch.device(device)
        self.images = torch.from_numpy(crops.crops).permute(0, 3, 1, 2).contiguous().to(self.device)  # uint8
        self.identity = crops.identity.astype(np.int64)
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        members: dict[int, list[int]] = {}
        for i, k in enumerate(self.identity):
            members.setdefault(int(k), []).append(i)
        self.members = {k: np.asarray(v) for k, v in members.items()}
        # Targets need at least one other photo of their identity to draw references from.
        self.targets = np.asarray([i for i, k in enumerate(self.identity) if len(self.members[int(k)]) >= 2])
        self.identities = np.asarray(sorted(self.members))
        self.similar = similar_members(crops, config.input_scale) if config.p_similar > 0 else {}

    def _theta(self, n: int, rot_deg: float, shift: float, scale_jitter: float, zoom: np.ndarray) -> Tensor:
        """affine_grid matrices (n, 2, 3): output canonical crop → stored crop, normalised coords."""
        rng = self.rng
        angle = np.deg2rad(rng.uniform(-rot_deg, rot_deg, n))
        s = (1.0 + rng.uniform(-scale_jitter, scale_jitter, n)) / (STORE_MARGIN * zoom)
        tx, ty = rng.uniform(-shift, shift, n), rng.uniform(-shift, shift, n)
        cos, sin = np.cos(angle) * s, np.sin(angle) * s
        theta = np.stack(
            [np.stack([cos, -sin, tx / STORE_MARGIN], 1), np.stack([sin, cos, ty / STORE_MARGIN], 1)], 1
        )
        return torch.from_numpy(theta.astype(np.float32)).to(self.device)

    def _perturb(self, theta: Tensor, rot_deg: float, shift: float, scale: float = 0.0) -> Tensor:
        """``theta`` (n, 2, 3) composed with a small random rotation, scale and shift of the output frame."""
        n = theta.shape[0]
        angle = np.deg2rad(self.rng.uniform(-rot_deg, rot_deg, n))
        tx, ty = self.rng.uniform(-shift, shift, n), self.rng.uniform(-shift, shift, n)
        s = 1.0 + self.rng.uniform(-scale, scale, n) if scale > 0 else np.ones(n)
        cos, sin = np.cos(angle) * s, np.sin(angle) * s
        small = np.zeros((n, 3, 3), dtype=np.float32)
        small[:, 0, 0], small[:, 0, 1], small[:, 0, 2] = cos, -sin, tx
        small[:, 1, 0], small[:, 1, 1], small[:, 1, 2] = sin, cos, ty
        small[:, 2, 2] = 1.0
        return theta @ torch.from_numpy(small).to(theta.device)

    def _relight(self, images: Tensor) -> Tensor:
        """Random gain 0.7-1.3, bias ±0.1 and gamma 0.7-1.4 per image: a self reference is never a copy."""
        n = images.shape[0]

        def draw(low: float, high: float) -> Tensor:
            values = self.rng.uniform(low, high, n).astype(np.float32)
            return torch.from_numpy(values).to(images.device).view(n, 1, 1, 1)

        gamma, gain, bias = draw(0.7, 1.4), draw(0.7, 1.3), draw(-0.1, 0.1)
        return (images.clamp_min(1e-4) ** gamma * gain + bias).clamp(0, 1)

    def _displacement(self, n: int, amplitude: float) -> Tensor:
        """(n, H, W, 2) smooth random offsets in normalised coordinates, up to ±u·amplitude (u ~ U(0, 1))."""
        u = self.rng.uniform(0.0, 1.0, (n, 1, 1, 1))
        coarse = self.rng.uniform(-1.0, 1.0, (n, 2, 4, 4)) * u * amplitude
        coarse_t = torch.from_numpy(coarse.astype(np.float32)).to(self.device)
        fine = F.interpolate(coarse_t, size=(HR_SIZE, HR_SIZE), mode="bicubic", align_corners=True)
        return fine.permute(0, 2, 3, 1)

    def _warp(
        self, index: np.ndarray, theta: Tensor, flip: np.ndarray, displacement: Tensor | None = None
    ) -> Tensor:
        """Sample crops ``index`` under ``theta``; ``displacement`` (n, H, W, 2) or None is added to the grid."""
        images = self.images[torch.from_numpy(index).to(self.device)].float() / 255.0
        grid = F.affine_grid(theta, [len(index), 3, HR_SIZE, HR_SIZE], align_corners=False)
        if displacement is not None:
            grid = grid + displacement / STORE_MARGIN  # output-frame offsets, in stored-crop units
        if flip.any():
            f = torch.from_numpy(flip).to(self.device)
            grid[f] = grid[f].flip(2)  # mirror the output horizontally
        return F.grid_sample(images, grid, mode="bicubic", padding_mode="border", align_corners=False).clamp(
            0, 1
        )

    def reference_indices(self, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reference crops for each target: (index (B, max_refs), mask (B, max_refs) bool).

        Blank, wrong-identity, fewer and appearance-picked draws follow the config; self references
        are decided later, in :meth:`sample`.
        """
        cfg, rng = self.config, self.rng
        batch = len(target)
        n = cfg.max_refs
        ref_index = np.zeros((batch, n), dtype=np.int64)
        mask = np.zeros((batch, n), dtype=bool)
        for b in range(batch):
            u = rng.random()
            if u < cfg.p_blank:
                continue
            own = int(self.identity[target[b]])
            if u < cfg.p_blank + cfg.p_wrong:
                other = own
                while other == own:
                    other = int(rng.choice(self.identities))
                pool = self.members[other]
            else:
                pool = self.members[own][self.members[own] != target[b]]
            k = n if rng.random() >= cfg.p_fewer else int(rng.integers(1, n))
            k = min(k, len(pool))
            if u >= cfg.p_blank + cfg.p_wrong and self.similar and rng.random() < cfg.p_similar:
                ref_index[b, :k] = self.similar[int(target[b])][:k]
            else:
                ref_index[b, :k] = rng.choice(pool, size=k, replace=False)
            mask[b, :k] = True
        return ref_index, mask

    def sample(self, batch: int, *, whole: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(lr (B,3,h,w), hr (B,3,128,128), refs (B,N,3,128,128), ref_mask (B,N) bool).

        ``whole``: whole faces even when the config trains on patches (the identity loss needs them)."""
        cfg, rng = self.config, self.rng
        target = rng.choice(self.targets, size=batch)
        zoom = np.where(rng.random(batch) < cfg.p_zoom, rng.uniform(1.0, cfg.max_zoom, batch), 1.0)
        flip = rng.random(batch) < 0.5 if cfg.flip else np.zeros(batch, bool)
        target_theta = self._theta(batch, cfg.rot_deg, cfg.shift, cfg.scale_jitter, zoom)
        hr = self._warp(target, target_theta, flip)
        n = cfg.max_refs
        ref_index, mask = self.reference_indices(target)
        # Self references: the first slot of a sample with true references becomes the target itself.
        own_refs = mask[:, 0] & (self.identity[ref_index[:, 0]] == self.identity[target])
        is_self = own_refs & (rng.random(batch) < cfg.p_self) if cfg.p_self > 0 else np.zeros(batch, bool)
        ref_index[is_self, 0] = target[is_self]
        ref_theta = self._theta(batch * n, cfg.ref_rot_deg, cfg.ref_shift, 0.01, np.repeat(zoom, n))
        self_rows = np.flatnonzero(is_self)
        if len(self_rows):
            ref_theta = ref_theta.view(batch, n, 2, 3).clone()
            ref_theta[self_rows, 0] = self._perturb(
                target_theta[self_rows], cfg.self_rot_deg, cfg.self_shift, cfg.self_scale
            )
            ref_theta = ref_theta.view(batch * n, 2, 3)
        displacement = None
        if len(self_rows) and cfg.self_warp > 0:
            displacement = torch.zeros(batch, n, HR_SIZE, HR_SIZE, 2, device=self.device)
            displacement[torch.from_numpy(self_rows).to(self.device), 0] = self._displacement(
                len(self_rows), cfg.self_warp
            )
            displacement = displacement.view(batch * n, HR_SIZE, HR_SIZE, 2)
        refs = self._warp(ref_index.reshape(-1), ref_theta, np.repeat(flip, n), displacement).view(
            batch, n, 3, HR_SIZE, HR_SIZE
        )
        if len(self_rows):
            rows_t = torch.from_numpy(self_rows).to(self.device)
            refs[rows_t, 0] = self._relight(refs[rows_t, 0])
        refs = refs * torch.from_numpy(mask).to(self.device)[..., None, None, None]  # absent refs are zeros
        if cfg.degradation is not None:
            lr = degrade(hr, cfg.input_scale, self.rng, cfg.degradation)
        else:
            lr = bicubic_downsample(hr, cfg.input_scale)
        if cfg.input_scale != cfg.scale:
            refs = shrink_refs(refs, cfg.input_scale // cfg.scale)
        if cfg.patch and cfg.patch < HR_SIZE and not whole:
            # The same window of the target and of its (aligned) references: a 4x cheaper step
            # at patch 64 that still teaches local alignment and transfer. LR is cut from the
            # full-face LR so its borders are the real degradation, not a patch-edge artefact.
            p, s = cfg.patch, cfg.scale
            y, x = (int(v) * s for v in rng.integers(0, (HR_SIZE - p) // s + 1, 2))
            hr = hr[..., y : y + p, x : x + p]
            refs = refs[..., y : y + p, x : x + p]
            lr = lr[..., y // s : (y + p) // s, x // s : (x + p) // s]
        return lr.contiguous(), hr.contiguous(), refs.contiguous(), torch.from_numpy(mask).to(self.device)


def appearance_vectors(hr: Tensor, scale: int) -> np.ndarray:
    """(N, (128/scale)^2) grey appearance vectors of canonical HR crops ``hr``, seen at LR size.

    The LR view (:func:`bicubic_downsample`) through
    :func:`hime_cli.identities.exemplars.appearance_vector`: the rule ``hime eval`` and the
    sampler's ``p_similar`` pick references by, as ``hime enhance`` does with the LR face.
    """
    return lr_appearance_vectors(bicubic_downsample(hr, scale))


def lr_appearance_vectors(lr: Tensor) -> np.ndarray:
    """(N, h*w) grey appearance vectors of LR faces (N, 3, h, w), as ``hime enhance`` sees its input."""
    from hime_cli.identities.exemplars import appearance_vector

    size = int(lr.shape[-1])
    arr = lr.permute(0, 2, 3, 1).numpy()
    return np.stack([appearance_vector(x, size) for x in arr]) if len(arr) else np.zeros((0, size * size))


def similar_members(
    crops: CropSet, scale: int, hr: Tensor | None = None, chunk: int = 256
) -> dict[int, np.ndarray]:
    """For each crop, the other crops of its identity, most similar-looking first
    (:func:`appearance_vectors`). ``hr``: ``canonical_view(crops)`` when the caller has it;
    otherwise crops are decoded ``chunk`` at a time (a training set does not fit as float32)."""
    if hr is not None:
        vectors = appearance_vectors(hr, scale)
    else:
        vectors = np.concatenate(
            [
                appearance_vectors(
                    canonical_view(replace(crops, crops=crops.crops[start : start + chunk])), scale
                )
                for start in range(0, len(crops), chunk)
            ]
        )
    out: dict[int, np.ndarray] = {}
    for k in np.unique(crops.identity):
        members = np.flatnonzero(crops.identity == k)
        scores = vectors[members] @ vectors[members].T
        for row, i in enumerate(members):
            order = [m for m in np.argsort(-scores[row], kind="stable") if members[m] != i]
            out[int(i)] = members[np.asarray(order, dtype=np.int64)]
    return out


def canonical_view(crops: CropSet, device: str | torch.device = "cpu") -> Tensor:
    """All crops as canonical 128 px HR faces (no jitter): (N, 3, 128, 128) float in [0, 1]."""
    images = torch.from_numpy(crops.crops).permute(0, 3, 1, 2).float().div(255.0)
    margin = (images.shape[-1] - HR_SIZE) // 2
    if images.shape[-1] == round(HR_SIZE * STORE_MARGIN) and margin * 2 + HR_SIZE == images.shape[-1]:
        return images[..., margin : margin + HR_SIZE, margin : margin + HR_SIZE].contiguous().to(device)
    theta = torch.tensor([[1 / STORE_MARGIN, 0, 0], [0, 1 / STORE_MARGIN, 0]], dtype=torch.float32).expand(
        len(images), 2, 3
    )
    grid = F.affine_grid(theta, [len(images), 3, HR_SIZE, HR_SIZE], align_corners=False)
    return F.grid_sample(images, grid, mode="bicubic", align_corners=False).clamp(0, 1).to(device)


__all__ = [
    "CropSampler",
    "SamplerConfig",
    "appearance_vectors",
    "bicubic_downsample",
    "canonical_view",
    "lr_appearance_vectors",
    "math",
    "shrink_refs",
    "similar_members",
    "to_target_size",
]
