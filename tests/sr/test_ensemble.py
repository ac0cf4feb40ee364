from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hime_cli.sr.ensemble import MirrorEnsemble, unwrap
from hime_cli.sr.inference import FaceSuperResolver, SRJob
from hime_cli.sr.registry import create_model


class _Recorder(nn.Module):
    """Upsamples ×4 and adds a ramp that grows left to right, so a mirror is visible; records inputs."""

    scale = 4

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def forward(self, lr, refs=None, ref_mask=None):
        self.calls.append((lr.clone(), None if refs is None else refs.clone()))
        up = torch.nn.functional.interpolate(lr, scale_factor=4, mode="nearest")
        ramp = torch.linspace(0, 1, up.shape[-1]).view(1, 1, 1, -1)
        return up + ramp


def test_mirror_ensemble_averages_the_face_and_its_mirror_image() -> None:
    torch.manual_seed(0)
    net = create_model("hime_test_x4").eval()
    lr = torch.rand(2, 3, 8, 8)
    refs = torch.rand(2, 2, 3, 32, 32)
    mask = torch.tensor([[True, True], [True, False]])
    with torch.inference_mode():
        got = MirrorEnsemble(net)(lr, refs, mask)
        direct = net(lr, refs, mask)
        mirrored = net(lr.flip(-1), refs.flip(-1), mask).flip(-1)
    torch.testing.assert_close(got, 0.5 * (direct + mirrored))
    assert not torch.allclose(direct, mirrored)  # the two passes really differ: averaging does something


def test_references_are_mirrored_with_the_face() -> None:
    rec = _Recorder()
    lr = torch.rand(1, 3, 4, 4)
    refs = torch.rand(1, 1, 3, 16, 16)
    out = MirrorEnsemble(rec)(lr, refs, torch.ones(1, 1, dtype=torch.bool))
    (lr0, refs0), (lr1, refs1) = rec.calls
    torch.testing.assert_close(lr0, lr)
    torch.testing.assert_close(lr1, lr.flip(-1))
    torch.testing.assert_close(refs1, refs.flip(-1))
    # The recorder's left-to-right ramp, mirrored back, averages to a flat 0.5: the second output
    # was un-mirrored before averaging.
    up = torch.nn.functional.interpolate(lr, scale_factor=4, mode="nearest")
    torch.testing.assert_close(out, up + 0.5)
    MirrorEnsemble(rec)(lr)  # no references: nothing to mirror but the face
    assert rec.calls[-1][1] is None


def test_super_resolver_runs_the_ensemble_and_unwrap_finds_the_network() -> None:
    torch.manual_seed(0)
    net = create_model("hime_test_x4").eval()
    rng = np.random.default_rng(1)
    job = SRJob(
        rng.random((8, 8, 3), dtype=np.float32),
        (rng.random((32, 32, 3), dtype=np.float32),),
    )
    plain = FaceSuperResolver(net, "cpu").run([job])[0]
    both = FaceSuperResolver(MirrorEnsemble(net), "cpu").run([job])[0]
    mirrored_job = SRJob(job.lr[:, ::-1].copy(), tuple(r[:, ::-1].copy() for r in job.refs))
    mirrored = FaceSuperResolver(net, "cpu").run([mirrored_job])[0][:, ::-1]
    np.testing.assert_allclose(both, 0.5 * (plain + mirrored), atol=1e-5)
    ensemble = MirrorEnsemble(net)
    assert unwrap(ensemble) is net and unwrap(net) is net and ensemble.scale == 4


@pytest.mark.parametrize("mirror", [True, False])
def test_enhance_settings_key_follows_mirror(mirror: bool) -> None:
    from hime_cli.pipeline.options import EnhanceOptions

    default = EnhanceOptions(weights="hime_test_x4")
    other = EnhanceOptions(weights="hime_test_x4", mirror=mirror)
    assert default.mirror is True
    assert (default.settings_key() == other.settings_key()) is mirror


def test_load_super_resolver_mirrors_by_default(tmp_path) -> None:
    from safetensors.torch import save_file

    from hime_cli.sr.inference import load_super_resolver

    torch.manual_seed(0)
    net = create_model("hime_test_x4").eval()
    path = tmp_path / "hime_test_x4.mine.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    assert isinstance(load_super_resolver(str(path), scale=4, device="cpu").model, MirrorEnsemble)
    plain = load_super_resolver(str(path), scale=4, device="cpu", mirror=False)
    assert not isinstance(plain.model, MirrorEnsemble) and plain.name == path.name
