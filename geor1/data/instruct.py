"""Generic instruction data on the images of pair shards: the `describe` task (`geor1.tasks.describe`).

The demo's stand-in for the instruction tuning its paper's base model had: questions about what an image shows,
answered in the `<think></think><answer></answer>` format, with nothing geospatial (no place, no coordinate, no
pairing, not Geo-R1's reasoning template). Per place of a pair shard, in order:

    cover  ground view   "Which covers most of the ground in this image: ...?"  -> a cover word
    cover  overhead tile the same question about the tile                        -> a cover word
    more   2..max_images images of as many places (this one and the ones before it in the split), all ground
           views or all tiles (seeded), "Which image shows the most <cover>?"         -> a letter

The answers are measured on the pixels (`geor1.cot.cues.cover_fractions`: below the horizon for a ground view, the
whole tile for a tile), so they are right by construction; a question whose answer is not clear (the first two
covers within `margin`, the two largest shares of the asked cover within `more_margin`) is not asked, and counted.

The letters of a "more" question and the kinds of image it mixes are generic on purpose: the stage must not teach
pairing (a ground view and the tiles of candidate places), so no question asks which image shows the same place.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geor1.cot.cues import COVERS, cover_fractions, ground_below_horizon
from geor1.tasks.describe import MORE_WORDS, DescribeTarget, DescribeTask

log = logging.getLogger(__name__)

WORD = {"water": "water", "snow": "snow", "vegetation": "vegetation", "bare": "bare", "other": "dark"}
"""Cover class (geor1.cot.cues) -> the describe task's answer word."""
_PHRASE = {
    "water": "water",
    "snow": "snow or ice",
    "vegetation": "vegetation",
    "bare": "bare ground",
    "other": "dark ground",
}


@dataclass
class InstructReport:
    total: int = 0  # places read
    kept: int = 0  # questions written
    questions: Counter = field(default_factory=Counter)  # kept, per question and image kind
    not_asked: Counter = field(default_factory=Counter)  # questions skipped because the answer is not clear
    corrupt: int = 0  # places whose sample could not be read (skipped, logged)

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "kept": self.kept,
            "questions": dict(sorted(self.questions.items())),
            "not_asked": dict(sorted(self.not_asked.items())),
            "corrupt": self.corrupt,
        }


def _describe(cover: dict[str, float]) -> str:
    top = sorted((*COVERS, "other"), key=lambda c: -cover[c])
    text = f"mostly {_PHRASE[top[0]]} ({cover[top[0]]:.0%})"
    if cover[top[1]] >= 0.1:
        text += f" and some {_PHRASE[top[1]]} ({cover[top[1]]:.0%})"
    return text


def _shares(cover: dict[str, float], asked: str) -> str:
    """An image's largest covers (those of at least 10%, at most two) and the asked one: 'water 60%, bare 20%'."""
    shown = [c for c in sorted((*COVERS, "other"), key=lambda c: -cover[c]) if cover[c] >= 0.1][:2]
    if asked not in shown:
        shown.append(asked)
    return ", ".join(f"{WORD[c]} {cover[c]:.0%}" for c in shown)


def cover_question(cover: dict[str, float], margin: float) -> tuple[DescribeTarget, str] | None:
    """(target, response) of "which covers most", or None when the first two covers are within `margin`.

    >>> t, r = cover_question({"water": 0.6, "snow": 0.0, "vegetation": 0.3, "bare": 0.1, "other": 0.0}, 0.1)
    >>> t.answer, r
    ('water', '<think>The image shows mostly water (60%) and some vegetation (30%).</think><answer>water</answer>')
    """
    top = sorted((*COVERS, "other"), key=lambda c: -cover[c])
    if cover[top[0]] - cover[top[1]] < margin:
        return None
    word = WORD[top[0]]
    return DescribeTarget("cover", word), f"<think>The image shows {_describe(cover)}.</think><answer>{word}</answer>"


def more_question(covers: list[dict[str, float]], margin: float) -> tuple[DescribeTarget, str] | None:
    """(target, response) of "which image shows the most <cover>" for images A, B, ... (`covers`, one per image),
    asking about the cover whose largest share leads the second largest by most; None when that lead is under
    `margin`.

    >>> a = {"water": 0.1, "snow": 0.0, "vegetation": 0.5, "bare": 0.0, "other": 0.4}
    >>> b = {"water": 0.7, "snow": 0.0, "vegetation": 0.2, "bare": 0.0, "other": 0.1}
    >>> t, r = more_question([a, b], 0.15)
    >>> t.cover, t.answer
    ('water', 'B')
    >>> r
    '<think>A: vegetation 50%, dark 40%, water 10%. B: water 70%, vegetation 20%.</think><answer>B</answer>'
    """

    def lead(c: str) -> float:
        top = sorted((x[c] for x in covers), reverse=True)
        return top[0] - top[1]

    asked = max(MORE_WORDS, key=lambda c: (lead(c), c))
    if lead(asked) < margin:
        return None
    letters = "ABCD"[: len(covers)]
    best = max(range(len(covers)), key=lambda i: covers[i][asked])
    think = " ".join(f"{x}: {_shares(c, asked)}." for x, c in zip(letters, covers, strict=True))
    target = DescribeTarget("more", letters[best], cover=asked, n_images=len(covers))
    return target, f"<think>{think}</think><answer>{letters[best]}</answer>"


def build_instruct(
    shards: str | Path,
    out: str | Path,
    seed: int = 0,
    margin: float = 0.1,
    more_margin: float = 0.15,
    max_images: int = 2,
    splits: tuple[str, ...] = ("train", "val", "test"),
) -> InstructReport:
    """Write describe shards (images `image0.jpg`, `image1.jpg`, ... + json with `task`, `prompt`, `response` and the
    target) under `out` from the pair shards `shards` (a folder or URL spec with ground.jpg and sat.jpg), plus
    `instruct_summary.json`; returns the counts."""
    from tqdm import tqdm

    from geor1 import Geor1Error
    from geor1.data.reader import iter_raw_samples, shard_urls
    from geor1.data.schema import GROUND, SAT, SampleError, decode_image
    from geor1.data.shards import ShardWriter, write_manifest
    from geor1.tasks.describe import MAX_IMAGES

    if not 2 <= max_images <= MAX_IMAGES:
        raise Geor1Error(f"max_images must be within 2..{MAX_IMAGES}, got {max_images}")
    for name, value in (("margin", margin), ("more_margin", more_margin)):
        if not 0.0 <= value < 1.0:
            raise Geor1Error(f"{name} must be within [0, 1), got {value}")
    task = DescribeTask()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = InstructReport()
    stats = {}
    for split_id, split in enumerate(splits):
        files = shard_urls(shards, split)
        if not files:
            continue
        rng = np.random.default_rng([seed, split_id])
        window: list[tuple[dict[str, bytes], dict[str, dict[str, float]]]] = []  # the last places: images, covers
        with ShardWriter(out, split) as writer:

            def write(key: str, target: DescribeTarget, response: str, images: list[bytes]) -> None:
                meta = {**task.target_to_meta(target), "task": task.name, "prompt": task.prompt(target)}
                meta["response"] = response
                writer.write_files(key, dict(zip(task.image_names(target), images, strict=True)), meta)
                report.kept += 1

            for raw in tqdm(iter_raw_samples(files), desc=f"instruct {split}", unit="place", disable=None):
                report.total += 1
                key = raw["__key__"]
                try:
                    if GROUND not in raw or SAT not in raw:
                        raise SampleError(key, SAT if GROUND in raw else GROUND, "missing")
                    ground = decode_image(key, GROUND, raw[GROUND])
                    tile = decode_image(key, SAT, raw[SAT])
                except (SampleError, ValueError) as e:
                    report.corrupt += 1
                    log.warning("instruct: skipping corrupt sample %s (%s)", key, e)
                    continue
                covers = {
                    "ground": cover_fractions(ground_below_horizon(ground)),
                    "tile": cover_fractions(np.asarray(tile.convert("RGB"))),
                }
                images = {"ground": raw[GROUND], "tile": raw[SAT]}
                for kind in ("ground", "tile"):
                    asked = cover_question(covers[kind], margin)
                    if asked is None:
                        report.not_asked[f"cover_{kind}"] += 1
                        continue
                    write(f"{key}_cover_{kind}", *asked, [images[kind]])
                    report.questions[f"cover_{kind}"] += 1
                window = [*window[-(max_images - 1) :], (images, covers)]
                n = int(rng.integers(2, max_images + 1))
                if len(window) >= n:
                    places = [window[-1], *(window[i] for i in rng.permutation(len(window) - 1)[: n - 1])]
                    order = rng.permutation(n)  # this place's image is not always A
                    kinds = ["ground" if rng.random() < 0.5 else "tile"] * n
                    chosen = [(places[i][0][k], places[i][1][k]) for i, k in zip(order, kinds, strict=True)]
                    asked = more_question([c for _, c in chosen], more_margin)
                    if asked is None:
                        report.not_asked["more"] += 1
                    else:
                        write(f"{key}_more", *asked, [im for im, _ in chosen])
                        report.questions[f"more_{n}"] += 1
        stats[split] = writer.close()
    write_manifest(
        out,
        stats,
        "instruct-describe",
        "derived from the source shards; their licence applies",
        extra={
            "task": task.name,
            "seed": seed,
            "margin": margin,
            "more_margin": more_margin,
            "max_images": max_images,
            "source_shards": str(shards),
        },
    )
    (out / "instruct_summary.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    log.info("instruct: %d questions from %d places; not asked: %s", report.kept, report.total, dict(report.not_asked))
    return report


__all__ = ["InstructReport", "build_instruct", "cover_question", "more_question"]
