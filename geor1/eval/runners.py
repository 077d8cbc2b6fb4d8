"""Run a policy on held-out chat samples and score it: pairing accuracy (Wilson 95% interval), the share of
completions in the exact <think>/<answer> format, mean completion length; geolocation parse rate and distances.
Greedy decoding, so a result is reproducible."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from geor1.answers import parse_letter, split_tags


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n (95% by default)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def run_policy(policy, samples: list, batch_size: int = 16, max_new_tokens: int = 256) -> list[dict[str, Any]]:
    """Greedy completions of every sample -> rows of key, text, number of completion tokens."""
    from tqdm import tqdm

    rows = []
    for start in tqdm(range(0, len(samples), batch_size), desc="generate", unit="batch", disable=None):
        chunk = samples[start:start + batch_size]
        rollout = policy.generate([s.prompt for s in chunk], max_new_tokens=max_new_tokens, do_sample=False)
        for s, text, n in zip(chunk, rollout.texts, rollout.lengths.tolist()):
            rows.append({"key": s.key, "text": text, "tokens": int(n), "meta": s.meta})
    return rows


def score_pairing(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    preds, correct, fmt = [], 0, 0
    for r in rows:
        m = r["meta"]
        letter = parse_letter(r["text"], int(m["k"]))
        ok = letter == m["answer_letter"]
        correct += ok
        fmt += split_tags(r["text"]) is not None
        preds.append({"id": r["key"], "text": r["text"], "answer": letter or "", "truth": m["answer_letter"],
                      "correct": int(ok), "parsed": int(letter is not None), "tokens": r["tokens"]})
    n = len(rows)
    lo, hi = wilson_interval(correct, n)
    return {"n": n, "pairing_acc": correct / max(n, 1), "ci95_low": lo, "ci95_high": hi,
            "format_rate": fmt / max(n, 1), "parse_rate": sum(p["parsed"] for p in preds) / max(n, 1),
            "mean_completion_tokens": float(np.mean([r["tokens"] for r in rows])) if rows else 0.0}, preds


def score_geolocate(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Greedy completions of geolocation samples -> GeodesicError metrics (+ format rate, lengths) and rows."""
    from geor1.answers import answer_text, parse_coordinates
    from geor1.eval.scoring import score

    truth = {r["key"]: {"lat": r["meta"]["lat"], "lon": r["meta"]["lon"], "city": r["meta"].get("city"),
                        "country": r["meta"].get("country")} for r in rows}
    def answered(text: str) -> tuple[float, float] | None:  # a model must answer inside <answer></answer>
        ans = answer_text(text)
        return None if ans is None else parse_coordinates(ans.split("(")[0])

    metrics, scored = score({r["key"]: answered(r["text"]) for r in rows}, truth)
    metrics["format_rate"] = float(np.mean([split_tags(r["text"]) is not None for r in rows])) if rows else 0.0
    metrics["mean_completion_tokens"] = float(np.mean([r["tokens"] for r in rows])) if rows else 0.0
    preds = [{**row, "text": r["text"], "tokens": r["tokens"]} for row, r in zip(scored, rows)]
    return metrics, preds


def write_results(out: str | Path, metrics: dict[str, Any], preds: list[dict[str, Any]], title: str) -> Path:
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
