"""The one answer parser: a table of accepted and rejected strings, with the reason for each."""

from __future__ import annotations

import pytest

from geor1.answers import parse_coordinates, parse_letter, parse_place, split_tags

LETTERS = [  # (completion, K, expected, why)
    ("<think>x</think><answer>B</answer>", 4, "B", "plain letter"),
    ("<answer> c </answer>", 4, "C", "lower case, spaces"),
    ("<answer>(D)</answer>", 4, "D", "parenthesised"),
    ("<answer>Candidate A.</answer>", 4, "A", "with the word candidate"),
    ("<answer>The answer is B</answer>", 4, "B", "with a lead-in"),
    ("<answer>E</answer>", 4, None, "out of range for K=4"),
    ("<answer></answer>", 4, None, "empty answer (the reward hack of the peers)"),
    ("<answer>A or B</answer>", 4, None, "two letters"),
    ("<answer>AB</answer>", 4, None, "two letters run together"),
    ("The answer is B", 4, None, "no answer tag"),
    ("<answer>B", 4, None, "unclosed tag"),
    ("<answer>x</answer><answer>C</answer>", 4, "C", "the last answer counts"),
    ("<answer>" + "B" * 100 + "</answer>", 4, None, "too long"),
]


@pytest.mark.parametrize("text, k, expected, why", LETTERS, ids=[row[3] for row in LETTERS])
def test_parse_letter(text, k, expected, why):
    assert parse_letter(text, k) == expected, why


COORDS = [  # (text, expected (lat, lon) or None, why)
    ("48.8566, 2.3522", (48.8566, 2.3522), "decimal pair"),
    ("-33.87 151.21", (-33.87, 151.21), "signed, space-separated"),
    ("48.85° N, 2.35° W", (48.85, -2.35), "degree symbols and hemispheres"),
    ("33.9S 18.4E", (-33.9, 18.4), "hemisphere letters glued on"),
    ("2.35 E, 48.85 N", (48.85, 2.35), "longitude first, told by the letters"),
    ("10.5 south, 20 west", (-10.5, -20.0), "hemisphere words"),
    ("48°51'24\"N 2°21'E", (48.85666666666667, 2.35), "degrees, minutes, seconds"),
    ("\u221212.5, \u221245", (-12.5, -45.0), "unicode minus"),
    ("48.85660, 2.35220 (Paris, FR)", (48.8566, 2.3522), "the geolocation answer format"),
    ("lat 95, lon 3", None, "latitude out of range"),
    ("12, 200", None, "longitude out of range"),
    ("-12 S, 5 E", None, "negative and south contradict"),
    ("5 E, 6 W", None, "two longitudes"),
    ("only 5", None, "one number"),
    ("near Paris", None, "no numbers"),
]


@pytest.mark.parametrize("text, expected, why", COORDS, ids=[row[2] for row in COORDS])
def test_parse_coordinates(text, expected, why):
    got = parse_coordinates(text)
    if expected is None:
        assert got is None, why
    else:
        assert got == pytest.approx(expected), why


def test_split_tags_and_place():
    assert split_tags("<think>a</think>\n<answer>B</answer>") == ("a", "B")
    assert split_tags("<think>a</think><answer>B</answer><answer>C</answer>") is None
    assert split_tags("<think><think>a</think><answer>B</answer>") is None
    assert split_tags("prefix <think>a</think><answer>B</answer>") is None
    assert parse_place("1.0, 2.0 (São Paulo, BR)") == ("São Paulo", "BR")
    assert parse_place("1.0, 2.0") == (None, None)
