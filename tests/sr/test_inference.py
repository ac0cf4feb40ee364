from __future__ import annotations

import numpy as np
import pytest
import torch

from hime_cli.errors import ModelError, UsageError
from hime_cli.faces.align import native_min_size
from hime_cli.sr.inference import (
    FaceSuperResolver,
    SRJob,
    load_super_resolver,
    lr_crop_size,
    resize_crop,
    resolve_device,
)
from hime_cli.sr.registry import create_model


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("hime_test_x4").eval()


def _job(rng: np.random.Generator, size: int, n_refs: int, scale: int = 4) -> SRJob:
    lr = rng.random((size, size, 3), dtype=np.float32)
    refs = tuple(rng.random((size * scale, size * scale, 3), dtype=np.float32) for _ in range(n_refs))
    return SRJob(lr, refs)


def test_lr_crop_size_policy() -> None:
    assert lr_crop_size(10.0, 4) == 32  # small face: up to the training size
    assert lr_crop_size(19.0, 4) == 32
    assert native_min_size(4) == 20
    assert lr_crop_size(19.2, 4) == 20  # from 20 px up: its own size, never resampled
    assert lr_crop_size(24.3, 4) == 25
    assert lr_crop_size(32.0, 4) == 32
    assert lr_crop_size(40.2, 4) == 41  # larger face: native resolution, never shrunk
    assert native_min_size(8) == 10
    assert lr_crop_size(9.0, 8) == 16
    assert lr_crop_size(16.0, 8) == 16


def test_resolve_device() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda")
    with pytest.raises(UsageError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA"):
            resolve_device("cuda")


def test_batched_results_match_one_by_one(tiny_model: torch.nn.Module) -> None:
    rng = np.random.default_rng(0)
    # Mixed sizes and reference counts (0 refs included) in one call.
    jobs = [_job(rng, 32, 2), _job(rng, 40, 0), _job(rng, 32, 0), _job(rng, 32, 3), _job(rng, 40, 1)]
    sr = FaceSuperResolver(tiny_model, "cpu")
    calls: list[int] = []
    batched = sr.run(jobs, on_batch=calls.append)
    assert sum(calls) == len(jobs) and len(calls) == 2  # one batch per crop size
    assert [b.shape for b in batched] == [
        (128, 128, 3),
        (160, 160, 3),
        (128, 128, 3),
        (128, 128, 3),
        (160, 160, 3),
    ]
    for job, out in zip(jobs, batched, strict=True):
        with torch.inference_mode():
            lr = torch.from_numpy(job.lr).permute(2, 0, 1)[None]
            refs = torch.from_numpy(np.stack(job.refs)).permute(0, 3, 1, 2)[None] if job.refs else None
            single = tiny_model(lr, refs).permute(0, 2, 3, 1)[0].numpy()
        np.testing.assert_allclose(out, single, atol=1e-4)


def test_references_change_the_output(tiny_model: torch.nn.Module) -> None:
    rng = np.random.default_rng(1)
    job = _job(rng, 32, 2)
    sr = FaceSuperResolver(tiny_model, "cpu")
    with_refs, without = sr.run([job, SRJob(job.lr)])
    assert np.abs(with_refs - without).max() > 1e-4


def test_batches_respect_the_pixel_budget(tiny_model: torch.nn.Module) -> None:
    rng = np.random.default_rng(2)
    jobs = [_job(rng, 32, 3) for _ in range(10)]
    # 128² HR pixels × (1 + 3 refs) = 65,536 per face: a 200k budget fits 3 faces per batch.
    sr = FaceSuperResolver(tiny_model, "cpu", batch_pixels=200_000)
    batches = sr.plan_batches(jobs)
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    assert sorted(i for b in batches for i in b) == list(range(10))
    # A single face over budget still runs alone.
    assert FaceSuperResolver(tiny_model, "cpu", batch_pixels=1).plan_batches(jobs[:2]) == [[0], [1]]


def test_bad_reference_shape_is_rejected(tiny_model: torch.nn.Module) -> None:
    rng = np.random.default_rng(3)
    bad = SRJob(rng.random((32, 32, 3), dtype=np.float32), (rng.random((100, 100, 3), dtype=np.float32),))
    with pytest.raises(ValueError, match="reference crops"):
        FaceSuperResolver(tiny_model, "cpu").run([bad])


def test_resize_crop() -> None:
    crop = np.random.default_rng(4).random((128, 128, 3), dtype=np.float32)
    assert resize_crop(crop, 64).shape == (64, 64, 3)
    assert resize_crop(crop, 256).shape == (256, 256, 3)
    assert resize_crop(crop, 128) is crop
    np.testing.assert_allclose(resize_crop(crop, 64).mean(), crop.mean(), atol=1e-3)


def test_weights_from_a_safetensors_path(tmp_path, tiny_model: torch.nn.Module) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "hime_test_x4.mine.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_model.state_dict().items()}, str(path))
    sr = load_super_resolver(str(path), scale=4, device="cpu")
    assert sr.scale == 4 and sr.name == path.name
    for a, b in zip(sr.model.state_dict().values(), tiny_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    odd = tmp_path / "whatever.safetensors"
    odd.write_bytes(path.read_bytes())
    with pytest.raises(ModelError, match="architecture"):
        load_super_resolver(str(odd), scale=4, device="cpu")
    with pytest.raises(ModelError, match="not found"):
        load_super_resolver(str(tmp_path / "missing.safetensors"), scale=4, device="cpu")


def test_enhance_uses_the_x4_model_at_every_scale() -> None:
    """×8 resamples the ×4 model's output: measured better than the ×8 model (docs/enhance.md)."""
    from hime_cli.sr.inference import default_weights_name

    assert {default_weights_name(s) for s in (1, 2, 4, 8)} == {"hime_small_x4"}


def test_x8_weights_take_faces_at_their_training_zoom() -> None:
    """A ×4 network trained for ×8 (registry scale 8) takes 16 px faces, as it was trained; the ×4
    default and unregistered names keep the network's own zoom."""
    from hime_cli.pipeline.options import EnhanceOptions
    from hime_cli.pipeline.run import Enhancer
    from hime_cli.sr.inference import weights_input_scale

    x8 = "hime_small_x4.celeba_wild_real_x8_v1"
    assert weights_input_scale(x8) == 8
    assert weights_input_scale("hime_small_x4") is None and weights_input_scale("hime_small_x8") is None
    assert weights_input_scale("no_such_model.tag") is None
    sr = load_super_resolver(x8, scale=8, device="cpu")
    assert (sr.scale, sr.input_scale) == (4, 8)
    # --dry-run loads no model, yet plans the same crops
    rules = Enhancer(EnhanceOptions(scale=8, weights=x8, dry_run=True))._crop_rules()
    assert rules == sr.rules and (rules.main.crop_scale, rules.small) == (8, None)
    assert Enhancer(EnhanceOptions(scale=8, dry_run=True))._crop_rules().main.crop_scale == 4


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_default_weights_route_the_smallest_faces(scale: int) -> None:
    """With the default weights, enhance at ×4 and ×8 runs faces under 20 px (those the default
    enlarges to 32 px) through the weights trained on 16 px faces; --weights, and the scales where
    that was not measured, run one network. A dry run plans what the loaded model runs."""
    from hime_cli.pipeline.options import EnhanceOptions
    from hime_cli.pipeline.run import Enhancer
    from hime_cli.sr.inference import SMALL_FACE_WEIGHTS, RoutedSuperResolver, crop_rules

    sr = load_super_resolver(None, scale=scale, device="cpu", mirror=False)
    planned = Enhancer(EnhanceOptions(scale=scale, dry_run=True))._crop_rules()
    assert sr.rules == planned == crop_rules(None, scale)
    if scale in (4, 8):
        assert isinstance(sr, RoutedSuperResolver) and sr.small.name == SMALL_FACE_WEIGHTS
        assert (sr.rules.small_below, sr.rules.small.crop_scale, sr.rules.small.model_scale) == (20, 8, 4)
        # exactly the faces the default would enlarge: own crop ceil(region) under 20 px
        assert sr.rules.for_region(19.0).route == 1 and sr.rules.for_region(19.2).route == 0
        assert lr_crop_size(19.0, 4) == 32 and lr_crop_size(19.2, 4) == 20
        assert SMALL_FACE_WEIGHTS in sr.name
    else:
        assert not isinstance(sr, RoutedSuperResolver) and sr.rules.small is None
    pinned = load_super_resolver("hime_small_x4", scale=scale, device="cpu", mirror=False)
    assert not isinstance(pinned, RoutedSuperResolver) and pinned.rules == crop_rules("hime_small_x4", scale)


def test_routed_resolver_runs_each_face_through_its_network(tiny_model) -> None:
    """Jobs of route 0 and 1 come back in order, each as its own network alone gives it."""
    from hime_cli.sr.inference import RoutedSuperResolver

    torch.manual_seed(1)
    other = create_model("hime_test_x4").eval()  # other random weights
    main, small = (
        FaceSuperResolver(tiny_model, "cpu", name="main"),
        FaceSuperResolver(other, "cpu", name="small"),
    )
    rng = np.random.default_rng(0)
    jobs = [
        SRJob(rng.random((size, size, 3), dtype=np.float32), route=route)
        for size, route in ((32, 0), (16, 1), (20, 0), (16, 1), (32, 0))
    ]
    routed = RoutedSuperResolver(main, small)  # ×4 main: faces under 20 px
    counted: list[int] = []
    outs = routed.run(jobs, on_batch=counted.append)
    assert routed.rules.small_below == 20
    assert sum(counted) == len(jobs) and [o.shape[0] for o in outs] == [128, 64, 80, 64, 128]
    for job, out in zip(jobs, outs, strict=True):
        alone = (small if job.route else main).run([SRJob(job.lr)])[0]
        np.testing.assert_allclose(out, alone, atol=1e-5)
    with pytest.raises(ValueError, match="route"):
        routed.run([SRJob(jobs[0].lr, route=2)])
