"""Hostile model output: the answer parser, the fact-check and every reward on arbitrary text never raise, always
return a finite value or "unparseable", and stay fast on megabyte inputs (no catastrophic backtracking: a timeout far
above the measured time, never a wall-clock assertion)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geor1.answers import MAX_ANSWER_CHARS, answer_text, parse_coordinates, parse_letter, parse_place, split_tags
from geor1.cot.factcheck import fact_check
from geor1.rewards import REWARDS
from geor1.tasks import GeoTarget, PairingTarget

PAIR = PairingTarget(k=4, answer=1)
GEO = GeoTarget(48.85, 2.35, "Paris", "FR")
TAGS = st.sampled_from(
    [
        "<think>",
        "</think>",
        "<answer>",
        "</answer>",
        "B",
        "48.85, 2.35",
        "°N",
        "(Paris, FR)",
        " ",
        "\n",
        "A or B",
        "−",
        "''",
    ]
)
HOSTILE = st.one_of(st.text(max_size=400), st.lists(TAGS, max_size=60).map("".join))


def _check_all(text: str) -> None:
    split_tags(text)
    answer_text(text)
    assert parse_letter(text, 4) in (None, "A", "B", "C", "D")
    coords = parse_coordinates(text)
    assert coords is None or (abs(coords[0]) <= 90 and abs(coords[1]) <= 180)
    parse_place(text)
    fact_check(text, PAIR)
    fact_check(text, GEO)
    for name, fn in REWARDS.items():
        for sample in (PAIR, GEO):
            (value,) = fn([text], [sample], lengths=[len(text)])
            assert value is None or math.isfinite(value), (name, text[:80])


@settings(max_examples=300, deadline=None)
@given(HOSTILE)
def test_arbitrary_text_never_breaks_the_parser_or_rewards(text):
    _check_all(text)


# Time is bounded without reading a clock (a clock-based bound fails on a busy machine): each of these tests has a
# timeout about 1,000 times what it takes (`benchmarks/perf_parsers.py` prints the times), which a catastrophic
# (super-linear) case on a megabyte exceeds by far, and which machine load does not reach.
@pytest.mark.timeout(120)
def test_megabyte_inputs_are_fast():
    cases = {
        "unicode": "ж✓\u202e\U0001f30d" * 250_000,
        "nested tags": "<think>" * 100_000 + "</answer>" * 50_000,
        "unclosed": "<answer>" + "9" * 1_000_000,
        "many letters": "<answer>" + "A B " * 250_000 + "</answer>",
        "many numbers": "1.5, " * 200_000,
        "degrees": "48°51'24\"N " * 90_000,
    }
    for text in cases.values():
        calls = [
            lambda t=text: parse_letter(t, 26),
            lambda t=text: parse_coordinates(t),
            lambda t=text: split_tags(t),
            lambda t=text: parse_place(t),
            lambda t=text: answer_text(t),
        ]
        for call in calls:
            call()
        for fn in REWARDS.values():  # every reward, on the whole megabyte
            for sample in (PAIR, GEO):
                fn([text], [sample], lengths=[len(text)])
        _check_all(text[:20_000])


@pytest.mark.timeout(60)
def test_coordinate_parser_is_fast_on_the_longest_answers_it_reads():
    # answers over MAX_ANSWER_CHARS are refused at once, so the worst case is a hostile answer just under the limit
    units = [
        "N 1 ",
        "1°1'1\" ",
        "lat lon ",
        "- ",
        "(",
        "((1, 2) ",
        "1.",
        "S-1 ",
        "\u2212" * 3 + "1",
        "North ",
        " " * 7 + "9",
        "lat/lon: ",
        "1 deg 2 min 3 s ",
        "'\"",
        "(a, b) ",
    ]
    for unit in units:
        text = (unit * (MAX_ANSWER_CHARS // len(unit) + 1))[:MAX_ANSWER_CHARS]
        for t in (text, text + "48.85, 2.35", "48.85, 2.35 " + text, text[:-12] + " (Paris, FR)"):
            coords = parse_coordinates(t[:MAX_ANSWER_CHARS])
            parse_place(t[:MAX_ANSWER_CHARS])
            assert coords is None or (abs(coords[0]) <= 90 and abs(coords[1]) <= 180)
