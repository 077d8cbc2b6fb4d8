"""Run a policy on held-out chat samples and score it through the samples' task (`geor1.tasks`): pairing accuracy
(Wilson 95% interval), the share of completions in the exact <think>/<answer> format, mean completion length;
geolocation parse rate and distances. Greedy decoding, so a result is reproducible."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geor1 import Geor1Error
from geor1.data.sample import ChatSample
from geor1.metrics.intervals import wilson_interval
from geor1.tasks import Task, get_task


def run_policy(
    policy, samples: Sequence[ChatSample], batch_size: int = 16, max_new_tokens: int = 256
) -> list[dict[str, Any]]:
    """Greedy completions of every sample -> rows of key, text, number of completion tokens, target."""
    from tqdm import tqdm

    rows = []
    for start in tqdm(range(0, len(samples), batch_size), desc="generate", unit="batch", disable=None):
        chunk = samples[start : start + batch_size]
        rollout = policy.generate([s.prompt for s in chunk], max_new_tokens=max_new_tokens, do_sample=False)
        for s, text, n in zip(chunk, rollout.texts, rollout.lengths.tolist(), strict=True):
            rows.append({"key": s.key, "text": text, "tokens": int(n), "target": s.target})
    return rows


def score_rows(task: Task, rows: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`task.score(rows)`, after checking that every row's target belongs to `task` (a row of another task, or
    without a target, would be scored wrong)."""
    for r in rows:
        target = r.get("target")
        if target is None or target.task != task.name:
            raise Geor1Error(
                f"sample {r.get('key')!r}: its target ({type(target).__name__}) is not a {task.name} target"
            )
    return task.score(rows)


def score_pairing(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Greedy completions of pairing episodes -> accuracy (Wilson 95% interval), format and parse rates, lengths;
    and prediction rows."""
    return score_rows(get_task("pairing"), rows)


def score_geolocate(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Greedy completions of geolocation samples -> GeodesicError metrics (+ format rate, lengths) and rows."""
    return score_rows(get_task("geolocate"), rows)


def write_results(out: str | Path, metrics: dict[str, Any], preds: list[dict[str, Any]], title: str) -> Path:
    """predictions.csv, metrics.json and metrics.md (a table titled `title`) in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(preds[0]) if preds else ["id"])
        w.writeheader()
        w.writerows(preds)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    lines = [f"# {title}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    (out / "metrics.md").write_text("\n".join(lines) + "\n")
    return out


__all__ = ["run_policy", "score_geolocate", "score_pairing", "score_rows", "wilson_interval", "write_results"]
