"""Evaluation reading of any model's free-form geolocation answer: the stated point, right or not at all.

`geor1.answers.parse_coordinates` reads the trained answer format strictly (one coordinate pair, nothing else).
`read_point(text)` reads what other models write - API models' JSON, LLaVA / InternVL prose, Qwen-VL tags,
markdown reports, a "Coordinates:" line after a long rationale - the way a careful person would: it returns the
point the text states, or no point and a reason (`REASONS`) when a person could not name one single point.
It never guesses, never geocodes a place name, never raises, and runs in time linear in the text (texts longer
than MAX_TEXT_CHARS are refused; numbers and labels are found with str methods and regexes without nested
unbounded quantifiers; JSON is parsed with `json.loads` on brace-balanced spans; nothing is `eval`-ed).

Where the answer is (the region read)
  R1. Answer tag. When the text has an `<answer>` tag, only the content of the last one is read, with all the
      rules below ("<think>Paris 48.85, 2.35</think><answer>45.76, 4.83 (Lyon, FR)</answer>" -> (45.76, 4.83)).
      A missing `</answer>` is allowed (stop strings drop it): the content runs to the end of the text. There is
      no fall-back to the rest of the text: an answer that states no point ("<answer>Lyon, France</answer>",
      "<answer>see above</answer>") gives no point, because the model said that this is its answer. The `how` is
      "tags" when the strict reader (`parse_coordinates`) reads the same point from the whole content, else the
      `how` of the rule below that read it. An empty answer is reason "empty".
  R2. Reasoning. Without an answer tag, the text after the last `</think>` is read; a `<think>` that is never
      closed means the output was cut off while reasoning: "incomplete".

What counts as a candidate (in order of precedence: the first group that says anything decides)
  1. JSON ("json"). Brace-balanced `{...}` spans anywhere (fenced ```json blocks or bare in prose), parsed with
     `json.loads` (then once more with trailing commas dropped, and single quotes / None / True / False made
     JSON when the span has no double quote). At any depth (under "location", "prediction", ...), a dict with a
     latitude key (lat, latitude, pred_lat, predictedLatitude, ...; not min_/max_/error/confidence keys) and a
     longitude key (lon, lng, long, longitude, ...) gives a point: numbers, or strings "48.85", "48.85 N",
     "48°51'24\\"N" (a hemisphere must fit its axis). A two-number list under "coordinates", "coords", "latlng",
     "location", "position", "point", "center" is [lat, lon] (the common LLM order), except GeoJSON
     (`{"type": "Point", "coordinates": [2.35, 48.85]}`) and "lnglat"/"lonlat" keys, which are [lon, lat]. A string
     under such a key or "answer"/"prediction" is read by the strict reader ("coordinates": "48.85, 2.35").
     "city"/"country"/"country_code" strings in the dict or above it name the place. `{"lat": null, "lon": null}`
     is a stated non-answer: "no_point". A JSON object cut off after a lat/lon key (`{"lat": 48.8, "lon`) is
     "incomplete".
  2. Final lines ("line"): a line that starts (after markdown #, *, -, >, "1.") with an answer marker - answer,
     final answer, my best guess, prediction, estimate, conclusion, predicted/estimated location, ... - followed by
     ":", "=", "-", "is" ("Final answer: 48.8566° N, 2.3522° E", "**Answer:** (35.68, 139.69)"), or a "final
     answer is ..." / "the answer is ..." anywhere in a line; a marker alone on its line (a heading "## Final
     Answer", "**Prediction:**") takes the block of lines under it. These are read with rules 3 and 4 (integer
     pairs allowed). When a text has such a line, the lines before the last one are reasoning: rules 3 and 4 in
     the body read only from it on ("Paris is at 48.85, 2.35. Final answer: Lyon, France" -> no point).
  2b. Coordinate lines ("line"): a line starting with "Coordinates:", "GPS:", "Location:", "Position:" (or a
      "coordinates:" later in the line), read the same way, after the final lines.
  3. Labelled values ("labels"): "Latitude: 40.7128", "**Latitude:** 40.7128° N", "- **Longitude**: -74.0060",
     "| Latitude | 48.8566 |", "lat ≈ 48.8", "Lat. 48.85", "48.85° N latitude", "the latitude of the tower is
     about 48.858 and its longitude is 2.294", "latitude and longitude are 48.85 and 2.35". Full words allow a
     few words between label and value when the last one is a connector (is, of, about, approximately, at, ...);
     the abbreviations (lat, lon, lng, long) only punctuation or a connector. A latitude with no longitude (or
     the reverse) is half a point: it must agree with a pair read by rule 4, and alone it is "incomplete".
  4. Pairs ("pair"): two numbers written as one coordinate pair with nothing but separators, degree / minute /
     second marks, hemispheres and brackets between them, read by the strict reader: "(35.68, 139.69)",
     "48.8566° N, 2.3522° E", "40°42'46\\"N 74°0'22\\"W", "S33.86, E151.21". In the body a pair needs a decimal
     point, a degree mark or a hemisphere ("steps 1, 2" is no pair); a lone number is never a point.
  5. Agreement. All candidates of the deciding group must agree within 0.01 degrees on both axes; the point is
     the first one. Two different stated points ("48.85, 2.35 or 45.76, 4.83", a JSON and a final line that
     differ, top-3 guesses in a JSON list) are "disagree": a person does not know which one is meant.

Never coordinates (rule 6): these numbers are set aside before reading, so they neither make nor break a pair
  - ranges: "between 10 and 20 degrees north", "10-20°N", "from 30 to 35 N", "30°N to 35°N" (reason "range" when
    nothing else is stated; inside an answer tag or a final line, the answer is "range");
  - thousands separators and lone comma numbers: "3,000 miles", "1,234", "It stands at 1,45" (a cut-off or
    decimal-comma number: no pair);
  - numbers with units or counts: km, miles, mi, m, meters, feet, ft, %, years, hours, million, people,
    population, °C, "5km", "3rd", "1990s", "$5", "#3", "± 5";
  - numbers after confidence, probability, score, elevation, altitude, population, step, tile, route, ...:
    "confidence: 0.85", "Confidence level: high (0.9)", "85% confident", "Tile 3: 40.71, -74.00" reads the pair;
  - house numbers and roads: "221B Baker Street", "12 rue de Rivoli", "Route 66", "A1", "I-95"; list numbers
    "1." at a line start; times "10:30"; fractions and dates "3/4", "12/05/2019"; integers of 4+ digits ("in 1998",
    "elevation 1600"); version-like runs "1.2.3".
  Marks that are not hemispheres or seconds: a possessive ("Paris's"), abbreviations with dots ("U.S.", "e.g."),
  a closing quote after a JSON number (`"lat": "48.85"`).
  Decimal commas (rule 7): "48,8566° N; 2,3522° E" (each comma number right before a degree mark) is read as
  decimals; any other decimal-comma pair ("48,8566, 2,3522") is "ambiguous" (in an answer, even one: "1,45").

Range and truncation (rules 8, 9)
  - |lat| > 90 or |lon| > 180 is "out_of_range", never swapped ("Latitude: 95.2, Longitude: 10.1").
  - A text cut off in the answer is "incomplete": it ends with a label and no value ("Longitude:"), with a
    decimal point after a coordinate-like number ("Latitude: 48.85, Longitude: 2."), with a sign, or inside a
    JSON object after a lat/lon key. A text that simply ends after a whole number is read as it is.
  - An answer tag or final line that holds numbers but no readable pair: one number is "incomplete" ("Final
    answer: 48.85"), two or more are "ambiguous" ("<answer>40 N 74</answer>").
"""

from __future__ import annotations

import bisect
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from geor1.answers import MAX_ANSWER_CHARS, parse_coordinates, parse_place

MAX_TEXT_CHARS = 50_000
HOWS = ("tags", "json", "labels", "line", "pair")
REASONS: dict[str, str] = {
    "empty": "the text, its answer tag, or what follows its reasoning is empty",
    "too_long": f"the text is longer than {MAX_TEXT_CHARS:,} characters",
    "no_point": "no coordinates are stated (a refusal, a place name only, numbers that are not coordinates)",
    "incomplete": "the point is not all there: the output is cut off, or only a latitude or a longitude is given",
    "disagree": "two or more stated points differ by more than 0.01 degrees",
    "range": "a range is stated, not a point (between 10 and 20 degrees north)",
    "out_of_range": "a stated latitude beyond 90 or longitude beyond 180 degrees",
    "ambiguous": "numbers that could be read as coordinates in more than one way (decimal commas, 40 N 74)",
}
AGREE_DEG = 0.01
_ISSUE_ORDER = ("incomplete", "out_of_range", "ambiguous", "range", "no_point")


@dataclass(frozen=True)
class Reading:
    """A read answer: the point (lat, lon) and how it was read, or no point and the reason."""

    lat: float | None
    lon: float | None
    how: str | None
    reason: str | None
    city: str | None = None
    country: str | None = None

    @property
    def point(self) -> tuple[float, float] | None:
        return None if self.lat is None or self.lon is None else (self.lat, self.lon)


def _refuse(reason: str) -> Reading:
    return Reading(None, None, None, reason)


# ------------------------------------------------------------------ candidates and groups


@dataclass(frozen=True)
class _Cand:
    lat: float
    lon: float
    how: str
    city: str | None = None
    country: str | None = None


@dataclass
class _Group:
    """What one rule group found: full points, half points (axis values), and reasons against a point."""

    cands: list[_Cand] = field(default_factory=list)
    lats: list[float] = field(default_factory=list)
    lons: list[float] = field(default_factory=list)
    issues: list[str] = field(default_factory=list)

    def extend(self, other: _Group) -> None:
        self.cands += other.cands
        self.lats += other.lats
        self.lons += other.lons
        self.issues += other.issues

    def empty(self) -> bool:
        return not (self.cands or self.lats or self.lons or self.issues)


def _agree(values: list[float]) -> bool:
    return all(abs(v - values[0]) <= AGREE_DEG for v in values)


def _issue(issues: list[str]) -> str:
    return min(issues, key=lambda r: _ISSUE_ORDER.index(r) if r in _ISSUE_ORDER else len(_ISSUE_ORDER))


def _decide(group: _Group, half_how: str, halves_alone: str | None = "incomplete") -> Reading | None:
    """The group's verdict: a point, a refusal, or None when the group says nothing (or only half points and
    `halves_alone` is None: the caller goes on to the next group)."""
    if group.issues:
        return _refuse(_issue(group.issues))
    cands = list(group.cands)
    if group.lats and group.lons:
        if not (_agree(group.lats) and _agree(group.lons)):
            return _refuse("disagree")
        cands.append(_Cand(group.lats[0], group.lons[0], half_how))
    elif group.lats or group.lons:
        if not cands:
            return _refuse(halves_alone) if halves_alone else None
        if not (_agree(group.lats + [c.lat for c in cands]) and _agree(group.lons + [c.lon for c in cands])):
            return _refuse("disagree")
    if not cands:
        return None
    if not (_agree([c.lat for c in cands]) and _agree([c.lon for c in cands])):
        return _refuse("disagree")
    first = cands[0]
    city = next((c.city for c in cands if c.city), None)
    country = next((c.country for c in cands if c.country), None)
    return Reading(first.lat, first.lon, first.how, None, city, country)


def _in_range(lat: float, lon: float) -> bool:
    return math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180


# ------------------------------------------------------------------ cleaning: marks and numbers, not coordinates

_TYPOGRAPHY = str.maketrans(
    {
        "\u2212": "-",
        "\ufe63": "-",
        "\uff0d": "-",
        "\u00ba": "°",
        "\u02da": "°",
        "\u2032": "'",
        "\u2018": "'",
        "\u2019": "'",
        "\u00b4": "'",
        "\u02b9": "'",
        "\u2033": '"',
        "\u201c": '"',
        "\u201d": '"',
        "\u02ba": '"',
        "\u00a0": " ",
        "\u202f": " ",
        "\u2009": " ",
        "\t": " ",
        "\r": " ",
    }
)
_ABBREV = re.compile(r"(?<![^\W\d_])(?:[A-Za-z]\.){2,}")  # U.S., e.g., N.Y.
_POSSESSIVE = re.compile(r"(?<=[^\W\d_])'s(?![^\W\d_])")  # Paris's
_SECONDS = re.compile(r"(?<=\d)'(\s?\d{1,2}(?:\.\d+)?)\s?(?:\"|'')")  # 51'24" -> 51'24 sec
_HTML = re.compile(r"</?[A-Za-z][^<>\n]{0,40}>|<\|[a-z_]{1,20}\|>")  # <b>, </p>, <|box_start|>
_TIME = re.compile(r"(?<![\d.])\d{1,2}:\d{2}(?![\d.])")
_FRACTION = re.compile(r"(?<![\d.])\d+/\d+(?![\d.°])")
_RUN = re.compile(r"\d[\d,.]*")
_DASH_SEP = re.compile(r"(?<=[^\W\d_)\]])\s+[-–—]\s+(?=[-+]?\.?\d)")  # "Tokyo, Japan - 35.67° N"
_UNIT = re.compile(
    r"\s{0,2}(?:%|‰|percent(?![^\W\d_])|per\s?cent(?![^\W\d_])|°\s?[CF](?![^\W\d_])|degrees\s+(?:celsius|fahrenheit)"
    r"|(?:km|kms|kilomet(?:er|re)s?|mi|miles?|meters?|metres?|ft|feet|foot|yards?|yds?|inch(?:es)?|years?|yrs?"
    r"|months?|weeks?|days?|hours?|hrs?|million|mln|billion|bn|thousand|hundred|k|people|persons|inhabitants"
    r"|residents|population|stor(?:e?y|ies|eys)|floors?|lanes?|cars?|vehicles?|kph|mph|kmh|acres?|hectares?|ha|kg"
    r"|tons?|tonnes?|dollars?|euros?|usd|eur|points?|pts|stars?|times|x|am|pm|bc|bce|ad|ce|centur(?:y|ies)|st|nd|rd"
    r"|th|out\s+of|stops?|blocks?)(?![^\W\d_]))",
    re.I,
)
_UNIT_DMS = re.compile(r"\s{0,2}(?:m|mins?|minutes?|secs?|seconds?|h)(?![^\W\d_])", re.I)
_GLUED_KEEP = {"N", "S", "E", "W", "n", "e", "w", "north", "south", "east", "west", "d", "deg"}
_PRE_WORDS = {
    "confidence", "certainty", "probability", "likelihood", "score", "accuracy", "elevation", "altitude", "height",
    "population", "pop", "radius", "error", "uncertainty", "distance", "zoom", "temperature", "temp", "floor",
    "rating", "age", "zip", "postcode", "code", "year", "years", "since", "built", "founded",
    "calle", "via", "rue", "carrera", "house", "precision", "speed", "limit", "plate", "apartment", "apt", "suite",
    "unit", "gate", "pier", "scores", "ratings", "levels",
}  # fmt: skip
_INDEX_WORDS = {
    "tile", "candidate", "option", "image", "photo", "picture", "figure", "fig", "chapter", "top", "id", "sample",
    "guess", "attempt", "round", "item", "clue", "reason", "point", "points", "sign", "step", "page", "number", "no",
    "nr", "rank", "version", "v", "exit", "platform", "bus", "tram", "route", "highway", "hwy", "interstate",
}  # fmt: skip
_PRE_SKIP = {
    "is", "of", "about", "approximately", "approx", "around", "roughly", "at", "level", "score", "high", "medium",
    "low", "moderate", "very", "the", "a", "an", "estimated", "est", "my", "our", "overall", "be", "would", "rate",
}  # fmt: skip
_STREET = {
    "street", "st", "avenue", "ave", "av", "road", "rd", "boulevard", "blvd", "lane", "ln", "drive", "dr", "way",
    "place", "pl", "square", "sq", "court", "ct", "terrace", "crescent", "parkway", "pkwy", "rue", "calle", "via",
    "strasse", "straße", "str", "avenida", "plaza", "piazza", "platz", "alley", "close", "highway", "hwy",
}  # fmt: skip
_HEMI_WORDS = {"n", "s", "e", "w", "north", "south", "east", "west"}
_WORD = re.compile(r"[^\W\d_]+")
_MASK = " qty "


@dataclass
class _Clean:
    text: str
    dcommas: int  # decimal-comma numbers that are no unit and no thousands: "48,8566", "1,45"


def _thousands(parts: list[str]) -> bool:
    if not (1 <= len(parts[0]) <= 3 and parts[0].isdigit()):
        return False
    for p in parts[1:-1]:
        if not (len(p) == 3 and p.isdigit()):
            return False
    last = parts[-1].split(".", 1)
    return len(last[0]) == 3 and last[0].isdigit() and (len(last) == 1 or last[1].isdigit())


def _masked_before(line: str, a: int) -> bool:
    """Whether the number at `a` follows a word that makes it no coordinate ("confidence: 0.85", "Route 66")."""
    window = line[max(0, a - 40) : a]
    cut = max(window.rfind(","), window.rfind(";"), window.rfind(". "))
    if cut >= 0:
        window = window[cut + 1 :]
    if window.rstrip().endswith(("#", "±", "$", "€", "£", "¥", "№", "+/-")):
        return True
    colon = False
    for tok in reversed(re.findall(r"[^\W\d_]+|\d|[:=]", window)):
        low = tok.lower()
        if low in (":", "="):
            colon = True
            continue
        if low in _PRE_SKIP:
            continue
        return low in _PRE_WORDS or (low in _INDEX_WORDS and not colon)
    return False


def _street_after(line: str, e: int) -> bool:
    """Whether the integer ending at `e` is a house number: a street word within the next four words."""
    for words, m in enumerate(re.finditer(r"[^\W\d_]+|[^\s'-]", line[e : e + 48])):
        tok = m.group()
        low = tok.lower()
        if words >= 4 or not tok[0].isalpha() or (words == 0 and low in _HEMI_WORDS):
            return False
        if low in _STREET:
            return True
    return False


def _dms_context(line: str, a: int) -> bool:
    ctx = line[max(0, a - 12) : a].lower()
    return "°" in ctx or "deg" in ctx or "'" in ctx


def _mask_numbers(line: str) -> tuple[str, int]:
    out: list[str] = []
    last = 0
    dcommas = 0
    for m in _RUN.finditer(line):
        a, run = m.start(), m.group()
        r = run.rstrip(",.")
        e = a + len(r)
        keep: str | None = r
        if "," in r:
            parts = r.split(",")
            if "" in parts or any(p.count(".") > 1 for p in parts) or _thousands(parts):
                keep = None
            elif len(parts) == 2 and ("." in parts[0] or "." in parts[1]):
                keep = parts[0] + ", " + parts[1]
            elif len(parts) == 2 and re.match(r"\s?°", line[e : e + 2]):
                keep = parts[0] + "." + parts[1]  # 48,8566° N: a decimal comma before a degree mark
            else:
                keep = None
                if len(parts) == 2 and not (_UNIT.match(line, e) or _masked_before(line, a)):
                    dcommas += 1
        elif r.count(".") > 1:
            keep = None
        if keep is not None and "," not in keep:
            glued_after = _WORD.match(line, e)
            before = line[a - 1] if a > 0 else ""
            if "." not in keep and len(keep) >= 4:
                keep = None  # a year, a quantity, a house number: never a coordinate
            elif before.isalpha():
                k = a - 1
                while k >= 0 and line[k].isalpha() and a - k < 24:
                    k -= 1
                if line[k + 1 : a] not in ("N", "S", "E", "W"):
                    keep = None  # A1, M25, B12
            elif before == "-" and a >= 2 and line[a - 2].isalpha():
                keep = None  # I-95, COVID-19
            if keep is not None and glued_after is not None:
                w = glued_after.group()
                if w not in _GLUED_KEEP or (w == "s" and "." not in keep):
                    keep = None  # 5km, 3rd, 221B, 1990s / 90s
            if keep is not None:
                if (
                    _UNIT.match(line, e)
                    or (_UNIT_DMS.match(line, e) and not _dms_context(line, a))
                    or _masked_before(line, a)
                    or ("." not in keep and _street_after(line, e))
                ):
                    keep = None
                elif a <= 8 and not line[:a].strip(" #>*-•+_") and line[e : e + 2] in (". ", ") ", ".", ")"):
                    keep = None  # "1. Paris ..." a list number
        out.append(line[last:a])
        out.append(_MASK if keep is None else keep)
        out.append(run[len(r) :])
        last = m.end()
    out.append(line[last:])
    return "".join(out), dcommas


def _clean_line(line: str) -> _Clean:
    s = _HTML.sub(" ", line.translate(_TYPOGRAPHY))
    s = _ABBREV.sub(lambda m: m.group().replace(".", ""), s)
    s = _POSSESSIVE.sub("", s)
    s = _SECONDS.sub(r"'\1 sec ", s)
    s = s.replace('"', " ")
    s = _TIME.sub(_MASK, s)
    s = _FRACTION.sub(_MASK, s)
    s, dcommas = _mask_numbers(s)
    s = _DASH_SEP.sub(", ", s)
    return _Clean(s, dcommas)


# ------------------------------------------------------------------ ranges and truncation

_HEMI_RE = r"(?:[NSEW](?![^\W\d_])|north|south|east|west)"
_APPROX = r"(?:(?:about|approximately|roughly|around)\s+|~\s?)?"
_RANGE = re.compile(
    rf"\b(?:between|from)\s+{_APPROX}[-+]?\d[\d.]*\s?(?:°|degrees?|deg)?\s?{_HEMI_RE}?\s?(?:and|to|-|–|—)\s?{_APPROX}"
    rf"[-+]?\.?\d"
    rf"|\d(?:\.\d+)?\s?(?:°|degrees?|deg)?\s?{_HEMI_RE}?\s+to\s+[-+]?\.?\d"
    r"|\d(?:\s?°)?(?:\s?[NSEW](?![^\W\d_]))?(?:[-–—]|\s[–—]\s)\.?\d",
    re.I,
)
_LABEL_END = re.compile(r"(?<![^\W\d_])(?:latitude|longitude|lat|lon|lng)$", re.I)
_LABEL_NEAR = re.compile(r"(?<![^\W\d_])(?:latitude|longitude|lat|lon|lng|long)(?![^\W\d_])|°|\d,\s", re.I)


def _cut_off(text: str) -> bool:
    """Whether the text ends inside a coordinate: a label with no value, a dangling decimal point or sign."""
    t = text.translate(_TYPOGRAPHY).rstrip(" \n\"'`*_")
    if not t:
        return False
    if _LABEL_END.search(t[-12:].rstrip(" :=*_\"'`")):
        return True
    if t[-1] in "-+" and len(t) > 1 and not t[-2].isalnum():
        return True
    if t[-1] == "." and len(t) > 1 and t[-2].isdigit():
        k = len(t) - 1
        while k > 0 and t[k - 1].isdigit() and len(t) - k < 5:
            k -= 1
        digits = len(t) - 1 - k
        if digits <= 3 and (k == 0 or t[k - 1] not in ".,") and _LABEL_NEAR.search(t[max(0, k - 40) : k]):
            return True
    return False


# ------------------------------------------------------------------ values and labels

_VALUE = re.compile(
    r"(?P<sign>[-+])?(?P<deg>\d{1,3}(?:\.\d+)?|\.\d+)"
    r"(?:\s?(?:°|deg(?![^\W\d_])|degrees(?![^\W\d_])|d(?![^\W\d_]))"
    r"(?:\s?(?P<min>\d{1,2}(?:\.\d+)?)\s?(?:'|min(?![^\W\d_])|minutes(?![^\W\d_])|m(?![^\W\d_]))"
    r"(?:\s?(?P<sec>\d{1,2}(?:\.\d+)?)\s?(?:sec(?![^\W\d_])|seconds(?![^\W\d_])|s(?![^\W\d_])|''|\"))?)?)?"
    r"(?:\s?(?P<hemi>[NSEWnsew]|north|south|east|west|North|South|East|West)(?![^\W\d_]))?"
)
_LABELS = {"lat": "lat", "latitude": "lat", "lon": "lon", "lng": "lon", "long": "lon", "longitude": "lon"}
_LABEL_RE = re.compile(r"(?<!\w)(latitude|longitude|lat|lon|lng|long)(?!\w)", re.I)
_DOUBLE = re.compile(
    r"(?<!\w)(?P<a>latitude|longitude|lat|lon|lng|long)[\s)\]*_`']{0,4}(?:/|,|&|and|\+)[\s(\[*_`']{0,4}"
    r"(?P<b>latitude|longitude|lat|lon|lng|long)(?!\w)",
    re.I,
)
_NUM_START = re.compile(r"[-+]?\.?\d")
_CONNECT = {
    "is", "are", "was", "be", "of", "about", "approximately", "approx", "around", "roughly", "circa", "ca", "near",
    "at", "equals", "equal", "to", "reads", "coordinate", "value", "would", "should", "likely", "probably", "estimated",
    "est", "deg", "degrees", "dd", "decimal", "in", "the", "its", "it", "s", "coordinates", "here",
}  # fmt: skip
_SEP_AFTER_VALUE = re.compile(r"[\s*_`'|]*(?:,|;|/|&|and|\|)?[\s*_`'|]*")
_RANGE_AFTER = re.compile(r"\s?(?:to|-|–|—)\s?[-+]?\.?\d", re.I)


def _value_at(s: str, pos: int) -> tuple[float, str | None, int] | None:
    """(signed degrees, hemisphere axis or None, end) for the value at `pos`, or None (no value, a contradiction)."""
    m = _VALUE.match(s, pos)
    if m is None or (m.end("deg") < len(s) and s[m.end("deg")].isdigit()):
        return None
    if pos > 0 and (s[pos - 1].isdigit() or s[pos - 1] == "."):
        return None
    value = float(m.group("deg"))
    for part, scale in (("min", 60.0), ("sec", 3600.0)):
        if m.group(part) is not None:
            extra = float(m.group(part))
            if extra >= 60:
                return None
            value += extra / scale
    negative = m.group("sign") == "-"
    hemi = m.group("hemi")
    axis = None
    if hemi is not None:
        h = hemi[0].upper()
        if negative:
            return None  # -33 S
        axis = "lat" if h in "NS" else "lon"
        if h in "SW":
            negative = True
    return (-value if negative else value), axis, m.end()


def _gap_ok(gap: str, abbreviation: bool) -> bool:
    g = gap[1:] if gap.startswith(".") else gap
    if any(c in ".!?;\n" for c in g):
        return False
    words = [w.lower() for w in _WORD.findall(g)]
    if not words:
        return True
    if abbreviation:
        return len(words) <= 2 and all(w in _CONNECT for w in words)
    return len(words) <= 8 and words[-1] in _CONNECT


def _axis_value(group: _Group, axis: str, value: float, hemi_axis: str | None) -> None:
    if hemi_axis is not None and hemi_axis != axis:
        group.issues.append("ambiguous")  # "lat 40 E"
    elif abs(value) > (90 if axis == "lat" else 180):
        group.issues.append("out_of_range")
    else:
        (group.lats if axis == "lat" else group.lons).append(value)


def _labelled(line: str, how: str) -> _Group:
    """Rule 3 on one cleaned line: label -> value, and double labels ("lat/lon: 48.85, 2.35")."""
    group = _Group()
    doubles: set[int] = set()
    for m in _DOUBLE.finditer(line):
        a, b = _LABELS[m.group("a").lower()], _LABELS[m.group("b").lower()]
        doubles.update((m.start("a"), m.start("b")))
        if a == b:
            continue
        window = line[m.end() : m.end() + 80]
        d = _NUM_START.search(window)
        if d is None or not _gap_ok(window[: d.start()], False) or _LABEL_RE.search(window[: d.start()]):
            continue
        first = _value_at(window, d.start())
        if first is None:
            continue
        sep = _SEP_AFTER_VALUE.match(window, first[2])
        second = _value_at(window, sep.end()) if sep else None
        if second is None or _NUM_START.match(window, second[2]):
            continue
        values = {a: first, b: second}
        lat, lon = values["lat"], values["lon"]
        if (lat[1] or "lat") != "lat" or (lon[1] or "lon") != "lon":
            group.issues.append("ambiguous")
        elif not _in_range(lat[0], lon[0]):
            group.issues.append("out_of_range")
        else:
            group.cands.append(_Cand(lat[0], lon[0], how))
    for m in _LABEL_RE.finditer(line):
        if m.start() in doubles:
            continue
        word = m.group(1).lower()
        window = line[m.end() : m.end() + 80]
        d = _NUM_START.search(window)
        if d is None:
            continue
        gap = window[: d.start()]
        if _LABEL_RE.search(gap) or not _gap_ok(gap, word in ("lat", "lon", "lng", "long")):
            continue
        v = _value_at(window, d.start())
        if v is None or _RANGE_AFTER.match(window, v[2]):
            continue
        _axis_value(group, _LABELS[word], v[0], v[1])
    return group


# ------------------------------------------------------------------ pairs (spans of coordinate tokens)

_SPAN_TOK = re.compile(r"(?P<num>\d+(?:\.\d+)?|\.\d+)|(?P<word>[^\W\d]+)|(?P<ws>\s+)|(?P<ch>.)", re.S)
_SPAN_WORDS = _HEMI_WORDS | set(_LABELS) | {"d", "deg", "degree", "degrees", "m", "min", "mins", "minute", "minutes"}
_SPAN_WORDS |= {"sec", "secs", "second", "seconds"}
_AND = re.compile(r"(?<!\w)and(?!\w)", re.I)
_SPAN_CHARS = set(",;/°'()[]:=*`~≈|-+")


def _spans(line: str) -> Iterator[tuple[str, int, bool, bool]]:
    """Maximal runs of coordinate tokens: (text, number count, holds a label, holds "and")."""
    start, nums, label, joined = -1, 0, False, False
    for m in _SPAN_TOK.finditer(line):
        kind, tok = m.lastgroup, m.group()
        low = tok.lower()
        ok = (
            kind in ("num", "ws")
            or (kind == "word" and (low in _SPAN_WORDS or low == "and"))
            or (kind == "ch" and tok in _SPAN_CHARS)
        )
        if not ok:
            if start >= 0 and nums:
                yield line[start : m.start()], nums, label, joined
            start, nums, label, joined = -1, 0, False, False
            continue
        if start < 0:
            if kind == "ws":
                continue
            start = m.start()
        nums += kind == "num"
        label = label or (kind == "word" and low in _LABELS)
        joined = joined or low == "and"
    if start >= 0 and nums:
        yield line[start:], nums, label, joined


def _trim(span: str) -> str:
    s = span.strip().lstrip(",;:/=*|~≈#>•").strip()
    if s[:2] in ("- ", "+ "):
        s = s[2:]
    if s[:4].lower() == "and ":
        s = s[4:]
    s = s.rstrip(" ,;:/=*|~≈([-+")
    if s[-4:].lower() == " and":
        s = s[:-4]
    return s.rstrip(" ,;:/=*|~≈([-+").strip()


def _pairs(line: str, how: str, content: bool) -> _Group:
    """Rule 4 (and single labelled values written value-first) on one cleaned line."""
    group = _Group()
    if line.rstrip().rstrip(".").endswith(")") and parse_place(line[-MAX_ANSWER_CHARS:]) != (None, None):
        line = line[: line.rfind("(")]  # "18.97, -98.16 (18 de Marzo, MX)": the place is no number
    for raw, nums, label, _ in _spans(line):
        span = _trim(raw)
        joined = _AND.search(span) is not None
        if joined:
            span = _AND.sub(",", span)
        if nums == 1:
            lab = _LABEL_RE.search(span) if label else None
            d = _NUM_START.search(span)
            v = _value_at(span, d.start()) if d else None
            if lab is None or d is None or v is None or _RANGE_AFTER.match(span, v[2]):
                continue
            if lab.start() > d.start() and any(c in ",;/|" for c in span[v[2] : lab.start()]):
                continue  # "48.85, Long": the label belongs to the next value
            _axis_value(group, _LABELS[lab.group(1).lower()], v[0], v[1])
            continue
        point = parse_coordinates(span) if len(span) <= MAX_ANSWER_CHARS else None
        if point is not None:
            marked = label or "°" in span or any(w in _HEMI_WORDS or w.startswith("deg") for w in _words(span))
            shaped = content or marked or ("." in span and not joined)  # "4.5 and 3.5" is no pair in prose
            if shaped:
                group.cands.append(_Cand(point[0], point[1], "labels" if label and how == "pair" else how))
            continue
        if nums == 2:
            values = [float(x) for x in re.findall(r"[-+]?\d+(?:\.\d+)?", span)]
            beyond = len(values) == 2 and (abs(values[0]) > 90 or abs(values[1]) > 180)
            if beyond and ("." in span or content) and not any(w in _HEMI_WORDS for w in _words(span)):
                group.issues.append("out_of_range")
                continue
            if content:
                group.issues.append("ambiguous")
    return group


def _words(s: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(s)]


# ------------------------------------------------------------------ JSON

_BRACE_CHARS = re.compile(r'\\.|[{}"\n]', re.S)
_JSON_KEY = re.compile(r"[\"']\s*(?:lat|latitude|lon|lng|long|longitude)\b", re.I)
_JSON_TRY = re.compile(r"lat|lon|lng|coord|point|answer|predict", re.I)
_TRAILING_COMMA = re.compile(r",(?=\s*[}\]])")
_PY_LITERAL = re.compile(r"\b(?:None|True|False)\b")
_LAT_WORDS = {"lat", "latitude"}
_LON_WORDS = {"lon", "lng", "long", "longitude"}
_NOT_POINT_WORDS = {"min", "max", "error", "err", "confidence", "uncertainty", "std", "range", "delta", "offset"}
_NOT_POINT_WORDS |= {"span", "radius", "diff", "bbox", "bounds", "sigma", "var"}
_PAIR_KEYS = {"coordinates", "coords", "coordinate", "latlng", "latlon", "lat_lon", "lat_lng", "location", "position"}
_PAIR_KEYS |= {"point", "gps", "center", "centre", "centroid", "geo", "gps_coordinates", "predicted_coordinates"}
_LONFIRST_KEYS = {"lnglat", "lonlat", "lon_lat", "lng_lat"}
_TEXT_KEYS = _PAIR_KEYS | {"answer", "final_answer", "prediction", "guess", "predicted_location", "final_coordinates"}
_CITY_KEYS = {"city", "town", "city_name"}
_COUNTRY_KEYS = {"country", "country_code", "countrycode", "country_name", "cc"}
_NULLS = {"", "n/a", "na", "null", "none", "unknown", "?", "-", "nan"}


def _key_words(key: str) -> list[str]:
    k = re.sub(r"([a-z])([A-Z])", r"\1_\2", key.strip())
    return [w for w in re.split(r"[^0-9a-zA-Z]+", k.lower()) if w]


def _key_norm(key: str) -> str:
    return "_".join(_key_words(key))


def _axis_of_key(key: str) -> str | None:
    words = set(_key_words(key))
    if words & _NOT_POINT_WORDS:
        return None
    lat, lon = bool(words & _LAT_WORDS), bool(words & _LON_WORDS)
    return "lat" if lat and not lon else "lon" if lon and not lat else None


def _json_number(v: Any, axis: str) -> float | str | None:
    """A coordinate from a JSON value: a float, "null" for a stated nothing, an issue code, or None (not a value)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v) if math.isfinite(v) else None
    if v is None:
        return "null"
    if not isinstance(v, str) or len(v) > 64:
        return None
    s = v.translate(_TYPOGRAPHY).strip()
    if s.lower() in _NULLS:
        return "null"
    if re.fullmatch(r"[-+]?\d+,\d+\s?(?:°\s?)?[NSEWnsew]?", s):
        return "ambiguous"
    got = _value_at(s, 0)
    if got is None or _VALUE.match(s).end() != len(s):  # type: ignore[union-attr]
        return None
    if got[1] is not None and got[1] != axis:
        return "ambiguous"
    return got[0]


def _json_walk(obj: Any, group: _Group) -> bool:
    """Points in a parsed JSON value (iteratively, any depth); True when it has a lat/lon key at all."""
    found = False
    stack: list[tuple[Any, str | None, str | None]] = [(obj, None, None)]
    while stack:
        node, city, country = stack.pop()
        if isinstance(node, list):
            stack.extend((x, city, country) for x in reversed(node))
            continue
        if not isinstance(node, dict):
            continue
        for k, v in node.items():
            nk = _key_norm(str(k))
            if nk in _CITY_KEYS and isinstance(v, str) and v.strip():
                city = v.strip()
            elif nk in _COUNTRY_KEYS and isinstance(v, str) and v.strip():
                country = v.strip()
        values: dict[str, list[Any]] = {"lat": [], "lon": []}
        is_point = str(node.get("type", "")).lower() == "point"
        for k, v in node.items():
            key = str(k)
            nk = _key_norm(key)
            axis = _axis_of_key(key)
            if axis is not None and not isinstance(v, (dict, list)):
                values[axis].append(_json_number(v, axis))
            elif (nk in _PAIR_KEYS or nk in _LONFIRST_KEYS) and isinstance(v, list) and 2 <= len(v) <= 3:
                if len(v) == 3 and not is_point:
                    continue
                a, b = _json_number(v[0], "lat"), _json_number(v[1], "lon")
                if isinstance(a, float) and isinstance(b, float):
                    found = True
                    lat, lon = (b, a) if (is_point or nk in _LONFIRST_KEYS) else (a, b)
                    if _in_range(lat, lon):
                        group.cands.append(_Cand(lat, lon, "json", city, country))
                    else:
                        group.issues.append("out_of_range")
            elif nk in _TEXT_KEYS and isinstance(v, str) and len(v) <= MAX_ANSWER_CHARS:
                cleaned = _clean_line(v).text
                point = None if _RANGE.search(cleaned) else parse_coordinates(cleaned)
                if point is not None:
                    found = True
                    group.cands.append(_Cand(point[0], point[1], "json", city, country))
            if isinstance(v, (dict, list)):
                stack.append((v, city, country))
        if values["lat"] or values["lon"]:
            found = True
            lats, lons = values["lat"], values["lon"]
            issues = [x for x in lats + lons if isinstance(x, str) and x != "null"]
            if issues:
                group.issues.extend(issues)
            elif lats and lons and all(x == "null" for x in lats + lons):
                group.issues.append("no_point")  # {"lat": null, "lon": null}: a stated non-answer
            elif not (lats and lons) or "null" in lats + lons or None in lats + lons:
                group.issues.append("incomplete" if None not in lats + lons else "ambiguous")
            else:
                floats = [float(x) for x in lats + lons]
                lat_values, lon_values = floats[: len(lats)], floats[len(lats) :]
                if not all(_in_range(lat, 0.0) for lat in lat_values) or not all(
                    _in_range(0.0, lon) for lon in lon_values
                ):
                    group.issues.append("out_of_range")
                else:  # several latitude keys in one dict must agree (checked with the group's halves)
                    group.cands.append(_Cand(lat_values[0], lon_values[0], "json", city, country))
                    group.lats += lat_values[1:]
                    group.lons += lon_values[1:]
    return found


def _loads(span: str) -> Any:
    """json.loads, then once more with trailing commas dropped and Python quoting made JSON; None when neither."""
    for attempt in range(2):
        if attempt:
            span = _TRAILING_COMMA.sub("", span)
            if '"' not in span and "'" in span:
                span = span.replace("'", '"')
                span = _PY_LITERAL.sub(lambda m: {"None": "null", "True": "true", "False": "false"}[m.group()], span)
        try:
            return json.loads(span, parse_constant=lambda _: None, parse_int=float)
        except (ValueError, RecursionError):
            continue
    return None


def _json_group(s: str) -> _Group:
    """Rule 1: brace-balanced spans (found in one pass), parsed outermost first, up to 3 levels in on failure."""
    group = _Group()
    stack: list[int] = []
    pairs: list[tuple[int, int]] = []
    in_str = False
    for m in _BRACE_CHARS.finditer(s):
        c = m.group()
        if in_str:
            if c in ('"', "\n"):
                in_str = False
            continue
        if c == '"':
            in_str = bool(stack)
        elif c == "{":
            stack.append(m.start())
        elif c == "}" and stack:
            pairs.append((stack.pop(), m.end()))
    pairs.sort()
    children: dict[int, list[int]] = {}
    roots: list[int] = []
    open_: list[int] = []
    for i, (a, _b) in enumerate(pairs):
        while open_ and pairs[open_[-1]][1] <= a:
            open_.pop()
        (children.setdefault(open_[-1], []) if open_ else roots).append(i)
        open_.append(i)
    queue = [(i, 0) for i in roots]
    while queue:
        i, level = queue.pop(0)
        a, b = pairs[i]
        obj = _loads(s[a:b]) if _JSON_TRY.search(s, a, b) else None
        if obj is not None:
            _json_walk(obj, group)
        elif level < 3:
            queue.extend((j, level + 1) for j in children.get(i, []))
    if stack:
        u = stack[0]
        root_spans = [pairs[i] for i in roots]
        starts = [p[0] for p in root_spans]
        if s[u + 1 : u + 40].lstrip().startswith(('"', "'")):
            group.issues.append("incomplete")  # a JSON object cut off: the point may have come later
            return group
        for k in _JSON_KEY.finditer(s, u):
            j = bisect.bisect_right(starts, k.start()) - 1
            inside = j >= 0 and root_spans[j][0] <= k.start() < root_spans[j][1]
            if not inside:
                group.issues.append("incomplete")  # a prose brace, then a cut-off lat/lon key
                break
    return group


# ------------------------------------------------------------------ final lines and the body

_LINE_MARK = re.compile(
    r"^[\s#>*_|•+-]*(?:\d{1,2}[.)]\s+)?[*_`]*\s*(?P<head>(?:[^\W\d_]+[ /]){0,3}[^\W\d_]+)\s?(?:\([^()\n]{0,30}\))?"
    r"[*_`]*\s?(?P<sep>[:=–—-]|is(?![^\W\d_])|are(?![^\W\d_])|would\s+be(?![^\W\d_])|$)"
)
_MID_MARK = re.compile(
    r"(?<![^\W\d_])(?:(?:final|best)\s+(?:answer|guess|prediction|coordinates|location|estimate)|the\s+answer"
    r"|coordinates|coords|gps)[*_`]*\s?(?:\([^()\n]{0,30}\))?[*_`]*\s?(?::|=|is(?![^\W\d_])|are(?![^\W\d_])"
    r"|would\s+be(?![^\W\d_]))",
    re.I,
)
_ANSWER_WORDS = {"answer", "guess", "prediction", "estimate", "conclusion", "verdict", "result", "final", "predicted"}
_ANSWER_WORDS |= {"estimated", "best", "output"}
_COORD_WORDS = {"coordinates", "coords", "coordinate", "gps", "location", "position", "point"}
_HEAD_WORDS = _ANSWER_WORDS | _COORD_WORDS | {"my", "the", "our", "most", "likely", "overall", "approximate"}
_HEAD_WORDS |= {"approx", "exact", "geographic", "geo", "guessed", "decimal", "in", "lat", "lon", "latitude"}
_HEAD_WORDS |= {"longitude", "and", "dd", "location's", "precise", "image", "photo"}


def _marker(line: str) -> tuple[str, str, bool, int] | None:
    """(tier "answer"/"coords", the content after the marker, whether it is a heading, where the marker starts)
    for a marker line."""
    m = _LINE_MARK.match(line[:200])
    if m is not None:
        words = [w.lower() for w in re.split(r"[ /]", m.group("head"))]
        if words and all(w in _HEAD_WORDS for w in words) and words[-1] in (_ANSWER_WORDS | _COORD_WORDS):
            tier = "answer" if set(words) & _ANSWER_WORDS else "coords"
            rest = line[m.end() :]
            return tier, rest, not rest.strip(" *_`#:"), 0
    mid = _MID_MARK.search(line)
    if mid is not None:
        low = mid.group().lower()
        tier = "answer" if ("final" in low or "best" in low or "answer" in low) else "coords"
        return tier, line[mid.end() :], False, mid.start()
    return None


def _content_group(lines: list[_Clean], how: str) -> _Group:
    """Rules 3 and 4 on the content of a final line or block (integer pairs allowed); ranges refuse."""
    group = _Group()
    for c in lines:
        if _RANGE.search(c.text):
            group.issues.append("range")
            continue
        if c.dcommas >= 1:
            group.issues.append("ambiguous")
            continue
        pairs = _pairs(c.text, how, content=True)
        labels = _labelled(c.text, how)
        group.extend(pairs)
        group.cands += labels.cands
        group.issues += labels.issues
        if not pairs.lats and not pairs.lons:
            group.lats += labels.lats
            group.lons += labels.lons
    if group.empty():
        nums = sum(len(re.findall(r"\d+(?:\.\d+)?", c.text)) for c in lines)
        if nums == 1:
            group.issues.append("incomplete")
        elif nums >= 2:
            group.issues.append("ambiguous")
    return group


def _read(region: str, content: bool) -> Reading:
    """All rules on a region: the content of an answer tag (`content`: integer pairs count, unread numbers are
    reasons) or the text after the reasoning."""
    if _cut_off(region):
        return _refuse("incomplete")
    raw_lines = region.split("\n")
    lines = [_clean_line(x) for x in raw_lines]
    first = _Group()
    first.extend(_json_group(region))
    coords = _Group()
    body_from, body_col = 0, 0
    i = 0
    places: list[tuple[str | None, str | None]] = []
    while i < len(lines):
        mark = _marker(lines[i].text)
        if mark is None:
            i += 1
            continue
        tier, rest, heading, col = mark
        block = [_clean_line(rest)]
        j = i + 1
        if heading:
            block = []
            while j < len(lines) and len(block) < 8:
                if not lines[j].text.strip():
                    if block:
                        break
                    j += 1
                    continue
                if _marker(lines[j].text) is not None and block:
                    break
                block.append(lines[j])
                j += 1
        got = _content_group(block, "line")
        if tier == "answer":
            body_from, body_col = i, col
            first.extend(got)
        else:
            coords.extend(got)
        if got.cands and not heading:
            places.append(parse_place(raw_lines[i].translate(_TYPOGRAPHY)[-MAX_ANSWER_CHARS:]))
        i = j if heading else i + 1
    for group in (first, coords):
        verdict = _decide(group, "line")
        if verdict is not None:
            if verdict.how == "line" and places and verdict.city is None:
                city, country = places[-1]
                verdict = Reading(verdict.lat, verdict.lon, verdict.how, None, city, country)
            return verdict
    body = [_Clean(lines[body_from].text[body_col:], lines[body_from].dcommas)] + lines[body_from + 1 :]
    labels, pairs, ranges, dcommas = _Group(), _Group(), False, False
    for c in body:
        if _RANGE.search(c.text):
            ranges = True
            continue
        labels.extend(_labelled(c.text, "labels"))
        got = _pairs(c.text, "pair", content)
        labels.cands += [x for x in got.cands if x.how == "labels"]
        labels.lats += got.lats
        labels.lons += got.lons
        pairs.cands += [x for x in got.cands if x.how != "labels"]
        pairs.issues += got.issues
        if c.dcommas >= (1 if content else 2):
            dcommas = True
    verdict = _decide(labels, "labels", halves_alone=None)
    if verdict is not None:
        return verdict
    pairs.lats, pairs.lons = labels.lats, labels.lons
    verdict = _decide(pairs, "labels")
    if verdict is not None:
        return verdict
    if ranges:
        return _refuse("range")
    if dcommas:
        return _refuse("ambiguous")
    if content:
        nums = sum(len(re.findall(r"\d+(?:\.\d+)?", c.text)) for c in body)
        return _refuse("incomplete" if nums == 1 else "ambiguous" if nums >= 2 else "no_point")
    return _refuse("no_point")


def _answer_content(text: str) -> str | None:
    start = text.rfind("<answer>")
    if start < 0:
        return None
    end = text.find("</answer>", start)
    return text[start + len("<answer>") : end if end >= 0 else len(text)]


def read_point(text: str) -> Reading:
    """The point a free-form answer states, or no point and the reason (rules in the module docstring).

    >>> read_point('Looks like Paris. ```json\\n{"latitude": 48.8566, "longitude": 2.3522, "city": "Paris"}\\n```')
    Reading(lat=48.8566, lon=2.3522, how='json', reason=None, city='Paris', country=None)
    >>> read_point("<think>Haussmann facades.</think><answer>48.85660, 2.35220 (Paris, FR)</answer>").point
    (48.8566, 2.3522)
    >>> [read_point(s).reason for s in ("It stands at 1,45", "somewhere between 10 and 20 degrees north",
    ...                                 "Latitude: 48.85, Longitude: 2.", "48.85, 2.35 or 45.76, 4.83")]
    ['no_point', 'range', 'incomplete', 'disagree']
    """
    if not isinstance(text, str) or not text.strip():
        return _refuse("empty")
    if len(text) > MAX_TEXT_CHARS:
        return _refuse("too_long")
    content = _answer_content(text)
    if content is not None:
        if not content.strip():
            return _refuse("empty")
        got = _read(content, content=True)
        if got.point is None:
            return got
        strict = parse_coordinates(content) if len(content) <= MAX_ANSWER_CHARS else None
        if (
            strict is not None
            and abs(strict[0] - got.point[0]) <= AGREE_DEG
            and abs(strict[1] - got.point[1]) <= AGREE_DEG
        ):
            city, country = parse_place(content)
            return Reading(strict[0], strict[1], "tags", None, city or got.city, country or got.country)
        return got
    end_think = text.rfind("</think>")
    if end_think >= 0:
        region = text[end_think + len("</think>") :]
    elif "<think>" in text:
        return _refuse("incomplete")
    else:
        region = text
    if not region.strip():
        return _refuse("empty")
    return _read(region, content=False)
