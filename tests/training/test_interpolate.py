"""Weight interpolation: the blend is the straight line between two weights of one architecture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hime_cli.sr.registry import ModelError, create_model
from hime_cli.training.interpolate import InterpolateError, interpolate_files, interpolate_state, main
from hime_cli.training.train import export_weights


def _weights(tmp_path: Path, name: str, seed: int) -> Path:
    torch.manual_seed(seed)
    path = tmp_path / f"{name}.safetensors"
    export_weights(create_model("hime_test_x4"), path, {"arch": "hime_test_x4"})
    return path


def test_blend_is_the_straight_line_and_loads(tmp_path: Path) -> None:
    a, b = _weights(tmp_path, "a", 0), _weights(tmp_path, "b", 1)
    out = interpolate_files(a, b, 0.25, tmp_path / "out" / "mix.safetensors", arch="hime_test_x4")
    ta, tb, tm = load_file(str(a)), load_file(str(b)), load_file(str(out))
    moved = 0
    for k in ta:
        if ta[k].is_floating_point():
            torch.testing.assert_close(tm[k], 0.75 * ta[k] + 0.25 * tb[k])
            moved += int(not torch.equal(ta[k], tb[k]))
    assert moved > 0  # the two random inits differ, so the test can fail
    create_model("hime_test_x4", checkpoint_path=out)
    meta = json.loads(safe_open(str(out), "pt").metadata()["interpolated"])
    assert meta["alpha"] == 0.25 and meta["a"] == "a.safetensors" and len(meta["b_sha256"]) == 64
    # the ends are the inputs
    end = interpolate_state(ta, tb, 1.0)
    assert all(torch.equal(end[k].to(tb[k].dtype), tb[k]) for k in tb)


def test_refuses_alpha_out_of_range_and_different_tensors(tmp_path: Path) -> None:
    a = load_file(str(_weights(tmp_path, "a", 0)))
    with pytest.raises(InterpolateError, match="alpha"):
        interpolate_state(a, a, 1.5)
    b = dict(a)
    b.pop(next(iter(b)))
    with pytest.raises(InterpolateError, match="different tensors"):
        interpolate_state(a, b, 0.5)
    k = next(k for k, v in a.items() if v.ndim >= 1 and v.numel() > 1)
    c = dict(a, **{k: a[k].flatten()[:-1].clone()})
    with pytest.raises(InterpolateError, match="shape"):
        interpolate_state(a, c, 0.5)


def test_refuses_weights_of_another_architecture_and_leaves_no_output(tmp_path: Path) -> None:
    a = _weights(tmp_path, "a", 0)
    other = tmp_path / "other.safetensors"
    save_file({"foo": torch.zeros(3)}, str(other))
    out = tmp_path / "mix.safetensors"
    with pytest.raises(ModelError):
        interpolate_files(a, other, 0.5, out, arch="hime_test_x4")
    assert not out.exists() and not list(tmp_path.glob(".mix*"))


def test_cli_reports_a_bad_alpha_as_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _weights(tmp_path, "a", 0)
    with pytest.raises(SystemExit) as e:
        main(
            [
                str(a),
                str(a),
                "--alpha",
                "-0.1",
                "--arch",
                "hime_test_x4",
                "--out",
                str(tmp_path / "o.safetensors"),
            ]
        )
    assert e.value.code == 2 and "alpha" in capsys.readouterr().err
