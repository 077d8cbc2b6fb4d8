"""Filters for teacher-written chain-of-thought traces (`geor1 cot generate`), each dropping a sample for one named
reason, so that `factcheck_summary.json` says how many traces each filter removed.

A sample of an item goes through, in this order, and is counted under the first reason that drops it:

1. fact-check (`geor1.cot.factcheck.fact_check`, through the sample's task): the <think>/<answer> format, the
   answered letter or coordinates / city / country, coordinates and hemispheres stated in the reasoning. The
   sample is counted under the first of its fact-check reasons in `dropped`; every reason it had is also counted
   in `factcheck_reasons`.
2. hint leakage (`hint_leak`, only when the teacher was given a hint): the reasoning quotes the hint's
   coordinates (a number that equals the hint's latitude or longitude to 2 or more decimals, rounded or cut, or
   degrees and minutes (and seconds) equal to it to the last place written), or
   says it was given the answer ("hint", "I was told", "given answer", ...). The <answer> itself is not searched:
   it must hold the coordinates.
3. length window (`LengthWindow`): the reasoning (the text inside <think>) has fewer than `min_words` or more than
   `max_words` words (`too_short`, `too_long`).
4. best-of-N with near-duplicate removal (`select_best`): of an item's samples that passed 1-3, the one kept is
   the one with the fewest reasoning words (ties: the earlier sample) that is not a near duplicate of a trace
   already kept (word n-gram Jaccard overlap of the reasonings of at least `dedup_threshold`, `NearDuplicateIndex`);
   the near duplicates met before it are counted `near_duplicate`, the other valid samples `not_best_of_n`.

At most one trace per item is kept; `samples == kept + sum(dropped)` always holds.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from geor1 import Geor1Error
from geor1.cot.factcheck import fact_check
from geor1.tasks import Target, split_completion

FILTER_REASONS = ("hint_leak", "too_short", "too_long", "near_duplicate", "not_best_of_n")

_LEAK_WORDS = re.compile(
    r"\b(hints?|hinted|i (?:was|am|have been|'ve been) (?:told|given)|we (?:were|are) told|told (?:me|us) that"
    r"|given (?:answer|location|coordinates|tile)|the given|provided (?:answer|location|coordinates|tile)"
    r"|(?:true|correct) (?:answer|location|tile|candidate)(?: of (?:this|the) (?:photo|image|picture))? is"
    r"|as (?:stated|told))\b",
    re.IGNORECASE,
)
_DECIMAL = re.compile(r"\d{1,3}\.(\d{2,})")
# degrees and minutes (and seconds): 33°55′, 33° 55.5', 33°55'29"
_DMS = re.compile(r"(\d{1,3})\s*[°º˚]\s*(\d{1,2}(?:\.\d+)?)\s*['′’](?:\s*(\d{1,2}(?:\.\d+)?)\s*(?:\"|″|”|''|′′))?")
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class Hint:
    """What the teacher was told about one item: its text, and the facts a leak would quote (the true point for
    geolocation, the true letter for pairing)."""

    text: str
    lat: float | None = None
    lon: float | None = None
    letter: str | None = None


def reasoning_of(text: str) -> str:
    """The text inside <think></think> of a well-formed trace, else the whole text."""
    parts = split_completion(text)
    return text if parts is None else parts[0]


def words(text: str) -> list[str]:
    """Lower-cased words (runs of letters, digits and underscores).

    >>> words("Green 94%, so B.")
    ['green', '94', 'so', 'b']
    """
    return _WORD.findall(text.lower())


def _same_number(stated: str, value: float) -> bool:
    """Whether the decimal `stated` (>= 2 decimals, no sign) equals |value| rounded or cut to as many decimals."""
    decimals = len(stated.split(".", 1)[1])
    v = abs(value)
    rounded = f"{v:.{decimals}f}"
    cut = f"{int(v * 10**decimals) / 10**decimals:.{decimals}f}"
    return stated in (rounded, cut)


def _same_dms(m: re.Match[str], value: float) -> bool:
    """Whether degrees-minutes(-seconds) `m` equal |value| rounded or cut to the last place written (a minute, a
    second, or a decimal of one)."""
    last = m.group(3) if m.group(3) is not None else m.group(2)
    unit = (1 / 3600 if m.group(3) is not None else 1 / 60) / 10 ** len(last.partition(".")[2])
    stated = int(m.group(1)) + float(m.group(2)) / 60 + (float(m.group(3)) / 3600 if m.group(3) else 0.0)
    gap = abs(value) - stated  # rounded: |gap| <= unit / 2; cut: 0 <= gap < unit
    return -unit / 2 - 1e-9 <= gap < unit


def hint_leak(text: str, hint: Hint) -> bool:
    """True when the reasoning of `text` quotes the hint's coordinates or says it was given the answer.

    >>> h = Hint("The true location of this photo is 48.8566, 2.3522.", 48.8566, 2.3522)
    >>> hint_leak("<think>The hint says Paris.</think><answer>48.85, 2.35</answer>", h)
    True
    >>> hint_leak("<think>Haussmann facades, so near 48.86 N.</think><answer>48.85, 2.35</answer>", h)
    True
    >>> hint_leak("<think>Haussmann facades and the Seine: Paris.</think><answer>48.85, 2.35</answer>", h)
    False
    """
    think = reasoning_of(text)
    if _LEAK_WORDS.search(think):
        return True
    if hint.lat is None or hint.lon is None:
        return False
    for m in _DECIMAL.finditer(think):
        if _same_number(m.group(0), hint.lat) or _same_number(m.group(0), hint.lon):
            return True
    return any(_same_dms(m, hint.lat) or _same_dms(m, hint.lon) for m in _DMS.finditer(think))


@dataclass(frozen=True)
class LengthWindow:
    """The reasoning's word count must lie in [min_words, max_words]."""

    min_words: int = 20
    max_words: int = 400

    def __post_init__(self) -> None:
        if self.min_words < 0 or self.max_words < max(self.min_words, 1):
            raise Geor1Error(
                f"length window needs 0 <= min_words <= max_words and max_words >= 1, got "
                f"min_words={self.min_words}, max_words={self.max_words}"
            )

    def reason(self, text: str) -> str | None:
        """ "too_short", "too_long" or None (inside the window)."""
        n = len(words(reasoning_of(text)))
        if n < self.min_words:
            return "too_short"
        if n > self.max_words:
            return "too_long"
        return None


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The word n-grams of `text`'s reasoning (a text of fewer than n words is one gram of all its words).

    >>> sorted(ngrams("<think>a b c a b</think><answer>B</answer>", 2))
    [('a', 'b'), ('b', 'c'), ('c', 'a')]
    """
    w = words(reasoning_of(text))
    if len(w) < n:
        return {tuple(w)} if w else set()
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b| (0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


class NearDuplicateIndex:
    """The kept traces' reasoning n-grams, with an inverted index (gram -> traces) so that a new trace is compared
    only with the kept traces it shares a gram with: `is_near_duplicate` costs the number of shared grams, not the
    number of kept traces."""

    def __init__(self, n: int = 4, threshold: float = 0.8) -> None:
        if n < 1 or not 0.0 < threshold <= 1.0:
            raise Geor1Error(f"near-duplicate check needs n >= 1 and 0 < threshold <= 1, got n={n}, {threshold=}")
        self.n, self.threshold = n, threshold
        self._sizes: list[int] = []
        self._postings: dict[tuple[str, ...], list[int]] = {}

    def __len__(self) -> int:
        return len(self._sizes)

    def is_near_duplicate(self, text: str) -> bool:
        grams = ngrams(text, self.n)
        if not grams:
            return False
        shared: Counter[int] = Counter()
        for g in grams:
            shared.update(self._postings.get(g, ()))
        return any(s / (len(grams) + self._sizes[i] - s) >= self.threshold for i, s in shared.items())

    def add(self, text: str) -> None:
        grams = ngrams(text, self.n)
        idx = len(self._sizes)
        self._sizes.append(len(grams))
        for g in grams:
            self._postings.setdefault(g, []).append(idx)


@dataclass(frozen=True)
class FilterSettings:
    """The settings of the filters (recorded in the manifest and the summary)."""

    tolerance_km: float = 25.0
    min_words: int = 20
    max_words: int = 400
    dedup_ngram: int = 4
    dedup_threshold: float = 0.8

    @property
    def window(self) -> LengthWindow:
        return LengthWindow(self.min_words, self.max_words)


@dataclass
class ItemResult:
    """The filters' verdict on one item's samples: the kept trace (or None), and per sample "kept" or the reason
    it was dropped; `factcheck` holds every fact-check reason of every sample."""

    chosen: str | None
    reasons: list[str]
    factcheck: Counter = field(default_factory=Counter)


def check_sample(
    text: str, target: Target, hint: Hint | None, settings: FilterSettings
) -> tuple[str | None, list[str]]:
    """Filters 1-3 on one sample -> (the reason it is dropped or None, all its fact-check reasons)."""
    failures = fact_check(text, target, settings.tolerance_km)
    if failures:
        return failures[0], failures
    if hint is not None and hint_leak(text, hint):
        return "hint_leak", []
    return settings.window.reason(text), []


def select_best(
    texts: Sequence[str],
    target: Target,
    hint: Hint | None,
    settings: FilterSettings,
    kept: NearDuplicateIndex,
) -> ItemResult:
    """All the filters on the N samples of one item; the kept trace (if any) is added to `kept`.

    Best-of-N rule: among the samples that pass the fact-check, the leak check and the length window, the one with
    the fewest reasoning words (ties: the earliest) that is not a near duplicate of a trace already kept."""
    reasons: list[str] = [""] * len(texts)
    fc: Counter[str] = Counter()
    valid: list[int] = []
    for i, text in enumerate(texts):
        reason, failures = check_sample(text, target, hint, settings)
        fc.update(failures)
        if reason is None:
            valid.append(i)
        else:
            reasons[i] = reason
    chosen: str | None = None
    for i in sorted(valid, key=lambda j: (len(words(reasoning_of(texts[j]))), j)):
        if chosen is not None:
            reasons[i] = "not_best_of_n"
        elif kept.is_near_duplicate(texts[i]):
            reasons[i] = "near_duplicate"
        else:
            chosen = texts[i]
            reasons[i] = "kept"
            kept.add(chosen)
    return ItemResult(chosen, reasons, fc)
