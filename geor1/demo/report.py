"""The demo's `report.md`: the results table, notes on the settings, the figures, and per stage its duration and the
command that reproduces it; then where the TensorBoard logs and the exact configs are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geor1.demo.config import STAGES, DemoConfig, DemoPaths


def reproduce(cfg: DemoConfig, paths: DemoPaths) -> dict[str, list[str]]:
    """Per stage, the `geor1` commands that do what the stage did (the report shows them; nothing runs them)."""
    fit = {name: [f"geor1 fit --config {paths.config(name)}"] for name in ("retrieval", "sft", "grpo", "zero")}
    return {
        "world": [
            f"geor1 data world --out {paths.world} --num-train {cfg.num_train} --num-val {cfg.num_val} "
            f"--num-test {cfg.num_test} --seed {cfg.seed}"
        ],
        "retrieval": fit["retrieval"],
        "index": [
            f"geor1 index build --ckpt {paths.retrieval_ckpt} --shards {paths.world} --out {paths.index} --type flat"
        ],
        "mine": [
            f"geor1 mine episodes --index {paths.index} --shards {paths.world} --out {paths.episodes} --k "
            f"{cfg.k} --strategy {cfg.strategy} --min-km {cfg.min_km} --max-km {cfg.max_km} --seed {cfg.seed}"
        ],
        "cot": [
            f"geor1 cot synthesize --shards {paths.episodes} --out {paths.sft_pairing} --task pairing",
            f"geor1 cot synthesize --shards {paths.world} --out {paths.sft_geolocate} --task geolocate",
        ],
        "sft": fit["sft"],
        "grpo": fit["grpo"],
        "zero": fit["zero"],
        "eval": [
            f"geor1 eval pairing --model MODEL --episodes {paths.episodes} --out ... --limit {cfg.eval_pairing}",
            f"geor1 eval geolocate --model MODEL --data {paths.world} --out ... --limit {cfg.eval_geolocate}",
        ],
        "report": [],
    }


def notes(cfg: DemoConfig) -> list[str]:
    """Why the settings are what they are, where a reader of the table would ask."""
    parts = [
        f"Steps: SFT {cfg.sft_steps}, GRPO {cfg.grpo_steps} (B={cfg.grpo_prompts} prompts x G={cfg.group_size}), "
        f"Zero {cfg.zero_steps} (fewer, to stay within 15 minutes: from the untrained base no sampled "
        f"completion was well-formed in a 200-step run, format and accuracy rewards 0 throughout, so it has "
        f"no pairing signal to learn from)."
    ]
    if not cfg.sft_geolocate:
        parts.append(
            "SFT used the pairing traces only (`sft_geolocate=False`): no model was taught the geolocation "
            "answer, which the geolocation columns show. Mixing geolocation traces in costs the tiny model "
            "pairing accuracy (docs/experiments.md)."
        )
    return [" ".join(parts), ""]


def results_table(results: dict[str, Any]) -> list[str]:
    """One row per model (`eval/results.json`), in the evaluation's order."""
    rows = [
        "| model | pairing acc (95% CI) | format rate | mean completion tokens | geolocation unparseable | "
        "acc@25km | acc@750km | acc@2500km | median km (parsed) | country acc |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        p, g = r["pairing"], r["geolocate"]
        med = g["median_km_parsed"]
        rows.append(
            f"| {name} | {p['pairing_acc']:.3f} [{p['ci95_low']:.3f}, {p['ci95_high']:.3f}] | "
            f"{p['format_rate']:.3f} | {p['mean_completion_tokens']:.1f} | {g['unparseable_share']:.3f} | "
            f"{g['acc@25km']:.3f} | {g['acc@750km']:.3f} | {g['acc@2500km']:.3f} | "
            f"{'-' if med != med else f'{med:,.0f}'} | {g.get('country_acc', float('nan')):.3f} |"
        )
    return rows


def render_report(cfg: DemoConfig, paths: DemoPaths, seconds: dict[str, float], results: dict[str, Any]) -> str:
    """The text of `report.md`; `seconds`: the duration of each stage run so far, `results`: eval/results.json."""
    first = next(iter(results.values()))
    n_pair, n_geo = first["pairing"]["n"], int(first["geolocate"]["n"])
    out = paths.out
    lines = [
        "# geor1 demo report",
        "",
        f"GeoWorld ({cfg.num_train} / {cfg.num_val} / {cfg.num_test} places, seed {cfg.seed}), tiny offline "
        f"Qwen2.5-VL, K={cfg.k} {cfg.strategy} episodes. Held-out evaluation (greedy): {n_pair} test pairing "
        f"episodes, {n_geo} test places (cities never seen in training). Chance pairing accuracy: "
        f"{1 / cfg.k:.3f}. Distances: haversine, R = 6371.0088 km, d <= threshold; unparseable answers count as "
        f"misses in every acc@ and are excluded from the median.",
        "",
        *results_table(results),
        "",
        *notes(cfg),
        "![error CDF](eval/error_cdf.png)",
        "",
        "![world map](eval/world_map.png)",
        "",
        "## Stages",
        "",
        "| stage | seconds | command |",
        "|---|---|---|",
    ]
    commands = reproduce(cfg, paths)
    for name in STAGES:
        if name not in seconds:
            continue
        for c in commands[name] or [""]:
            lines.append(f"| {name} | {seconds[name]:.0f} | `{c}` |" if c else f"| {name} | {seconds[name]:.0f} | |")
    lines += [
        "",
        f"Total: {sum(seconds.values()) / 60:.1f} min. TensorBoard: `tensorboard --logdir {out}`. "
        f"The exact configs of the fit stages: `{paths.configs}`; sizes: `{out / 'demo_config.json'}`. "
        f"Re-running `geor1 demo --out {out}` with the same options skips finished stages.",
        "",
    ]
    return "\n".join(lines)


def write_report(cfg: DemoConfig, paths: DemoPaths, seconds: dict[str, float], results: dict[str, Any]) -> Path:
    """Write `report.md` under the demo folder; returns its path."""
    paths.report.write_text(render_report(cfg, paths, seconds, results))
    return paths.report
