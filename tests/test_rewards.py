"""Rewards: each on hand-made completions of typed targets, the registry, dotted-path rewards, and honoured
weights."""

from __future__ import annotations

import math

import pytest

from geor1 import Geor1Error
from geor1.rewards import combine, get_reward
from geor1.rewards.builtin import accuracy, format_reward, geodesic, length, repetition
from geor1.tasks import GeoTarget, PairingTarget

PAIR = PairingTarget(k=4, answer=2)  # the answer is "C"
GEO = GeoTarget(48.85, 2.35, "Paris", "FR")
GOOD = "<think>the coast is east</think><answer>C</answer>"


def test_accuracy_accepts_exactly_one_right_letter():
    texts = [GOOD, "<answer>c</answer>", "<answer></answer>", "<answer>C D</answer>", "<answer>E</answer>", "C"]
    assert accuracy(texts, [PAIR] * len(texts)) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert accuracy([GOOD, GOOD], [GeoTarget(1.0, 2.0), None]) == [None, None]  # geolocation: see `geodesic`


def test_length_is_conditioned_on_correctness():
    wrong = GOOD.replace(">C<", ">A<")
    short_right, long_right = length([GOOD, GOOD], [PAIR, PAIR], lengths=[10, 1000], max_len=1024)
    short_wrong, long_wrong = length([wrong, wrong], [PAIR, PAIR], lengths=[10, 1000], max_len=1024)
    assert short_right > long_right > 0 > long_wrong > short_wrong  # the public code only ever favoured short
    assert length([GOOD], [PAIR], lengths=[512], max_len=1024)[0] == pytest.approx(0.75)  # cos(pi/2) = 0
    near, far = length(["<answer>48.85, 2.35</answer>", "<answer>0, 0</answer>"], [GEO, GEO], lengths=[0, 0])
    assert near == pytest.approx(1.0) and far == pytest.approx(-1.0)
    # geolocation correctness is "within correct_km" (25 km by default): 0.3 degrees of latitude is ~33 km
    off = ["<answer>49.15, 2.35</answer>"]
    assert length(off, [GEO], lengths=[0]) == [pytest.approx(-1.0)]
    assert length(off, [GEO], lengths=[0], correct_km=50.0) == [pytest.approx(1.0)]
    assert length([GOOD], [None], lengths=[1]) == [None]


def test_format_repetition_geodesic():
    assert format_reward([GOOD, "<answer>C</answer>", GOOD + "!"], [None] * 3) == [1.0, 0.0, 0.0]
    assert repetition(["one two three four five six seven"], [None]) == [0.0]
    assert repetition(["a b c d e f " * 10], [None])[0] < -0.8
    d = 1000.0
    lat2 = math.degrees(d / 6371.0088)
    origin = GeoTarget(0.0, 0.0)
    assert geodesic([f"<answer>{lat2:.6f}, 0</answer>"], [origin])[0] == pytest.approx(math.exp(-d / 1492.7), rel=1e-5)
    assert geodesic(["<answer>?</answer>", GOOD, GOOD], [origin, PAIR, None]) == [0.0, None, None]
    assert geodesic([f"<answer>{lat2:.6f}, 0</answer>"], [origin], scale_km=d)[0] == pytest.approx(
        math.exp(-1.0), rel=1e-5
    )


def test_registry_dotted_path_and_weights():
    assert get_reward("accuracy") is accuracy
    assert get_reward("geor1.rewards.builtin.repetition") is repetition
    with pytest.raises(Geor1Error, match="unknown reward"):
        get_reward("nope")
    total = combine({"accuracy": [1.0, 0.0, None], "format": [1.0, 1.0, None]}, {"accuracy": 2.0, "format": 0.5})
    assert total == [2.5, 0.5, None]
    assert combine({"a": [float("nan")]}, {}) == [None]
