from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hime_cli.cli.app import app


@pytest.mark.data
@pytest.mark.slow
def test_hime_eval_on_dev_with_the_released_weights(shared_data: Path) -> None:
    """`hime eval --limit` on celeba-wild/dev: the bundled ×4 weights beat bicubic clearly."""
    dev = shared_data / "celeba-wild" / "dev"
    res = CliRunner().invoke(app, ["eval", str(dev), "--scale", "4", "--refs", "3", "--limit", "8", "--json"])
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    assert obj["faces"] == 8 and obj["identities"] >= 2 and obj["lr_size"] == 32
    assert obj["weights"].startswith("hime_small_x4") and obj["params"] < 1_000_000
    m = obj["methods"]
    assert m["hime"]["psnr"] > m["bicubic"]["psnr"] + 1.0
    assert m["hime"]["ssim"] > m["bicubic"]["ssim"]
    assert m["hime"]["id_dist"] < m["bicubic"]["id_dist"] + 0.02
    assert set(m) == {"bicubic", "hime", "hime_random_refs", "hime_blank", "hime_wrong_refs"}
