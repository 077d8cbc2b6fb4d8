"""Seconds per call of the answer readers on hostile inputs: the strict reader (`geor1.answers`), the free-form reader
(`geor1.reading.read_point`) and every reward, on megabyte texts and on texts at each reader's size limit. The tests
bound these by structure and generous timeouts (never by the clock); this script prints the times.

    python benchmarks/perf_parsers.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

from geor1.answers import MAX_ANSWER_CHARS, parse_coordinates, parse_letter
from geor1.reading import MAX_TEXT_CHARS, read_point
from geor1.rewards import REWARDS
from geor1.tasks import GeoTarget

HOSTILE = {
    "unicode": "ж✓\u202e\U0001f30d",
    "nested tags": "<think></answer>",
    "digits": "9",
    "letters": "A B ",
    "numbers": "1.5, ",
    "degrees": "48°51'24\"N ",
    "open braces": "{",
    "json keys": '{"lat":',
    "labels": "lat: ",
    "comma numbers": "1,",
}


def seconds(fn: Callable[[], object], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    geo = GeoTarget(48.85, 2.35, "Paris", "FR")
    columns = ("input", "strict, 1 MB", "strict at its limit", "read_point, 1 MB", "read_point at its limit")
    print("| " + " | ".join((*columns, "slowest reward, 1 MB")) + " |")
    print("|---|---|---|---|---|---|")
    for name, unit in HOSTILE.items():
        mb = (unit * (1_000_000 // len(unit) + 1))[:1_000_000]
        strict_limit, free_limit = mb[:MAX_ANSWER_CHARS], mb[:MAX_TEXT_CHARS]
        strict = seconds(lambda t=mb: (parse_coordinates(t), parse_letter(t, 26)))
        strict_at = seconds(lambda t=strict_limit: parse_coordinates(t))
        free = seconds(lambda t=mb: read_point(t))
        free_at = seconds(lambda t=free_limit: read_point(t))
        reward = max(seconds(lambda f=fn, t=mb: f([t], [geo], lengths=[len(t)]), 1) for fn in REWARDS.values())
        print(f"| {name} | {strict:.4f} s | {strict_at:.4f} s | {free:.4f} s | {free_at:.4f} s | {reward:.4f} s |")


if __name__ == "__main__":
    main()
