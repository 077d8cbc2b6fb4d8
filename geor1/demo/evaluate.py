"""The demo's evaluation: every model on the same held-out data, greedy, and the comparisons the report states.

Per model (`eval/model<i>/<part>/`: metrics.json, predictions.csv, results.md):

    pairing        the random-negative test episodes (the training episodes' type), with the shortcut audit
                   (accuracy per position of the true tile, the letters answered)
    shuffled       the first `eval_hard` of those episodes with their candidates in a seeded random order, against
                   the shard's order on the same episodes (Newcombe's paired interval)
    pairing_geo    geo-neighbourhood episodes; pairing_hard: encoder-hard episodes (EPISODE_TYPES)
    geolocate      the test places (acc@km, median error, country accuracy by reverse geocoding)
    describe       the instruction questions of the test places (what the base was taught)

and one model-free row: every test place answered with the training places' mean location (the normalised mean of
their unit vectors). Comparisons on the same items (`comparisons` in eval/results.json): SFT+GRPO - SFT and Zero -
base on pairing; and the indirect-reward question, SFT+GRPO - SFT on geolocation (acc@750/2500 km and country
accuracy: Newcombe; median error: paired bootstrap, an unreadable answer counted as the largest possible error,
half the Earth's circumference); and, the same way, SFT - the mean location on geolocation ("baseline": has SFT
learned to geolocate beyond always answering one point?).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from geor1.demo import recipes
from geor1.demo.config import EPISODE_TYPES, DemoConfig, DemoPaths

log = logging.getLogger(__name__)

EVAL_BATCH = 32
MAP_MODEL = "SFT+GRPO"  # the model whose predictions the world map shows
PAIRED = {  # name of the comparison -> (first model, second model): second - first on the same items
    "SFT+GRPO - SFT only": ("SFT only", "SFT+GRPO"),
    "GRPO only (Zero) - base": ("base (instruct)", "GRPO only (Zero)"),
}
INDIRECT = ("SFT only", "SFT+GRPO")  # does GRPO on pairing change the SFT model's geolocation?
LEARNED = "SFT only"  # the model whose geolocation is compared with the mean-location baseline ("baseline")
THRESHOLDS_KM = (750, 2500)
MAX_ERROR_KM = float(np.pi * 6371.0088)  # an unreadable answer, in the median-error bootstrap
SHUFFLE_SEED = 0


def mean_location(world: str | Path, split: str = "train") -> tuple[float, float]:
    """The mean location of a split's places: the mean of their unit vectors, normalised (the point that minimises
    the summed squared chord distance), in degrees."""
    from geor1.data.reader import iter_raw_samples, shard_urls
    from geor1.data.schema import SampleError, read_meta

    xyz = []
    for raw in iter_raw_samples(shard_urls(world, split)):
        try:
            _, meta = read_meta(raw)
        except SampleError as e:
            log.warning("mean location: skipping %s", e)
            continue
        lat, lon = np.radians(float(meta["lat"])), np.radians(float(meta["lon"]))
        xyz.append([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])
    if not xyz:
        from geor1 import Geor1Error

        raise Geor1Error(f"no readable places in split '{split}' of {world}")
    v = np.mean(xyz, axis=0)
    return float(np.degrees(np.arcsin(v[2] / np.linalg.norm(v)))), float(np.degrees(np.arctan2(v[1], v[0])))


def _load(root: Path, task: str, limit: int) -> list[Any]:
    from geor1.eval.samples import load_chat_samples

    samples, skipped = load_chat_samples(root, "test", task, limit)
    if skipped:
        log.warning("%d corrupt samples skipped in %s", skipped, root)
    return samples


def geo_hits(preds: list[dict[str, Any]], truth: list[Any]) -> dict[str, list[float]]:
    """Per place: hit at each of THRESHOLDS_KM, country hit, and the error (MAX_ERROR_KM when unreadable)."""
    out: dict[str, list[float]] = {f"acc@{t}km": [] for t in THRESHOLDS_KM}
    out["country_acc"], out["error_km"] = [], []
    for row, target in zip(preds, truth, strict=True):
        km = float(row["km"]) if row["parsed"] else None
        for t in THRESHOLDS_KM:
            out[f"acc@{t}km"].append(float(km is not None and km <= t))
        country = target.country
        out["country_acc"].append(float(bool(country) and row["pred_country"] == str(country).upper()))
        out["error_km"].append(MAX_ERROR_KM if km is None else km)
    return out


def compare_geolocation(first: dict[str, list[float]], second: dict[str, list[float]]) -> dict[str, Any]:
    """second - first per geolocation metric, on the same places (see the module docstring)."""
    from geor1.metrics.audit import paired_difference
    from geor1.metrics.intervals import paired_bootstrap

    out: dict[str, Any] = {
        name: paired_difference([int(x) for x in first[name]], [int(x) for x in second[name]])
        for name in first
        if name != "error_km"
    }
    out["median_km"] = paired_bootstrap(first["error_km"], second["error_km"])
    return out


def evaluate(cfg: DemoConfig, paths: DemoPaths, models: dict[str, Path]) -> dict[str, Any]:
    """Evaluate `models` (row name -> model folder) as the module docstring says; writes eval/results.json and
    the plots, returns the results."""
    from geor1.eval.plots import error_cdf, world_map
    from geor1.eval.runners import compare_orders, evaluate_shuffled, run_policy, score_rows, write_results
    from geor1.metrics.audit import paired_difference
    from geor1.model.policy import Policy
    from geor1.tasks import GeoTarget, get_task
    from geor1.tasks.geolocation import geodesic_metrics

    pairs = {
        kind: _load(paths.episodes_of(kind), "pairing", cfg.eval_pairing if kind == "random" else cfg.eval_hard)
        for kind in EPISODE_TYPES
    }
    places = _load(paths.world, "geolocate", cfg.eval_geolocate)
    questions = _load(paths.instruct, "describe", cfg.eval_describe)
    truth = [s.target for s in places]
    rows: dict[str, Any] = {}
    hits: dict[str, dict[str, list[float]]] = {}
    correct: dict[str, list[int]] = {}
    distances, predictions = {}, {}
    for i, (name, path) in enumerate(models.items()):
        policy = Policy(str(path), max_pixels=recipes.MAX_PIXELS).eval()
        out = paths.eval / f"model{i}"
        result: dict[str, Any] = {"path": str(path)}
        for kind in EPISODE_TYPES:
            part = "pairing" if kind == "random" else f"pairing_{kind}"
            generated = run_policy(policy, pairs[kind], EVAL_BATCH, cfg.max_new_tokens)
            m, p = score_rows(get_task("pairing"), generated)
            if kind == "random":
                correct[name] = [r["correct"] for r in p]
                few = pairs[kind][: cfg.eval_hard]
                sm, sp = evaluate_shuffled(policy, few, SHUFFLE_SEED, EVAL_BATCH, cfg.max_new_tokens)
                fm, fp = score_rows(get_task("pairing"), generated[: len(few)])  # the same episodes, shard order
                result["shuffled"] = compare_orders(fm, fp, sm, sp, SHUFFLE_SEED)
                write_results(out / "shuffled", sm, sp, f"{name}: pairing, candidates shuffled")
            write_results(out / part, m, p, f"{name}: {part} ({kind} episodes)")
            result[part] = m
        gm, gp = score_rows(get_task("geolocate"), run_policy(policy, places, EVAL_BATCH, cfg.geolocate_tokens))
        write_results(out / "geolocate", gm, gp, f"{name}: geolocation")
        result["geolocate"] = gm
        hits[name] = geo_hits(gp, truth)
        dm, dp = score_rows(get_task("describe"), run_policy(policy, questions, EVAL_BATCH, cfg.max_new_tokens))
        write_results(out / "describe", dm, dp, f"{name}: describe")
        result["describe"] = dm
        rows[name] = result
        distances[name] = np.array([r["km"] for r in gp if r["parsed"]], dtype=float)
        predictions[name] = gp
        log.info(
            "%s: pairing %s; geolocation unparseable %.3f; describe %.3f",
            name,
            ", ".join(
                f"{k} {rows[name]['pairing' if k == 'random' else f'pairing_{k}']['pairing_acc']:.3f}"
                for k in EPISODE_TYPES
            ),
            gm["unparseable_share"],
            dm["describe_acc"],
        )
    point = mean_location(paths.world)
    bm, bp = geodesic_metrics({s.key: point for s in places}, {s.key: s.target for s in places})
    write_results(paths.eval / "mean_location", bm, bp, "mean location of the training places")
    comparisons: dict[str, Any] = {
        label: paired_difference(correct[a], correct[b]) for label, (a, b) in PAIRED.items() if a in rows and b in rows
    }
    a, b = INDIRECT
    if a in hits and b in hits:
        comparisons["indirect"] = compare_geolocation(hits[a], hits[b])
    if LEARNED in hits:
        comparisons["baseline"] = compare_geolocation(geo_hits(bp, truth), hits[LEARNED])
    results = {
        "models": rows,
        "mean_location": {"point": list(point), "geolocate": bm},
        "comparisons": comparisons,
    }
    paths.results.write_text(json.dumps(results, indent=2))
    distances["mean location"] = np.array([r["km"] for r in bp], dtype=float)
    error_cdf(
        distances, {**{n: len(places) for n in models}, "mean location": len(places)}, paths.eval / "error_cdf.png"
    )
    shown = MAP_MODEL if MAP_MODEL in predictions else next(iter(predictions))
    true_points = np.array(
        [[t.lat, t.lon] if isinstance(t, GeoTarget) else [np.nan, np.nan] for t in truth], dtype=float
    )
    pred = np.array(
        [[r["lat"], r["lon"]] if r["parsed"] else [np.nan, np.nan] for r in predictions[shown]], dtype=float
    )
    world_map(pred, true_points, paths.eval / "world_map.png", f"{shown}: predictions (red) vs truth (green)")
    return results
