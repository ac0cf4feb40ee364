from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from hime_cli.cli.app import app
from hime_cli.training.dataset import (
    CropSampler,
    SamplerConfig,
    bicubic_downsample,
    canonical_view,
    similar_members,
)
from hime_cli.training.evaluate import evaluate, make_plan
from hime_cli.training.metrics import psnr
from hime_cli.training.prepare import STORE_SIZE, CropSet, merge_crop_sets
from hime_cli.training.train import TrainConfig, TrainState, learning_rate, load_checkpoint, train


def synthetic_crops(n_ids: int = 3, per_id: int = 3, seed: int = 0) -> CropSet:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:STORE_SIZE, 0:STORE_SIZE] / STORE_SIZE
    crops, ids = [], []
    for k in range(n_ids):
        for _ in range(per_id):
            f = rng.uniform(2, 6, 3)
            img = np.stack([0.5 + 0.4 * np.sin(f[c] * (xx + k) + f[(c + 1) % 3] * yy) for c in range(3)], -1)
            crops.append((img * 255).astype(np.uint8))
            ids.append(k)
    return CropSet(
        crops=np.stack(crops),
        identity=np.asarray(ids, np.int32),
        identities=tuple(f"id{k}" for k in range(n_ids)),
        region=np.full(len(ids), 150.0, np.float32),
        sources=tuple(f"id{k}/{i}.jpg" for i, k in enumerate(ids)),
    )


def test_cropset_roundtrip_and_merge(tmp_path: Path) -> None:
    cs = synthetic_crops()
    cs.save(tmp_path / "c.npz")
    back = CropSet.load(tmp_path / "c.npz")
    assert back.crops.shape == cs.crops.shape
    assert np.abs(back.crops.astype(int) - cs.crops).mean() < 2.0  # JPEG q97
    assert back.identities == cs.identities and back.sources == cs.sources
    other = CropSet(cs.crops[:2], np.zeros(2, np.int32), ("other",), cs.region[:2], ("other/a", "other/b"))
    merged = merge_crop_sets([cs, other])
    assert len(merged) == len(cs) + 2 and merged.identities[-1] == "other"
    assert merged.identity[-1] == len(cs.identities)
    with pytest.raises(ValueError):
        merge_crop_sets([cs, cs])


def test_sampler_shapes_and_reference_rules() -> None:
    cs = synthetic_crops(n_ids=4, per_id=4)
    cfg = SamplerConfig(scale=4, p_blank=0.3, p_wrong=0.0, p_fewer=0.3)
    sampler = CropSampler(cs, cfg, seed=1)
    lr, hr, refs, mask = sampler.sample(16)
    assert lr.shape == (16, 3, 32, 32) and hr.shape == (16, 3, 128, 128)
    assert refs.shape == (16, 3, 3, 128, 128) and mask.shape == (16, 3) and mask.dtype == torch.bool
    assert float(hr.min()) >= 0 and float(hr.max()) <= 1
    assert (refs[~mask] == 0).all()  # absent references are zeros
    assert (~mask).all(1).any()  # some blank samples at p_blank=0.3
    # LR is exactly the bicubic degradation of HR
    assert torch.allclose(lr, bicubic_downsample(hr, 4))


def test_sampler_face_scale_gives_whole_small_faces_and_half_size_refs() -> None:
    from hime_cli.training.dataset import shrink_refs

    cs = synthetic_crops(n_ids=4, per_id=4)
    sampler = CropSampler(cs, SamplerConfig(scale=4, face_scale=8, p_blank=0.3), seed=2)
    lr, hr, refs, mask = sampler.sample(12)
    # the ×4 network at ×8: 16 px inputs, 64 px references (as enhance crops them), the 128 px target
    assert lr.shape == (12, 3, 16, 16) and hr.shape == (12, 3, 128, 128)
    assert refs.shape == (12, 3, 3, 64, 64) and (refs[~mask] == 0).all()
    assert torch.allclose(lr, bicubic_downsample(hr, 8))
    assert torch.allclose(shrink_refs(hr[:, None], 2)[:, 0], bicubic_downsample(hr, 2))
    with pytest.raises(ValueError):
        SamplerConfig(scale=4, face_scale=6)
    with pytest.raises(ValueError):
        SamplerConfig(scale=4, face_scale=8, patch=64)


def test_train_with_face_scale_scores_the_resampled_output(tmp_path: Path) -> None:
    from hime_cli.training.dataset import to_target_size
    from hime_cli.training.train import Validator

    cs = synthetic_crops()
    cfg = TrainConfig(
        arch="hime_test_x4",
        batch=2,
        steps=2,
        log_every=1,
        val_every=1,
        warmup_steps=1,
        sampler=SamplerConfig(face_scale=8),
    )
    model, state = train(cfg, cs, tmp_path / "run", val_crops=cs)
    assert state.step == 2 and "real_chosen" in state.history[-1]
    v = Validator(cs, 4, torch.device("cpu"), face_scale=8)  # as the trainer builds it
    assert v.lr.shape[-1] == 16 and v.chosen.shape[-1] == 64 and v.own.shape[-1] == 64
    out = to_target_size(model.eval()(v.lr), 128)
    assert out.shape[-1] == 128
    assert state.history[-1]["psnr_blank"] == pytest.approx(float(psnr(out, v.hr).mean()), abs=2e-3)


def test_canonical_view_is_the_centre_crop() -> None:
    cs = synthetic_crops()
    hr = canonical_view(cs)
    assert hr.shape == (len(cs), 3, 128, 128)
    m = (STORE_SIZE - 128) // 2
    expected = torch.from_numpy(cs.crops[0, m : m + 128, m : m + 128]).permute(2, 0, 1).float() / 255
    assert torch.allclose(hr[0], expected)


def test_learning_rate_schedule() -> None:
    cfg = TrainConfig(lr=1e-3, min_lr=0.0, warmup_steps=10, steps=110)
    assert learning_rate(cfg, TrainState(step=0)) == pytest.approx(1e-4)
    assert learning_rate(cfg, TrainState(step=10)) == pytest.approx(0.5e-3 * (1 + np.cos(np.pi * 10 / 110)))
    assert learning_rate(cfg, TrainState(step=110)) == pytest.approx(0.0, abs=1e-9)
    timed = TrainConfig(lr=1e-3, min_lr=0.0, warmup_steps=0, steps=10**9, time_budget_s=100)
    assert learning_rate(timed, TrainState(step=5, elapsed_s=50)) == pytest.approx(5e-4, rel=1e-3)


def test_train_checkpoint_and_resume(tmp_path: Path) -> None:
    cs = synthetic_crops()
    cfg = TrainConfig(arch="hime_test_x4", batch=2, steps=3, log_every=1, val_every=1, warmup_steps=1)
    model, state = train(cfg, cs, tmp_path / "run", val_crops=cs)
    assert state.step == 3
    ckpt = tmp_path / "run" / "checkpoint.safetensors"
    assert ckpt.exists()
    from hime_cli.sr.registry import create_model

    fresh = create_model("hime_test_x4")
    opt = torch.optim.Adam(fresh.parameters())
    resumed = load_checkpoint(ckpt, fresh, opt)
    assert resumed.step == 3
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert len(opt.state_dict()["state"]) == len(list(fresh.parameters()))
    cfg5 = TrainConfig(arch="hime_test_x4", batch=2, steps=5, log_every=1, val_every=100, warmup_steps=1)
    _, state5 = train(cfg5, cs, tmp_path / "run", resume=True)
    assert state5.step == 5
    lines = [json.loads(s) for s in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "final" not in r][-2:] == [4, 5]


def test_eval_plan_never_uses_the_target_or_its_identity_for_wrong_refs() -> None:
    cs = synthetic_crops(n_ids=3, per_id=4)
    plan = make_plan(cs, n_refs=3)
    assert len(plan.targets) == len(cs)
    for t, refs, wrong in zip(plan.targets, plan.refs, plan.wrong_refs, strict=True):
        assert t not in refs
        assert all(cs.identity[r] == cs.identity[t] for r in refs if r >= 0)
        assert all(cs.identity[w] != cs.identity[t] for w in wrong if w >= 0)
    limited = make_plan(cs, n_refs=3, limit=3)
    assert len(np.unique(cs.identity[limited.targets])) == 3  # spread over identities


def test_evaluate_reports_every_method() -> None:
    from hime_cli.sr.registry import create_model

    cs = synthetic_crops()
    torch.manual_seed(0)
    result = evaluate(create_model("hime_test_x4").eval(), cs, scale=4, limit=4, with_identity=False)
    assert set(result["methods"]) == {"bicubic", "hime", "hime_random_refs", "hime_blank", "hime_wrong_refs"}
    assert result["faces"] == 4 and result["lr_size"] == 32
    assert result["methods"]["bicubic"]["psnr"] > 15
    assert "ms_per_face" in result["methods"]["hime"]


def test_evaluate_runs_the_x4_network_at_x8_as_enhance_does() -> None:
    from hime_cli.sr.registry import create_model
    from hime_cli.training.dataset import shrink_refs, to_target_size

    cs = synthetic_crops()
    model = create_model("hime_test_x4").eval()
    seen: list[tuple[int, ...]] = []
    forward = model.forward

    def spy(lr, refs=None, mask=None):
        seen.append((lr.shape[-1], None if refs is None else refs.shape[-1]))
        return forward(lr, refs, mask)

    model.forward = spy
    result = evaluate(
        model, cs, scale=8, limit=3, with_identity=False, methods=("bicubic", "hime", "hime_blank")
    )
    assert result["scale"] == 8 and result["model_scale"] == 4 and result["lr_size"] == 16
    assert (16, 64) in seen and (16, None) in seen  # 16 px inputs, 64 px references
    # the score is the output resampled to 128 px against the HR crop
    plan = make_plan(cs, 3, limit=3, scale=8)
    hr = canonical_view(cs)
    rows = plan.refs
    refs = shrink_refs(hr[np.maximum(rows, 0)] * torch.from_numpy(rows >= 0)[..., None, None, None], 2)
    with torch.no_grad():
        out = to_target_size(
            forward(bicubic_downsample(hr[plan.targets], 8), refs, torch.from_numpy(rows >= 0)), 128
        )
    assert result["methods"]["hime"]["psnr"] == pytest.approx(
        float(psnr(out.clamp(0, 1), hr[plan.targets]).mean()), abs=2e-3
    )


def test_eval_refuses_a_network_of_a_larger_zoom(tmp_path: Path) -> None:
    from hime_cli.errors import UsageError
    from hime_cli.sr.registry import create_model
    from hime_cli.training.evaluate import load_model_for_eval
    from hime_cli.training.train import export_weights

    weights = tmp_path / "x8.safetensors"
    export_weights(create_model("hime_test_x8"), weights, {"arch": "hime_test_x8"})
    assert load_model_for_eval(str(weights), 8)[0].scale == 8
    with pytest.raises(UsageError):
        load_model_for_eval(str(weights), 4)


def test_eval_default_weights_are_what_enhance_runs_on_its_faces() -> None:
    """×4 scores 32 px faces: the default weights; ×8 scores 16 px faces, which enhance gives the
    small-face weights (sr.inference.small_face_weights); --weights is taken as it is."""
    from hime_cli.sr.inference import SMALL_FACE_WEIGHTS, default_weights_name
    from hime_cli.training.evaluate import load_model_for_eval

    assert load_model_for_eval(None, 4)[1] == default_weights_name(4)
    assert load_model_for_eval(None, 8)[1] == SMALL_FACE_WEIGHTS
    assert load_model_for_eval("hime_small_x4", 8)[1] == "hime_small_x4"


def test_cli_train_then_eval(tmp_path: Path) -> None:
    cs = synthetic_crops()
    data = tmp_path / "crops.npz"
    cs.save(data)
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(data),
            "--run",
            str(tmp_path / "r"),
            "--variant",
            "test",
            "--steps",
            "2",
            "--batch",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    weights = tmp_path / "r" / "hime_test_x4.safetensors"
    assert weights.exists()
    # the summary carries the recipe the model card is written from (training.export)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["config"]["batch"] == 2 and "sampler" in summary["config"]
    res = runner.invoke(
        app, ["eval", str(data), "--weights", str(weights), "--limit", "3", "--no-identity", "--json"]
    )
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    assert obj["scale"] == 4 and obj["faces"] == 3 and obj["params"] > 0
    assert set(obj["methods"]) == {"bicubic", "hime", "hime_random_refs", "hime_blank", "hime_wrong_refs"}


def test_cli_train_needs_a_budget(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["train", "--data", str(tmp_path), "--run", str(tmp_path / "r")])
    assert res.exit_code == 2


def test_sampler_flip_mirrors_the_face() -> None:
    cs = synthetic_crops(n_ids=2, per_id=2)
    cfg = SamplerConfig(rot_deg=0, shift=0, scale_jitter=0, p_zoom=0, ref_rot_deg=0, ref_shift=0)
    sampler = CropSampler(cs, cfg, seed=0)
    idx = np.array([0])
    theta = sampler._theta(1, 0, 0, 0, np.ones(1))
    plain = sampler._warp(idx, theta, np.array([False]))
    mirrored = sampler._warp(idx, theta, np.array([True]))
    assert torch.allclose(mirrored, plain.flip(-1), atol=1e-5)
    assert not torch.allclose(mirrored, plain, atol=1e-2)


def test_headless_entry_point_passes_every_option(tmp_path: Path) -> None:
    from hime_cli.sr.registry import create_model
    from hime_cli.training.run import main
    from hime_cli.training.train import export_weights

    cs = synthetic_crops()
    data = tmp_path / "crops.npz"
    cs.save(data)
    torch.manual_seed(3)
    init = tmp_path / "init.safetensors"
    export_weights(create_model("hime_test_x4"), init)
    run = tmp_path / "run"
    main(
        [
            "--data",
            str(data),
            "--run",
            str(run),
            "--arch",
            "hime_test_x4",
            "--steps",
            "1",
            "--batch",
            "2",
            "--init",
            str(init),
            "--p-self",
            "0.5",
            "--patch",
            "64",
            "--p-similar",
            "0.7",
            "--warmup-steps",
            "3",
            "--val-every",
            "7",
        ]
    )
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["warmup_steps"] == 3 and cfg["val_every"] == 7
    assert cfg["sampler"]["p_self"] == 0.5 and cfg["sampler"]["patch"] == 64
    assert cfg["sampler"]["p_similar"] == 0.7
    # One tiny step from the init weights stays close to them (a random init would not).
    from safetensors.torch import load_file

    a, b = load_file(str(init)), load_file(str(run / "hime_test_x4.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 0.05


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a.flatten(1) - a.flatten(1).mean(1, keepdim=True)
    b = b.flatten(1) - b.flatten(1).mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-8)


def test_self_references_are_the_target_reframed_and_relit() -> None:
    cs = synthetic_crops(n_ids=3, per_id=4)
    base = dict(
        scale=4, p_blank=0.0, p_wrong=0.0, p_fewer=0.0, rot_deg=0.0, shift=0.0, scale_jitter=0.0, p_zoom=0.0
    )
    _, hr, refs, mask = CropSampler(cs, SamplerConfig(**base, p_self=1.0), seed=3).sample(12)
    assert mask.all()
    self_corr = _pearson(refs[:, 0], hr)
    other_corr = _pearson(refs[:, 1], hr)
    assert (self_corr > 0.9).all(), self_corr  # the target's own face (small jitter, re-lit)
    assert (self_corr > other_corr).all()
    assert not torch.equal(refs[:, 0], hr)  # never a plain copy
    # p_self = 0: a reference is never the target itself
    _, hr0, refs0, _ = CropSampler(cs, SamplerConfig(**base, p_self=0.0), seed=3).sample(12)
    assert (_pearson(refs0[:, 0], hr0) < 0.9).all()


def test_stronger_self_reference_geometry_displaces_the_self_reference() -> None:
    cs = synthetic_crops(n_ids=3, per_id=4)
    base = dict(
        scale=4, p_blank=0.0, p_wrong=0.0, p_fewer=0.0, rot_deg=0.0, shift=0.0, scale_jitter=0.0, p_zoom=0.0
    )
    sampler = CropSampler(cs, SamplerConfig(**base, p_self=1.0, self_warp=0.08), seed=3)
    field = sampler._displacement(16, 0.08)
    assert field.shape == (16, 128, 128, 2)
    assert 0.0 < float(field.abs().max()) <= 0.08 + 1e-6
    # smooth: neighbouring pixels move alike (a 4 x 4 control grid, not per-pixel noise)
    assert float((field[:, 1:] - field[:, :-1]).abs().max()) < 0.08 / 10
    near = CropSampler(cs, SamplerConfig(**base, p_self=1.0), seed=3)
    far = CropSampler(
        cs,
        SamplerConfig(**base, p_self=1.0, self_rot_deg=8.0, self_shift=0.1, self_scale=0.08, self_warp=0.1),
        seed=3,
    )
    _, hr_n, refs_n, _ = near.sample(24)
    _, hr_f, refs_f, _ = far.sample(24)
    corr_near, corr_far = _pearson(refs_n[:, 0], hr_n), _pearson(refs_f[:, 0], hr_f)
    assert float(corr_far.mean()) < float(corr_near.mean()) - 0.02, (corr_near.mean(), corr_far.mean())
    assert float(corr_far.mean()) > float(_pearson(refs_f[:, 1], hr_f).mean())  # still the target's face


def test_eval_plan_picks_references_that_look_like_the_lr_face() -> None:
    from hime_cli.identities.exemplars import appearance_vector

    cs = synthetic_crops(n_ids=2, per_id=8, seed=5)
    plan = make_plan(cs, n_refs=2)
    hr = canonical_view(cs)
    lr = bicubic_downsample(hr, 4).permute(0, 2, 3, 1).numpy()
    vec = np.stack([appearance_vector(x, 32) for x in lr])

    def mean_similarity(table: np.ndarray) -> float:
        return float(
            np.mean(
                [vec[r] @ vec[t] for t, row in zip(plan.targets, table, strict=True) for r in row if r >= 0]
            )
        )

    assert mean_similarity(plan.refs) > mean_similarity(plan.random_refs)
    for t, refs, rnd in zip(plan.targets, plan.refs, plan.random_refs, strict=True):
        assert t not in refs and t not in rnd
        assert all(cs.identity[r] == cs.identity[t] for r in [*refs, *rnd] if r >= 0)


def test_similar_members_rank_the_identity_by_appearance() -> None:
    from hime_cli.identities.exemplars import appearance_vector

    cs = synthetic_crops(n_ids=2, per_id=6, seed=7)
    similar = similar_members(cs, 4, chunk=5)  # decoded in chunks: the same as all at once
    assert all(np.array_equal(similar[i], v) for i, v in similar_members(cs, 4, canonical_view(cs)).items())
    lr = bicubic_downsample(canonical_view(cs), 4).permute(0, 2, 3, 1).numpy()
    vec = np.stack([appearance_vector(x, 32) for x in lr])  # the LR view, as eval and enhance see it
    for i in range(len(cs)):
        order = similar[i]
        assert i not in order and len(order) == 5
        assert all(cs.identity[j] == cs.identity[i] for j in order)
        scores = vec[order] @ vec[i]
        assert np.all(np.diff(scores) <= 1e-6), scores  # best first


def test_sampler_p_similar_draws_the_most_similar_references() -> None:
    cs = synthetic_crops(n_ids=2, per_id=6, seed=7)
    base = dict(scale=4, p_blank=0.0, p_wrong=0.0, p_fewer=0.0, max_refs=2)
    similar = similar_members(cs, 4)
    targets = np.arange(len(cs))
    index, mask = CropSampler(cs, SamplerConfig(**base, p_similar=1.0), seed=2).reference_indices(targets)
    assert mask.all()
    for t, refs in zip(targets, index, strict=True):
        assert list(refs) == list(similar[t][:2])
    # p_similar = 0: a random draw of the same identity, not always the top two
    sampler = CropSampler(cs, SamplerConfig(**base), seed=2)
    assert sampler.similar == {}
    index, _ = sampler.reference_indices(np.repeat(targets, 4))
    top = np.stack([similar[t][:2] for t in np.repeat(targets, 4)])
    assert (np.sort(index, 1) != np.sort(top, 1)).any()
    assert all(
        cs.identity[r] == cs.identity[t] and r != t
        for t, row in zip(np.repeat(targets, 4), index, strict=True)
        for r in row
    )


def test_prepared_crops_are_the_same_on_the_first_run_and_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hime_cli.training.prepare as prepare
    from hime_cli.training.run import load_or_prepare

    rng = np.random.default_rng(0)
    noisy = synthetic_crops()
    noisy = CropSet(
        crops=rng.integers(0, 256, noisy.crops.shape, dtype=np.uint8),  # JPEG cannot keep this exactly
        identity=noisy.identity,
        identities=noisy.identities,
        region=noisy.region,
        sources=noisy.sources,
    )
    calls: list[Path] = []

    def fake_prepare(data, limit_identities=None):
        calls.append(data)
        return noisy, {"kept": 9}

    monkeypatch.setattr(prepare, "prepare_crops", fake_prepare)
    folder = tmp_path / "people"
    folder.mkdir()
    first = load_or_prepare(folder, log=lambda s: None)
    again = load_or_prepare(folder, log=lambda s: None)
    assert len(calls) == 1  # the second run reads the cache, it does not prepare again
    assert np.array_equal(first.crops, again.crops)


def test_train_only_freezes_everything_else(tmp_path: Path) -> None:
    """--train-only fine.: a fine model fine-tuned from plain weights; only the branch moves."""
    from safetensors.torch import save_file

    from hime_cli.sr.registry import create_model

    torch.manual_seed(3)
    plain = create_model("hime_test_x4")
    init = tmp_path / "hime_test_x4.plain.safetensors"
    save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(init))
    cs = synthetic_crops()
    cfg = TrainConfig(
        arch="hime_test_x4",
        batch=2,
        steps=3,
        log_every=1,
        val_every=100,
        warmup_steps=1,
        train_only=("fine.",),
    )
    with pytest.raises(ValueError, match="matches no parameter"):
        train(cfg, cs, tmp_path / "none", init_weights=init)  # hime_test_x4 has no fine branch
    cfg = TrainConfig(**{**cfg.__dict__, "arch": "hime_test_fine_x4"})
    model, state = train(cfg, cs, tmp_path / "run", init_weights=init)
    assert state.step == 3
    after = model.state_dict()
    for key, value in plain.state_dict().items():
        assert torch.equal(after[key], value), key
    moved = [k for k, v in after.items() if k.startswith("fine.") and v.abs().sum() > 0]
    assert "fine.fuse.2.weight" in moved  # the zero-initialised output conv has started to learn


def test_weight_average_follows_the_weights_with_its_decay() -> None:
    from hime_cli.training.train import WeightAverage

    lin = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    avg = WeightAverage(lin, decay=0.5)
    assert avg.current_decay(0) == pytest.approx(0.1)  # ramped: an early average follows the weights
    assert avg.current_decay(10_000) == 0.5
    with torch.no_grad():
        lin.weight.fill_(1.0)
    avg.update(lin, updates=10_000)  # 0.5 · 0 + 0.5 · 1
    assert torch.allclose(avg.model.weight, torch.full((1, 2), 0.5))
    avg.update(lin, updates=10_000)
    assert torch.allclose(avg.model.weight, torch.full((1, 2), 0.75))
    assert not avg.model.weight.requires_grad
    with pytest.raises(ValueError):
        WeightAverage(lin, decay=1.0)


def test_train_with_ema_checkpoints_resumes_and_returns_the_average(tmp_path: Path) -> None:
    from hime_cli.sr.registry import create_model

    cs = synthetic_crops()
    run = tmp_path / "run"
    cfg = TrainConfig(
        arch="hime_test_x4",
        batch=2,
        steps=3,
        log_every=1,
        val_every=1,
        warmup_steps=1,
        lr=1e-2,
        ema_decay=0.9,
    )
    torch.manual_seed(0)
    averaged, state = train(cfg, cs, run, val_crops=cs)
    assert state.ema_updates == 3
    ckpt = run / "checkpoint.safetensors"
    last = create_model("hime_test_x4")
    load_checkpoint(ckpt, last, None)
    from_ckpt = create_model("hime_test_x4")
    load_checkpoint(ckpt, from_ckpt, None, weights="ema")
    # the run returns the averaged weights, which the checkpoint holds beside (and unlike) the last ones
    for (k, a), b in zip(averaged.state_dict().items(), from_ckpt.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert any(
        not torch.equal(a, b)
        for a, b in zip(averaged.state_dict().values(), last.state_dict().values(), strict=True)
    )
    rec = [json.loads(s) for s in (run / "log.jsonl").read_text().splitlines()][0]
    assert {"psnr_chosen", "ema_psnr_chosen", "ema_real_chosen"} <= set(rec)
    # resumed, the average and its update count carry on
    cfg5 = TrainConfig(**{**cfg.__dict__, "steps": 5})
    _, state5 = train(cfg5, cs, run, resume=True)
    assert state5.step == 5 and state5.ema_updates == 5


def test_checkpoint_without_an_average_refuses_ema_weights_and_seeds_a_new_average(tmp_path: Path) -> None:
    from hime_cli.sr.registry import create_model
    from hime_cli.training.train import WeightAverage

    cs = synthetic_crops()
    cfg = TrainConfig(arch="hime_test_x4", batch=2, steps=2, log_every=1, val_every=100, warmup_steps=1)
    model, _ = train(cfg, cs, tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoint.safetensors"
    with pytest.raises(ValueError, match="no averaged"):
        load_checkpoint(ckpt, create_model("hime_test_x4"), None, weights="ema")
    fresh = create_model("hime_test_x4")
    avg = WeightAverage(fresh, 0.99)
    state = load_checkpoint(ckpt, fresh, None, avg)
    assert state.ema_updates == 0
    for (k, a), b in zip(model.state_dict().items(), avg.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_headless_entry_point_sets_ema_and_the_clean_share(tmp_path: Path) -> None:
    from hime_cli.errors import UsageError
    from hime_cli.training.run import main

    cs = synthetic_crops()
    data = tmp_path / "crops.npz"
    cs.save(data)
    run = tmp_path / "run"
    common = [
        "--data",
        str(data),
        "--run",
        str(run),
        "--arch",
        "hime_test_x4",
        "--steps",
        "1",
        "--batch",
        "2",
    ]
    main([*common, "--degradation", "real", "--clean-prob", "0.45", "--ema", "0.99"])
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["ema_decay"] == 0.99
    assert cfg["sampler"]["degradation"]["clean_prob"] == 0.45
    with pytest.raises(UsageError, match="--degradation real"):
        main([*common, "--clean-prob", "0.4"])
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        main([*common, "--degradation", "real", "--clean-prob", "1.5"])


def test_evaluate_upsampled_lr_crop_feeds_the_x4_network_as_enhance_crops_a_small_face() -> None:
    from hime_cli.sr.registry import create_model
    from hime_cli.training.evaluate import upsample_lr

    cs = synthetic_crops()
    model = create_model("hime_test_x4").eval()
    seen: list[tuple[int, int | None]] = []
    forward = model.forward

    def spy(lr, refs=None, mask=None):
        seen.append((lr.shape[-1], None if refs is None else refs.shape[-1]))
        return forward(lr, refs, mask)

    model.forward = spy
    kw = dict(scale=8, limit=3, with_identity=False, methods=("bicubic", "hime", "hime_blank"))
    result = evaluate(model, cs, lr_crop="upsampled", **kw)
    assert result["lr_crop"] == "upsampled" and result["net_input"] == 32 and result["lr_size"] == 16
    assert (32, 128) in seen and (32, None) in seen and not any(s[0] == 16 for s in seen)
    # the 128 px output is scored as it is, from the 16 px face enlarged with Lanczos
    plan = make_plan(cs, 3, limit=3, scale=8)
    hr = canonical_view(cs)
    rows = plan.refs
    refs = hr[np.maximum(rows, 0)] * torch.from_numpy(rows >= 0)[..., None, None, None]
    with torch.no_grad():
        out = forward(
            upsample_lr(bicubic_downsample(hr[plan.targets], 8), 32), refs, torch.from_numpy(rows >= 0)
        )
    assert result["methods"]["hime"]["psnr"] == pytest.approx(
        float(psnr(out.clamp(0, 1), hr[plan.targets]).mean()), abs=2e-3
    )
    native = evaluate(model, cs, **kw)
    assert native["lr_crop"] == "native" and native["net_input"] == 16
    assert native["methods"]["bicubic"] == result["methods"]["bicubic"]
    assert native["methods"]["hime"]["psnr"] != result["methods"]["hime"]["psnr"]
    # at the network's own zoom there is nothing to choose
    assert (
        evaluate(model, cs, scale=4, limit=2, with_identity=False, lr_crop="upsampled")["lr_crop"] == "native"
    )
    with pytest.raises(ValueError, match="lr_crop"):
        evaluate(model, cs, lr_crop="bilinear", **kw)


def test_upsample_lr_is_lanczos_and_keeps_the_range() -> None:
    import cv2

    from hime_cli.training.evaluate import upsample_lr

    lr = torch.rand(2, 3, 16, 16)
    up = upsample_lr(lr, 32)
    assert up.shape == (2, 3, 32, 32) and float(up.min()) >= 0 and float(up.max()) <= 1
    ref = cv2.resize(lr[1].permute(1, 2, 0).numpy(), (32, 32), interpolation=cv2.INTER_LANCZOS4)
    assert np.allclose(up[1].permute(1, 2, 0).numpy(), np.clip(ref, 0, 1), atol=1e-6)


def test_cli_eval_lr_crop_auto_follows_enhance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hime_cli.cli import evaluate as eval_cli
    from hime_cli.sr.registry import create_model
    from hime_cli.training.train import export_weights

    cs = synthetic_crops()
    data = tmp_path / "crops.npz"
    cs.save(data)
    weights = tmp_path / "w.safetensors"
    export_weights(create_model("hime_test_x4"), weights, {"arch": "hime_test_x4"})
    runner = CliRunner()
    base = [
        "eval",
        str(data),
        "--weights",
        str(weights),
        "--scale",
        "8",
        "--limit",
        "2",
        "--no-identity",
        "--json",
    ]

    def lr_crop(*extra: str) -> dict:
        res = runner.invoke(app, [*base, *extra])
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)

    auto = lr_crop()  # an unregistered ×4 file: enhance enlarges a small face to its 32 px crop
    assert auto["lr_crop"] == "upsampled" and auto["net_input"] == 32
    assert lr_crop("--lr-crop", "native")["net_input"] == 16
    # weights registered at ×8 (trained on 16 px faces) are cropped from 16 px, as enhance does
    monkeypatch.setattr("hime_cli.sr.inference.weights_input_scale", lambda name: 8)
    assert eval_cli._enhance_lr_crop(str(weights), 8, 4) == "native"
    assert lr_crop()["lr_crop"] == "native"
    res = runner.invoke(app, [*base, "--lr-crop", "nearest"])
    assert res.exit_code != 0 and "--lr-crop" in res.output


def test_train_with_identity_loss_scores_identity_and_adds_whole_faces(tmp_path: Path) -> None:
    from hime_cli.training.run import main

    cs = synthetic_crops()
    sampler = CropSampler(cs, SamplerConfig(patch=64), seed=0)
    lr, hr, refs, _ = sampler.sample(2, whole=True)
    assert lr.shape[-1] == 32 and hr.shape[-1] == 128 and refs.shape[-1] == 128
    assert sampler.sample(2)[1].shape[-1] == 64  # patches otherwise
    data = tmp_path / "crops.npz"
    cs.save(data)
    run = tmp_path / "run"
    main(
        ["--data", str(data), "--val-data", str(data), "--run", str(run), "--arch", "hime_test_x4"]
        + ["--steps", "2", "--batch", "2", "--patch", "64", "--val-every", "1", "--warmup-steps", "1"]
        + ["--lambda-id", "0.1", "--id-batch", "2"]
    )
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["lambda_id"] == 0.1 and cfg["id_batch"] == 2
    final = json.loads((run / "summary.json").read_text())["final"]
    assert final["real_id_chosen"] > 0 and final["real_id_blank"] > 0
