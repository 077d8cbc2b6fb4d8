"""Synthetic chain-of-thought exemplars in Geo-R1's one narrow template:
visual cues -> cross-check the views -> geographic priors -> answer, as `<think>...</think><answer>...</answer>`.

Pairing (episode shards): the land cover of the ground nearest the camera (bottom quarter of the view), the land
cover around each candidate tile's centre (what lies under the camera), every wrong candidate ruled out by its
largest stated difference, the letter. Pairing traces are kept compact ("View: green 94%. A: water 60%, green 30%,
no: green 30% vs 94%. B: green 90%, matches. So B.") so that RL rollouts stay short. An episode whose cues do not
single out the true tile (a negative matches the view at least as well) gets no exemplar: the reasoning would not
lead to the answer (counted as `cues_do_not_single_out_answer`). Geolocation (pair shards): the view's cover and
relief -> climate, latitude band, hemispheres, continent -> coordinates, city and country. Phrasing varies with a
seed inside the template. Every exemplar then goes through `fact_check`; the prompt, target and images of a sample
come from its task (`geor1.tasks`).
"""

from __future__ import annotations

import json
import logging
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from geor1.cot.cues import (
    COVERS,
    cover_fractions,
    ground_below_horizon,
    ground_near,
    place_cues,
    ruggedness,
    tile_centre,
)
from geor1.cot.factcheck import fact_check
from geor1.data.places import continent_of
from geor1.tasks import PairingTarget, get_task

log = logging.getLogger(__name__)
CONTINENT_NAMES = {
    "africa": "Africa",
    "asia": "Asia",
    "europe": "Europe",
    "north_america": "North America",
    "oceania": "Oceania",
    "south_america": "South America",
}
_OPEN = ("The ground view shows", "Looking at the ground-level photo, I see", "In the ground view there is")
_NEAR = ("View:", "Near the camera:", "Foreground:")
_KEEP = ("matches", "fits", "consistent")
_DROP = ("ruled out", "no")
_CLOSE = ("So {L}.", "Only {L} fits.", "Answer {L}.")


def describe(cover: dict[str, float]) -> str:
    top = sorted(COVERS + ("other",), key=lambda c: -cover[c])
    first, second = top[0], top[1]
    text = f"mostly {_name(first)} ({cover[first]:.0%})"
    if cover[second] >= 0.1:
        text += f" with some {_name(second)} ({cover[second]:.0%})"
    return text


def _name(cover_class: str) -> str:
    return {
        "water": "water",
        "snow": "snow or ice",
        "vegetation": "vegetation",
        "bare": "bare or desert ground",
        "other": "dark or hazy ground",
    }[cover_class]


def describe_short(cover: dict[str, float]) -> str:
    """Compact cover description for pairing traces (short completions keep RL rollouts cheap): 'vegetation 94%,
    water 20%' (classes of at least 10%, largest first, at most two)."""
    top = [c for c in sorted(COVERS + ("other",), key=lambda c: -cover[c]) if cover[c] >= 0.1][:2]
    return ", ".join(f"{_SHORT[c]} {cover[c]:.0%}" for c in top)


_SHORT = {"water": "water", "snow": "snow", "vegetation": "green", "bare": "bare", "other": "dark"}


def cover_distance(a: dict[str, float], b: dict[str, float]) -> float:
    return sum(abs(a[c] - b[c]) for c in COVERS + ("other",))


def pairing_exemplar(
    ground: Image.Image, candidates: list[Image.Image], answer: int, rng: np.random.Generator
) -> tuple[str | None, str | None]:
    """(exemplar, None) or (None, reason)."""
    g = cover_fractions(ground_near(ground))
    cs = [cover_fractions(tile_centre(c)) for c in candidates]
    dist = [cover_distance(g, c) for c in cs]
    ranked = np.argsort(dist, kind="stable")
    if ranked[0] != answer or dist[ranked[1]] - dist[answer] < 0.05:
        return None, "cues_do_not_single_out_answer"
    letters = string.ascii_uppercase
    parts = [f"{rng.choice(_NEAR)} {describe_short(g)}."]
    for i, c in enumerate(cs):
        if i == answer:
            parts.append(f"{letters[i]}: {describe_short(c)}, {rng.choice(_KEEP)}.")
        else:
            worst = max(COVERS + ("other",), key=lambda k: abs(c[k] - g[k]))
            parts.append(
                f"{letters[i]}: {describe_short(c)}, {rng.choice(_DROP)}: {_SHORT[worst]} {c[worst]:.0%} "
                f"vs {g[worst]:.0%}."
            )
    parts.append(rng.choice(_CLOSE).format(L=letters[answer]))
    return f"<think>{' '.join(parts)}</think><answer>{letters[answer]}</answer>", None


def geolocate_exemplar(
    ground: Image.Image, meta: dict[str, Any], rng: np.random.Generator, compact: bool = False
) -> str:
    """The geolocation trace of a place; `compact`: the short form (cues, then a point to 0.1 degree, no place
    name), ~40 tokens instead of ~125, which a small model learns to write in a few hundred steps.

    Compact: "<think>View: green 94%, flat. Temperate latitudes, northern hemisphere, eastern hemisphere,
    Europe.</think><answer>48.1, 11.6</answer>".
    """
    below = ground_below_horizon(ground)
    cover = cover_fractions(below)
    lat, lon = float(meta["lat"]), float(meta["lon"])
    cues = place_cues(lat, lon, cover)
    relief = "rugged, broken terrain" if ruggedness(below) > 6.0 else "fairly flat terrain"
    continent = CONTINENT_NAMES[meta.get("continent") or continent_of(lat, lon)]
    if compact:
        think = (
            f"View: {describe_short(cover)}, {'rugged' if ruggedness(below) > 6.0 else 'flat'}. "
            f"{cues.band.capitalize()} latitudes, {cues.hemisphere_ns} hemisphere, {cues.hemisphere_ew} hemisphere, "
            f"{continent}."
        )
        return f"<think>{think}</think><answer>{lat:.1f}, {lon:.1f}</answer>"
    parts = [f"{rng.choice(_OPEN)} {describe(cover)} and {relief}."]
    if cover["water"] > 0.15:
        parts.append("Open water is in view, so the place is near a coast or a large lake.")
    parts.append(f"This suggests a {cues.climate} climate, typical of {cues.band} latitudes.")
    parts.append(
        f"Geographic priors: the {cues.hemisphere_ns} hemisphere and the {cues.hemisphere_ew} hemisphere, "
        f"in {continent}."
    )
    region = ", ".join(x for x in (meta.get("admin1"), meta.get("country")) if x)
    if region:
        parts.append(f"The region fits {region}.")
    parts.append(f"My estimate is {lat:.4f}, {lon:.4f}.")
    place = f" ({meta['city']}, {meta['country']})" if meta.get("city") and meta.get("country") else ""
    return f"<think>{' '.join(parts)}</think><answer>{lat:.5f}, {lon:.5f}{place}</answer>"


@dataclass
class SynthesisReport:
    total: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    real_sources: Counter = field(default_factory=Counter)  # template exemplars of samples not from GeoWorld

    def as_dict(self) -> dict[str, Any]:
        out = {"total": self.total, "kept": self.kept, "dropped": dict(sorted(self.dropped.items()))}
        if self.real_sources:
            out["templates_on_real_photos"] = dict(sorted(self.real_sources.items()))
        return out


def synthesize(
    shards: str | Path,
    out: str | Path,
    task: str,
    seed: int = 0,
    tolerance_km: float = 25.0,
    splits: tuple[str, ...] = ("train", "val", "test"),
    imported: dict[str, dict[str, str]] | None = None,
    compact: bool = False,
) -> SynthesisReport:
    """Write SFT shards (the sample's images + json with `task`, `prompt`, `response`) of fact-checked exemplars,
    plus `exemplars.jsonl` and `factcheck_summary.json`. With `imported` ({key: {"reasoning", "answer"}}), the
    exemplars come from there (e.g. a teacher model) instead of the templates, through the same fact-check.
    `compact`: the short geolocation traces of `geolocate_exemplar` (pairing traces are always compact)."""
    from tqdm import tqdm

    from geor1.data.geoworld import SOURCE as GEOWORLD
    from geor1.data.reader import iter_raw_samples, shard_urls
    from geor1.data.schema import SampleError, decode_image, validate_meta
    from geor1.data.shards import ShardWriter, write_manifest

    spec = get_task(task)  # Geor1Error for an unknown task
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = SynthesisReport()
    stats = {}
    with open(out / "exemplars.jsonl", "w") as jl:
        for split_id, split in enumerate(splits):
            files = shard_urls(shards, split)
            if not files:
                continue
            rng = np.random.default_rng([seed, split_id])
            with ShardWriter(out, split) as writer:
                for raw in tqdm(iter_raw_samples(files), desc=f"cot {task} {split}", unit="sample", disable=None):
                    report.total += 1
                    key = raw["__key__"]
                    try:
                        meta = validate_meta(key, json.loads(raw["json"]))
                        target = spec.target_from_meta(key, meta)
                        names = spec.image_names(target)
                        for name in names:
                            if name not in raw:
                                raise SampleError(key, name, "missing")
                        ground, *cands = (decode_image(key, name, raw[name]) for name in names)
                    except (SampleError, KeyError, ValueError) as e:
                        report.dropped["corrupt_sample"] += 1
                        log.warning("cot: skipping corrupt sample %s (%s)", key, e)
                        continue
                    source = meta.get("source")
                    if imported is None and source not in (None, GEOWORLD):
                        if not report.real_sources[source]:
                            log.warning(
                                "cot: %s is from %r, not GeoWorld: the template cues are colour statistics made for "
                                "rendered views, meaningless on real photos; for real data write traces with a "
                                "teacher (`geor1 cot generate`) or import them (`geor1 cot import`)",
                                key,
                                source,
                            )
                        report.real_sources[source] += 1
                    text: str | None
                    if imported is not None:
                        if key not in imported:
                            report.dropped["not_in_import"] += 1
                            continue
                        text = f"<think>{imported[key]['reasoning']}</think><answer>{imported[key]['answer']}</answer>"
                    elif isinstance(target, PairingTarget):
                        text, reason = pairing_exemplar(ground, cands, target.answer, rng)
                        if text is None:
                            report.dropped[reason] += 1
                            continue
                    else:
                        text = geolocate_exemplar(ground, meta, rng, compact)
                    failures = fact_check(text, target, tolerance_km)
                    if failures:
                        for r in failures:
                            report.dropped[r] += 1
                        continue
                    record = {**meta, "task": task, "prompt": spec.prompt(target), "response": text}
                    images = {n: raw[n] for n in names}
                    writer.write_files(key, images, record)
                    jl.write(json.dumps({"key": key, "split": split, "task": task, "response": text}) + "\n")
                    report.kept += 1
            stats[split] = writer.close()
    write_manifest(
        out,
        stats,
        f"cot-{task}",
        "derived from the source shards; their licence applies",
        extra={
            "task": task,
            "seed": seed,
            "tolerance_km": tolerance_km,
            "compact": compact,
            "source_shards": str(shards),
        },
    )
    (out / "factcheck_summary.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    return report


def read_import(path: str | Path) -> dict[str, dict[str, str]]:
    """A JSONL of {"key", "reasoning", "answer"} (e.g. from a teacher model) -> {key: record}."""
    from geor1 import Geor1Error

    out: dict[str, dict[str, str]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                out[str(rec["key"])] = {"reasoning": str(rec["reasoning"]), "answer": str(rec["answer"])}
            except (ValueError, KeyError, TypeError) as e:
                raise Geor1Error(f"{path}:{n}: expected a JSON object with key, reasoning, answer ({e})") from None
    return out
