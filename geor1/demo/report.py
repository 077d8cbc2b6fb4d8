"""The demo's `report.md`: the results table, notes on the settings, the figures, and per stage its duration and the
command that reproduces it; then where the TensorBoard logs and the exact configs are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geor1.demo.config import STAGES, DemoConfig, DemoPaths


def reproduce(cfg: DemoConfig, paths: DemoPaths) -> dict[str, list[str]]:
    """Per stage, the `geor1` commands that do what the stage did (the report shows them; nothing runs them)."""
    fit = {name: [f"geor1 fit --config {paths.config(name)}"] for name in ("retrieval", "base", "sft", "grpo", "zero")}
    mine = f"geor1 mine episodes --index {paths.index} --shards {paths.world} --k {cfg.k} --seed {cfg.seed}"
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
            f"{mine} --out {paths.episodes} --strategy {cfg.strategy} --min-km {cfg.min_km} --max-km {cfg.max_km}",
            f"{mine} --out {paths.episodes_of('geo')} --strategy geo --min-km {cfg.geo_min_km} "
            f"--max-km {cfg.geo_max_km}",
            f"{mine} --out {paths.episodes_of('hard')} --strategy hard --min-km {cfg.geo_min_km}",
        ],
        "instruct": [f"geor1 data instruct --shards {paths.world} --out {paths.instruct} --seed {cfg.seed}"],
        "base": fit["base"],
        "cot": [
            f"geor1 cot synthesize --shards {paths.episodes} --out {paths.sft_pairing} --task pairing",
            f"geor1 cot synthesize --shards {paths.world} --out {paths.sft_geolocate} --task geolocate"
            + (" --compact" if cfg.compact_geolocate else ""),
        ],
        "sft": fit["sft"],
        "grpo": fit["grpo"],
        "zero": fit["zero"],
        "eval": [
            f"geor1 eval pairing --model MODEL --episodes {paths.episodes} --out ... --limit {cfg.eval_pairing}",
            f"geor1 eval pairing --model MODEL --episodes {paths.episodes} --out ... --limit {cfg.eval_hard} "
            "--shuffle-candidates",
            *(
                f"geor1 eval pairing --model MODEL --episodes {paths.episodes_of(kind)} --out ... "
                f"--limit {cfg.eval_hard}"
                for kind in ("geo", "hard")
            ),
            f"geor1 eval geolocate --model MODEL --data {paths.world} --out ... --limit {cfg.eval_geolocate}",
        ],
        "report": [],
    }


def notes(cfg: DemoConfig) -> list[str]:
    """Why the settings are what they are, where a reader of the table would ask."""
    geo = (
        f"SFT draws pairing and geolocation trace shards {cfg.sft_pairing_weight}:{cfg.sft_geolocate_weight}"
        if cfg.sft_geolocate_weight
        else "SFT uses the pairing traces only (no model was taught the geolocation answer)"
    )
    return [
        f"Steps: instruct {cfg.instruct_steps}, SFT {cfg.sft_steps} ({geo}), GRPO {cfg.grpo_steps} and Zero "
        f"{cfg.zero_steps} (B={cfg.grpo_prompts} prompts x G={cfg.group_size} samples, random-negative episodes). "
        "The base is the instruction stage's model (generic questions about what images show: the answer format, "
        "no place, no coordinate, no pairing); SFT and Zero start from it.",
        "",
    ]


def _ci(m: dict[str, Any], key: str = "pairing_acc") -> str:
    return f"{m[key]:.3f} [{m['ci95_low']:.3f}, {m['ci95_high']:.3f}]"


def _diff(d: dict[str, Any]) -> str:
    return f"{d['diff']:+.3f} [{d['ci95_low']:+.3f}, {d['ci95_high']:+.3f}]"


def _share(m: dict[str, Any], key: str) -> str:
    """An accuracy of a geolocation row with its Wilson interval."""
    from geor1.metrics.intervals import wilson_interval

    n = int(m["n"])
    lo, hi = wilson_interval(m[key] * n, n)
    return f"{m[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def pairing_table(results: dict[str, Any]) -> list[str]:
    """Pairing per model and episode type, with the order audit and the completion length."""
    rows = [
        "| model | random negatives (95% CI) | geo-neighbourhood | encoder-hard | shuffled order - shard order | "
        "most answered letter (share) | format rate | mean completion tokens | describe acc |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["models"].items():
        p, sh = r["pairing"], r["shuffled"]
        order = {
            "diff": sh["order_diff"],
            "ci95_low": sh["order_diff_ci95_low"],
            "ci95_high": sh["order_diff_ci95_high"],
        }
        rows.append(
            f"| {name} | {_ci(p)} | {_ci(r['pairing_geo'])} | {_ci(r['pairing_hard'])} | {_diff(order)} | "
            f"{p['max_letter'] or '-'} ({p['max_letter_share']:.2f}) | {p['format_rate']:.3f} | "
            f"{p['mean_completion_tokens']:.1f} | {_ci(r['describe'], 'describe_acc')} |"
        )
    return rows


def geolocation_table(results: dict[str, Any]) -> list[str]:
    """Geolocation per model and the mean-location baseline."""
    rows = [
        "| model | unparseable | acc@750km (95% CI) | acc@2500km (95% CI) | median km | country acc (95% CI) | "
        "mean completion tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    named = [(n, r["geolocate"]) for n, r in results["models"].items()]
    lat, lon = results["mean_location"]["point"]
    named.append(
        (f"mean location of the training places ({lat:.1f}, {lon:.1f})", results["mean_location"]["geolocate"])
    )
    for name, g in named:
        med = g["median_km_parsed"]
        tokens = g.get("mean_completion_tokens")
        rows.append(
            f"| {name} | {g['unparseable_share']:.3f} | {_share(g, 'acc@750km')} | {_share(g, 'acc@2500km')} | "
            f"{'-' if med != med else f'{med:,.0f}'} | {_share(g, 'country_acc')} | "
            f"{'-' if tokens is None else f'{tokens:.1f}'} |"
        )
    return rows


def position_table(results: dict[str, Any]) -> list[str]:
    """The shortcut audit: accuracy per position of the true tile (random-negative episodes)."""
    letters = sorted({x for r in results["models"].values() for x in r["pairing"]["position_acc"]})
    rows = [
        "| model | " + " | ".join(f"true tile {x}" for x in letters) + " |",
        "|---|" + "---|" * len(letters),
    ]
    for name, r in results["models"].items():
        pos = r["pairing"]["position_acc"]
        rows.append(f"| {name} | " + " | ".join(_ci(pos[x], "acc") if x in pos else "-" for x in letters) + " |")
    return rows


GEO_COMPARISONS = {  # eval/results.json "comparisons" key -> its line in the report
    "baseline": "SFT only - mean location on geolocation",
    "indirect": "Indirect reward, SFT+GRPO - SFT only on geolocation",
}


def comparison_lines(results: dict[str, Any]) -> list[str]:
    """The paired comparisons, one line each: pairing, the indirect-reward answer, SFT against the mean location."""
    comp = results["comparisons"]
    lines = [
        f"- {label}, pairing (random negatives, same episodes): {_diff(d)} (Newcombe; {d['discordant']} discordant)"
        for label, d in comp.items()
        if label not in GEO_COMPARISONS
    ]
    for key, title in GEO_COMPARISONS.items():
        if key in comp:
            lines.append(f"- {title} (same places): {_geo_diff(comp[key])}.")
    return lines


def _geo_diff(d: dict[str, Any]) -> str:
    parts = [f"{k} {_diff(v)}" for k, v in d.items() if k != "median_km"]
    med = d["median_km"]
    return (
        ", ".join(parts) + f"; median error {med['diff']:+,.0f} km [{med['ci95_low']:+,.0f}, {med['ci95_high']:+,.0f}] "
        "(paired bootstrap; an unreadable answer counts as the largest possible error)"
    )


def render_report(cfg: DemoConfig, paths: DemoPaths, seconds: dict[str, float], results: dict[str, Any]) -> str:
    """The text of `report.md`; `seconds`: the duration of each stage run so far, `results`: eval/results.json."""
    first = next(iter(results["models"].values()))
    n_pair, n_hard, n_geo = first["pairing"]["n"], first["pairing_hard"]["n"], int(first["geolocate"]["n"])
    out = paths.out
    lines = [
        "# geor1 demo report",
        "",
        f"GeoWorld ({cfg.num_train} / {cfg.num_val} / {cfg.num_test} places, seed {cfg.seed}), tiny offline "
        f"Qwen2.5-VL, K={cfg.k} episodes. Held-out evaluation (greedy) on cities never seen in training: {n_pair} "
        f"random-negative test episodes (negatives >= {cfg.min_km:,.0f} km away, the training episodes' type), "
        f"{n_hard} geo-neighbourhood ({cfg.geo_min_km:,.0f}-{cfg.geo_max_km:,.0f} km) and {n_hard} encoder-hard "
        f"(the retrieval encoder's most similar tiles >= {cfg.geo_min_km:,.0f} km away) episodes, {n_geo} test "
        f"places. Chance pairing accuracy: {1 / cfg.k:.3f}. 95% intervals: Wilson; differences on the same items: "
        "Newcombe's paired interval.",
        "",
        "## Pairing",
        "",
        *pairing_table(results),
        "",
        f'"shuffled order - shard order": the first {n_hard} random-negative episodes again with their candidates '
        "in a seeded random order; a model that reads the images, not the letters, stays within the interval of 0. "
        "Accuracy per position of the true tile (the shortcut audit):",
        "",
        *position_table(results),
        "",
        "## Geolocation",
        "",
        "Distances: haversine, R = 6371.0088 km, d <= threshold; unparseable answers count as misses in every acc@ "
        "and are excluded from the median; countries by offline reverse geocoding of the answered point.",
        "",
        *geolocation_table(results),
        "",
        "## Comparisons",
        "",
        *comparison_lines(results),
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
