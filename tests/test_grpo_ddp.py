"""`strategy: ddp` with 2 CPU processes (gloo) runs a GRPO step: every group stays on one rank, the two ranks end
with identical weights (averaged gradients), and the update equals a single-process step's on the same prompts and
completions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("ddp_grpo_run.py")


def _run(tmp_path: Path, devices: int) -> list[dict]:
    out = tmp_path / f"d{devices}"
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(Path(__file__).parent / "netguard"), os.environ.get("PYTHONPATH", "")]),
    )
    res = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), str(devices)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in range(devices)]


def test_grpo_step_under_ddp_matches_one_process(tmp_path):
    two = _run(tmp_path, 2)
    assert all(r["world"] == 2 for r in two)
    keys = [set(r["keys"]) for r in two]
    assert not keys[0] & keys[1] and len(keys[0] | keys[1]) == 4  # each prompt (and its G samples) on one rank
    assert two[0]["delta_head"] == pytest.approx(two[1]["delta_head"], abs=1e-7)  # same averaged update
    (one,) = _run(tmp_path, 1)
    # the same completions in both runs (fixed rollouts): DDP averages the two ranks' gradients of their
    # per-sequence-mean losses over 6 rows each, which is the single process's gradient over all 12 rows
    assert one["delta_norm"] > 0
    # validation with one task per rank: one all-reduce of fixed-size sums, the same metrics as one process
    assert set(one["val"]) == {"val/format_rate", "val/mean_length", "val/pairing_acc", "val/geolocate_acc"}
    assert two[0]["val"] == two[1]["val"] == pytest.approx(one["val"])
    assert two[0]["delta_head"] == pytest.approx(one["delta_head"], abs=2e-6)
    assert two[0]["delta_norm"] == pytest.approx(one["delta_norm"], rel=1e-4)
