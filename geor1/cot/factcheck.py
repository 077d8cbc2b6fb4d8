"""Fact-check of chain-of-thought exemplars against the sample's metadata. An exemplar is dropped when any stated
fact is wrong; every drop is counted by reason.

Checked: the exact <think>/<answer> format; pairing: the answered letter (and every "candidate X" mentioned exists);
geolocation: the answered coordinates (within `tolerance_km`), any coordinates stated in the reasoning, the city and
country in the answer, and the hemispheres named in the reasoning.
"""

from __future__ import annotations

import re
import string
from typing import Any

from geor1.answers import normalize_name, parse_coordinates, parse_letter, parse_place, split_tags
from geor1.geo import haversine_km

_CANDIDATE = re.compile(r"\bcandidate ([A-Za-z])\b|\b([A-Z]):", re.IGNORECASE)
# a coordinate pair stated in prose: two decimals (percentages and counts are integers), optional N/S and E/W
_PAIR = re.compile(r"([-\u2212]?\d{1,2}\.\d{1,8})\s*°?\s*([NS])?\s*,\s*([-\u2212]?\d{1,3}\.\d{1,8})\s*°?\s*([EW])?")
_HEMI = re.compile(r"\b(northern|southern|eastern|western) hemisphere\b", re.IGNORECASE)

REASONS = ("format", "unparseable_answer", "wrong_letter", "letter_out_of_range", "coordinates_off",
           "wrong_coordinates_in_reasoning", "wrong_city", "wrong_country", "wrong_hemisphere")


def fact_check(text: str, meta: dict[str, Any], task: str, tolerance_km: float = 25.0) -> list[str]:
    """The reasons `text` fails against `meta` (empty: it passes)."""
    tags = split_tags(text)
    if tags is None:
        return ["format"]
    think, answer = tags
    reasons: list[str] = []
    if task == "pairing":
        k = int(meta["k"])
        letter = parse_letter(text, k)
        if letter is None:
            reasons.append("unparseable_answer")
        elif letter != meta.get("answer_letter", string.ascii_uppercase[int(meta["answer"])]):
            reasons.append("wrong_letter")
        if any(ord((a or b).upper()) - ord("A") >= k for a, b in _CANDIDATE.findall(think)):
            reasons.append("letter_out_of_range")
        return reasons
    lat, lon = float(meta["lat"]), float(meta["lon"])
    coords = parse_coordinates(answer.split("(")[0])
    if coords is None:
        reasons.append("unparseable_answer")
    elif haversine_km(lat, lon, *coords) > tolerance_km:
        reasons.append("coordinates_off")
    for m in _PAIR.finditer(think[:8000]):
        stated = parse_coordinates(m.group(0))
        if stated is not None and haversine_km(lat, lon, *stated) > tolerance_km:
            reasons.append("wrong_coordinates_in_reasoning")
            break
    city, country = parse_place(answer)
    if city is not None and meta.get("city") and normalize_name(city) != normalize_name(str(meta["city"])):
        reasons.append("wrong_city")
    if country is not None and meta.get("country") and country.upper() != str(meta["country"]).upper():
        reasons.append("wrong_country")
    for word in _HEMI.findall(think[:8000]):
        w = word.lower()
        if (w == "northern" and lat < 0) or (w == "southern" and lat >= 0) or \
           (w == "eastern" and lon < 0) or (w == "western" and lon >= 0):
            reasons.append("wrong_hemisphere")
            break
    return reasons
