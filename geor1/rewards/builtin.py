"""Geo-R1's rewards (accuracy, format, length, repetition) done right, and a geodesic reward for coordinates.

Departures from the paper's public code, on purpose: the length reward is conditioned on the actual correctness of
each completion (the public code hard-codes "correct", so it only ever favours short outputs); the accuracy reward
accepts exactly one in-range letter (an empty answer or several letters score 0, a hack the peers' substring check
rewarded); weights are honoured by `combine`.
"""

from __future__ import annotations

import math
from typing import Any

from geor1.answers import answer_text, parse_coordinates, parse_letter, split_tags
from geor1.geo import GEOSCORE_SCALE_KM, haversine_km
from geor1.rewards.registry import register


def _is_correct(text: str, sample: dict[str, Any], correct_km: float) -> bool | None:
    if "answer_letter" in sample and "k" in sample:
        return parse_letter(text, int(sample["k"])) == sample["answer_letter"]
    if "lat" in sample and "lon" in sample:
        ans = answer_text(text)
        coords = parse_coordinates(ans.split("(")[0]) if ans is not None else None
        return coords is not None and float(haversine_km(sample["lat"], sample["lon"], *coords)) <= correct_km
    return None


@register("accuracy")
def accuracy(completions: list[str], samples: list[dict[str, Any]], **_: Any) -> list[float | None]:
    """1 when the one letter answered is the true candidate, else 0; None for samples without a letter answer.

    >>> accuracy(["<think>x</think><answer>B</answer>", "<answer></answer>", "<answer>A or B</answer>"],
    ...          [{"k": 4, "answer_letter": "B"}] * 3)
    [1.0, 0.0, 0.0]
    """
    out: list[float | None] = []
    for text, s in zip(completions, samples):
        if "answer_letter" not in s or "k" not in s:
            out.append(None)
        else:
            out.append(1.0 if parse_letter(text, int(s["k"])) == s["answer_letter"] else 0.0)
    return out


@register("format")
def format_reward(completions: list[str], samples: list[dict[str, Any]], **_: Any) -> list[float]:
    """1 when the whole completion is `<think>...</think>` then `<answer>...</answer>`, else 0.

    >>> format_reward(["<think>a</think>\\n<answer>B</answer>", "<answer>B</answer>"], [{}, {}])
    [1.0, 0.0]
    """
    return [1.0 if split_tags(t) is not None else 0.0 for t in completions]


@register("length")
def length(completions: list[str], samples: list[dict[str, Any]], lengths: list[int] | None = None,
           max_len: int = 1024, min_value_correct: float = 0.5, max_value_correct: float = 1.0,
           min_value_wrong: float = -1.0, max_value_wrong: float = -0.5, correct_km: float = 25.0,
           **_: Any) -> list[float | None]:
    """Cosine length schedule over `max_len` tokens, conditioned on each completion's actual correctness:
    correct answers earn more when short (max_value_correct at 0 tokens -> min_value_correct at max_len), wrong
    answers are penalised less when long (min_value_wrong at 0 -> max_value_wrong at max_len). `lengths` are
    completion token counts (whitespace words when absent). None when correctness cannot be judged.

    >>> [round(x, 3) for x in length(["<answer>B</answer>"] * 2, [{"k": 4, "answer_letter": "B"},
    ...     {"k": 4, "answer_letter": "A"}], lengths=[0, 1024])]
    [1.0, -0.5]
    """
    out: list[float | None] = []
    for i, (text, s) in enumerate(zip(completions, samples)):
        correct = _is_correct(text, s, correct_km)
        if correct is None:
            out.append(None)
            continue
        n = lengths[i] if lengths is not None else len(text.split())
        progress = min(max(n, 0), max_len) / max_len
        hi, lo = (max_value_correct, min_value_correct) if correct else (min_value_wrong, max_value_wrong)
        out.append(lo + 0.5 * (hi - lo) * (1.0 + math.cos(math.pi * progress)))
    return out


MAX_REPETITION_CHARS = 100_000  # a completion is a few thousand tokens; longer (hostile) text is scored on its head


@register("repetition")
def repetition(completions: list[str], samples: list[dict[str, Any]], ngram: int = 6, **_: Any) -> list[float]:
    """-(1 - unique n-grams / total n-grams) over whitespace words (0 for texts shorter than n words); text past
    MAX_REPETITION_CHARS characters is not read, which bounds the time on any input.

    >>> repetition(["a b c d e f g", "x y x y x y x y x y"], [{}, {}], ngram=2)
    [0.0, -0.7777777777777778]
    """
    out = []
    for text in completions:
        words = text[:MAX_REPETITION_CHARS].split()
        grams = [tuple(words[i:i + ngram]) for i in range(len(words) - ngram + 1)]
        out.append(len(set(grams)) / len(grams) - 1.0 if grams else 0.0)
    return out


@register("geodesic")
def geodesic(completions: list[str], samples: list[dict[str, Any]], scale_km: float = GEOSCORE_SCALE_KM,
             **_: Any) -> list[float | None]:
    """exp(-d / 1492.7 km) for the coordinates answered (GeoScore / 5000); 0 when no coordinates can be parsed;
    None for samples that are pairing episodes (the letter, not coordinates, is their answer).

    >>> geodesic(["<answer>48.8566, 2.3522 (Paris, FR)</answer>", "<answer>no idea</answer>"],
    ...          [{"lat": 48.8566, "lon": 2.3522}] * 2)
    [1.0, 0.0]
    """
    out: list[float | None] = []
    for text, s in zip(completions, samples):
        if "answer_letter" in s or "lat" not in s:
            out.append(None)
            continue
        ans = answer_text(text)
        coords = parse_coordinates(ans.split("(")[0]) if ans is not None else None
        out.append(0.0 if coords is None else
                   math.exp(-float(haversine_km(s["lat"], s["lon"], *coords)) / scale_km))
    return out
