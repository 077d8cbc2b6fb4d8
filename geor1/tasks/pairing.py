"""Pairing (Geo-R1's RL task): which of K satellite tiles shows the place of the ground-level photo.

Shard JSON (episode shards of `geor1.retrieval.mining`): `k` (candidates), `answer` (index of the true tile),
`answer_letter` (its letter, optional; when present it must agree with `answer`); images `ground.jpg` and
`cand0.jpg .. cand{k-1}.jpg`. The answer is the one candidate letter inside <answer></answer>.
"""

from __future__ import annotations

import random
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from geor1.answers import parse_letter
from geor1.tasks.base import TargetError, Task, format_rate, mean_tokens

if TYPE_CHECKING:
    from geor1.data.sample import ChatSample

QUESTION = (
    "Which satellite tile shows the place where the ground-level photo was taken? "
    "Think step by step inside <think></think>, then give only the letter inside <answer></answer>."
)
MAX_CANDIDATES = len(string.ascii_uppercase)


@dataclass(frozen=True)
class PairingTarget:
    """K candidates (2..26), the true one at index `answer` (letter `letter`).

    >>> PairingTarget(4, 2).letter
    'C'
    """

    k: int
    answer: int
    task: ClassVar[str] = "pairing"

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 2 <= self.k <= MAX_CANDIDATES:
            raise TargetError("k", f"must be a whole number of candidates in 2..{MAX_CANDIDATES}, got {self.k!r}")
        if isinstance(self.answer, bool) or not isinstance(self.answer, int) or not 0 <= self.answer < self.k:
            raise TargetError("answer", f"must be a candidate index in 0..{self.k - 1}, got {self.answer!r}")

    @property
    def letter(self) -> str:
        return string.ascii_uppercase[self.answer]

    @property
    def letters(self) -> str:
        """The candidates' letters, "AB..." (k of them)."""
        return string.ascii_uppercase[: self.k]


@dataclass(frozen=True)
class PairingTask(Task[PairingTarget, str]):
    """Pairing: the answer is one letter; correct when it is the true candidate's; reward 1 or 0."""

    name: ClassVar[str] = "pairing"
    target_type: ClassVar[type] = PairingTarget

    def prompt(self, target: PairingTarget) -> str:
        """1 ground view + K candidate tiles (images in that order)."""
        return "Ground view: <image>\nCandidates:" + "".join(f" {x} <image>" for x in target.letters) + "\n" + QUESTION

    def image_names(self, target: PairingTarget) -> list[str]:
        return ["ground.jpg"] + [f"cand{i}.jpg" for i in range(target.k)]

    def target_from_meta(self, key: str, meta: Mapping[str, Any]) -> PairingTarget:
        from geor1.data.schema import SampleError

        for name in ("k", "answer"):
            if name not in meta:
                raise SampleError(key, name, "a pairing episode needs integer 'k' and 'answer'")
        try:
            target = PairingTarget(meta["k"], meta["answer"])
        except TargetError as e:
            raise SampleError(key, e.field, e.reason) from None
        letter = meta.get("answer_letter")
        if letter is not None and letter != target.letter:
            raise SampleError(
                key, "answer_letter", f"{letter!r} disagrees with answer {target.answer} ({target.letter!r})"
            )
        return target

    def target_to_meta(self, target: PairingTarget) -> dict[str, Any]:
        return {"k": target.k, "answer": target.answer, "answer_letter": target.letter}

    def parse_answer(self, answer: str) -> str | None:
        """The one letter answered (A..Z; whether it is a candidate is the target's business), or None.

        >>> [PairingTask().parse_answer(a) for a in ("(c)", "Candidate D.", "", "A or B")]
        ['C', 'D', None, None]
        """
        if "<answer>" in answer or "</answer>" in answer:
            return None  # an answer holds no tags
        return parse_letter(f"<answer>{answer}</answer>", MAX_CANDIDATES)

    def answered(self, text: str, target: PairingTarget) -> str | None:
        """The letter answered when it is one of the target's candidates, else None."""
        letter = self.parse(text)
        return letter if letter is not None and letter in target.letters else None

    def is_correct(self, text: str, target: PairingTarget) -> bool:
        """
        >>> t = PairingTarget(4, 1)
        >>> [PairingTask().is_correct(x, t) for x in ("<think>..</think><answer>B</answer>", "<answer>A or B</answer>")]
        [True, False]
        """
        return self.parse(text) == target.letter

    def reward(self, text: str, target: PairingTarget) -> float:
        return 1.0 if self.is_correct(text, target) else 0.0

    def score(self, rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Pairing accuracy with its Wilson 95% interval, format rate, parse rate (an answer that is one of the
        candidates' letters), mean completion tokens; and the shortcut audit (`geor1.metrics.audit.letter_audit`):
        accuracy per position of the true tile (`position_acc`), the letters answered (`answer_letters`, with
        "unparseable") and `max_letter_share`, the share of the most answered letter among read answers (1.0 for a
        model that always answers one letter)."""
        from geor1.metrics.audit import letter_audit  # geor1.metrics imports torch: only when scoring
        from geor1.metrics.intervals import wilson_interval

        preds = []
        for r in rows:
            target = r["target"]
            letter = self.answered(r["text"], target)
            preds.append(
                {
                    "id": r["key"],
                    "text": r["text"],
                    "answer": letter or "",
                    "truth": target.letter,
                    "correct": int(letter == target.letter),
                    "parsed": int(letter is not None),
                    "tokens": r["tokens"],
                }
            )
        n, correct = len(rows), sum(p["correct"] for p in preds)
        lo, hi = wilson_interval(correct, n)
        audit = letter_audit([p["truth"] for p in preds], [p["answer"] or None for p in preds])
        return {
            "n": n,
            "pairing_acc": correct / max(n, 1),
            "ci95_low": lo,
            "ci95_high": hi,
            "format_rate": format_rate(rows),
            "parse_rate": sum(p["parsed"] for p in preds) / max(n, 1),
            "mean_completion_tokens": mean_tokens(rows),
            "max_letter": audit["max_letter"],
            "max_letter_share": audit["max_letter_share"],
            "position_acc": audit["position_acc"],
            "answer_letters": audit["answer_letters"],
        }, preds


def shuffle_candidates(sample: ChatSample, rng: random.Random) -> ChatSample:
    """The same pairing episode with its candidates in a random order (`rng.shuffle` of the K indices): the tile
    images reordered, the target's answer index moved to where the true tile went, and the prompt text rebuilt by
    the task for the new target. A custom prompt from the shard's JSON ("prompt") is kept as it is, since it is not
    the task's to rebuild. The ground view stays first. The key stays, so the two orders of an episode pair up; the
    meta's `answer`, `answer_letter` and per-candidate `candidates` list follow the new order, and
    `candidate_order` lists the original index of each new position.

    A uniform permutation may leave an episode as it was (half of the K=2 episodes): what is measured is the
    accuracy under a random order against the accuracy under the shard's order.

    >>> import random
    >>> from geor1.data.sample import ChatSample, Prompt
    >>> target = PairingTarget(3, 0)
    >>> s = ChatSample("e", Prompt(PairingTask().prompt(target), ["g", "t0", "t1", "t2"]), target)
    >>> t = shuffle_candidates(s, random.Random(1))
    >>> t.prompt.images[1 + t.target.answer]
    't0'
    """
    from geor1.data.sample import ChatSample, Prompt

    target = sample.target
    if not isinstance(target, PairingTarget):
        raise TargetError("target", f"sample {sample.key!r}: shuffle_candidates needs a pairing target, got {target!r}")
    images = sample.prompt.images
    if len(images) != 1 + target.k:
        raise TargetError(
            "images", f"sample {sample.key!r}: a pairing prompt has 1 + k = {1 + target.k} images, got {len(images)}"
        )
    task = PairingTask()
    order = list(range(target.k))
    rng.shuffle(order)  # order[new position] = original index
    new_target = PairingTarget(target.k, order.index(target.answer))
    own_prompt = sample.prompt.text == task.prompt(target)
    text = task.prompt(new_target) if own_prompt else sample.prompt.text
    meta = {**sample.meta, **task.target_to_meta(new_target), "candidate_order": order}
    cands = sample.meta.get("candidates")
    if isinstance(cands, list) and len(cands) == target.k:
        meta["candidates"] = [cands[i] for i in order]
    prompt = Prompt(text, [images[0], *(images[1 + i] for i in order)], sample.prompt.system)
    return ChatSample(sample.key, prompt, new_target, sample.response, meta)
