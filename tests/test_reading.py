"""`geor1.reading.read_point`: free-form answers of many model families read right or not at all.

tests/data/free_answers.jsonl holds answers in the styles of API models (JSON), LLaVA, Qwen-VL, InternVL, markdown
reports, truncated outputs, refusals and the numbers that are not coordinates; each row's point (or reason) is what
a careful person reads.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geor1 import reading
from geor1.reading import HOWS, MAX_TEXT_CHARS, REASONS, Reading, read_point
from geor1.tasks import GeolocationTask

TABLE = Path(__file__).parent / "data" / "free_answers.jsonl"


def _rows() -> list[dict[str, Any]]:
    with open(TABLE, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


ROWS = _rows()


def _valid(r: Reading) -> None:
    assert isinstance(r, Reading)
    if r.point is None:
        assert r.lat is None and r.lon is None and r.how is None
        assert r.reason in REASONS
    else:
        assert r.reason is None and r.how in HOWS
        assert abs(r.lat) <= 90 and abs(r.lon) <= 180  # type: ignore[arg-type]


def test_table_is_large_and_varied():
    assert len(ROWS) >= 220
    with_point = sum(r["lat"] is not None for r in ROWS)
    assert 0.3 * len(ROWS) < with_point < 0.8 * len(ROWS)
    assert {r["how"] for r in ROWS} - {None} == set(HOWS)
    assert {r["reason"] for r in ROWS} - {None} <= set(REASONS)
    assert len({r["family"] for r in ROWS}) >= 6
    assert max(len(r["text"]) for r in ROWS) > 2000  # several kilobytes of reasoning


@pytest.mark.parametrize("row", ROWS, ids=[f"{i}-{r['family']}-{r['style']}" for i, r in enumerate(ROWS, 1)])
def test_table_row(row):
    got = read_point(row["text"])
    _valid(got)
    if row["lat"] is None:
        assert got.point is None, (got, row["text"][:200])
    else:
        assert got.point == pytest.approx((row["lat"], row["lon"]), abs=1e-4), row["text"][:200]
    assert (got.how, got.reason) == (row["how"], row["reason"]), row["text"][:200]


def test_places_are_kept():
    r = read_point('{"lat": -1.2921, "lon": 36.8219, "city": "Nairobi", "country": "KE"}')
    assert (r.city, r.country) == ("Nairobi", "KE")
    r = read_point("<think>..</think><answer>48.85660, 2.35220 (Paris, FR)</answer>")
    assert (r.city, r.country, r.how) == ("Paris", "FR", "tags")
    r = read_point("Reasoning ...\nFinal answer: 34.0522, -118.2437 (Los Angeles, US)")
    assert (r.city, r.country, r.how) == ("Los Angeles", "US", "line")


def test_the_strict_reader_is_unchanged_and_agrees_on_the_trained_format():
    from geor1.answers import parse_coordinates

    for text in ("48.85660, 2.35220 (Paris, FR)", "S33.86, E151.21", "lon 151.21, lat -33.86"):
        r = read_point(f"<think>x</think><answer>{text}</answer>")
        assert r.how == "tags" and r.point == parse_coordinates(text)


def test_the_task_reads_with_it():
    task = GeolocationTask()
    assert task.read('{"lat": 48.85, "lon": 2.35}') == read_point('{"lat": 48.85, "lon": 2.35}')
    assert task.read("no idea").reason == "no_point"


def test_non_text_and_limits():
    assert read_point(None).reason == "empty"  # type: ignore[arg-type]
    assert read_point("x" * (MAX_TEXT_CHARS + 1)).reason == "too_long"
    assert read_point("Coordinates: 48.85, 2.35" + " " * (MAX_TEXT_CHARS - 30)).point == (48.85, 2.35)


def test_a_later_answer_tag_replaces_an_earlier_one():
    assert read_point("<answer>1.5, 2.5</answer> no wait <answer>48.85, 2.35</answer>").point == (48.85, 2.35)


# ------------------------------------------------------------------ properties

FORMS = [
    "Coordinates: {lat:.4f}, {lon:.4f}",
    '{{"lat": {lat:.4f}, "lon": {lon:.4f}}}',
    '```json\n{{"latitude": "{lat:.4f}", "longitude": "{lon:.4f}"}}\n```',
    "Latitude: {lat:.4f}\nLongitude: {lon:.4f}",
    "- **Latitude:** {alat:.4f}° {ns}\n- **Longitude:** {alon:.4f}° {ew}",
    "Final answer: {alat:.4f}° {ns}, {alon:.4f}° {ew}",
    "The photo was taken at approximately ({lat:.4f}, {lon:.4f}).",
    "The latitude is {lat:.4f} and the longitude is {lon:.4f}.",
    "**Answer:** {alat:.4f} {ns}, {alon:.4f} {ew}",
]
NEUTRAL = [
    "The sky is overcast and the streets are wet.",
    "I am fairly sure about this one.",
    "Vegetation: deciduous trees, trimmed hedges.",
    "Cars drive on the right side of the road.",
    "Let me know if you want more detail!",
    "**Note:** the image is slightly blurred.",
    "Overall the clues are consistent.",
]


def _form(form: str, lat: float, lon: float) -> str:
    return form.format(
        lat=lat, lon=lon, alat=abs(lat), alon=abs(lon), ns="N" if lat >= 0 else "S", ew="E" if lon >= 0 else "W"
    )


LATS = st.floats(-89.9, 89.9).map(lambda x: round(x, 4))
LONS = st.floats(-179.9, 179.9).map(lambda x: round(x, 4))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    st.sampled_from(FORMS), LATS, LONS, st.sampled_from(NEUTRAL), st.booleans(), st.sampled_from([" ", "\n", "\n\n"])
)
def test_an_unrelated_sentence_does_not_change_the_point(form, lat, lon, sentence, before, sep):
    text = _form(form, lat, lon)
    first = read_point(text)
    assert first.point == pytest.approx((lat, lon), abs=1e-4), text
    other = sentence + sep + text if before else text + sep + sentence
    assert read_point(other).point == first.point, other


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.sampled_from(FORMS), LATS, LONS, LATS, LONS, st.sampled_from(["\n", "\n\n", "\nOr maybe:\n"]))
def test_a_second_different_point_in_the_same_form_disagrees(form, lat, lon, lat2, lon2, sep):
    if abs(lat - lat2) <= 0.02 and abs(lon - lon2) <= 0.02:
        lat2 = lat + 1.0 if lat < 0 else lat - 1.0
    text = _form(form, lat, lon)
    assert read_point(text).point == pytest.approx((lat, lon), abs=1e-4)
    got = read_point(text + sep + _form(form, lat2, lon2))
    assert (got.point, got.reason) == (None, "disagree"), text


FRAGMENTS = [
    "48.85", "-2.35", "2.", "1,45", "3,000", "90", "180.5", "°", "° N", "N", "S", "E", "W", "'", '"', "′", "″", ",",
    ";", ":", "-", "–", " to ", " and ", " between ", "lat", "Latitude:", "lon", "**Longitude**:", "long", "km",
    " miles", "%", "{", "}", "[", "]", "(", ")", '"lat": ', '"lon": ', "```json", "```", "<answer>", "</answer>",
    "<think>", "</think>", "Final answer:", "Coordinates:", "## Answer", "\n", " ", "U.S.", "Paris's", "confidence",
    "1998", "221B", "null", "NaN", "e.g.", "|", "- ", "≈", "(Paris, FR)", "1.2.3", "10:30", "3/4",
]  # fmt: skip


@settings(max_examples=1500, deadline=None, derandomize=True)
@given(st.one_of(st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join), st.text(max_size=300)))
def test_fuzz_never_raises_and_is_well_formed(text):
    _valid(read_point(text))


def test_seeded_random_documents_are_well_formed():
    rng = random.Random(1234)
    for _ in range(300):
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randrange(1, 400)))
        _valid(read_point(text))


ADVERSARIAL = {
    "open braces": "{" * MAX_TEXT_CHARS,
    "close braces": "}" * MAX_TEXT_CHARS,
    "nested json": ('{"a":' * (MAX_TEXT_CHARS // 5))[:MAX_TEXT_CHARS],
    "nested lat": ('{"lat": 1, "b": ' * 4000)[:MAX_TEXT_CHARS],
    "comma numbers": ("1," * MAX_TEXT_CHARS)[:MAX_TEXT_CHARS],
    "labels": ("lat: " * MAX_TEXT_CHARS)[:MAX_TEXT_CHARS],
    "label gaps": (("latitude " + "x " * 30 + "is ") * 1000)[:MAX_TEXT_CHARS],
    "numbers": ("1 " * MAX_TEXT_CHARS)[:MAX_TEXT_CHARS],
    "degrees": ("1° " * MAX_TEXT_CHARS)[:MAX_TEXT_CHARS],
    "hemispheres": ("N 1 " * MAX_TEXT_CHARS)[:MAX_TEXT_CHARS],
    "quotes": ('{"' * MAX_TEXT_CHARS)[:MAX_TEXT_CHARS],
    "digits": "1" * MAX_TEXT_CHARS,
    "dashes": ("1-" * MAX_TEXT_CHARS)[:MAX_TEXT_CHARS],
    "markers": ("Final answer:\n" * MAX_TEXT_CHARS)[:MAX_TEXT_CHARS],
    "ranges": ("between 1 and " * MAX_TEXT_CHARS)[:MAX_TEXT_CHARS],
    "objects": '{"lat": 48.85, "lon": 2.35} ' * 1700,
    "words": ("a " * MAX_TEXT_CHARS)[:MAX_TEXT_CHARS],
    "list numbers": ("1. " * MAX_TEXT_CHARS)[:MAX_TEXT_CHARS],
    "double labels": ("lat/lon " * MAX_TEXT_CHARS)[:MAX_TEXT_CHARS],
    "many lat keys": ("{" + ", ".join(f'"lat_{i}": 1, "lon_{i}": 2' for i in range(1500)) + "}"),
    "answer tags": ("<answer>" * MAX_TEXT_CHARS)[:MAX_TEXT_CHARS],
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_inputs_do_bounded_work(name, monkeypatch):
    """Linear work, asserted structurally: the characters handed to json.loads and to the strict reader stay within
    a few times the text's length (no retry from every brace, no rescans). Wall time is not asserted
    (benchmarks/perf_parsers.py prints it; pytest-timeout catches a catastrophic case)."""
    text = ADVERSARIAL[name]
    work = {"json": 0, "strict": 0}
    real_loads, real_strict = reading.json.loads, reading.parse_coordinates

    def loads(s: str, **kw: Any) -> Any:
        work["json"] += len(s)
        return real_loads(s, **kw)

    def strict(s: str) -> Any:
        work["strict"] += len(s)
        return real_strict(s)

    monkeypatch.setattr(reading.json, "loads", loads)
    monkeypatch.setattr(reading, "parse_coordinates", strict)
    got = read_point(text)
    _valid(got)
    assert work["json"] <= 8 * len(text) + 10_000, work
    assert work["strict"] <= 4 * len(text) + 10_000, work


def test_adversarial_results():
    assert read_point(ADVERSARIAL["objects"]).point == (48.85, 2.35)
    assert read_point(ADVERSARIAL["open braces"]).point is None
    assert read_point(ADVERSARIAL["comma numbers"]).point is None
