"""A miniature `geor1 demo` end to end (the real one runs with `make demo`)."""

from __future__ import annotations

import json

from geor1.demo import run_demo
from geor1.eval.runners import wilson_interval


def test_wilson_interval_by_hand():
    lo, hi = wilson_interval(8, 10)
    assert abs(lo - 0.4902) < 1e-3 and abs(hi - 0.9433) < 1e-3  # standard table values for 8/10
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_miniature_demo_writes_report(tmp_path):
    report = run_demo(tmp_path, steps=3, num_eval=4, seed=0)
    text = report.read_text()
    assert "| untrained tiny Qwen2.5-VL |" in text and "| SFT |" in text
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["sft"]["n"] == 4
    assert (tmp_path / "model_sft" / "config.json").is_file()
    assert list(tmp_path.rglob("events.out.tfevents.*"))
