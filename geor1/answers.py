"""The one parser of model answers, shared by SFT evaluation, rewards, fact-checking and metrics.

    split_tags(text)          -> (think, answer) when the text is exactly <think>..</think><answer>..</answer>
    answer_text(text)         -> the content of the last <answer>..</answer>
    parse_letter(text, k)     -> the one candidate letter answered, or None
    parse_coordinates(s)      -> (lat, lon) from decimal, signed, N/S/E/W or degree-minute-second forms, or None
    parse_place(s)            -> (city, country) from a trailing "(City, CC)" or "City, Country", or (None, None)

Every function returns None ("unparseable") instead of raising, and runs in time linear in its input: tags are
found with str.find/rfind, answers longer than MAX_ANSWER_CHARS are unparseable, and no pattern nests quantifiers.
"""

from __future__ import annotations

import math
import re
import unicodedata

MAX_ANSWER_CHARS = 512
_LETTER = re.compile(r"\s*(?:(?:the\s+)?answer\s*(?:is)?\s*[:=]?)?\s*(?:candidate|option|tile|choice)?\s*"
                     r"[(\[]?([A-Za-z])[)\].:]?\s*", re.IGNORECASE)
_NUMBER = r"[-+\u2212]?\d{1,3}(?:\.\d{1,12})?"
_DEC = re.compile(rf"({_NUMBER})\s*°?\s*(north|south|east|west|[NSEW])?(?![A-Za-z])", re.IGNORECASE)
_DMS = re.compile(r"(\d{1,3})\s*[°d]\s*(\d{1,2})\s*['′m]\s*(?:(\d{1,2}(?:\.\d{1,6})?)\s*(?:[\"″s]|'')\s*)?([NSEWnsew])")
_PLACE = re.compile(r"\(([^()]{1,100}),\s*([^(),]{1,60})\)\s*$")


def split_tags(text: str) -> tuple[str, str] | None:
    """(think, answer) when `text` is exactly `<think>..</think>` + whitespace + `<answer>..</answer>`, else None.

    >>> split_tags("<think>coast to the west</think> <answer>B</answer>")
    ('coast to the west', 'B')
    >>> split_tags("<think>a</think><answer>B</answer> trailing") is None
    True
    """
    s = text.strip()
    if not s.startswith("<think>"):
        return None
    end_think = s.find("</think>")
    if end_think < 0:
        return None
    think = s[len("<think>"):end_think]
    rest = s[end_think + len("</think>"):].lstrip()
    if not (rest.startswith("<answer>") and rest.endswith("</answer>")):
        return None
    answer = rest[len("<answer>"):-len("</answer>")]
    if "<think>" in think or "</think>" in rest or "<answer>" in answer or "</answer>" in answer:
        return None
    return think, answer


def answer_text(text: str) -> str | None:
    """The content of the last `<answer>...</answer>` in `text`, or None."""
    end = text.rfind("</answer>")
    if end < 0:
        return None
    start = text.rfind("<answer>", 0, end)
    return None if start < 0 else text[start + len("<answer>"):end]


def parse_letter(text: str, num_candidates: int) -> str | None:
    """The single candidate letter answered, or None (no answer tag, empty, several letters, out of range).

    >>> parse_letter("<think>..</think><answer>B</answer>", 4)
    'B'
    >>> [parse_letter(f"<answer>{a}</answer>", 4) for a in ("(c)", "Candidate D.", "", "E", "A or B")]
    ['C', 'D', None, None, None]
    """
    ans = answer_text(text)
    if ans is None or len(ans) > 64:
        return None
    m = _LETTER.fullmatch(ans)
    if m is None:
        return None
    letter = m.group(1).upper()
    return letter if 0 <= ord(letter) - ord("A") < num_candidates else None


def _signed(value: float, hemi: str | None, axis: str) -> float | None:
    if hemi is None:
        return value
    hemi = hemi.upper()
    if (axis == "lat" and hemi not in "NS") or (axis == "lon" and hemi not in "EW"):
        return None
    if value < 0:
        return None  # "-12 S" is contradictory
    return -value if hemi in "SW" else value


def parse_coordinates(text: str) -> tuple[float, float] | None:
    """(lat, lon) in degrees from the first coordinate pair in `text`, or None.

    Accepted: "48.8566, 2.3522", "-33.87 151.21", "48.85° N, 2.35° E", "33.9S 18.4E", "48°51'24\"N 2°21'E".
    Out-of-range values, a lone number, or more than MAX_ANSWER_CHARS characters are unparseable.

    >>> parse_coordinates("48.85° N, 2.35° W")
    (48.85, -2.35)
    >>> parse_coordinates("near Paris") is None
    True
    """
    if len(text) > MAX_ANSWER_CHARS:
        return None
    s = text.replace("\u2212", "-")
    dms = _DMS.findall(s)
    if len(dms) >= 2:
        vals = []
        for deg, minutes, sec, hemi in dms[:2]:
            v = float(deg) + float(minutes) / 60 + (float(sec) / 3600 if sec else 0.0)
            vals.append((v, hemi.upper()))
        (a, ha), (b, hb) = vals
        if ha in "EW" and hb in "NS":
            (a, ha), (b, hb) = (b, hb), (a, ha)
        lat, lon = _signed(a, ha, "lat"), _signed(b, hb, "lon")
    else:
        nums = _DEC.findall(s)
        if len(nums) < 2:
            return None
        (a, ha), (b, hb) = ((float(n), h[:1].upper() or None) for n, h in nums[:2])
        if ha and hb and ha.upper() in "EW" and hb.upper() in "NS":
            (a, ha), (b, hb) = (b, hb), (a, ha)
        lat, lon = _signed(a, ha, "lat"), _signed(b, hb, "lon")
    if lat is None or lon is None or not (math.isfinite(lat) and math.isfinite(lon)):
        return None
    if abs(lat) > 90 or abs(lon) > 180:
        return None
    return lat, lon


def normalize_name(name: str | None) -> str:
    """A place name folded for comparison: accents stripped, case folded, letters and digits only.

    >>> normalize_name("São Paulo") == normalize_name("sao paulo")
    True
    """
    return "".join(c for c in unicodedata.normalize("NFKD", name or "") if c.isalnum()).casefold()


def parse_place(text: str) -> tuple[str | None, str | None]:
    """(city, country) from a trailing "(City, CC)" in `text`, else (None, None).

    >>> parse_place("48.85660, 2.35220 (Paris, FR)")
    ('Paris', 'FR')
    """
    if len(text) > MAX_ANSWER_CHARS:
        return None, None
    m = _PLACE.search(text.strip())
    return (m.group(1).strip(), m.group(2).strip()) if m else (None, None)
