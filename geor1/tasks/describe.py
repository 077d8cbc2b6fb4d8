"""Describe: generic questions about what one or two images show (the demo's instruction-following stage).

Geo-R1 starts from an instruction-following model (Qwen2.5-VL-7B-Instruct), which already answers questions about
images in a requested format. The tiny demo model starts from random weights, so the demo first teaches it this
generic skill, and nothing geospatial: which land cover covers most of one image, and which of two images shows
more of a given cover. Never a place, a coordinate, the pairing task or Geo-R1's reasoning template
(`geor1.data.instruct` writes the shards).

Shard JSON: `question` ("cover" or "more"), `cover` (the class asked about by "more"), `answer` (a cover word for
"cover", a letter for "more"), `images` (how many: 1 for "cover", 2..4 for "more"); images `image0.jpg`,
`image1.jpg`, ...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from geor1.answers import parse_letter
from geor1.tasks.base import TargetError, Task, format_rate, mean_tokens

COVER_WORDS = ("water", "vegetation", "bare", "snow", "dark")
"""The answers of a "cover" question (GeoWorld's cover classes; "dark" is dark or hazy ground)."""
MORE_WORDS = {"water": "water", "vegetation": "vegetation", "bare": "bare ground", "snow": "snow or ice"}
"""The covers a "more" question asks about, and how the question names them."""
QUESTIONS = ("cover", "more")
MAX_IMAGES = 4  # images of a "more" question (letters A..D)
FORMAT = "Think step by step inside <think></think>, then give only the {what} inside <answer></answer>."


@dataclass(frozen=True)
class DescribeTarget:
    """One question and its answer.

    >>> DescribeTarget("more", "C", cover="water", n_images=3).letters
    'ABC'
    """

    question: str
    answer: str
    cover: str | None = None
    n_images: int = 1
    task: ClassVar[str] = "describe"

    def __post_init__(self) -> None:
        if self.question not in QUESTIONS:
            raise TargetError("question", f"must be one of {QUESTIONS}, got {self.question!r}")
        if self.question == "cover":
            if self.answer not in COVER_WORDS:
                raise TargetError("answer", f"a cover question's answer is one of {COVER_WORDS}, got {self.answer!r}")
            if self.cover is not None:
                raise TargetError("cover", f"a cover question names no cover, got {self.cover!r}")
            if self.n_images != 1:
                raise TargetError("images", f"a cover question shows 1 image, got {self.n_images!r}")
        else:
            if self.cover not in MORE_WORDS:
                raise TargetError("cover", f"must be one of {tuple(MORE_WORDS)}, got {self.cover!r}")
            if isinstance(self.n_images, bool) or self.n_images not in range(2, MAX_IMAGES + 1):
                raise TargetError("images", f"a 'more' question shows 2..{MAX_IMAGES} images, got {self.n_images!r}")
            if not isinstance(self.answer, str) or self.answer not in self.letters:
                raise TargetError("answer", f"must be one of the letters {self.letters!r}, got {self.answer!r}")

    @property
    def letters(self) -> str:
        """The images' letters, "AB..." (n_images of them)."""
        return "ABCD"[: self.n_images]


@dataclass(frozen=True)
class DescribeTask(Task[DescribeTarget, str]):
    """Describe: the answer is a cover word or a letter; correct when it equals the target's; reward 1 or 0."""

    name: ClassVar[str] = "describe"
    target_type: ClassVar[type] = DescribeTarget

    def prompt(self, target: DescribeTarget) -> str:
        """
        >>> print(DescribeTask().prompt(DescribeTarget("more", "A", cover="snow", n_images=2)).split("?")[0])
        Image A: <image> Image B: <image>
        Which image shows the most snow or ice
        """
        if target.question == "cover":
            words = ", ".join(COVER_WORDS[:-1]) + f" or {COVER_WORDS[-1]}"
            return f"Image: <image>\nWhich covers most of the ground in this image: {words}? " + FORMAT.format(
                what="word"
            )
        assert target.cover is not None
        images = " ".join(f"Image {x}: <image>" for x in target.letters)
        return f"{images}\nWhich image shows the most {MORE_WORDS[target.cover]}? " + FORMAT.format(what="letter")

    def image_names(self, target: DescribeTarget) -> list[str]:
        return [f"image{i}.jpg" for i in range(target.n_images)]

    def target_from_meta(self, key: str, meta: Mapping[str, Any]) -> DescribeTarget:
        from geor1.data.schema import SampleError

        for name in ("question", "answer"):
            if name not in meta:
                raise SampleError(key, name, "a describe sample needs 'question' and 'answer'")
        try:
            return DescribeTarget(meta["question"], meta["answer"], meta.get("cover"), meta.get("images", 1))
        except TargetError as e:
            raise SampleError(key, e.field, e.reason) from None

    def target_to_meta(self, target: DescribeTarget) -> dict[str, Any]:
        return {"question": target.question, "answer": target.answer, "cover": target.cover, "images": target.n_images}

    def parse_answer(self, answer: str) -> str | None:
        """A cover word (any case, surrounding spaces and a final full stop ignored) or one letter, else None.

        >>> [DescribeTask().parse_answer(a) for a in (" Water.", "B", "water or snow", "")]
        ['water', 'B', None, None]
        """
        word = answer.strip().rstrip(".").strip().lower()
        if word in COVER_WORDS:
            return word
        if "<answer>" in answer or "</answer>" in answer:
            return None
        return parse_letter(f"<answer>{answer}</answer>", MAX_IMAGES)

    def is_correct(self, text: str, target: DescribeTarget) -> bool:
        """
        >>> t = DescribeTarget("cover", "snow")
        >>> [DescribeTask().is_correct(x, t) for x in ("<think>white</think><answer>snow</answer>", "snow")]
        [True, False]
        """
        return self.parse(text) == target.answer

    def reward(self, text: str, target: DescribeTarget) -> float:
        return 1.0 if self.is_correct(text, target) else 0.0

    def score(self, rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Accuracy with its Wilson 95% interval (all questions and per question), format rate, mean tokens."""
        from geor1.metrics.intervals import wilson_interval

        preds = []
        for r in rows:
            target, answer = r["target"], self.parse(r["text"])
            preds.append(
                {
                    "id": r["key"],
                    "question": target.question,
                    "text": r["text"],
                    "answer": answer or "",
                    "truth": target.answer,
                    "correct": int(answer == target.answer),
                    "tokens": r["tokens"],
                }
            )
        n, correct = len(preds), sum(p["correct"] for p in preds)
        lo, hi = wilson_interval(correct, n)
        per_question = {
            q: sum(p["correct"] for p in preds if p["question"] == q) / max(1, sum(p["question"] == q for p in preds))
            for q in QUESTIONS
        }
        return {
            "n": n,
            "describe_acc": correct / max(n, 1),
            "ci95_low": lo,
            "ci95_high": hi,
            "question_acc": per_question,
            "format_rate": format_rate(rows),
            "mean_completion_tokens": mean_tokens(rows),
        }, preds
