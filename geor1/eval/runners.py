"""Run a policy on held-out chat samples and score it through the samples' task (`geor1.tasks`): pairing accuracy
(Wilson 95% interval), the share of completions in the exact <think>/<answer> format, mean completion length;
geolocation parse rate and distances. Greedy decoding, so a result is reproducible.

For pairing, three audits on top: the shortcut audit of the task's scoring (accuracy per position of the true tile,
the letters answered), the same episodes with their candidates shuffled (`evaluate_shuffled`, `compare_orders`) and
pass@k from sampled completions (`sample_policy`, `score_pass_at_k`)."""

from __future__ import annotations

import csv
import json
import random
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
    return _generate_rows(policy, samples, batch_size, max_new_tokens, 1, None)


def sample_policy(
    policy,
    samples: Sequence[ChatSample],
    num_samples: int,
    temperature: float = 1.0,
    batch_size: int = 16,
    max_new_tokens: int = 256,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """`num_samples` sampled completions of every sample (temperature `temperature`, nothing else changed in the
    distribution; torch seeded with `seed` first, so a run on the same device repeats) -> rows as `run_policy`'s
    plus "episode" (the sample's index) and "sample" (0..num_samples-1), grouped by episode. A batch holds
    about `batch_size` completions (at least one prompt)."""
    import torch

    if num_samples < 1:
        raise Geor1Error(f"--samples must be at least 1, got {num_samples}")
    if not temperature > 0:
        raise Geor1Error(f"--temperature must be > 0 for sampling, got {temperature}")
    torch.manual_seed(seed)
    return _generate_rows(policy, samples, max(1, batch_size // num_samples), max_new_tokens, num_samples, temperature)


def _generate_rows(
    policy,
    samples: Sequence[ChatSample],
    batch_size: int,
    max_new_tokens: int,
    group_size: int,
    temperature: float | None,
) -> list[dict[str, Any]]:
    """Greedy (temperature None, one completion each) or sampled (`group_size` each) completions -> rows."""
    from tqdm import tqdm

    rows = []
    for start in tqdm(range(0, len(samples), batch_size), desc="generate", unit="batch", disable=None):
        chunk = samples[start : start + batch_size]
        prompts = [s.prompt for s in chunk]
        if temperature is None:
            rollout = policy.generate(prompts, max_new_tokens=max_new_tokens, do_sample=False)
        else:
            rollout = policy.generate(
                prompts, group_size=group_size, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature
            )
        lengths = rollout.lengths.tolist()
        for i, (text, n) in enumerate(zip(rollout.texts, lengths, strict=True)):
            s = chunk[i // group_size]
            row: dict[str, Any] = {"key": s.key, "text": text, "tokens": int(n), "target": s.target}
            if temperature is not None:
                row.update(episode=start + i // group_size, sample=i % group_size)
            rows.append(row)
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


def score_pass_at_k(task: Task, rows: list[dict[str, Any]], num_samples: int) -> dict[str, Any]:
    """pass@k of sampled completions (`sample_policy` rows, `num_samples` per episode): for k in 1, 2, 4, .. up to
    `num_samples` (and `num_samples` itself), the mean over episodes of the unbiased estimator
    1 - C(n-c, k)/C(n, k) of Chen et al. 2021 (`geor1.metrics.passk`), c the episode's correct completions by
    `task.is_correct`, with a 95% interval over episodes: the Wilson interval of the mean of the per-episode values
    taken as a proportion of the number of episodes (conservative: a value in [0, 1] with mean p has a variance of
    at most p(1-p), a 0/1 value's). Also the sampled completions' mean accuracy and format rate. Keys: "samples",
    "sampled_acc", "sampled_format_rate", "pass@k", "pass@k_ci95_low", "pass@k_ci95_high"."""
    from geor1.metrics.passk import mean_pass_at_k, pass_at_k_ks
    from geor1.tasks.base import format_rate

    for r in rows:
        if r.get("target") is None or r["target"].task != task.name:
            raise Geor1Error(f"sample {r.get('key')!r}: its target is not a {task.name} target")
    episodes: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        episodes.setdefault(r["episode"], []).append(r)
    if not episodes:
        raise Geor1Error("pass@k: no sampled completions")
    counts = []
    for e, group in episodes.items():
        if len(group) != num_samples:
            raise Geor1Error(f"pass@k: episode {group[0]['key']!r} ({e}) has {len(group)} samples, not {num_samples}")
        counts.append(sum(task.is_correct(r["text"], r["target"]) for r in group))
    n_completions = len(episodes) * num_samples
    out: dict[str, Any] = {
        "samples": num_samples,
        "sampled_acc": sum(counts) / n_completions,
        "sampled_format_rate": format_rate(rows),
    }
    for k, v in mean_pass_at_k(counts, num_samples, pass_at_k_ks(num_samples)).items():
        lo, hi = wilson_interval(v * len(counts), len(counts))
        out.update({f"pass@{k}": v, f"pass@{k}_ci95_low": lo, f"pass@{k}_ci95_high": hi})
    return out


def evaluate_shuffled(
    policy, samples: Sequence[ChatSample], seed: int = 0, batch_size: int = 16, max_new_tokens: int = 256
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Pairing episodes with their candidates shuffled (`shuffled_samples`), completed greedily and scored by the
    pairing task -> (metrics, prediction rows) as `score_pairing` gives them."""
    return score_pairing(run_policy(policy, shuffled_samples(samples, seed), batch_size, max_new_tokens))


def shuffled_samples(samples: Sequence[ChatSample], seed: int = 0) -> list[ChatSample]:
    """Every episode through `geor1.tasks.pairing.shuffle_candidates` with its own generator, seeded by `seed` and
    the episode's key: an episode gets the same order whatever else is evaluated with it (--limit, batch size)."""
    from geor1.tasks.pairing import shuffle_candidates

    return [shuffle_candidates(s, random.Random(f"{seed}:{s.key}")) for s in samples]


def compare_orders(
    metrics: dict[str, Any],
    preds: list[dict[str, Any]],
    shuffled_metrics: dict[str, Any],
    shuffled_preds: list[dict[str, Any]],
    seed: int,
) -> dict[str, Any]:
    """The shuffled-order evaluation beside the original one, as metrics keys: the shuffled accuracy and its Wilson
    interval; `order_invariant`, True when the shuffled accuracy lies within the original accuracy's 95% interval;
    `order_diff` = shuffled - original accuracy over the same episodes with Newcombe's paired 95% interval
    (`geor1.metrics.audit.paired_difference`); and the shuffled run's whole metrics under "shuffled"."""
    from geor1.metrics.audit import paired_difference

    if [p["id"] for p in preds] != [p["id"] for p in shuffled_preds]:
        raise Geor1Error("compare_orders: the shuffled predictions are not of the same episodes in the same order")
    d = paired_difference([p["correct"] for p in preds], [p["correct"] for p in shuffled_preds])
    acc = shuffled_metrics["pairing_acc"]
    return {
        "shuffle_seed": seed,
        "shuffled_pairing_acc": acc,
        "shuffled_ci95_low": shuffled_metrics["ci95_low"],
        "shuffled_ci95_high": shuffled_metrics["ci95_high"],
        "order_invariant": bool(metrics["ci95_low"] <= acc <= metrics["ci95_high"]),
        "order_diff": d["diff"],
        "order_diff_ci95_low": d["ci95_low"],
        "order_diff_ci95_high": d["ci95_high"],
        "order_discordant": d["discordant"],
        "shuffled": shuffled_metrics,
    }


def write_predictions(path: str | Path, preds: list[dict[str, Any]]) -> Path:
    """Prediction rows as a CSV (columns of the first row)."""
    path = Path(path)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(preds[0]) if preds else ["id"])
        w.writeheader()
        w.writerows(preds)
    return path


def letter_table(metrics: dict[str, Any]) -> list[str]:
    """Markdown lines of the shortcut audit of pairing metrics (`position_acc`, `answer_letters`): per letter, the
    episodes whose true tile is there, the accuracy on them with its Wilson 95% interval, and how often the letter
    was answered; [] when the metrics have no audit."""
    positions, answered = metrics.get("position_acc"), metrics.get("answer_letters")
    if not isinstance(positions, dict) or not isinstance(answered, dict):
        return []
    lines = [
        "| letter | true tile here | accuracy [95% CI] | answered | answered share |",
        "|---|---|---|---|---|",
    ]
    for letter, a in answered.items():
        p = positions.get(letter)
        acc = f"{p['acc']:.3f} [{p['ci95_low']:.3f}, {p['ci95_high']:.3f}]" if p else "-"
        lines.append(f"| {letter} | {p['n'] if p else 0} | {acc} | {a['count']} | {a['share']:.3f} |")
    return lines


def write_results(out: str | Path, metrics: dict[str, Any], preds: list[dict[str, Any]], title: str) -> Path:
    """predictions.csv, metrics.json and metrics.md (a table titled `title`) in `out`. In metrics.md nested values
    are left out of the table: a pairing audit (`letter_table`) follows it, and the shuffled-order run's audit
    (metrics["shuffled"]) after that."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_predictions(out / "predictions.csv", preds)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    lines = [f"# {title}", "", "| metric | value |", "|---|---|"]
    for k, v in metrics.items():
        if isinstance(v, dict):
            continue
        lines.append(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |")
    lines += audit_sections(metrics)
    (out / "metrics.md").write_text("\n".join(lines) + "\n")
    return out


def audit_sections(metrics: dict[str, Any]) -> list[str]:
    """Markdown sections of a pairing evaluation's shortcut audit (`letter_table`): the episodes as given, then the
    shuffled-order run's (metrics["shuffled"]) when there is one; [] without an audit."""
    lines: list[str] = []
    audit = letter_table(metrics)
    if audit:
        lines += ["", "## Position of the true tile and letters answered", "", *audit]
    shuffled = metrics.get("shuffled")
    if isinstance(shuffled, dict) and letter_table(shuffled):
        lines += ["", "## Candidates shuffled: position of the true tile and letters answered", ""]
        lines += letter_table(shuffled)
    return lines


__all__ = [
    "audit_sections",
    "compare_orders",
    "evaluate_shuffled",
    "letter_table",
    "run_policy",
    "sample_policy",
    "score_geolocate",
    "score_pairing",
    "score_pass_at_k",
    "score_rows",
    "shuffled_samples",
    "wilson_interval",
    "write_predictions",
    "write_results",
]
