"""Releasing a weight: the card and the registry carry both protocols' dev metrics."""

from __future__ import annotations

import json
from pathlib import Path

from hime_cli.sr.registry import create_model
from hime_cli.training.export import export_release
from hime_cli.training.train import export_weights


def _evaluation(degradation: str, hime: float) -> dict:
    row = {"psnr": hime, "ssim": 0.9, "id_dist": 0.3, "ms_per_face": 10.0}
    return {
        "scale": 4,
        "lr_size": 32,
        "degradation": degradation,
        "seed": 0,
        "faces": 5,
        "identities": 2,
        "refs": 3,
        "methods": {"bicubic": {"psnr": 20.0, "ssim": 0.7, "id_dist": 0.5}, "hime": row, "hime_blank": row},
    }


def test_export_records_the_real_protocol_and_the_degradation(tmp_path: Path) -> None:
    weights = tmp_path / "w.safetensors"
    export_weights(create_model("hime_test_x4"), weights, {"arch": "hime_test_x4"})
    train = {"steps": 10, "elapsed_s": 60, "config": {"sampler": {"degradation": {"clean_prob": 0.3}}}}
    models = tmp_path / "models"
    dest = export_release(
        weights,
        arch="hime_test_x4",
        tag="unit_v1",
        evaluation=_evaluation("bicubic", 25.0),
        evaluation_real=_evaluation("real", 23.5),
        train=train,
        hardware="test",
        models_dir=models,
        default=False,
    )
    card = (models / "hime_test_x4.unit_v1.md").read_text()
    assert dest.exists()
    assert "the `real` degradation" in card and "clean bicubic share 0.3" in card
    assert "| hime | 25.00 |" in card and "| hime | 23.50 |" in card
    entry = json.loads((models / "registry.json").read_text())["weights"][0]
    assert entry["dev_metrics"]["hime_psnr"] == 25.0
    assert entry["dev_metrics"]["real_hime_psnr"] == 23.5
    assert entry["default"] is False
