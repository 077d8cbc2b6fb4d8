"""A miniature `geor1 demo` end to end (the real one runs with `make demo`), and its stage-by-stage resume."""

from __future__ import annotations

import json

from geor1.demo import STAGES, DemoConfig, run_demo
from geor1.eval.runners import wilson_interval


def test_wilson_interval_by_hand():
    lo, hi = wilson_interval(8, 10)
    assert abs(lo - 0.4902) < 1e-3 and abs(hi - 0.9433) < 1e-3  # standard table values for 8/10
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_miniature_demo_runs_every_stage_and_resumes(tmp_path):
    report = run_demo(tmp_path, DemoConfig.quick(), seed=0)
    text = report.read_text()
    for model in ("base (untrained)", "SFT only", "SFT+GRPO", "GRPO only (Zero)"):
        assert f"| {model} |" in text
    assert all((tmp_path / stage / "DONE").is_file() for stage in STAGES)
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["SFT only"]["pairing"]["n"] == 6
    for name in ("sft", "grpo", "zero"):
        assert (tmp_path / name / "model" / "config.json").is_file()
        assert (tmp_path / "configs" / f"{name}.yaml").is_file()
    assert list((tmp_path / "grpo").rglob("events.out.tfevents.*"))
    # a second run redoes nothing but the report
    stamps = {s: (tmp_path / s / "DONE").stat().st_mtime_ns for s in STAGES if s != "report"}
    run_demo(tmp_path, DemoConfig.quick(), seed=0)
    assert stamps == {s: (tmp_path / s / "DONE").stat().st_mtime_ns for s in STAGES if s != "report"}
