"""Fact-check of chain-of-thought exemplars against the sample's target. An exemplar is dropped when any stated
fact is wrong; every drop is counted by reason.

Checked: the exact <think>/<answer> format; pairing: the answered letter (and every "candidate X" mentioned exists);
geolocation: the answered coordinates (within `tolerance_km`), any coordinates stated in the reasoning, the city and
country in the answer, and the hemispheres named in the reasoning. Answers are read by the target's task
(`geor1.tasks`); this module only finds the claims made in the reasoning.
"""

from __future__ import annotations

import re

from geor1.answers import normalize_name
from geor1.tasks import GeolocationTask, GeoTarget, PairingTarget, PairingTask, Target, split_completion, task_of

_CANDIDATE = re.compile(r"\bcandidate ([A-Za-z])\b|\b([A-Z]):", re.IGNORECASE)
# a coordinate pair stated in prose: two decimals (percentages and counts are integers), optional N/S and E/W
_PAIR = re.compile(r"([-\u2212]?\d{1,2}\.\d{1,8})\s*°?\s*([NS])?\s*,\s*([-\u2212]?\d{1,3}\.\d{1,8})\s*°?\s*([EW])?")
_HEMI = re.compile(r"\b(northern|southern|eastern|western) hemisphere\b", re.IGNORECASE)
MAX_REASONING_SCAN = 8000  # characters of reasoning searched for stated coordinates and hemispheres

REASONS = (
    "format",
    "unparseable_answer",
    "wrong_letter",
    "letter_out_of_range",
    "coordinates_off",
    "wrong_coordinates_in_reasoning",
    "wrong_city",
    "wrong_country",
    "wrong_hemisphere",
    "wrong_answer",
)


def fact_check(text: str, target: Target, tolerance_km: float = 25.0) -> list[str]:
    """The reasons `text` fails against `target` (empty: it passes); the target's type names the task."""
    parts = split_completion(text)
    if parts is None:
        return ["format"]
    think, answer = parts
    if isinstance(target, PairingTarget):
        return _check_pairing(text, think, target)
    if isinstance(target, GeoTarget):
        return _check_geolocation(think, answer, target, tolerance_km)
    # the describe task's answers are measured on the pixels (geor1.data.instruct), not written by a teacher
    return [] if task_of(target).is_correct(text, target) else ["wrong_answer"]


def _check_pairing(text: str, think: str, target: PairingTarget) -> list[str]:
    reasons: list[str] = []
    letter = PairingTask().answered(text, target)
    if letter is None:
        reasons.append("unparseable_answer")
    elif letter != target.letter:
        reasons.append("wrong_letter")
    if any(ord((a or b).upper()) - ord("A") >= target.k for a, b in _CANDIDATE.findall(think)):
        reasons.append("letter_out_of_range")
    return reasons


def _check_geolocation(think: str, answer: str, target: GeoTarget, tolerance_km: float) -> list[str]:
    task = GeolocationTask(correct_km=tolerance_km)
    reasons: list[str] = []
    ans = task.parse_answer(answer)
    if ans is None:
        reasons.append("unparseable_answer")
    elif task.distance_km(ans, target) > tolerance_km:
        reasons.append("coordinates_off")
    for m in _PAIR.finditer(think[:MAX_REASONING_SCAN]):
        stated = task.parse_answer(m.group(0))
        if stated is not None and task.distance_km(stated, target) > tolerance_km:
            reasons.append("wrong_coordinates_in_reasoning")
            break
    if ans is not None:  # the place named after a point that cannot be read is not checked (already dropped)
        if ans.city is not None and target.city and normalize_name(ans.city) != normalize_name(target.city):
            reasons.append("wrong_city")
        if ans.country is not None and target.country and ans.country.upper() != target.country.upper():
            reasons.append("wrong_country")
    for word in _HEMI.findall(think[:MAX_REASONING_SCAN]):
        w = word.lower()
        if (
            (w == "northern" and target.lat < 0)
            or (w == "southern" and target.lat >= 0)
            or (w == "eastern" and target.lon < 0)
            or (w == "western" and target.lon >= 0)
        ):
            reasons.append("wrong_hemisphere")
            break
    return reasons
