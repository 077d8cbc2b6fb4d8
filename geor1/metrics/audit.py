"""Shortcut audits of multiple-choice (pairing) answers, and the paired comparison of two evaluations of the same
episodes (original and shuffled candidate order).

A model can score above chance by preferring a position ("always A") when the true tile is not evenly spread over
positions, and a model that ignores the images answers one letter whatever the episode. `letter_audit` shows both:
the accuracy per position of the true tile and the distribution of the letters answered. `paired_difference`
compares two 0/1 vectors over the same episodes with an interval that accounts for the pairing.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from typing import Any

from geor1.metrics.intervals import wilson_interval

UNPARSEABLE = "unparseable"


def letter_audit(truths: Sequence[str], answers: Sequence[str | None]) -> dict[str, Any]:
    """Per-position accuracy and answered-letter distribution of multiple-choice episodes.

    Args:
        truths: the true candidate's letter of each episode ("A", "B", ...).
        answers: the letter answered in each episode; None (or "") when no candidate letter could be read.

    Returns:
        `position_acc`: {letter of the true tile: {"n", "correct", "acc", "ci95_low", "ci95_high"}} (Wilson 95%),
        for every letter that is true in some episode; `answer_letters`: {letter: {"count", "share"}} for every
        letter true or answered somewhere, and "unparseable" (shares over all episodes, so they add up to 1);
        `max_letter`: the letter answered most (ties: the first in the alphabet; "" when nothing was read) and
        `max_letter_share`: its share among the episodes with a readable letter (0 when none): a model that always
        answers one letter has 1.0 whatever its parse rate.

    >>> a = letter_audit(["A", "B", "A", "B"], ["A", "A", "A", None])
    >>> a["position_acc"]["A"]["acc"], a["position_acc"]["B"]["acc"], a["max_letter"], a["max_letter_share"]
    (1.0, 0.0, 'A', 1.0)
    """
    if len(truths) != len(answers):
        raise ValueError(f"letter_audit: {len(truths)} truths but {len(answers)} answers")
    answers = [a or None for a in answers]
    letters = sorted(set(truths) | {a for a in answers if a is not None}, key=_letter_order)
    position_acc: dict[str, dict[str, Any]] = {}
    for letter in sorted(set(truths), key=_letter_order):
        n = sum(t == letter for t in truths)
        correct = sum(t == letter and a == letter for t, a in zip(truths, answers, strict=True))
        lo, hi = wilson_interval(correct, n)
        position_acc[letter] = {"n": n, "correct": correct, "acc": correct / n, "ci95_low": lo, "ci95_high": hi}
    total = len(answers)
    answer_letters: dict[str, dict[str, Any]] = {}
    for letter in [*letters, UNPARSEABLE]:
        count = sum((a is None) if letter == UNPARSEABLE else (a == letter) for a in answers)
        answer_letters[letter] = {"count": count, "share": count / total if total else 0.0}
    parsed = total - answer_letters[UNPARSEABLE]["count"]
    counted = [(answer_letters[x]["count"], x) for x in letters if answer_letters[x]["count"] > 0]
    top = max(counted, key=lambda cx: (cx[0], -_letter_order(cx[1])), default=(0, ""))
    return {
        "position_acc": position_acc,
        "answer_letters": answer_letters,
        "max_letter": top[1],
        "max_letter_share": top[0] / parsed if parsed else 0.0,
    }


def _letter_order(letter: str) -> int:
    return string.ascii_uppercase.index(letter) if letter in string.ascii_uppercase else len(string.ascii_uppercase)


def paired_difference(first: Sequence[int], second: Sequence[int], z: float = 1.959964) -> dict[str, float]:
    """The difference of two accuracies measured on the same items, `second - first`, with Newcombe's hybrid score
    interval for paired proportions (Newcombe 1998, "Improved confidence intervals for the difference between
    binomial proportions based on paired data", method 10, without continuity correction): the two Wilson intervals
    combined with the correlation of the pairs, so agreeing evaluations give a narrower interval than independent
    samples of the same size would.

    Args:
        first, second: 0/1 outcomes per item, in the same item order.

    Returns:
        {"diff", "ci95_low", "ci95_high", "discordant"} (`discordant`: items right in one and wrong in the other).

    >>> d = paired_difference([1, 1, 0, 0, 1], [1, 1, 0, 0, 1])
    >>> d["diff"], d["ci95_low"] < 0 < d["ci95_high"], d["discordant"]
    (0.0, True, 0)
    """
    if len(first) != len(second):
        raise ValueError(f"paired_difference: {len(first)} outcomes against {len(second)}")
    if any(x not in (0, 1) for x in (*first, *second)):
        raise ValueError("paired_difference: outcomes must be 0 or 1")
    n = len(first)
    if n == 0:
        return {"diff": 0.0, "ci95_low": -1.0, "ci95_high": 1.0, "discordant": 0}
    both = sum(f and s for f, s in zip(first, second, strict=True))  # a: right in both
    only_first = sum(f and not s for f, s in zip(first, second, strict=True))  # b
    only_second = sum(s and not f for f, s in zip(first, second, strict=True))  # c
    neither = n - both - only_first - only_second  # d
    p1, p2 = (both + only_first) / n, (both + only_second) / n
    l1, u1 = wilson_interval(both + only_first, n, z)
    l2, u2 = wilson_interval(both + only_second, n, z)
    denom = (both + only_first) * (only_second + neither) * (both + only_second) * (only_first + neither)
    phi = (both * neither - only_first * only_second) / math.sqrt(denom) if denom > 0 else 0.0
    diff = p2 - p1
    # interval of p2 - p1: lower end from p2's lower and p1's upper margins, upper end from the other two
    lower = math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    upper = math.sqrt(max(0.0, (u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2))
    return {
        "diff": diff,
        "ci95_low": max(-1.0, diff - lower),
        "ci95_high": min(1.0, diff + upper),
        "discordant": only_first + only_second,
    }


__all__ = ["UNPARSEABLE", "letter_audit", "paired_difference"]
