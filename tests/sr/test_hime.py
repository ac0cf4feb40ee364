"""HIME network: shapes, reference masking, gradients, golden output, budgets."""

from __future__ import annotations

import pytest
import torch

from hime_cli.sr.complexity import count_complexity
from hime_cli.sr.hime import HIMEConfig
from hime_cli.sr.registry import create_model

LR_SIZE = 8  # x4 -> 32x32 references: small enough for fast CPU tests


def _inputs(batch: int, n_refs: int, scale: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    lr = torch.rand(batch, 3, LR_SIZE, LR_SIZE, generator=gen)
    refs = torch.rand(batch, n_refs, 3, LR_SIZE * scale, LR_SIZE * scale, generator=gen)
    return lr, refs


def _model(name: str = "hime_test_x4", **overrides):
    torch.manual_seed(0)
    return create_model(name, **overrides).eval()


def _perturb_zero_inits(model: torch.nn.Module) -> None:
    """Zero-initialised heads block gradients upstream at step 0; give them small values."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.add_(0.01 * torch.randn(param.shape, generator=gen))


@pytest.mark.parametrize("n_refs", [0, 1, 3, 7])
def test_output_shapes_and_aux(n_refs):
    model = _model()
    lr, refs = _inputs(3, n_refs)
    mask = torch.rand(3, n_refs, generator=torch.Generator().manual_seed(n_refs)) > 0.4
    if n_refs:
        mask[0] = False  # one item without any reference
        mask[1, 0] = True
    with torch.no_grad():
        out, aux = model(lr, refs, mask, return_aux=True)
    assert out.shape == (3, 3, 32, 32)
    assert torch.isfinite(out).all()
    assert aux["weights"].shape == (3, n_refs, 1, LR_SIZE, LR_SIZE)
    if n_refs:
        assert aux["offsets"].shape == (3, n_refs, 2 * 2 * 9, LR_SIZE, LR_SIZE)
        assert (aux["weights"][~mask] == 0).all()
        assert (aux["weights"][mask] > 0).all()


@pytest.mark.parametrize("name", ["hime_test_x4", "hime_test_x8"])
def test_no_refs_equals_all_masked_refs(name):
    model = _model(name)
    scale = model.scale
    lr, refs = _inputs(2, 3, scale)
    with torch.no_grad():
        alone = model(lr)
        empty = model(lr, refs[:, :0])
        masked = model(lr, refs, torch.zeros(2, 3, dtype=torch.bool))
    assert alone.shape == (2, 3, LR_SIZE * scale, LR_SIZE * scale)
    assert torch.equal(alone, empty)
    assert torch.equal(alone, masked)


@pytest.mark.parametrize("align", ["conv", "dconv", "dconv_flow"])
@pytest.mark.parametrize("aggregate", ["average", "max", "cofa"])
def test_masked_garbage_refs_do_not_change_the_output(align, aggregate):
    model = _model(align=align, aggregate=aggregate)
    lr, refs = _inputs(2, 3)
    garbage = torch.full((2, 4, *refs.shape[2:]), float("nan"))
    garbage[:, :2] = 1e3  # huge values and NaNs in the padding slots
    padded = torch.cat((garbage[:, :2], refs, garbage[:, 2:]), dim=1)
    mask = torch.tensor([[False, False, True, True, True, False, False]] * 2)
    mask[1, 3] = False  # item 1 has two references only
    with torch.no_grad():
        out = model(lr, padded, mask)
        full_0 = model(lr[:1], refs[:1])
        full_1 = model(lr[1:], refs[1:, [0, 2]])
    torch.testing.assert_close(out[:1], full_0, rtol=0, atol=1e-6)
    torch.testing.assert_close(out[1:], full_1, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("align", "aggregate"), [("dconv", "cofa"), ("dconv_flow", "cofa"), ("conv", "average"), ("dconv", "max")]
)
def test_gradients_reach_every_parameter(align, aggregate):
    model = _model(align=align, aggregate=aggregate).train()
    _perturb_zero_inits(model)
    lr, refs = _inputs(2, 3)
    refs.requires_grad_()
    out = model(lr, refs, torch.tensor([[True, True, True], [True, False, True]]))
    out.square().mean().backward()
    dead = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"parameters without gradient: {dead}"
    assert refs.grad[1, 1].abs().sum() == 0  # a masked reference receives nothing
    assert refs.grad[1, 0].abs().sum() > 0


def test_external_flow_replaces_learned_flow():
    model = _model(align="dconv_flow")
    lr, refs = _inputs(1, 2)
    flows = torch.zeros(1, 2, 2, LR_SIZE, LR_SIZE)
    flows[:, :, 0] = 1.5  # dx
    with torch.no_grad():
        out_learned, aux_learned = model(lr, refs, return_aux=True)
        out_given, aux_given = model(lr, refs, flows=flows, return_aux=True)
    assert torch.equal(aux_given["flows"], flows)
    assert aux_learned["flows"].abs().max() == 0  # learned flow head starts at zero
    # the flow enters the offsets as (dy, dx) for every tap
    torch.testing.assert_close(
        aux_given["offsets"][:, :, 1::2], torch.full_like(aux_given["offsets"][:, :, 1::2], 1.5)
    )
    assert not torch.allclose(out_learned, out_given)


def test_output_is_bicubic_plus_residual_and_not_clamped():
    model = _model()
    lr, refs = _inputs(1, 1)
    lr[..., :2, :2] = 1.0
    with torch.no_grad():
        for param in model.reconstructor.tail.parameters():
            param.zero_()
        out = model(lr, refs)
    bicubic = torch.nn.functional.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)
    torch.testing.assert_close(out, bicubic)
    assert out.max() > 1.0  # bicubic overshoot is kept: callers clamp


def test_golden_output_hime_test_x4():
    """Deterministic init (seed 0) on a fixed input; the residual R(F_f) is pinned separately."""
    torch.manual_seed(0)
    model = create_model("hime_test_x4").eval()
    lr = (torch.arange(3 * 8 * 8, dtype=torch.float32).view(1, 3, 8, 8) % 17) / 16
    refs = (torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(1, 2, 3, 32, 32) % 29) / 28
    with torch.no_grad():
        out = model(lr, refs)
    residual = out - torch.nn.functional.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)
    pixels = [
        residual[0, c, y, x].item()
        for c, y, x in [(0, 0, 0), (1, 5, 7), (2, 16, 16), (0, 31, 2), (1, 20, 30)]
    ]
    assert out.sum().item() == pytest.approx(GOLDEN["sum"], abs=1e-2)
    assert out.abs().mean().item() == pytest.approx(GOLDEN["mean_abs"], abs=1e-4)
    assert residual.abs().mean().item() == pytest.approx(GOLDEN["residual_mean_abs"], abs=1e-5)
    assert pixels == pytest.approx(GOLDEN["residual_pixels"], abs=1e-4)


GOLDEN = {
    "sum": 1434.5757,
    "mean_abs": 0.470364,
    "residual_mean_abs": 0.0251707,
    "residual_pixels": [-0.0155553, -0.0062899, -0.0168887, -0.0344856, -0.0330612],
}


def test_small_x4_budget():
    model = create_model("hime_small_x4").eval()
    lr, refs = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 3, 128, 128)
    complexity = count_complexity(model, lr, refs)
    assert complexity.params <= 1_000_000
    assert complexity.gmacs <= 2.0


def test_complexity_counts_a_conv_exactly():
    conv = torch.nn.Conv2d(3, 5, 3, padding=1)
    complexity = count_complexity(conv, torch.rand(2, 3, 4, 6))
    assert complexity.params == 5 * 3 * 9 + 5
    assert complexity.macs == 5 * 3 * 9 * 4 * 6


def test_config_validation():
    with pytest.raises(ValueError):
        HIMEConfig(scale=3)
    with pytest.raises(ValueError):
        HIMEConfig(align="flow")
    with pytest.raises(ValueError):
        HIMEConfig(channels=10, deform_groups=4)


def test_wrong_reference_size_raises():
    model = _model()
    lr, refs = _inputs(1, 2)
    with pytest.raises(ValueError, match="refs must have shape"):
        model(lr, refs[..., :16, :16])
    with pytest.raises(ValueError, match="ref_mask"):
        model(lr, refs, torch.ones(1, 3, dtype=torch.bool))


def test_bf16_autocast_forward_backward():
    """Mixed precision (as a GPU training loop would use): sampling positions stay float32."""
    model = _model(align="dconv_flow").train()
    lr, refs = _inputs(2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(lr, refs, torch.tensor([[True, False], [True, True]]))
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()
    out.float().mean().backward()
    assert model.alignment.dconv.weight.grad is not None


def test_dconv_samples_in_float32_under_autocast():
    from hime_cli.sr.dconv import deform_conv2d

    x = torch.rand(1, 2, 40, 40)
    weight = torch.rand(2, 2, 1, 1)
    offset = torch.full((1, 2, 40, 40), 0.3)  # a third of a pixel: lost if positions were bf16
    expected = deform_conv2d(x, offset, weight)
    actual = deform_conv2d(x.bfloat16(), offset.bfloat16(), weight.bfloat16())
    torch.testing.assert_close(actual.float(), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("align", ["dconv", "dconv_flow"])
def test_channels_last_gives_the_same_output(align):
    model = _model(align=align)
    lr, refs = _inputs(2, 3)
    mask = torch.tensor([[True, False, True], [True, True, True]])
    with torch.no_grad():
        expected = model(lr, refs, mask)
        model = model.to(memory_format=torch.channels_last)
        actual = model(lr.contiguous(memory_format=torch.channels_last), refs, mask)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_wrong_flow_shape_raises():
    model = _model(align="dconv_flow")
    lr, refs = _inputs(1, 2)
    with pytest.raises(ValueError, match="flows must have shape"):
        model(lr, refs, flows=torch.zeros(1, 2, 2, 4, 4))


# ------------------------------------------------------------------ fine reference fusion (HR/2)


@pytest.mark.parametrize("name", ["hime_test_x4", "hime_test_x8"])
def test_fine_branch_starts_as_the_plain_network(name, tmp_path):
    """Weights without the branch load into a fine model (allow_missing) and give the same output."""
    from safetensors.torch import save_file

    plain = _model(name)
    _perturb_zero_inits(plain)
    path = tmp_path / f"{name}.plain.safetensors"
    save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(path))
    fine = create_model(name, checkpoint_path=path, allow_missing=("fine.",), fine=True).eval()
    lr, refs = _inputs(2, 3, plain.scale)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    with torch.no_grad():
        torch.testing.assert_close(fine(lr, refs, mask), plain(lr, refs, mask), rtol=0, atol=0)


def test_fine_weights_missing_other_keys_still_fail(tmp_path):
    from safetensors.torch import save_file

    from hime_cli.errors import ModelError

    state = _model("hime_test_x8").state_dict()
    state.pop("reconstructor.tail.bias")
    path = tmp_path / "hime_test_x8.broken.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(ModelError, match="missing keys"):
        create_model("hime_test_x8", checkpoint_path=path, allow_missing=("fine.",), fine=True)


def test_fine_branch_carries_the_reference_and_ignores_absent_ones():
    model = _model("hime_test_x8", fine=True)
    _perturb_zero_inits(model)
    lr, refs = _inputs(2, 3, 8)
    garbage = refs.clone()
    garbage[:, 2] = float("nan")
    mask = torch.tensor([[True, True, False], [False, False, False]])
    with torch.no_grad():
        out = model(lr, garbage, mask)
        alone = model(lr[1:])
        first = model(lr[:1], refs[:1, :2])
        # only the fine branch differs between these two models
        plain = create_model("hime_test_x8").eval()
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("fine.")})
        without_fine = plain(lr[:1], refs[:1, :2])
    torch.testing.assert_close(out[:1], first, rtol=0, atol=1e-6)
    torch.testing.assert_close(out[1:], alone, rtol=0, atol=1e-6)  # no reference: nothing added
    assert (first - without_fine).abs().max() > 1e-4  # the branch changes the output


def test_fine_branch_gradients_and_config():
    model = _model("hime_test_x8", fine=True).train()
    _perturb_zero_inits(model)
    lr, refs = _inputs(2, 2, 8)
    model(lr, refs).square().mean().backward()
    dead = [n for n, p in model.named_parameters() if n.startswith("fine.") and not p.grad.abs().sum() > 0]
    assert not dead, dead
    with pytest.raises(ValueError, match="scale 4 or 8"):
        HIMEConfig(scale=2, fine=True)


def test_small_fine_x8_budget():
    model = create_model("hime_small_fine_x8").eval()
    plain = create_model("hime_small_x8").eval()
    lr, refs = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 3, 128, 128)
    fine, base = count_complexity(model, lr, refs), count_complexity(plain, lr, refs)
    assert fine.params <= 1_000_000
    assert fine.params - base.params < 40_000
    assert fine.gmacs <= 2.0  # the small variant's budget (3 references)
    assert fine.gmacs - base.gmacs < 0.2  # 3 references at 64 px, and the fuse convs
