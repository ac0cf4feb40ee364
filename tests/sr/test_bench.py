"""The benchmark functions the CLI's `hime bench sr` calls."""

from __future__ import annotations

import pytest
import torch

from hime_cli.sr.bench import benchmark_dconv, benchmark_sr, benchmark_train_step
from hime_cli.sr.registry import create_model


def test_benchmark_sr_reports_timing_and_size():
    threads = torch.get_num_threads()
    result = benchmark_sr("hime_test_x4", batch=2, refs=1, threads=1, repeats=1, warmup=0, hr_size=32)
    assert torch.get_num_threads() == threads  # restored
    assert result["ms_per_face"] > 0 and result["lr_size"] == 8
    assert result["params"] == sum(p.numel() for p in create_model("hime_test_x4").parameters())
    assert 0 < result["gmacs"] < 0.01


def test_benchmark_sr_reports_the_median_and_the_best_per_face(monkeypatch):
    """The timing arithmetic, on a fake clock: runs of 30, 10 and 20 ms for a batch of 2 faces."""
    import types

    import hime_cli.sr.bench as bench

    stamps = iter([0.0, 0.030, 1.0, 1.010, 2.0, 2.020])
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=lambda: next(stamps)))
    result = benchmark_sr("hime_test_x4", batch=2, refs=1, threads=1, repeats=3, warmup=0, hr_size=32)
    assert result["ms_per_face"] == pytest.approx(10.0)  # median 20 ms / 2 faces
    assert result["ms_per_face_best"] == pytest.approx(5.0)  # best 10 ms / 2 faces
    assert next(stamps, None) is None  # one clock read before and after each timed run


def test_benchmark_train_step_and_dconv_run_on_cpu():
    step = benchmark_train_step("hime_test_x4", batch=2, refs=1, steps=1, warmup=0, hr_size=32, device="cpu")
    assert step["ms_per_step"] > 0 and step["peak_gib"] is None
    dconv = benchmark_dconv(rows=2, channels=4, size=6, groups=2, threads=1, repeats=1)
    assert dconv["hime_ms"] > 0 and dconv["torchvision_ms"] > 0
