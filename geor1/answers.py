"""The one parser of model answers, shared by SFT evaluation, rewards, fact-checking and metrics.

    split_tags(text)          -> (think, answer) when the text is exactly <think>..</think><answer>..</answer>
    answer_text(text)         -> the content of the last <answer>..</answer>
    parse_letter(text, k)     -> the one candidate letter answered, or None
    parse_coordinates(s)      -> (lat, lon) from the whole content of a geolocation answer, or None
    parse_place(s)            -> (city, country) from a trailing "(City, CC)", or (None, None)

Every function returns None ("unparseable") instead of raising, and runs in time linear in its input: tags are
found with str.find/rfind, answers longer than MAX_ANSWER_CHARS are unparseable, and no pattern nests quantifiers.

Coordinates are read right or not at all: an answer that could mean two points is unparseable, never a guess.
`parse_coordinates` cuts the text into tokens (numbers, words, marks) and applies these rules:

1. The place part. A trailing parenthesised group after some text whose last comma-separated part has no digit
   and which holds a name word ("... (Paris, FR)", "... (18 de Marzo, MX)"; not a hemisphere, label or unit) is the
   place: it is set aside (`parse_place` reads it) and its words and numbers play no part. Any other parenthesised
   group (digits in its last part, or only hemispheres, labels and units), or one that is the whole answer
   ("(51.5074, -0.1278)"), is read like the rest. Quotes around words and markdown's * and ` are ignored; brackets
   separate (a hemisphere mark does not reach across them).
2. Values. A value is a signed decimal number ("-33.86", "+2", ".5"), optionally with a degree mark (° º ˚, "d",
   "deg", "degrees"), then minutes (' ′ ’, "m", "min", "minutes") and seconds (" ″ '' ”, "sec", "seconds", and a
   lower-case "s" in the seconds place):
   "48°51'24\"", "40 deg 42 min". Minutes and seconds need the degrees before them and must be below 60. The sign
   must touch the number: "-" after a digit ("48.85-2.35"), a sign followed by a space ("- 33.9"), or a dash such as
   U+2013 before a digit, spaced or not (a minus or a range?), make the answer unparseable, as do numbers run
   together ("1.2.3"). U+2212 MINUS SIGN is a minus.
3. Exactly one coordinate pair. The answer must hold exactly two values (lat, lon), or four that are the same pair
   written twice (the two readings within 0.01°; the first is returned). Any other count is unparseable, so every
   stray number outside the place part makes the answer unparseable: "Tile 3: 40.71, -74.00", "1. 48.8, 2.3",
   "answer 2: ...", "48.85, 2.35, 100", "48.85, 2.35 or 48.9, 2.4", a lone "48.85".
4. Hemispheres. N/S/E/W or North/South/East/West (any case) belong to the value they touch, before it ("S33.86",
   "N: 48.85") or after it ("33.86 S", "2.35° E"). A letter that touches values on both sides ("40 N 74 W") goes the
   way of the text's other hemisphere marks (here after, because "W" can only follow); if the text does not say,
   it is unparseable ("40 N 74"). A spelled-out hemisphere word followed by a word is prose or a name ("South
   Africa", "north of Paris") and is ignored, unless it also follows a value ("18.4 South Africa": unparseable).
   Any other lone hemisphere mark is unparseable ("U.S.: 40.7, -74.0"). S and W negate; a negative value with a
   hemisphere ("-33 S") contradicts itself; two marks on one value, or two values on one axis ("N 40 N 74"), are
   unparseable, as is any other single letter right after a value ("43.2 O": Oeste or Ost?).
5. Labels. lat/latitude and lon/lng/long/longitude name the value that follows them, over ":", "=", ".", "~",
   "is", "of", "about", "approximately", ... ("Latitude: 40.7", "lon=151.2"), or else the value just before them
   ("48.85° N latitude", "48.85 (lat)"). Two labels together name the next two values in their order:
   "lat/lon: 48.85, 2.35", "(lng, lat) = (2.35, 48.85)", "latitude and longitude are ...". A label that names no
   value is unparseable ("a long way"), as is a value named twice, or a label contradicting the value's hemisphere
   ("lat 40 E").
6. Order and range. Labels and hemispheres fix which value is the latitude; without them the first value is the
   latitude. |lat| <= 90 and |lon| <= 180, else unparseable (a pair is never swapped to fit).
"""

from __future__ import annotations

import itertools
import math
import re
import unicodedata
from dataclasses import dataclass

MAX_ANSWER_CHARS = 512
_LETTER = re.compile(
    r"\s*(?:(?:the\s+)?answer\s*(?:is)?\s*[:=]?)?\s*(?:candidate|option|tile|choice)?\s*"
    r"[(\[]?([A-Za-z])[)\].:]?\s*",
    re.IGNORECASE,
)
_PLACE = re.compile(r"\(([^()]{1,100}),\s*([^(),]{1,60})\)\s*(?:\.\s*)?$")

# coordinate tokens: a number (sign glued on), a run of letters, a run of whitespace, or any other single character
_TOKEN = re.compile(r"(?P<num>[-+]?(?:\d+(?:\.\d+)?|\.\d+))|(?P<word>[^\W\d_]+)|(?P<space>\s+)|(?P<other>.)", re.S)
_TYPOGRAPHY = str.maketrans(
    {
        "\u2212": "-",
        "\ufe63": "-",
        "\uff0d": "-",  # minus signs
        "\u00ba": "°",
        "\u02da": "°",  # º ˚
        "\u2032": "'",
        "\u2018": "'",
        "\u2019": "'",
        "\u00b4": "'",
        "\u02b9": "'",  # ′ ‘ ’ ´ ʹ
        "\u2033": '"',
        "\u201c": '"',
        "\u201d": '"',
        "\u02ba": '"',
    }
)  # ″ “ ” ʺ
_DASH_BEFORE_DIGIT = re.compile(r"[\u2010-\u2015\ufe58]\s*\.?\d")  # ‐ ‑ ‒ – — ―: a minus or a range?
_LOOSE_SIGN = re.compile(r"[-+]\s+\.?\d")  # "- 33.9": a minus or a dash?
_HEMI = {"n": "N", "s": "S", "e": "E", "w": "W", "north": "N", "south": "S", "east": "E", "west": "W"}
_LABEL = {"lat": "lat", "latitude": "lat", "lon": "lon", "lng": "lon", "long": "lon", "longitude": "lon"}
_UNIT_WORDS = {
    "d": "deg",
    "deg": "deg",
    "degs": "deg",
    "degree": "deg",
    "degrees": "deg",
    "m": "min",
    "min": "min",
    "mins": "min",
    "minute": "min",
    "minutes": "min",
    "sec": "sec",
    "secs": "sec",
    "second": "sec",
    "seconds": "sec",
}
_UNIT_MARKS = {"°": "deg", "'": "min", '"': "sec"}
_FILLERS = {
    "is",
    "of",
    "about",
    "approximately",
    "approx",
    "around",
    "roughly",
    "circa",
    "ca",
    "near",
    "at",
    "equals",
    "~",
    "≈",
    "=",
    ":",
    ".",
}
_QUOTES = set("'\"*`")  # quotes that are no minute/second mark, and markdown's * and `, are skipped


@dataclass
class _Tok:
    """A coordinate token. kind: num, deg, min, sec, hemi, label, sep, eq, dot, paren, word, other; val (grouped)."""

    kind: str
    text: str
    hemi: str | None = None  # N/S/E/W for kind "hemi"
    axis: str | None = None  # lat/lon for kind "label"
    value: int = -1  # index into the values for kind "val"


@dataclass
class _Value:
    """One coordinate value: its magnitude in degrees, whether it was written negative, and what names its axis."""

    magnitude: float
    negative: bool
    hemi: str | None = None
    label: str | None = None


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
    think = s[len("<think>") : end_think]
    rest = s[end_think + len("</think>") :].lstrip()
    if not (rest.startswith("<answer>") and rest.endswith("</answer>")):
        return None
    answer = rest[len("<answer>") : -len("</answer>")]
    if "<think>" in think or "</think>" in rest or "<answer>" in answer or "</answer>" in answer:
        return None
    return think, answer


def answer_text(text: str) -> str | None:
    """The content of the last `<answer>...</answer>` in `text`, or None."""
    end = text.rfind("</answer>")
    if end < 0:
        return None
    start = text.rfind("<answer>", 0, end)
    return None if start < 0 else text[start + len("<answer>") : end]


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


def _split_place(text: str) -> tuple[str, str | None]:
    """(text before the place, the place's inside) for a trailing digit-free "(...)" after some text (rule 1)."""
    body = text.rstrip().rstrip(".").rstrip()
    if not body.endswith(")"):
        return text, None
    start = body.rfind("(")
    inside = body[start + 1 : -1]
    if start <= 0 or not body[:start].strip() or ")" in inside or not _is_place(inside):
        return text, None
    return body[:start], inside


_NAME_WORD = re.compile(r"[^\W\d_]{2,}")


def _is_place(inside: str) -> bool:
    """Whether the inside of a trailing "(...)" names a place: its last comma-separated part has no digit, and it
    holds a name word (2+ letters, not a hemisphere, label or unit word). "(Paris, FR)" and "(18 de Marzo, MX)" are
    places; "(51.5, -0.12)", "(48.85 N, 2.35 E)" and "(lat 48.85, lon 2.35)" are coordinates."""
    if any(c.isdigit() for c in inside.rsplit(",", 1)[-1]):
        return False
    words = (w.casefold() for w in _NAME_WORD.findall(inside))
    return any(w not in _HEMI and w not in _LABEL and w not in _UNIT_WORDS for w in words)


def _tokenize(s: str) -> list[_Tok] | None:
    """The tokens of `s` (whitespace dropped, brackets and stray quotes skipped), or None for a loose sign."""
    toks: list[_Tok] = []
    for m in _TOKEN.finditer(s):
        kind, text = m.lastgroup or "other", m.group()
        prev = toks[-1] if toks else None
        after_num = prev is not None and prev.kind == "num"
        if kind == "space":
            continue
        if kind == "num":
            before = s[m.start() - 1] if m.start() > 0 else ""
            if before.isdigit() or before == ".":
                return None  # "48.85-2.35": a minus or a dash? "1.2.3", "48.85.5": what number?
            toks.append(_Tok("num", text))
        elif kind == "word":
            low = text.casefold()
            if after_num and low in _UNIT_WORDS:
                toks.append(_Tok(_UNIT_WORDS[low], text))
            elif low in _HEMI:
                toks.append(_Tok("hemi", text, hemi=_HEMI[low]))
            elif low in _LABEL:
                toks.append(_Tok("label", text, axis=_LABEL[low]))
            elif len(text) == 1 and prev is not None and prev.kind in ("num", "deg", "min", "sec"):
                return None  # "43.2 O": Oeste (west) or Ost (east)? another language's hemisphere letter
            else:
                toks.append(_Tok("word", text))
        elif after_num and text in _UNIT_MARKS:
            toks.append(_Tok(_UNIT_MARKS[text], text))
        elif text in _QUOTES:
            continue
        elif text in "()[]{}":
            toks.append(_Tok("paren", text))
        elif text in ",;/":
            toks.append(_Tok("sep", text))
        elif text in ":=":
            toks.append(_Tok("eq", text))
        elif text == ".":
            toks.append(_Tok("dot", text))
        else:
            toks.append(_Tok("other", text))
    return toks


def _number(text: str, whole_before: bool) -> float | None:
    """A minute or second count: unsigned, below 60, after a whole number of degrees or minutes."""
    if text[0] in "+-" or not whole_before:
        return None
    v = float(text)
    return v if v < 60 else None


def _group(toks: list[_Tok]) -> tuple[list[_Tok], list[_Value]] | None:
    """Tokens with each value (a number, or degrees [minutes [seconds]]) folded into one "val" token (rule 2)."""
    out: list[_Tok] = []
    values: list[_Value] = []
    i, n = 0, len(toks)
    while i < n:
        tok = toks[i]
        if tok.kind in ("deg", "min", "sec"):
            return None  # a unit mark with no number of its own
        if tok.kind != "num":
            out.append(tok)
            i += 1
            continue
        negative, magnitude = tok.text.startswith("-"), abs(float(tok.text))
        i += 1
        if i < n and toks[i].kind == "deg":
            i += 1
            if i + 1 < n and toks[i].kind == "num" and toks[i + 1].kind == "min":
                minutes = _number(toks[i].text, "." not in tok.text)
                if minutes is None:
                    return None
                magnitude += minutes / 60
                minute_text, i = toks[i].text, i + 2
                seconds_mark = (
                    i + 1 < n
                    and toks[i].kind == "num"
                    and (toks[i + 1].kind == "sec" or (toks[i + 1].kind == "hemi" and toks[i + 1].text == "s"))
                )
                if seconds_mark:
                    seconds = _number(toks[i].text, "." not in minute_text)
                    if seconds is None:
                        return None
                    magnitude += seconds / 3600
                    i += 2
        elif i < n and toks[i].kind in ("min", "sec"):
            return None  # minutes or seconds with no degrees before them
        if not math.isfinite(magnitude):
            return None
        out.append(_Tok("val", "", value=len(values)))
        values.append(_Value(magnitude, negative))
    return out, values


def _value_at(seq: list[_Tok], i: int) -> int | None:
    return seq[i].value if 0 <= i < len(seq) and seq[i].kind == "val" else None


def _attach_hemispheres(seq: list[_Tok], values: list[_Value]) -> dict[int, int] | None:
    """Each hemisphere mark given to the value it touches (rule 4); {token index: value index} for the attached."""
    sides: dict[int, tuple[int | None, int | None]] = {}  # token -> (value before, value after)
    for p, tok in enumerate(seq):
        if tok.kind != "hemi":
            continue
        before = _value_at(seq, p - 1)
        q = p + 1
        while q < len(seq) and seq[q].kind == "eq":
            q += 1
        after = _value_at(seq, q)
        nxt = seq[p + 1] if p + 1 < len(seq) else None
        if nxt is not None and nxt.kind == "word" and len(tok.text) > 1:
            if before is not None:
                return None  # "18.4 South Africa"
            continue  # "north of Paris", "South Africa"
        if before is None and after is None:
            return None  # a hemisphere of nothing
        sides[p] = (before, after)
    only_before = any(a is None for _, a in sides.values())
    only_after = any(b is None for b, _ in sides.values())
    attached: dict[int, int] = {}
    for p, (before, after) in sides.items():
        if before is not None and after is not None and only_before == only_after:
            return None  # a mark between two values, and the text does not say which way its marks go
        target = before if before is not None and (after is None or only_before) else after
        if target is None or values[target].hemi is not None:
            return None  # two marks on one value
        values[target].hemi = seq[p].hemi
        attached[p] = target
    return attached


def _attach_labels(seq: list[_Tok], values: list[_Value], hemis: dict[int, int]) -> bool:
    """Each latitude/longitude label given to the value it names (rule 5); False when a label names nothing."""
    labels = [p for p, tok in enumerate(seq) if tok.kind == "label"]
    done: set[int] = set()
    for p in labels:
        if p in done:
            continue
        q = p + 1
        while q < len(seq) and (seq[q].kind in ("sep", "paren") or seq[q].text.casefold() in ("and", "&", "-")):
            q += 1
        if q < len(seq) and seq[q].kind == "label" and seq[q].axis != seq[p].axis:
            following = list(itertools.islice((t.value for t in seq[q + 1 :] if t.kind == "val"), 2))  # "lat/lon: .."
            if len(following) < 2:
                return False
            for v, axis in zip(following, (seq[p].axis, seq[q].axis), strict=True):
                if values[v].label is not None:
                    return False
                values[v].label = axis
            done.update((p, q))
            continue
        q = p + 1
        while q < len(seq) and (seq[q].kind in ("eq", "dot", "hemi", "paren") or seq[q].text.casefold() in _FILLERS):
            q += 1
        target = _value_at(seq, q)
        if target is None:
            b = p - 1
            while b >= 0 and seq[b].kind == "paren":
                b -= 1  # "48.85 (lat)"
            target = _value_at(seq, b)  # "48.85 latitude"
            if target is None and p - 1 in hemis and _value_at(seq, p - 2) == hemis[p - 1]:
                target = hemis[p - 1]  # "48.85° N latitude"
        if target is None or values[target].label is not None:
            return False
        values[target].label = seq[p].axis
    return True


def _point(a: _Value, b: _Value) -> tuple[float, float] | None:
    """(lat, lon) from two values, their hemispheres and labels (rules 4 and 6)."""
    signed: list[tuple[float, str | None]] = []
    for v in (a, b):
        axis = v.label
        value = -v.magnitude if v.negative else v.magnitude
        if v.hemi is not None:
            if v.negative:
                return None  # "-33 S"
            hemi_axis = "lat" if v.hemi in "NS" else "lon"
            if axis is not None and axis != hemi_axis:
                return None  # "lat 40 E"
            axis = hemi_axis
            value = -v.magnitude if v.hemi in "SW" else v.magnitude
        signed.append((value, axis))
    (va, xa), (vb, xb) = signed
    if xa is not None and xa == xb:
        return None  # two latitudes or two longitudes
    lat, lon = (vb, va) if (xa == "lon" or xb == "lat") else (va, vb)
    if not (math.isfinite(lat) and math.isfinite(lon)) or abs(lat) > 90 or abs(lon) > 180:
        return None
    return lat, lon


def parse_coordinates(text: str) -> tuple[float, float] | None:
    """(lat, lon) in degrees from the whole content of an answer, or None when it is unparseable or ambiguous.

    Pass the whole answer, place included: the rules are in the module docstring. In short, the text must hold
    exactly one coordinate pair (or the same pair twice); hemisphere marks before or after a number, labels in
    either order, degrees-minutes-seconds and a trailing "(City, CC)" are read; any other number, a contradiction,
    a value out of range, or more than MAX_ANSWER_CHARS characters makes it unparseable.

    >>> parse_coordinates("48.85660, 2.35220 (Paris, FR)")
    (48.8566, 2.3522)
    >>> parse_coordinates("S33.86, E151.21")
    (-33.86, 151.21)
    >>> parse_coordinates("(51.5074, \u22120.1278)")
    (51.5074, -0.1278)
    >>> parse_coordinates("lon 151.21, lat -33.86")
    (-33.86, 151.21)
    >>> parse_coordinates("Latitude: 40.7128° N, Longitude: 74.0060° W (New York, US)")
    (40.7128, -74.006)
    >>> parse_coordinates("40 deg 42 min N, 74 deg 0 min W")
    (40.7, -74.0)
    >>> [parse_coordinates(s) for s in ("Tile 3: 40.71, -74.00", "N 40 N 74", "-33 S, 151 E", "48.85", "near Paris")]
    [None, None, None, None, None]
    """
    if not isinstance(text, str) or len(text) > MAX_ANSWER_CHARS:
        return None
    s = text.translate(_TYPOGRAPHY).replace("''", '"')
    if _DASH_BEFORE_DIGIT.search(s) or _LOOSE_SIGN.search(s):
        return None
    toks = _tokenize(_split_place(s)[0])
    grouped = _group(toks) if toks is not None else None
    if grouped is None:
        return None
    seq, values = grouped
    if len(values) not in (2, 4):
        return None
    hemis = _attach_hemispheres(seq, values)
    if hemis is None or not _attach_labels(seq, values, hemis):
        return None
    first = _point(values[0], values[1])
    if len(values) == 2 or first is None:
        return first
    second = _point(values[2], values[3])  # the same pair twice: "40°42'46\"N 74°0'22\"W (40.7128, -74.0060)"
    if second is None or abs(first[0] - second[0]) > 0.01 or abs(first[1] - second[1]) > 0.01:
        return None
    return first


def normalize_name(name: str | None) -> str:
    """A place name folded for comparison: accents stripped, case folded, letters and digits only.

    >>> normalize_name("São Paulo") == normalize_name("sao paulo")
    True
    """
    return "".join(c for c in unicodedata.normalize("NFKD", name or "") if c.isalnum()).casefold()


def parse_place(text: str) -> tuple[str | None, str | None]:
    """(city, country) from a trailing "(City, CC)" in `text`, else (None, None).

    A parenthesised group of numbers, hemispheres or labels is coordinates, not a place (rule 1 of the module
    docstring).

    >>> parse_place("18.96889, -98.16028 (18 de Marzo, MX)")
    ('18 de Marzo', 'MX')

    >>> parse_place("48.85660, 2.35220 (Paris, FR)")
    ('Paris', 'FR')
    >>> parse_place("(51.5074, -0.1278)")
    (None, None)
    """
    if len(text) > MAX_ANSWER_CHARS:
        return None, None
    m = _PLACE.search(text.strip())
    if m is None or not _is_place(m.group(0)[1:].rstrip(" .")[:-1]):
        return None, None
    return m.group(1).strip(), m.group(2).strip()
