"""The one answer parser: a table of accepted and rejected strings, with the reason for each."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


COORDS = [  # (answer as a VLM writes it, expected (lat, lon) within 0.01 degrees or None for "unparseable", why)
    # decimal, signed
    ("48.8566, 2.3522", (48.8566, 2.3522), "decimal pair"),
    ("-33.87 151.21", (-33.87, 151.21), "signed, space-separated"),
    ("48.85660, 2.35220 (Paris, FR)", (48.8566, 2.3522), "the geolocation answer format"),
    ("(51.5074, -0.1278)", (51.5074, -0.1278), "parenthesised pair (split('(') used to throw it away)"),
    ("[-33.86, 151.21]", (-33.86, 151.21), "bracketed pair"),
    ("-33.86 / 151.21", (-33.86, 151.21), "slash separator"),
    ("35.68;139.65", (35.68, 139.65), "semicolon separator"),
    ("48.86,\n2.35", (48.86, 2.35), "newline between the numbers"),
    ("\n  40.7128, -74.0060 (New York, US)\n", (40.7128, -74.006), "surrounding newlines"),
    ("\u221212.5, \u221245", (-12.5, -45.0), "unicode minus"),
    ("\u221233.9249, 18.4241 (Cape Town, ZA)", (-33.9249, 18.4241), "unicode minus with a place"),
    ("approximately 48.86, 2.35", (48.86, 2.35), "a lead-in word"),
    ("The coordinates are approximately 48.86° N, 2.35° E.", (48.86, 2.35), "a sentence"),
    ("48.85, 2.35 (Paris, FR).", (48.85, 2.35), "a full stop after the place"),
    ("18.96889, -98.16028 (18 de Marzo, MX)", (18.96889, -98.16028), "a place name with a digit (GeoNames)"),
    ("22.9 S, 43.2 O", None, "O: Oeste (west) or Ost (east)? another language's hemisphere letter"),
    ("22.9° S, 43.2° O", None, "the same after degree marks"),
    ("-33.9, 18.4 (North Bay, CA)", (-33.9, 18.4), "a hemisphere word inside the place is no hemisphere"),
    ("-33.9, 18.4, Cape Town, South Africa", (-33.9, 18.4), "a place name with a hemisphere word, after a comma"),
    # hemisphere letters and words, after and before
    ("48.85° N, 2.35° W", (48.85, -2.35), "degree symbols and hemispheres"),
    ("33.9S 18.4E", (-33.9, 18.4), "hemisphere letters glued on"),
    ("2.35 E, 48.85 N", (48.85, 2.35), "longitude first, told by the letters"),
    ("10.5 south, 20 west", (-10.5, -20.0), "hemisphere words, lower case"),
    ("33.86 South, 151.21 East", (-33.86, 151.21), "hemisphere words, capitalised"),
    ("S33.86, E151.21", (-33.86, 151.21), "hemisphere letters before the numbers (were ignored)"),
    ("N 48.85 E 2.35", (48.85, 2.35), "hemisphere letters before, space-separated (was unread)"),
    ("South 33.86, West 70.66", (-33.86, -70.66), "hemisphere words before"),
    ("N: 48.85, W: 2.35", (48.85, -2.35), "hemisphere letters as labels"),
    ("40.7128 N 74.0060 W", (40.7128, -74.006), "a letter between the numbers goes with the text's style"),
    ("48.8566N2.3522E", (48.8566, 2.3522), "no spaces at all"),
    ("0.5 S, 10 W", (-0.5, -10.0), "small southern and western values"),
    # degrees, minutes, seconds
    ("48°51'24\"N 2°21'E", (48.856667, 2.35), "degrees, minutes, seconds"),
    ("40°42′46″N 74°0′22″W", (40.712778, -74.006111), "unicode primes"),
    ("33° 52’ 7.68” S, 151° 12’ 30” E", (-33.8688, 151.208333), "typographic quotes"),
    ("33°52'S 151°12'E", (-33.866667, 151.2), "degrees and minutes (40°42'N style)"),
    ("40º42'N 74˚0'W", (40.7, -74.0), "degree sign variants º and ˚"),
    ("40 deg 42 min N, 74 deg 0 min W", (40.7, -74.0), "deg/min words (were read as (40, 42))"),
    (
        "40 degrees 42 minutes 46 seconds north, 74 degrees 0 minutes 22 seconds west",
        (40.712778, -74.006111),
        "degrees/minutes/seconds spelled out",
    ),
    ("40d 42m 30s N, 74d 0m 0s W", (40.708333, -74.0), "d m s letters"),
    ("48°51'24''N, 2°21'0''E", (48.856667, 2.35), "two apostrophes for seconds"),
    ("40°42'46\"N 74°0'22\"W (40.7128, -74.0060)", (40.712778, -74.006111), "the same pair written twice"),
    ("S 33° 52′, E 151° 12′", (-33.866667, 151.2), "hemisphere before a degrees-minutes value"),
    # labels
    ("lat 48.85, lon 2.35", (48.85, 2.35), "short labels"),
    ("lon 151.21, lat -33.86", (-33.86, 151.21), "labels, longitude first (were ignored)"),
    ("Latitude: 40.7128° N, Longitude: 74.0060° W (New York, US)", (40.7128, -74.006), "labels, hemispheres, place"),
    ("Longitude = 139.65; Latitude = 35.68", (35.68, 139.65), "labels with = in reverse order"),
    ("lat=35.68,lng=139.65", (35.68, 139.65), "lng, no spaces"),
    ("Lat. 40.7, Long. -74.0", (40.7, -74.0), "abbreviated labels with full stops"),
    ("Latitude is approximately 40.7 and longitude is about -74.0", (40.7, -74.0), "labels in prose"),
    ('{"lat": 48.85, "lon": 2.35}', (48.85, 2.35), "JSON"),
    ("lat/lon: 48.85, 2.35", (48.85, 2.35), "a label header"),
    ("(lng, lat) = (2.35, 48.85)", (48.85, 2.35), "a header in longitude-first order"),
    ("Latitude and longitude: -33.86, 151.21", (-33.86, 151.21), "a header in words"),
    ("48.8566° N latitude, 2.3522° E longitude", (48.8566, 2.3522), "labels after the values"),
    ("Latitude: S 33.86, Longitude: E 151.21", (-33.86, 151.21), "label, then hemisphere before the number"),
    # unparseable: ambiguous, stray numbers, contradictions, out of range, nothing to read
    ("Tile 3: 40.71, -74.00", None, "a stray number before the pair (was read as (3, 40.71))"),
    ("The answer is 2: 48.85, 2.35", None, "a stray number in a lead-in"),
    ("1. 48.85, 2.35", None, "a list enumeration"),
    ("48.85, 2.35, 100", None, "three numbers"),
    ("48.85, 2.35 or 48.9, 2.4", None, "two distinct pairs"),
    ("40.7128, -74.0060 (40.9, -73.5)", None, "a second, different pair in parentheses"),
    ("48.85, 2.35 (Paris, 75001)", None, "a number in the place part"),
    ("48,85 2,35", None, "decimal commas"),
    ("lat 95, lon 3", None, "latitude out of range"),
    ("12, 200", None, "longitude out of range"),
    ("151.21, -33.86", None, "longitude first without a label is out of range, never swapped"),
    ("-12 S, 5 E", None, "negative and south contradict"),
    ("-33 S, 151 E", None, "negative and south contradict again"),
    ("5 E, 6 W", None, "two longitudes"),
    ("40.7 N, 74.0 N", None, "two latitudes by hemisphere"),
    ("lat 48.85, lat 2.35", None, "two latitudes by label"),
    ("lat 40 E, lon 3", None, "a label contradicting the hemisphere"),
    ("N 40 N 74", None, "two northings"),
    ("40 N 74", None, "a letter between two numbers, no other clue"),
    ("48°75' N, 2° E", None, "75 minutes"),
    ("48.85-2.35", None, "a hyphen between numbers: minus or dash?"),
    ("\u201333.86, 151.21", None, "an en dash before a number: minus or range?"),
    ("- 33.86, 151.21", None, "a sign apart from its number"),
    ("-33.9, 18.4 South Africa", None, "a hemisphere word both after a number and starting a name"),
    ("New York, U.S.: 40.7, -74.0", None, "a hemisphere letter touching no number"),
    ("a long way from 48.85, 2.35", None, "a label word naming nothing"),
    ("somewhere in northern France", None, "prose with no coordinates"),
    ("only 5", None, "one number"),
    ("48.85", None, "a lone latitude"),
    ("near Paris", None, "no numbers"),
    ("", None, "empty"),
    ("48.85, 2.35 " + " " * 600, None, "longer than MAX_ANSWER_CHARS"),
]


@pytest.mark.parametrize("text, expected, why", COORDS, ids=[row[2] for row in COORDS])
def test_parse_coordinates(text, expected, why):
    got = parse_coordinates(text)
    if expected is None:
        assert got is None, why
    else:
        assert got is not None, why
        assert got == pytest.approx(expected, abs=0.01), why


def test_the_table_is_large_and_covers_both_outcomes():
    assert len(COORDS) >= 40
    assert sum(row[1] is None for row in COORDS) >= 20 and sum(row[1] is not None for row in COORDS) >= 20


def _dms(value: float, pos: str, neg: str) -> str:
    d, rest = divmod(round(abs(value) * 3600), 3600)
    m, s = divmod(rest, 60)
    return f"{d}°{m}′{s}″{pos if value >= 0 else neg}"


FORMATS = {  # how a VLM might write (lat, lon); each must read back to the same point
    "signed": lambda la, lo: f"{la:.4f}, {lo:.4f}",
    "place": lambda la, lo: f"{la:.5f}, {lo:.5f} (Somewhere, XX)",
    "parens": lambda la, lo: f"({la:.4f}, {lo:.4f})",
    "suffix": lambda la, lo: f"{abs(la):.4f}° {'N' if la >= 0 else 'S'}, {abs(lo):.4f}° {'E' if lo >= 0 else 'W'}",
    "prefix": lambda la, lo: f"{'N' if la >= 0 else 'S'}{abs(la):.4f} {'E' if lo >= 0 else 'W'}{abs(lo):.4f}",
    "labels reversed": lambda la, lo: f"Longitude: {lo:.4f}, Latitude: {la:.4f}",
    "dms": lambda la, lo: f"{_dms(la, 'N', 'S')} {_dms(lo, 'E', 'W')}",
    "unicode minus": lambda la, lo: f"{la:.4f} {lo:.4f}".replace("-", "\u2212"),
}


@settings(max_examples=200, deadline=None)
@given(st.floats(-90, 90), st.floats(-180, 180), st.sampled_from(sorted(FORMATS)))
def test_every_format_reads_back_the_point(lat, lon, fmt):
    text = FORMATS[fmt](lat, lon)
    assert parse_coordinates(text) == pytest.approx((lat, lon), abs=0.001), text
    assert parse_coordinates("Tile 3: " + text) is None, "a stray number makes any answer unparseable"


def test_split_tags_and_place():
    assert split_tags("<think>a</think>\n<answer>B</answer>") == ("a", "B")
    assert split_tags("<think>a</think><answer>B</answer><answer>C</answer>") is None
    assert split_tags("<think><think>a</think><answer>B</answer>") is None
    assert split_tags("prefix <think>a</think><answer>B</answer>") is None
    assert parse_place("1.0, 2.0 (São Paulo, BR)") == ("São Paulo", "BR")
    assert parse_place("1.0, 2.0") == (None, None)
    assert parse_place("(51.5074, -0.1278)") == (None, None)  # coordinates, not a place
    assert parse_place("1.0, 2.0 (Paris, FR).") == ("Paris", "FR")
