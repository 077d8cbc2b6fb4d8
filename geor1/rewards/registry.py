"""The reward registry and the weighted combination."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from geor1 import Geor1Error

if TYPE_CHECKING:
    from geor1.tasks import Target

RewardFn = Callable[..., list]
REWARDS: dict[str, RewardFn] = {}


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    def wrap(fn: RewardFn) -> RewardFn:
        if name in REWARDS:
            raise ValueError(f"reward {name!r} is already registered")
        REWARDS[name] = fn
        return fn

    return wrap


def get_reward(name: str) -> RewardFn:
    """A registered reward, or one given by dotted import path ("package.module.function")."""
    if name in REWARDS:
        return REWARDS[name]
    if "." in name:
        module, _, attr = name.rpartition(".")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise Geor1Error(f"cannot import reward {name!r}: {e}") from None
    raise Geor1Error(f"unknown reward {name!r}; registered: {sorted(REWARDS)} (or give a dotted import path)")


def combine(scores: Mapping[str, Sequence[float | None]], weights: Mapping[str, float]) -> list[float | None]:
    """Weighted sum per sample: sum_i w_i * r_i over the rewards that could score it; None when none could.
    A non-finite score counts as unscored."""
    n = len(next(iter(scores.values()))) if scores else 0
    out: list[float | None] = []
    for j in range(n):
        parts = [
            (weights.get(name, 1.0), float(s))
            for name, values in scores.items()
            if (s := values[j]) is not None and math.isfinite(float(s))
        ]
        out.append(sum(w * s for w, s in parts) if parts else None)
    return out


def call_reward(
    fn: RewardFn, completions: list[str], targets: Sequence[Target | None], **context: Any
) -> list[float | None]:
    """`fn(completions, targets, **context)`, its length checked against the completions'."""
    scores = fn(completions, list(targets), **context)
    if len(scores) != len(completions):
        raise Geor1Error(
            f"reward {getattr(fn, '__name__', fn)} returned {len(scores)} scores for {len(completions)} completions"
        )
    return scores
