"""The `real` degradation model: each stage does what it says, draws are reproducible."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from hime_cli.training import degradation as deg
from hime_cli.training.dataset import CropSampler, SamplerConfig, bicubic_downsample
from hime_cli.training.evaluate import degraded_inputs, evaluate
from tests.training.test_training import synthetic_crops


def face_like(size: int = 128, seed: int = 0) -> torch.Tensor:
    """A smooth image with some fine texture: blur, noise and JPEG all visibly change it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([0.5 + 0.3 * np.sin(9 * xx + 5 * c) * np.cos(7 * yy) for c in range(3)])
    img += 0.1 * rng.standard_normal((3, size, size))
    return torch.from_numpy(np.clip(img, 0, 1).astype(np.float32))


def test_blur_kernels_are_normalised_and_shaped() -> None:
    for kind, params in [
        ("iso", (1.5,)),
        ("aniso", (0.5, 2.0, 0.3)),
        ("defocus", (2.0,)),
        ("motion", (7.0, 0.0)),
    ]:
        k = deg.blur_kernel(kind, params)
        assert k is not None and k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
        assert abs(float(k.sum()) - 1.0) < 1e-5 and (k >= 0).all()
    assert deg.blur_kernel("none", ()) is None
    # An anisotropic Gaussian spreads more along its long axis (theta 0: along x).
    k = deg.blur_kernel("aniso", (2.5, 0.4, 0.0))
    var_x = (k.sum(0) * (np.arange(k.shape[1]) - k.shape[1] // 2) ** 2).sum()
    var_y = (k.sum(1) * (np.arange(k.shape[0]) - k.shape[0] // 2) ** 2).sum()
    assert var_x > 10 * var_y
    # A horizontal motion kernel has all its weight on the middle row.
    k = deg.blur_kernel("motion", (7.0, 0.0))
    assert float(k[k.shape[0] // 2].sum()) > 0.99
    with pytest.raises(ValueError):
        deg.blur_kernel("swirl", ())


def test_clean_draw_is_the_paper_protocol() -> None:
    hr = face_like()
    d = deg.draw(np.random.default_rng(0), deg.DegradationConfig(clean_prob=1.0))
    assert d.clean and d.jpeg == () and d.noise_sigma == 0
    lr = deg.apply(hr, d, 4, np.random.default_rng(0))
    assert torch.allclose(lr, bicubic_downsample(hr[None], 4)[0])


def test_each_stage_changes_the_image_as_expected() -> None:
    hr = face_like()
    rng = np.random.default_rng(0)
    plain = deg.Degradation(False, "none", (), "bicubic", 0.0, False, 0.0, (), (0, 0))
    base = deg.apply(hr, plain, 4, rng)
    assert base.shape == (3, 32, 32)
    # Blur removes high frequencies: less energy in the Laplacian.
    blurred = deg.apply(hr, replace(plain, blur="iso", blur_params=(2.5,)), 4, rng)

    def hf(x: torch.Tensor) -> float:
        return float(
            (x[:, 1:-1, 1:-1] * 4 - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:])
            .abs()
            .mean()
        )

    assert hf(blurred) < 0.7 * hf(base)
    # Kernels differ from one another.
    area = deg.apply(hr, replace(plain, kernel="area"), 4, rng)
    bilinear = deg.apply(hr, replace(plain, kernel="bilinear"), 4, rng)
    assert float((area - base).abs().mean()) > 1e-3 and float((bilinear - base).abs().mean()) > 1e-3
    # Noise of sigma 10/255 adds about that much.
    noisy = deg.apply(hr, replace(plain, noise_sigma=10.0), 4, rng)
    assert 6 / 255 < float((noisy - base).std()) < 14 / 255
    # Grey noise is the same in all three channels.
    grey = deg.apply(hr, replace(plain, noise_sigma=10.0, grey_noise=True), 4, rng) - base
    assert float((grey[0] - grey[1]).abs().max()) < 2.5 / 255
    # Shot noise grows with the signal.
    flat = torch.full((3, 128, 128), 0.9)
    dark = torch.full((3, 128, 128), 0.05)
    shot = replace(plain, noise_sigma=1e-6, poisson_gain=1e-3)
    assert float(deg.apply(flat, shot, 4, rng).std()) > 2 * float(deg.apply(dark, shot, 4, rng).std())
    # JPEG: lower quality costs more; the output stays 8-bit.
    q30 = deg.apply(hr, replace(plain, jpeg=(30,)), 4, rng)
    q95 = deg.apply(hr, replace(plain, jpeg=(95,)), 4, rng)
    assert float((q30 - base).abs().mean()) > 1.5 * float((q95 - base).abs().mean())
    assert torch.allclose(q30 * 255, (q30 * 255).round(), atol=1e-4)
    twice = deg.apply(hr, replace(plain, jpeg=(30, 50)), 4, rng)
    assert float((twice - q30).abs().mean()) > 1e-3


def test_jpeg_grid_offset_keeps_size_and_moves_blocks() -> None:
    img = (face_like(40).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    a = deg.jpeg_roundtrip(img, 40, (0, 0))
    b = deg.jpeg_roundtrip(img, 40, (3, 5))
    assert a.shape == b.shape == img.shape
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 0.5


def test_draws_cover_the_documented_ranges() -> None:
    cfg = deg.DegradationConfig()
    rng = np.random.default_rng(1)
    draws = [deg.draw(rng, cfg, 4) for _ in range(2000)]
    clean = np.mean([d.clean for d in draws])
    assert abs(clean - cfg.clean_prob) < 0.04
    dirty = [d for d in draws if not d.clean]
    qualities = [q for d in dirty for q in d.jpeg]
    assert min(qualities) >= 30 and max(qualities) <= 95 and min(qualities) < 35 and max(qualities) > 90
    assert abs(np.mean([len(d.jpeg) > 0 for d in dirty]) - cfg.jpeg_prob) < 0.04
    assert 0.15 < np.mean([len(d.jpeg) == 2 for d in dirty if d.jpeg]) < 0.35
    assert {d.blur for d in dirty} == {"none", "iso", "aniso", "defocus", "motion"}
    assert {d.kernel for d in dirty} == set(deg.KERNELS)
    sigmas = [d.noise_sigma for d in dirty if d.noise_sigma > 0]
    assert cfg.noise_sigma[0] <= min(sigmas) and max(sigmas) <= cfg.noise_sigma[1]
    # ×8: blur scales with the factor, in HR pixels.
    d8 = [deg.draw(np.random.default_rng(s), cfg, 8) for s in range(300)]
    iso8 = [d.blur_params[0] for d in d8 if d.blur == "iso"]
    top = cfg.blur_sigma[1]
    assert max(iso8) > top and max(iso8) <= 2 * top


def test_fixed_degradation_depends_only_on_seed_and_key() -> None:
    hr = torch.stack([face_like(seed=s) for s in range(6)])
    a = deg.degrade_fixed(hr, 4, np.arange(6), seed=0, cfg=deg.EVAL_CONFIG)
    b = deg.degrade_fixed(hr[3:], 4, np.arange(3, 6), seed=0, cfg=deg.EVAL_CONFIG)
    assert torch.equal(a[3:], b)  # batching and subsets do not change a face's degradation
    c = deg.degrade_fixed(hr, 4, np.arange(6), seed=1, cfg=deg.EVAL_CONFIG)
    assert not torch.equal(a, c)
    assert not torch.allclose(a, bicubic_downsample(hr, 4), atol=1e-3)  # eval's real is never clean


def test_sampler_uses_the_degradation_when_configured() -> None:
    cs = synthetic_crops(n_ids=3, per_id=3)
    cfg = SamplerConfig(scale=4, degradation=deg.DegradationConfig(clean_prob=0.0, jpeg_prob=1.0))
    lr, hr, _, _ = CropSampler(cs, cfg, seed=0).sample(8)
    assert lr.shape == (8, 3, 32, 32)
    assert not torch.allclose(lr, bicubic_downsample(hr, 4), atol=2e-3)
    # A checkpoint's JSON config (degradation as a dict) comes back as the dataclass.
    back = SamplerConfig(**{**cfg.__dict__, "degradation": {"clean_prob": 0.5}})
    assert isinstance(back.degradation, deg.DegradationConfig) and back.degradation.clean_prob == 0.5


@pytest.mark.slow
def test_eval_protocols() -> None:
    from hime_cli.sr.registry import create_model

    cs = synthetic_crops(n_ids=3, per_id=3)
    from hime_cli.training.dataset import canonical_view

    hr = canonical_view(cs)
    assert torch.equal(degraded_inputs(hr, 4, "bicubic"), bicubic_downsample(hr, 4))
    with pytest.raises(ValueError):
        degraded_inputs(hr, 4, "gaussian")
    model = create_model("hime_test_x4").eval()
    kw = {"scale": 4, "n_refs": 2, "with_identity": False, "methods": ("bicubic", "hime")}
    clean = evaluate(model, cs, **kw)
    real = evaluate(model, cs, **kw, degradation="real")
    again = evaluate(model, cs, **kw, degradation="real")
    assert clean["degradation"] == "bicubic" and real["degradation"] == "real"
    for method in ("bicubic", "hime"):  # a fixed seed reproduces the numbers
        assert real["methods"][method]["psnr"] == again["methods"][method]["psnr"]
    assert real["methods"]["bicubic"]["psnr"] < clean["methods"]["bicubic"]["psnr"]
