"""The reward registry and the weighted combination."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from typing import Any

from geor1 import Geor1Error

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


def combine(scores: dict[str, Sequence[float | None]], weights: dict[str, float]) -> list[float | None]:
    """Weighted sum per sample: sum_i w_i * r_i over the rewards that could score it; None when none could.
    A non-finite score counts as unscored."""
    names = list(scores)
    n = len(next(iter(scores.values()))) if scores else 0
    out: list[float | None] = []
    for j in range(n):
        parts = [(weights.get(name, 1.0), scores[name][j]) for name in names]
        parts = [(w, float(s)) for w, s in parts if s is not None and math.isfinite(float(s))]
        out.append(sum(w * s for w, s in parts) if parts else None)
    return out


def call_reward(fn: RewardFn, completions: list[str], samples: list[dict[str, Any]], **context: Any) -> list:
    scores = fn(completions, samples, **context)
    if len(scores) != len(completions):
        raise Geor1Error(f"reward {getattr(fn, '__name__', fn)} returned {len(scores)} scores for "
                         f"{len(completions)} completions")
    return scores
