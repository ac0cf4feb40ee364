"""``hime eval``: measure HIME against bicubic on identity folders (paper Sec. 5.1 protocol).

For each test face: canonical HR crop (the shared crop policy) → bicubic LR → each method's
output is compared with the HR crop. Methods: ``bicubic``; ``hime`` (up to ``refs`` other photos
of the same identity, chosen as ``hime enhance`` chooses them: those that look most like the LR
face); ``hime_random_refs`` (random other photos of the person); ``hime_blank`` (no references);
``hime_wrong_refs`` (another identity's photos, chosen like ``hime``'s). Metrics: PSNR and SSIM on RGB 0–255 over the whole crop, identity distance (dlib
embedding distance between output and HR), and ms per face for the network methods.

Two degradation protocols (``degradation``): ``bicubic``, the paper's clean antialiased bicubic
shrink, and ``real`` (:mod:`hime_cli.training.degradation`: blur, bicubic/bilinear/area
kernels, noise, JPEG q 30–95, sometimes twice), drawn per face from ``(seed, crop index)`` so a
number measured today compares with one measured later. Under ``real`` the references are picked
by the degraded LR face, as ``hime enhance`` sees it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hime_cli.training.dataset import (
    appearance_vectors,
    bicubic_downsample,
    canonical_view,
    lr_appearance_vectors,
    shrink_refs,
    to_target_size,
)
from hime_cli.training.degradation import EVAL_CONFIG, PROTOCOLS, degrade_fixed
from hime_cli.training.metrics import psnr, ssim
from hime_cli.training.prepare import HR_SIZE, CropSet

METHODS = ("bicubic", "hime", "hime_random_refs", "hime_blank", "hime_wrong_refs")
# How a network of a smaller zoom than the eval's (the ×4 network at ×8) gets its input:
# "native", the 16 px face itself (references shrunk ×2, output resampled to 128 px: what
# ``--face-scale 8`` trains); "upsampled", the 16 px face enlarged (Lanczos) to the network's
# 32 px input, full-size references, the 128 px output scored as it is: how ``hime enhance``
# crops a small face for weights registered at the network's own zoom (``faces.align.face_crop``).
LR_CROPS = ("native", "upsampled")


def upsample_lr(lr: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, h, w) → (N, 3, size, size) by Lanczos (OpenCV), as enhance warps a small face to its crop."""
    import cv2

    hwc = lr.permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32)
    out = np.stack([cv2.resize(img, (size, size), interpolation=cv2.INTER_LANCZOS4) for img in hwc])
    return torch.from_numpy(np.clip(out, 0.0, 1.0)).permute(0, 3, 1, 2).contiguous()


@dataclass(frozen=True)
class EvalPlan:
    """Which faces are tested and which crops serve as their references (deterministic)."""

    targets: np.ndarray  # (T,) crop indices
    refs: np.ndarray  # (T, R) crop indices, -1 = none: chosen as `hime enhance` chooses them
    random_refs: np.ndarray  # (T, R) random other photos of the same identity
    wrong_refs: np.ndarray  # (T, R) crop indices of another identity, chosen like ``refs``


def _pick(
    pool: np.ndarray,
    k: int,
    rng: np.random.Generator,
    vectors: np.ndarray | None,
    query: np.ndarray | None,
) -> np.ndarray:
    """Up to ``k`` of ``pool``: a random pool of APPEARANCE_POOL, then (with ``vectors``) the ones
    that look most like the target's LR face, as ``hime enhance`` picks among its best candidates."""
    from hime_cli.identities.exemplars import APPEARANCE_POOL

    if vectors is None:
        return rng.choice(pool, size=min(k, len(pool)), replace=False)
    sub = rng.choice(pool, size=min(max(k, APPEARANCE_POOL), len(pool)), replace=False)
    score = vectors[sub] @ query
    return sub[np.argsort(-score, kind="stable")[:k]]


def make_plan(
    crops: CropSet,
    n_refs: int,
    limit: int | None = None,
    seed: int = 0,
    scale: int = 4,
    hr: torch.Tensor | None = None,
    query_vectors: np.ndarray | None = None,
) -> EvalPlan:
    """Every face with ≥1 other photo of its identity is a target (or ``limit`` of them, spread over identities).

    ``refs``: of a random pool of up to ``APPEARANCE_POOL`` other photos of the person, the
    ``n_refs`` whose grey LR view correlates best with the target's LR input (the appearance step
    of ``hime enhance``'s exemplar choice; the LR is all it looks at). ``random_refs``: ``n_refs``
    random other photos. ``wrong_refs``: another person's photos, picked like ``refs`` (the
    look-alikes a wrong cluster would offer: the harder test). ``hr``: ``canonical_view(crops)``
    when the caller has it already (it is decoded otherwise). ``query_vectors``: the appearance
    vectors of the LR inputs when they are not the clean bicubic view (the ``real`` protocol);
    candidates are always seen through their clean HR crops, as enhance sees its exemplars.
    """
    rng = np.random.default_rng(seed)
    ids = crops.identity
    targets = np.asarray([i for i in range(len(crops)) if (ids == ids[i]).sum() >= 2], dtype=np.int64)
    if limit is not None and limit < len(targets):
        # Round-robin over identities so a small limit still covers many people.
        by_id: dict[int, list[int]] = {}
        for t in targets:
            by_id.setdefault(int(ids[t]), []).append(int(t))
        order = [v for k in sorted(by_id) for v in [by_id[k]]]
        picked: list[int] = []
        depth = 0
        while len(picked) < limit:
            for members in order:
                if depth < len(members) and len(picked) < limit:
                    picked.append(members[depth])
            depth += 1
        targets = np.asarray(sorted(picked), dtype=np.int64)
    vectors = None
    if len(targets) and n_refs:
        vectors = appearance_vectors(canonical_view(crops) if hr is None else hr, scale)
    queries = vectors if query_vectors is None else query_vectors
    refs = np.full((len(targets), n_refs), -1, dtype=np.int64)
    random_refs = np.full((len(targets), n_refs), -1, dtype=np.int64)
    wrong = np.full((len(targets), n_refs), -1, dtype=np.int64)
    identities = np.unique(ids)
    for row, t in enumerate(targets):
        own = np.flatnonzero((ids == ids[t]) & (np.arange(len(ids)) != t))
        if len(own) and n_refs:
            chosen = _pick(own, n_refs, rng, vectors, None if queries is None else queries[t])
            refs[row, : len(chosen)] = chosen
            chosen = _pick(own, n_refs, rng, None, None)
            random_refs[row, : len(chosen)] = chosen
        others = identities[identities != ids[t]]
        if len(others) and n_refs:
            other = rng.choice(others)
            query = None if queries is None else queries[t]
            chosen = _pick(np.flatnonzero(ids == other), n_refs, rng, vectors, query)
            wrong[row, : len(chosen)] = chosen
    return EvalPlan(targets=targets, refs=refs, random_refs=random_refs, wrong_refs=wrong)


def canonical_face(size: int = HR_SIZE):  # -> DetectedFace
    """The face of an aligned ``size`` px crop: the canonical landmarks and an MTCNN-like box
    around them (2.3 × 3.0 inter-ocular distances), what dlib is handed for a canonical crop."""
    from hime_cli.faces.align import CANONICAL_LANDMARKS
    from hime_cli.types import Box, DetectedFace

    lm = (CANONICAL_LANDMARKS * size).astype(np.float32)
    iod = float(lm[1, 0] - lm[0, 0])
    cx, eye_y = size / 2.0, float(lm[0, 1])
    w, h = 2.3 * iod, 3.0 * iod
    top = eye_y - 0.40 * h
    return DetectedFace(box=Box(cx - w / 2, top, cx + w / 2, top + h), landmarks=lm, score=1.0)


class IdentityDistance:
    """dlib embedding distance between two aligned 128 px face crops (the canonical box is known)."""

    def __init__(self) -> None:
        from hime_cli.faces.embed import DlibEmbedder

        self._face = canonical_face(HR_SIZE)
        # The raw dlib descriptor (one view, its own length), as every identity distance in the
        # docs and model cards was measured: the index's flip-averaged unit vectors would shrink
        # distances by ~0.73 and make numbers incomparable across releases.
        self._embedder = DlibEmbedder(flip=False, unit=False)

    def embed(self, images: torch.Tensor) -> np.ndarray:
        arr = (images.clamp(0, 1) * 255.0).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        return np.concatenate([self._embedder.embed(np.ascontiguousarray(a), [self._face]) for a in arr])


def _batched(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def evaluate(
    model: torch.nn.Module | None,
    crops: CropSet,
    *,
    scale: int,
    n_refs: int = 3,
    limit: int | None = None,
    batch: int = 16,
    with_identity: bool = True,
    methods: tuple[str, ...] = METHODS,
    progress: Callable[[int, int], None] | None = None,
    degradation: str = "bicubic",
    seed: int = 0,
    lr_crop: str = "native",
) -> dict:
    """Run every method on the plan's faces; returns the ``hime eval --json`` object (minus weights info).

    A network of a smaller zoom than ``scale`` (the ×4 network at ×8) gets the 16 px face, its
    references shrunk by ``scale / model.scale`` and its output resampled to the 128 px crop
    (bicubic) before it is scored: what ``--face-scale 8`` trains and what ``hime enhance --scale
    8`` runs for weights registered at ×8. For ×4 weights enhance differs: it upsamples a small
    face to a 32 px crop first (``faces.align.face_crop``): ``lr_crop="upsampled"`` measures that
    (:data:`LR_CROPS`; docs/training.md, "×8 through the ×4 network")."""
    if lr_crop not in LR_CROPS:
        raise ValueError(f"unknown lr_crop {lr_crop!r}; one of {', '.join(LR_CROPS)}")
    hr_all = canonical_view(crops)
    factor = 1 if model is None else scale // int(model.scale)
    if factor == 1:
        lr_crop = "native"  # the network's own zoom: nothing to choose
    net_input = HR_SIZE // scale * (factor if lr_crop == "upsampled" else 1)
    lr_all = degraded_inputs(hr_all, scale, degradation, seed)
    queries = lr_appearance_vectors(lr_all) if degradation != "bicubic" else None
    plan = make_plan(crops, n_refs, limit, seed=seed, scale=scale, hr=hr_all, query_vectors=queries)
    device = next(model.parameters()).device if model is not None else torch.device("cpu")
    idd = IdentityDistance() if with_identity else None
    sums: dict[str, dict[str, float]] = {
        m: {"psnr": 0.0, "ssim": 0.0, "id_dist": 0.0, "seconds": 0.0} for m in methods
    }
    n = len(plan.targets)
    done = 0
    for sl in _batched(n, batch):
        idx = plan.targets[sl]
        hr = hr_all[idx]
        lr = lr_all[idx]
        hr_emb = idd.embed(hr) if idd else None
        for method in methods:
            t0 = time.perf_counter()
            if method == "bicubic":
                out = F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)
            else:
                if model is None:
                    continue
                table = {"hime": plan.refs, "hime_random_refs": plan.random_refs}.get(method, plan.wrong_refs)
                rows = table[sl]
                refs = mask = None
                if method != "hime_blank" and rows.shape[1]:
                    mask_np = rows >= 0
                    refs = (
                        hr_all[np.where(mask_np, rows, 0)] * torch.from_numpy(mask_np)[..., None, None, None]
                    )
                    if lr_crop == "native":
                        refs = shrink_refs(refs, factor)
                    refs, mask = refs.to(device), torch.from_numpy(mask_np).to(device)
                net_lr = upsample_lr(lr, net_input) if lr_crop == "upsampled" else lr
                with torch.inference_mode():
                    out = to_target_size(model(net_lr.to(device), refs, mask).float().cpu(), HR_SIZE)
            elapsed = time.perf_counter() - t0
            out = out.clamp(0, 1)
            s = sums[method]
            s["psnr"] += float(psnr(out, hr).sum())
            s["ssim"] += float(ssim(out, hr).sum())
            s["seconds"] += elapsed
            if idd is not None:
                s["id_dist"] += float(np.linalg.norm(idd.embed(out) - hr_emb, axis=1).sum())
        done += len(idx)
        if progress:
            progress(done, n)
    result = {
        "scale": scale,
        "model_scale": scale // factor,
        "lr_size": HR_SIZE // scale,
        "lr_crop": lr_crop,
        "net_input": net_input,
        "faces": n,
        "identities": int(len(np.unique(crops.identity[plan.targets]))) if n else 0,
        "refs": n_refs,
        "degradation": degradation,
        "seed": seed,
        "methods": {},
    }
    for method, s in sums.items():
        if method != "bicubic" and model is None:
            continue
        entry = {"psnr": round(s["psnr"] / max(n, 1), 3), "ssim": round(s["ssim"] / max(n, 1), 4)}
        if idd is not None:
            entry["id_dist"] = round(s["id_dist"] / max(n, 1), 4)
        if method != "bicubic":
            entry["ms_per_face"] = round(1000.0 * s["seconds"] / max(n, 1), 2)
        result["methods"][method] = entry
    return result


def degraded_inputs(
    hr: torch.Tensor, scale: int, degradation: str = "bicubic", seed: int = 0
) -> torch.Tensor:
    """The LR input of every crop under a protocol (:data:`PROTOCOLS`); crop ``i``'s ``real``
    degradation is seeded by ``(seed, i)``, independent of batching and of ``--limit``."""
    if degradation not in PROTOCOLS:
        raise ValueError(f"unknown degradation {degradation!r}; one of {', '.join(PROTOCOLS)}")
    if degradation == "bicubic":
        return bicubic_downsample(hr, scale)
    return degrade_fixed(hr, scale, np.arange(len(hr)), seed=seed, cfg=EVAL_CONFIG)


def load_model_for_eval(weights: str | None, scale: int, device: str = "cpu") -> tuple[torch.nn.Module, str]:
    """Resolve ``--weights NAME|PATH`` (default: the model ``hime enhance`` runs on the eval's
    faces at ``scale``: :func:`hime_cli.sr.inference.default_weights_name`, or at ×8, whose 16 px
    faces are under the small-face threshold, :func:`~hime_cli.sr.inference.small_face_weights`).
    A network whose zoom divides ``scale`` (×4 at ×8) is evaluated on 16 px faces, output
    resampled (see :func:`evaluate`)."""
    from hime_cli.sr.inference import crop_rules, default_weights_name, small_face_weights
    from hime_cli.sr.registry import create_model

    name = weights or default_weights_name(scale)
    if crop_rules(weights, scale).for_region(HR_SIZE // scale).route == 1:
        name = small_face_weights(scale, weights) or name  # what enhance runs on a face this small
    path = Path(name)
    if path.suffix == ".safetensors" and path.exists():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            arch = (f.metadata() or {}).get("arch") or f"hime_small_x{scale}"
        model = create_model(arch, checkpoint_path=path)
        label = str(path)
    else:
        model = create_model(name, pretrained=True)  # "arch" or "arch.tag", resolved by the hub
        label = name
    if int(model.scale) > scale or scale % int(model.scale):
        from hime_cli.errors import UsageError

        raise UsageError(
            f"weights {label} are for ×{model.scale}, not ×{scale}", hint=f"pass --scale {model.scale}"
        )
    return model.to(device).eval(), label


def params_and_gmacs(
    model: torch.nn.Module, scale: int, n_refs: int = 3, lr_size: int | None = None
) -> tuple[int, float | None]:
    """Parameters and GMACs of one face (``lr_size``: the network's input, default 128 / ``scale``)."""
    params = sum(p.numel() for p in model.parameters())
    try:
        from hime_cli.sr.complexity import count_complexity

        lr_size = lr_size or HR_SIZE // scale
        ref_size = lr_size * int(model.scale)
        p = next(model.parameters())
        lr = torch.rand(1, 3, lr_size, lr_size, device=p.device)
        refs = torch.rand(1, n_refs, 3, ref_size, ref_size, device=p.device)
        return params, round(count_complexity(model, lr, refs).gmacs, 3)
    except Exception:  # complexity counting is informative, never fatal
        return params, None


__all__ = [
    "LR_CROPS",
    "degraded_inputs",
    "upsample_lr",
    "evaluate",
    "make_plan",
    "IdentityDistance",
    "load_model_for_eval",
    "params_and_gmacs",
    "Path",
]
