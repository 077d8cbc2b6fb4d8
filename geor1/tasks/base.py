"""The `Task` contract: everything that differs between pairing and geolocation, in one class per task.

A task owns its prompt, its typed target (what the shard's JSON says the right answer is), the reading of an
answer, the correctness check, the task-specific part of the rewards and its row of evaluation metrics. Everything
else (rewards, GRPO logging, evaluation, the fact-check, the demo) asks the task, so one answer is scored one way
everywhere. Answers are read by `geor1.answers`, the one parser, and only through here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Generic, TypeVar

from geor1.answers import answer_text, split_tags

T = TypeVar("T")  # the task's target type
A = TypeVar("A")  # the task's parsed answer type


class TargetError(ValueError):
    """An invalid target value; names the field (`target_from_meta` turns it into a SampleError naming the key)."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field, self.reason = field_name, reason


def is_well_formed(text: str) -> bool:
    """True when the whole completion is `<think>...</think>` then `<answer>...</answer>` (the format reward and
    the format rates of training, validation and evaluation).

    >>> is_well_formed("<think>coast to the west</think> <answer>B</answer>"), is_well_formed("<answer>B</answer>")
    (True, False)
    """
    return split_tags(text) is not None


def split_completion(text: str) -> tuple[str, str] | None:
    """(reasoning, answer) of a well-formed completion, else None (the fact-check reads both)."""
    return split_tags(text)


class Task(ABC, Generic[T, A]):
    """One task: its prompt, its target type, its answers, its rewards and its metrics.

    Subclasses set `name` (the name in shards' JSON "task" and in configs) and `target_type`, and implement the
    abstract methods. Instances hold the task's settings (e.g. the geolocation task's `correct_km`); `get_task`
    and `task_of` return the default instance.
    """

    name: ClassVar[str]
    target_type: ClassVar[type]

    # ------------------------------------------------------------------ prompt and images
    @abstractmethod
    def prompt(self, target: T) -> str:
        """The user text, with one `<image>` marker per image, in the order of `image_names`."""

    @abstractmethod
    def image_names(self, target: T) -> list[str]:
        """The image files of a shard sample this task shows, in prompt order (e.g. "ground.jpg")."""

    # ------------------------------------------------------------------ shard JSON
    @abstractmethod
    def target_from_meta(self, key: str, meta: Mapping[str, Any]) -> T:
        """The target of sample `key` from its shard JSON; `geor1.data.schema.SampleError` naming the key and the
        field when it is missing or invalid."""

    @abstractmethod
    def target_to_meta(self, target: T) -> dict[str, Any]:
        """The shard JSON keys of `target` (the keys existing shards use; `target_from_meta` reads them back)."""

    # ------------------------------------------------------------------ answers
    @abstractmethod
    def parse_answer(self, answer: str) -> A | None:
        """The answer written inside the <answer> tag (without the tags), or None when it cannot be read."""

    def parse(self, text: str, tagged: bool = True) -> A | None:
        """The answer of a completion: `parse_answer` of the content of its last <answer> tag; None without one.
        With `tagged=False` a text without an <answer> tag is read whole (predictions of other systems)."""
        ans = answer_text(text)
        if ans is None:
            if tagged:
                return None
            ans = text
        return self.parse_answer(ans)

    @abstractmethod
    def is_correct(self, text: str, target: T) -> bool:
        """Whether the completion's answer is right (an unreadable answer is wrong)."""

    @abstractmethod
    def reward(self, text: str, target: T) -> float:
        """The task's answer reward in [0, 1] (pairing: the letter, 1 or 0; geolocation: distance-shaped)."""

    # ------------------------------------------------------------------ evaluation
    @abstractmethod
    def score(self, rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Evaluation: rows of {"key", "text", "tokens", "target"} (`geor1.eval.runners.run_policy`) -> (metrics,
        one prediction row per input row, for predictions.csv)."""


def format_rate(rows: Sequence[Mapping[str, Any]]) -> float:
    """The share of rows whose "text" is well formed (0 for no rows)."""
    return sum(is_well_formed(r["text"]) for r in rows) / len(rows) if rows else 0.0


def mean_tokens(rows: Sequence[Mapping[str, Any]]) -> float:
    """The mean of the rows' "tokens" (0 for no rows)."""
    return float(sum(r["tokens"] for r in rows) / len(rows)) if rows else 0.0
