"""Geo-R1's rewards (accuracy, format, length, repetition) done right, and a geodesic reward for coordinates.

Every reward reads answers through the sample's task (`geor1.tasks`): the target's type names the task, nothing
guesses it from keys. Departures from the paper's public code, on purpose: the length reward is conditioned on the
actual correctness of each completion (the public code hard-codes "correct", so it only ever favours short
outputs); the accuracy reward accepts exactly one in-range letter (an empty answer or several letters score 0, a
hack the peers' substring check rewarded); weights are honoured by `combine`.
"""

from __future__ import annotations

import math
from typing import Any

from geor1.geo import GEOSCORE_SCALE_KM
from geor1.rewards.registry import register
from geor1.tasks import GeolocationTask, PairingTask, Target, is_well_formed, task_of
from geor1.tasks.geolocation import CORRECT_KM


def _answer_reward(
    completions: list[str], targets: list[Target | None], task: str, **settings: Any
) -> list[float | None]:
    """The task's own answer reward for the targets of task `task`; None for the others."""
    return [
        task_of(t, **settings).reward(text, t) if t is not None and t.task == task else None
        for text, t in zip(completions, targets, strict=True)
    ]


@register("accuracy")
def accuracy(completions: list[str], targets: list[Target | None], **_: Any) -> list[float | None]:
    """Pairing: 1 when the one letter answered is the true candidate, else 0; None for other samples (a
    geolocation answer's reward is `geodesic`, graded by distance).

    >>> from geor1.tasks import PairingTarget
    >>> accuracy(["<think>x</think><answer>B</answer>", "<answer></answer>", "<answer>A or B</answer>"],
    ...          [PairingTarget(k=4, answer=1)] * 3)
    [1.0, 0.0, 0.0]
    """
    return _answer_reward(completions, targets, PairingTask.name)


@register("format")
def format_reward(completions: list[str], targets: list[Target | None], **_: Any) -> list[float]:
    """1 when the whole completion is `<think>...</think>` then `<answer>...</answer>`, else 0 (any task).

    >>> format_reward(["<think>a</think>\\n<answer>B</answer>", "<answer>B</answer>"], [None, None])
    [1.0, 0.0]
    """
    return [1.0 if is_well_formed(t) else 0.0 for t in completions]


@register("length")
def length(
    completions: list[str],
    targets: list[Target | None],
    lengths: list[int] | None = None,
    max_len: int = 1024,
    min_value_correct: float = 0.5,
    max_value_correct: float = 1.0,
    min_value_wrong: float = -1.0,
    max_value_wrong: float = -0.5,
    correct_km: float = CORRECT_KM,
    **_: Any,
) -> list[float | None]:
    """Cosine length schedule over `max_len` tokens, conditioned on each completion's actual correctness (by its
    task: pairing, the right letter; geolocation, within `correct_km`): correct answers earn more when short
    (max_value_correct at 0 tokens -> min_value_correct at max_len), wrong answers are penalised less when long
    (min_value_wrong at 0 -> max_value_wrong at max_len). `lengths` are completion token counts (whitespace words
    when absent). None for samples without a target.

    >>> from geor1.tasks import PairingTarget
    >>> [round(x, 3) for x in length(["<answer>B</answer>"] * 2, [PairingTarget(4, 1), PairingTarget(4, 0)],
    ...                              lengths=[0, 1024])]
    [1.0, -0.5]
    """
    out: list[float | None] = []
    for i, (text, t) in enumerate(zip(completions, targets, strict=True)):
        if t is None:
            out.append(None)
            continue
        correct = task_of(t, correct_km=correct_km).is_correct(text, t)
        n = lengths[i] if lengths is not None else len(text.split())
        progress = min(max(n, 0), max_len) / max_len
        hi, lo = (max_value_correct, min_value_correct) if correct else (min_value_wrong, max_value_wrong)
        out.append(lo + 0.5 * (hi - lo) * (1.0 + math.cos(math.pi * progress)))
    return out


MAX_REPETITION_CHARS = 100_000  # a completion is a few thousand tokens; longer (hostile) text is scored on its head


@register("repetition")
def repetition(completions: list[str], targets: list[Target | None], ngram: int = 6, **_: Any) -> list[float]:
    """-(1 - unique n-grams / total n-grams) over whitespace words (0 for texts shorter than n words); text past
    MAX_REPETITION_CHARS characters is not read, which bounds the time on any input.

    >>> repetition(["a b c d e f g", "x y x y x y x y x y"], [None, None], ngram=2)
    [0.0, -0.7777777777777778]
    """
    out = []
    for text in completions:
        words = text[:MAX_REPETITION_CHARS].split()
        grams = [tuple(words[i : i + ngram]) for i in range(len(words) - ngram + 1)]
        out.append(len(set(grams)) / len(grams) - 1.0 if grams else 0.0)
    return out


@register("geodesic")
def geodesic(
    completions: list[str], targets: list[Target | None], scale_km: float = GEOSCORE_SCALE_KM, **_: Any
) -> list[float | None]:
    """Geolocation: exp(-d / 1492.7 km) for the point answered (GeoScore / 5000); 0 when no point can be read;
    None for other samples (a pairing episode's answer is its letter).

    >>> from geor1.tasks import GeoTarget
    >>> geodesic(["<answer>48.8566, 2.3522 (Paris, FR)</answer>", "<answer>no idea</answer>"],
    ...          [GeoTarget(48.8566, 2.3522)] * 2)
    [1.0, 0.0]
    """
    return _answer_reward(completions, targets, GeolocationTask.name, scale_km=scale_km)
