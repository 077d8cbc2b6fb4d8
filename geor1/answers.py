"""Parsing model answers: the `<think>...</think><answer>...</answer>` format and the letter inside.

Bounded in time on any input: no pattern here can backtrack catastrophically (tags are found with str.find).
"""

from __future__ import annotations

import re

_LETTER = re.compile(r"\s*(?:candidate|option|tile)?\s*\(?([A-Za-z])\)?\s*[.:)]?\s*", re.IGNORECASE)


def split_tags(text: str) -> tuple[str, str] | None:
    """(think, answer) when `text` is exactly `<think>..</think>` + whitespace + `<answer>..</answer>`, else None."""
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
    if "<answer>" in answer or "</answer>" in answer or "<think>" in think:
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
    """The single candidate letter answered, or None (no answer, several letters, or out of range).

    >>> parse_letter("<think>..</think><answer>B</answer>", 4)
    'B'
    >>> parse_letter("<answer></answer>", 4) is None, parse_letter("<answer>E</answer>", 4) is None
    (True, True)
    """
    ans = answer_text(text)
    if ans is None or len(ans) > 64:
        return None
    m = _LETTER.fullmatch(ans)
    if m is None:
        return None
    letter = m.group(1).upper()
    return letter if ord(letter) - ord("A") < num_candidates else None
